"""What may stand for a reward, and loading it: :class:`RewardSpec` (checked before anything loads) and
:func:`load_reward`.

A spec is a built-in name (:mod:`tqstar.reward.builtin`), ``module:function``, a reward-model directory
(:mod:`tqstar.reward.hf`), or a weighted sum of those (``0.7*sentiment + 0.3*harmless``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import re
import string
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._schema import accepts, phrase, string_or_mapping
from ..errors import ConfigError, describe
from .base import CallableReward, Range, Reward, WeightedReward, checked_range
from .builtin import BUILTIN_REWARDS
from .hf import TransformersReward


@dataclass(frozen=True)
class RewardSpec:
    """How to build a reward: ``spec`` plus options for a reward-model directory.

    ``spec`` is one of: a built-in name (``sentiment``, ``harmless``); ``module:function``; a reward-model
    directory (optionally prefixed ``hf:``); or a weighted sum such as ``0.7*sentiment + 0.3*harmless`` (each
    term ``WEIGHT*SPEC``). The options apply to reward-model directories, except ``range`` (also for
    ``module:function``) and ``check_range`` (every term: ``False`` drops every range, see :class:`Reward`).
    """

    spec: str
    format: str | None = None
    truncate: bool = False
    sigmoid: bool = False
    label: int | None = None
    range: Range | None = None
    device: str = "cpu"
    dtype: str = "float32"
    check_range: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.spec, str) or not self.spec.strip():
            raise ConfigError(f"reward spec must be a non-empty string, got {self.spec!r}")
        for f in dataclasses.fields(self):  # every field's type, as a YAML mapping's keys are checked
            if f.name != "range" and not accepts(HINTS[f.name], getattr(self, f.name)):
                raise ConfigError(f"reward `{f.name}` must be {phrase(HINTS[f.name])}, got"
                                  f" {describe(getattr(self, f.name))}", param=f.name, value=getattr(self, f.name))
        checked_range(self.range, "reward `range`")
        kinds = {_check_term(term) for _, term in self.terms()}
        self._check_options(kinds)

    def _check_options(self, kinds: set[str]) -> None:
        """Refuse an option that none of the terms uses (it would be silently ignored): the reward-model options
        need a reward-model directory, ``range`` a term that is not a built-in (those declare their own)."""
        given = [f.name for f in dataclasses.fields(self)
                 if f.name in MODEL_OPTIONS and getattr(self, f.name) != f.default]
        if given and "directory" not in kinds:
            name = given[0]
            raise ConfigError(f"`{name}` (--reward-{name}) applies to a reward-model directory, but reward"
                              f" {self.spec!r} is {_kinds_phrase(kinds)}; drop it", param=name, value=getattr(self, name))
        if self.range is not None and kinds == {"builtin"}:
            raise ConfigError(f"`range` has no effect on reward {self.spec!r}: a built-in reward declares its own"
                              " range; drop it (or check_range: false to drop the built-in one)", param="range",
                              value=self.range)

    def terms(self) -> list[tuple[float, str]]:
        """``[(weight, spec), ...]``; a single spec is ``[(1.0, spec)]``."""
        spec = self.spec.strip()
        if "*" not in spec:
            return [(1.0, spec.removeprefix("hf:"))]
        terms = []
        # terms are joined by "+" (not an exponent's) or by " -" before a number: "0.7*a - 0.2*b", "1e+3*a"
        pieces = re.split(r"((?<!\d[eE])\+|(?<=[^\s+*])\s+-(?=\s*[\d.]))", spec)
        signs = [1.0] + [-1.0 if sep.strip() == "-" else 1.0 for sep in pieces[1::2]]
        for sign, part in zip(signs, pieces[0::2]):
            match = re.fullmatch(r"\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*\*\s*(\S.*?)\s*", part)
            if not match:
                raise ConfigError(f"reward term {part.strip()!r} in {spec!r} must read WEIGHT*SPEC, e.g. 0.7*sentiment")
            try:
                weight = sign * float(match.group(1))
            except ValueError as exc:
                raise ConfigError(f"reward weight {match.group(1)!r} in {spec!r} must be a number") from exc
            if not math.isfinite(weight):
                raise ConfigError(f"reward weight {match.group(1)!r} in {spec!r} must be a finite number, got"
                                  f" {weight}; write it within ±1.8e308")
            terms.append((weight, match.group(2).removeprefix("hf:")))
        return terms

    def load(self) -> Reward:
        parts = [(w, self._load_one(s)) for w, s in self.terms()]
        if len(parts) == 1 and parts[0][0] == 1.0:
            return parts[0][1]
        return WeightedReward(parts)

    def _load_one(self, spec: str) -> Reward:
        if spec in BUILTIN_REWARDS:
            reward = BUILTIN_REWARDS[spec]()
            if not self.check_range:
                reward.range = None
            return reward
        if Path(spec).expanduser().is_dir():
            return TransformersReward(str(Path(spec).expanduser()), format=self.format, truncate=self.truncate,
                                      sigmoid=self.sigmoid, label=self.label, range=self.range,
                                      device=self.device, dtype=self.dtype, check_range=self.check_range)
        return CallableReward(_import_callable(spec), range=self.range, check_range=self.check_range)

    @classmethod
    def parse(cls, value: Any, what: str) -> RewardSpec | None:
        """A spec from a config value (a spec string or a mapping with a ``spec`` key; ``None`` stays ``None``);
        ``what`` is its key, named in messages."""
        values = string_or_mapping(value, cls, what, key="spec", plain="a spec string",
                                   fix="give the reward as {spec: SPEC, ...} or as a plain spec")
        if values is None:
            return None
        if values.get("range") is not None:
            values["range"] = tuple(values["range"])
        if values.get("format") is not None:
            check_format(values["format"], f"{what}.format")
        return cls(**values)


HINTS = typing.get_type_hints(RewardSpec)


def load_reward(spec: str | RewardSpec | Reward | None, **options: object) -> Reward | None:
    """Build a :class:`Reward` from a spec string, a :class:`RewardSpec` or an existing reward."""
    if spec is None or isinstance(spec, Reward):
        return spec
    if not isinstance(spec, (str, RewardSpec)):
        raise ConfigError(f"`spec` must be a reward spec string, a RewardSpec or a Reward, got {describe(spec)}; wrap a"
                          " function with CallableReward(fn)", param="spec", value=spec)
    if options and not isinstance(spec, str):
        raise ConfigError(f"options {', '.join(options)} apply to a spec string; a RewardSpec holds its own",
                          param="spec", value=spec)
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(RewardSpec)} - {"spec"})
    if unknown or "spec" in options:
        raise ConfigError(f"unknown reward option `{(unknown or ['spec'])[0]}`; the options are"
                          f" {', '.join(f.name for f in dataclasses.fields(RewardSpec) if f.name != 'spec')}",
                          param=(unknown or ["spec"])[0])
    if isinstance(spec, str):
        spec = RewardSpec(spec, **options)  # type: ignore[arg-type]
    return spec.load()


#: The options of a reward-model directory (:class:`~tqstar.reward.hf.TransformersReward`).
MODEL_OPTIONS = ("format", "truncate", "sigmoid", "label", "device", "dtype")


def _kinds_phrase(kinds: set[str]) -> str:
    names = {"builtin": "a built-in reward", "callable": "a module:function"}
    return " and ".join(names[k] for k in sorted(kinds))


def _check_term(spec: str) -> str:
    """Fail early (before any model loads) on a spec that cannot resolve; else what it is: ``builtin``,
    ``directory`` (a reward model) or ``callable``."""
    if spec in BUILTIN_REWARDS:
        return "builtin"
    if Path(spec).expanduser().is_dir():
        return "directory"
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        _import_callable(spec)
        return "callable"
    raise ConfigError(
        f"reward spec {spec!r} does not resolve; give a built-in ({', '.join(BUILTIN_REWARDS)}), module:function,"
        " an existing reward-model directory, or a weighted sum like 0.7*sentiment+0.3*harmless"
    )


def _import_callable(spec: str) -> Callable:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"reward spec {spec!r} does not resolve: cannot import module {module_name!r} ({exc});"
                          " check the module is on PYTHONPATH") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward spec {spec!r} does not resolve: module {module_name!r} has no function {attr!r};"
                          " give module:function of a function (prompts, responses) -> floats")
    return fn


def check_format(fmt: str, what: str) -> None:
    """Raise :class:`ConfigError` unless ``fmt`` is a format string over ``{prompt}`` and ``{response}`` only
    (checked here, before any model loads, not when the first text is scored)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"`{what}` {fmt!r} is not a valid format string ({exc}); write a literal brace as"
                          " {{ or }}", param=what) from None
    unknown = next((name for name in fields if re.split(r"[.\[]", name)[0] not in ("prompt", "response")), None)
    if unknown is not None:
        raise ConfigError(f"`{what}` {fmt!r} uses the field {{{unknown}}}; the fields are {{prompt}} and"
                          " {response} (write a literal brace as {{ or }})", param=what)
    if "response" not in fields:
        raise ConfigError(f"`{what}` must contain {{response}}, got {fmt!r}", param=what)
    try:
        fmt.format(prompt="p", response="r")
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ConfigError(f"`{what}` {fmt!r} cannot be filled in ({type(exc).__name__}: {exc}); use plain"
                          " {prompt} and {response} fields", param=what) from None
