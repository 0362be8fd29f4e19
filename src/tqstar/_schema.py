"""The YAML side of configuration: reading a config file, and checking a mapping's keys and value types against a
frozen dataclass, so every config (run, eval, serve, a model or reward spec, limits) refuses an unknown key or a
wrong type in the same one sentence, naming the dotted key.

Generic: nothing here knows a particular config (:mod:`tqstar.config`, :mod:`tqstar.eval.config`,
:mod:`tqstar.serving.config` and the specs pass their own classes and extra keys).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._files import read_text
from .errors import ConfigError, describe


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    text = read_text(path, "config file", "give the path of a YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({problem}{at}); fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping (key: value lines) at the top level, got"
                          f" {describe(data)}")
    bad = next((key for key in data if not isinstance(key, str)), None)
    if bad is not None:
        raise ConfigError(f"config file {str(path)!r} has the key {bad!r}, which is not a name; keys are names such"
                          " as sft, reward, decode")
    return data


def known_keys(values: dict[str, Any], cls: type, what: str, extra_keys: Sequence[str] = (), *,
               check_types: bool = True) -> dict[str, Any]:
    """``values`` without nulls, after checking every key is a field of ``cls`` (or one of ``extra_keys``, the other
    keys the caller's mapping may hold) and, with ``check_types``, that every value has the field's type (for
    dataclasses whose fields are plain types: strings, numbers, booleans, tuples; a caller whose fields are built
    from the raw values, such as a run config's model specs, checks them itself)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, values)) - names - set(extra_keys))
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}` in {what}; valid keys are"
                          f" {', '.join(sorted(names | set(extra_keys)))}")
    hints = typing.get_type_hints(cls) if check_types else {}
    for key, value in values.items():
        if key in hints and value is not None and not accepts(hints[key], value):
            raise ConfigError(f"`{dotted(what, key)}` must be {phrase(hints[key])}, got {describe(value)}",
                              param=dotted(what, key), value=value)
    return {k: v for k, v in values.items() if v is not None}


def dotted(what: str, key: str) -> str:
    return key if what == "config" else f"{what}.{key}"


def accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (from YAML) fits the type ``hint``; an int is a fine float, a bool is not a number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(accepts(args[0], v) for v in value)
        return len(value) == len(args) and all(accepts(a, v) for a, v in zip(args, value))
    if origin is typing.Literal:
        return value in args
    if hint is typing.Any:
        return True
    return isinstance(value, origin or hint)


def phrase(hint: Any) -> str:
    """How a message names the type ``hint``: "a string", "an integer", "true or false", "a list of 2 numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(phrase(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + phrase(args[0]).removeprefix("a ").removeprefix("an ") + "s"
        return f"a list of {len(args)} " + phrase(args[0]).removeprefix("a ").removeprefix("an ") + "s"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    named = {str: "a string", int: "an integer", float: "a number", bool: "true or false", os.PathLike: "a path",
             collections.abc.Callable: "a function", collections.abc.Sequence: "a list",
             collections.abc.Mapping: "a mapping", dict: "a mapping", list: "a list"}
    key = origin or hint
    return named.get(key) or (f"a {key.__name__}" if hasattr(key, "__name__") else str(hint))


def check_arguments(fn: Any, values: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` reading "`<name>` must be <type>, got <value>" for the first of ``values``
    (argument name -> value of a call of ``fn``) that does not fit ``fn``'s annotation of it: the library's public
    calls check their arguments' types at the boundary, as a config file's keys are (:func:`known_keys`)."""
    hints = typing.get_type_hints(fn)
    for name, value in values.items():
        if name in hints and not accepts(hints[name], value):
            raise ConfigError(f"`{name}` must be {phrase(hints[name])}, got {describe(value)}", param=name, value=value)


def typed(value: Any, kind: type, what: str, phrase: str) -> Any:
    """``value`` itself when it is ``None`` or a ``kind`` (bool is not an int); else a :class:`ConfigError`."""
    if value is None or accepts(kind, value):
        return value
    raise ConfigError(f"`{what}` must be {phrase}, got {describe(value)}", param=what, value=value)


def string_or_mapping(value: Any, cls: type, what: str, *, key: str, plain: str, fix: str) -> dict[str, Any] | None:
    """The fields of a spec given either as a plain string (the ``key`` field) or as a mapping of ``cls``'s fields
    that holds ``key``; ``None`` stays ``None``. ``plain`` names the string form ("a path") and ``fix`` says how to
    give the spec, for the one-sentence errors."""
    if value is None:
        return None
    if isinstance(value, str):
        return {key: value}
    if isinstance(value, dict):
        values = known_keys(value, cls, what)
        if key not in values:
            raise ConfigError(f"`{what}` has no `{key}`; {fix}", param=what)
        return values
    raise ConfigError(f"`{what}` must be {plain} or a mapping with a `{key}` key, got {describe(value)}", param=what)
