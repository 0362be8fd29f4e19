"""Configuration of a run: models, rewards, decoding parameters and prompts, from a YAML file and/or flags.

Everything is validated here, before any model loads: the decoding parameters, that reward specs resolve
(:class:`~tqstar.reward.spec.RewardSpec`) and that model paths exist (:class:`~tqstar.lm.spec.ModelSpec`).
``RunConfig.build()`` then loads the models and returns an :class:`~tqstar.engine.Engine`. The command line's
flags are merged over the YAML file here too (:func:`merge_flags`), so ``generate`` and ``serve`` read them alike.

YAML layout (every key optional; command-line flags override the file)::

    sft: path/to/sft                 # or {path, adapter, dtype, device, chat_template, system_prompt,
                                     #   parse_special_tokens, allow_download}
    baseline: openai:http://gpu1:8000#dpo   # a served model: {path, tokenizer, api_key_env, timeout, retries,
                                            #   max_in_flight, chat_template, system_prompt}
    reward: sentiment                # or {spec, format, truncate, sigmoid, label, range, check_range}
    baseline_reward: harmless        # tq-indirect only
    decode: {method: tq-direct, k: 10, alpha: 1.0, n_rollouts: 1, rollout_len: 20, max_new_tokens: 64}
    prompts: ["How do I make tea?"]
    prompts_file: prompts.txt        # one prompt per line, or JSONL with a "prompt" field
    batch_size: 8
    concurrency: 1                   # batches decoded at once (remote models only)
    truncate_prompt: false
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._checks import check_int
from ._schema import known_keys, typed
from .errors import ConfigError, describe
from .lm.base import Prompt
from .lm.spec import ModelSpec, Shared, load
from .params import FIELDS, DecodeParams
from .prompts import check_prompt, read_prompt_file
from .reward.spec import RewardSpec


@dataclass(frozen=True)
class RunConfig:
    """A whole ``tqstar generate`` run. ``sft=None`` means the built-in tiny models and ``sentiment`` reward."""

    sft: ModelSpec | None = None
    baseline: ModelSpec | None = None
    reward: RewardSpec | None = None
    baseline_reward: RewardSpec | None = None
    decode: DecodeParams = field(default_factory=DecodeParams)
    prompts: tuple[str, ...] = ()
    batch_size: int = 8
    truncate_prompt: bool = False
    concurrency: int = 1

    def __post_init__(self) -> None:
        check_int(self.batch_size, "batch_size")
        from .engine import check_concurrency

        check_concurrency(self.concurrency, [role for role, spec in (("sft", self.sft), ("baseline", self.baseline))
                                             if spec is None or not spec.remote])

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, what: str = "config", extra_keys: Sequence[str] = (),
                  decode_defaults: bool = False, decode_given: Sequence[str] | None = None) -> RunConfig:
        """Build and validate from a mapping (a YAML file merged with flags); ``extra_keys`` are the other keys
        the caller's file may hold (named when a key is unknown). ``decode`` is the run's method, whose every key
        must have an effect on it, or with ``decode_defaults`` the defaults several methods start from (a server's
        presets), which a method uses as far as they apply; ``decode_given`` narrows the keys that must have an
        effect (:func:`decode_given`: when a flag chose the method, the YAML file's keys are defaults)."""
        data = dict(data)
        prompts = _prompt_list(data.pop("prompts", None))
        prompts_file = typed(data.pop("prompts_file", None), str, "prompts_file", "a file path")
        column = typed(data.pop("prompts_column", None), str, "prompts_column", "a column name")
        if prompts_file:
            prompts.extend(read_prompt_file(prompts_file, column))
        elif column is not None:
            raise ConfigError(f"`prompts_column` (--column) {column!r} names the prompt field of a prompts file, and none"
                              " is given; give --prompts-file FILE (prompts_file:) or drop it", param="prompts_column",
                              value=column)
        known = known_keys(data, cls, what, (*extra_keys, "prompts_file", "prompts_column"), check_types=False)
        return cls(
            sft=ModelSpec.parse(known.get("sft"), "sft"),
            baseline=ModelSpec.parse(known.get("baseline"), "baseline"),
            reward=RewardSpec.parse(known.get("reward"), "reward"),
            baseline_reward=RewardSpec.parse(known.get("baseline_reward"), "baseline_reward"),
            decode=_decode(typed(known.get("decode"), dict, "decode", "a mapping like {method: tq-direct, k: 10}") or {},
                           decode_defaults, decode_given),
            prompts=tuple(prompts),
            batch_size=known.get("batch_size", 8),
            truncate_prompt=typed(known.get("truncate_prompt", False), bool, "truncate_prompt", "true or false"),
            concurrency=known.get("concurrency", 1),
        )

    def check_used(self, methods: Sequence[DecodeParams], *, warn: bool = False,
                   flags: set[str] | None = None) -> None:
        """Raise :class:`ConfigError` if a baseline or a baseline reward is given that none of ``methods`` (the
        run's) uses: it would load for nothing and read as if it mattered. With ``warn`` (an evaluation, whose
        results file records the models: a later run of the same file may add a method that uses it) say so on the
        ``tqstar`` logger instead, and so for one given in a YAML file (it may serve several methods) when ``flags``
        names the roles given by flags. (The target reward is always used: every response is scored by it.)"""
        for role in ("baseline", "baseline_reward"):
            if getattr(self, role) is not None and not any(role in p.needs for p in methods):
                names = ", ".join(dict.fromkeys(p.method for p in methods))
                what = f"a {role.replace('_', ' ')} is given (--{role.replace('_', '-')}, `{role}:`), but no method"
                if warn or (flags is not None and role not in flags):
                    logging.getLogger("tqstar").warning(f"{what} of this run uses it ({names}); it is loaded all the"
                                                        " same, as the configuration says")
                    continue
                raise ConfigError(f"{what} of this run uses it ({names}); drop it, or choose a method that does",
                                  param=role)

    def build(self, check: bool = True):
        """Load the models and rewards; returns an :class:`~tqstar.engine.Engine` (checked against ``decode``)."""
        from .engine import Engine

        shared: Shared = {}  # local weights, shared between roles

        sft_spec, baseline_spec, reward_spec = self.sft, self.baseline, self.reward
        if sft_spec is None:
            from .builtin.tiny import build_tiny_models, default_tiny_dir

            paths = build_tiny_models(default_tiny_dir())
            sft_spec = ModelSpec(str(paths["sft"]), chat_template=False)
            baseline_spec = baseline_spec or ModelSpec(str(paths["baseline"]), chat_template=False)
            reward_spec = reward_spec or RewardSpec("sentiment")
        sft = load(sft_spec, f"sft ({sft_spec.path})", shared=shared)
        baseline = load(baseline_spec, f"baseline ({baseline_spec.path})", shared=shared) if baseline_spec else None
        reward = reward_spec.load() if reward_spec else None
        baseline_reward = self.baseline_reward.load() if self.baseline_reward else None
        engine = Engine(sft, baseline, reward, baseline_reward)
        if check:
            engine.check(self.decode)
        return engine


def _decode(values: dict[str, Any], defaults: bool, given: Sequence[str] | None) -> DecodeParams:
    if defaults or given is not None:
        own = {k: v for k, v in values.items() if not defaults and k in given}  # type: ignore[operator]
        return DecodeParams.from_dict(own, base=values)
    return DecodeParams.from_dict(values)


def _prompt_list(value: Any) -> list[Prompt]:
    """The ``prompts`` of a run config: a list of prompts (non-empty strings or chat-message lists)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"`prompts` must be a list of strings, got {describe(value)}; write prompts: [\"...\"]",
                          param="prompts", value=value)
    return [check_prompt(prompt, f"`prompts[{i}]`") for i, prompt in enumerate(value)]


# ---- command-line flags over a YAML file -------------------------------------------------------------------------
#: The decoding parameters ``tqstar generate`` has a flag for (their metadata says how: :mod:`tqstar.params`).
DECODE_FLAGS = tuple(name for name, info in FIELDS.items() if info.flag is not None)


def merge_flags(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Flags override the YAML file."""
    data = merge_model_flags(data, args)
    decode = data.get("decode") or {}
    if not isinstance(decode, dict):
        return data  # refused with its value by RunConfig
    decode = dict(decode)
    for name in DECODE_FLAGS:
        value, how = getattr(args, name), FIELDS[name].flag
        if how == "value" and value is not None:
            decode[name] = value
        elif value:  # a repeated flag's values, or a switch that is on
            decode[name] = tuple(value) if how == "append" else True
    data["decode"] = decode
    if args.prompt:
        data["prompts"] = list(args.prompt)
    if args.column:
        data["prompts_column"] = args.column
    if args.prompts_file:
        data["prompts_file"] = args.prompts_file
        if not args.prompt:
            data.pop("prompts", None)
    if args.batch_size is not None:
        data["batch_size"] = args.batch_size
    if args.concurrency is not None:
        data["concurrency"] = args.concurrency
    if args.truncate_prompt:
        data["truncate_prompt"] = True
    return data


def decode_given(args: argparse.Namespace) -> list[str] | None:
    """The decoding keys that must have an effect on the method (:meth:`DecodeParams.check_given`) when flags are
    merged over a YAML file: every key (``None``), unless ``--method`` chose the method, when the file's keys are
    defaults that were written for another method and only the flags must count."""
    if getattr(args, "method", None) is None:
        return None
    return [name for name in DECODE_FLAGS if getattr(args, name) not in (None, False, [])]


def flag_roles(args: argparse.Namespace) -> set[str]:
    """The models and rewards given by flags (``--baseline``, ``--baseline-reward``), not by the YAML file."""
    return {role for role in ("baseline", "baseline_reward") if getattr(args, role, None) is not None}


def merge_model_flags(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Model and reward flags override the YAML file's models and rewards."""
    data = dict(data)
    for role in ("sft", "baseline"):
        path = getattr(args, role)
        system = getattr(args, f"{role}_system_prompt")
        adapter = getattr(args, f"{role}_adapter")
        tokenizer = getattr(args, f"{role}_tokenizer")
        if (path is None and system is None and adapter is None and tokenizer is None and args.dtype is None
                and args.device is None and not args.no_chat_template and not args.parse_special_tokens
                and not args.allow_download):
            continue
        spec = data.get(role)
        if spec is not None and not isinstance(spec, (str, dict)):
            continue  # refused with its value by RunConfig
        spec = {"path": spec} if isinstance(spec, str) else dict(spec or {})
        if path is not None:
            spec["path"] = path
        if not spec.get("path"):
            given = [flag for flag, value in ((f"--{role}-system-prompt", system), (f"--{role}-adapter", adapter),
                                              (f"--{role}-tokenizer", tokenizer)) if value is not None]
            if given:
                raise ConfigError(f"{given[0]} applies to the {role} model, which is not given; give it with --{role}"
                                  f" PATH (or `{role}:` in the YAML config), or drop {given[0]}")
            continue
        for key, value in (("system_prompt", system), ("adapter", adapter), ("tokenizer", tokenizer),
                           ("dtype", args.dtype), ("device", args.device)):
            if value is not None:
                spec[key] = value
        if args.no_chat_template:
            spec["chat_template"] = False
        for key in ("parse_special_tokens", "allow_download"):
            if getattr(args, key):
                spec[key] = True
        data[role] = spec
    if not data.get("sft"):
        generic = [flag for flag, value in (("--dtype", args.dtype), ("--device", args.device),
                                            ("--parse-special-tokens", args.parse_special_tokens),
                                            ("--allow-download", args.allow_download)) if value]
        if generic:
            raise ConfigError(f"{generic[0]} applies to the models given with --sft and --baseline; without --sft the"
                              f" built-in tiny models run as they are, so give --sft PATH or drop {generic[0]}")
    for role in ("reward", "baseline_reward"):
        spec = getattr(args, role)
        if spec is not None:
            data[role] = spec
    reward = data.get("reward")
    options = [flag for flag, value in (("--reward-format", args.reward_format), ("--reward-truncate",
               args.reward_truncate), ("--reward-sigmoid", args.reward_sigmoid)) if value]
    if options and reward is None:
        raise ConfigError(f"{options[0]} applies to a reward model; give the model with --reward DIR")
    if isinstance(reward, (str, dict)) and options:
        reward = {"spec": reward} if isinstance(reward, str) else dict(reward)
        reward.update({k: v for k, v in (("format", unescape(args.reward_format)),
                                         ("truncate", args.reward_truncate or None),
                                         ("sigmoid", args.reward_sigmoid or None)) if v is not None})
        data["reward"] = reward
    return data


def unescape(text: str | None) -> str | None:
    r"""``\n``, ``\t`` and ``\\`` in a flag's value as a newline, a tab and a backslash (shells pass them
    literally); any other backslash stays as it is."""
    if text is None:
        return None
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], text)
