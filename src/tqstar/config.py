"""Configuration of a run: models, rewards, decoding parameters and prompts, from a YAML file and/or flags.

Everything is validated here, before any model loads: the decoding parameters, that reward specs resolve
and that model paths exist. ``RunConfig.build()`` then loads the models and returns an
:class:`~tqstar.engine.Engine`.

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

import dataclasses
import re
import string
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._files import check_output, read_text
from ._http import JsonClient
from .builtin.models import BUILTIN_MODELS, check_builtin, resolve_adapter, resolve_model
from .errors import ConfigError, describe
from .lm.base import LanguageModel, Prompt
from .lm.hf import DTYPES, TransformersLM, _check_model_path, check_adapter_dir, check_device
from .lm.remote import RemoteLM, is_remote_spec, parse_spec
from .params import DecodeParams
from .prompts import check_prompt, read_prompt_file
from .reward import RewardSpec


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM: a local path (or hub id, or ``smollm2``) with an optional LoRA adapter merged at load time,
    dtype and device; or a model on a server, ``openai:<base_url>#<served_name>`` (see :mod:`tqstar.lm.remote`),
    with an optional local ``tokenizer`` directory and the connection settings. Prompt formatting for both.
    ``allow_download``: fetch a hub id that is not in the local hub cache (otherwise nothing is downloaded).
    ``parse_special_tokens``: let prompt text write control tokens (``<|im_end|>``, ``</s>``); off, they are text."""

    path: str
    adapter: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    chat_template: bool | str = True
    system_prompt: str | None = None
    tokenizer: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 4
    max_in_flight: int = 8
    allow_download: bool = False
    parse_special_tokens: bool = False

    @property
    def remote(self) -> bool:
        return is_remote_spec(self.path)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"`dtype` must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.remote:
            url, _ = parse_spec(self.path)
            JsonClient(url, timeout=self.timeout, retries=self.retries,
                       max_in_flight=self.max_in_flight)  # checks the settings; connects later
            if self.adapter is not None:
                raise ConfigError(f"adapter {self.adapter!r} cannot be merged into the remote model {self.path}; serve"
                                  " it with the server (vLLM: --enable-lora --lora-modules NAME=DIR) and name it after '#'")
            if self.tokenizer is not None and self.tokenizer not in BUILTIN_MODELS:
                _check_model_path(self.tokenizer)
            return
        if self.tokenizer is not None:
            raise ConfigError(f"`tokenizer` is for remote models (openai:...); {self.path!r} loads its own")
        if self.path in BUILTIN_MODELS:
            check_builtin(self.path)  # installed? (converted on first load)
        else:
            _check_model_path(self.path, self.allow_download)
        check_device(self.device)
        if self.adapter is not None:
            check_adapter_dir(resolve_adapter(self.adapter), repr(self.adapter))

    @classmethod
    def parse(cls, value: Any, what: str) -> ModelSpec | None:
        if value is None:
            return None
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            values = _known(value, cls, what)
            if "path" not in values:
                raise ConfigError(f"`{what}` has no `path`; give the model as {{path: DIR}} or as a plain path")
            return cls(**values)
        raise ConfigError(f"`{what}` must be a path or a mapping with a `path` key, got {describe(value)}")


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
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be an integer >= 1, got {self.batch_size!r}")
        from .engine import check_concurrency

        check_concurrency(self.concurrency, [role for role, spec in (("sft", self.sft), ("baseline", self.baseline))
                                             if spec is None or not spec.remote])

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, what: str = "config", extra_keys: Sequence[str] = ()) -> RunConfig:
        """Build and validate from a mapping (a YAML file merged with flags); ``extra_keys`` are the other keys
        the caller's file may hold (named when a key is unknown)."""
        data = dict(data)
        prompts = _prompt_list(data.pop("prompts", None))
        prompts_file = _typed(data.pop("prompts_file", None), str, "prompts_file", "a file path")
        column = _typed(data.pop("prompts_column", None), str, "prompts_column", "a column name")
        if prompts_file:
            prompts.extend(read_prompt_file(prompts_file, column))
        known = _known(data, cls, what, extra_keys)
        return cls(
            sft=ModelSpec.parse(known.get("sft"), "sft"),
            baseline=ModelSpec.parse(known.get("baseline"), "baseline"),
            reward=_reward_spec(known.get("reward"), "reward"),
            baseline_reward=_reward_spec(known.get("baseline_reward"), "baseline_reward"),
            decode=DecodeParams.from_dict(_typed(known.get("decode"), dict, "decode",
                                                 "a mapping like {method: tq-direct, k: 10}") or {}),
            prompts=tuple(prompts),
            batch_size=known.get("batch_size", 8),
            truncate_prompt=_typed(known.get("truncate_prompt", False), bool, "truncate_prompt", "true or false"),
            concurrency=known.get("concurrency", 1),
        )

    def build(self, check: bool = True):
        """Load the models and rewards; returns an :class:`~tqstar.engine.Engine` (checked against ``decode``)."""
        from .engine import Engine

        loaded: dict[tuple, TransformersLM] = {}  # local weights, shared between roles

        def load(spec: ModelSpec | None, name: str) -> LanguageModel | None:
            if spec is None:
                return None
            if spec.remote:
                url, served = parse_spec(spec.path)
                tokenizer = resolve_model(spec.tokenizer) if spec.tokenizer else None
                return RemoteLM(url, served, tokenizer=tokenizer, chat_template=spec.chat_template,
                                system_prompt=spec.system_prompt, api_key_env=spec.api_key_env, timeout=spec.timeout,
                                retries=spec.retries, concurrency=spec.max_in_flight, name=name,
                                parse_special_tokens=spec.parse_special_tokens)
            key = (spec.path, spec.adapter, spec.dtype, spec.device)
            if key in loaded:  # same weights, maybe another prompt format: share them
                return loaded[key].with_prompt_format(chat_template=spec.chat_template,
                                                      system_prompt=spec.system_prompt, name=name,
                                                      parse_special_tokens=spec.parse_special_tokens)
            lm = TransformersLM.from_pretrained(
                resolve_model(spec.path), adapter=resolve_adapter(spec.adapter), dtype=spec.dtype, device=spec.device,
                chat_template=spec.chat_template, system_prompt=spec.system_prompt, name=name,
                allow_download=spec.allow_download, parse_special_tokens=spec.parse_special_tokens)
            loaded[key] = lm
            return lm

        sft_spec, baseline_spec, reward_spec = self.sft, self.baseline, self.reward
        if sft_spec is None:
            from .builtin.tiny import build_tiny_models, default_tiny_dir

            paths = build_tiny_models(default_tiny_dir())
            sft_spec = ModelSpec(str(paths["sft"]), chat_template=False)
            baseline_spec = baseline_spec or ModelSpec(str(paths["baseline"]), chat_template=False)
            reward_spec = reward_spec or RewardSpec("sentiment")
        sft = load(sft_spec, f"sft ({sft_spec.path})")
        baseline = load(baseline_spec, f"baseline ({baseline_spec.path})") if baseline_spec else None
        reward = reward_spec.load() if reward_spec else None
        baseline_reward = self.baseline_reward.load() if self.baseline_reward else None
        engine = Engine(sft, baseline, reward, baseline_reward)
        if check:
            engine.check(self.decode)
        return engine


EVAL_KEYS = ("defaults", "judges", "methods", "output", "prompts")


def _prompt_source(value: Any) -> tuple[str, str | None, int | None]:
    """``(source, column, limit)`` of an eval config's ``prompts`` (a source string or a mapping)."""
    fix = "a built-in set (rtp, dna, mtbench), a file or hf:NAME"
    if isinstance(value, str):
        value = {"source": value}
    if not isinstance(value, dict) or not value.get("source"):
        raise ConfigError(f"`prompts` must name a source: {fix}, e.g. prompts: {{source: rtp, limit: 32}}")
    unknown = sorted(set(map(str, value)) - {"source", "limit", "column"})
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}` in prompts; valid keys are column, limit, source")
    source = _typed(value["source"], str, "prompts.source", fix)
    column = _typed(value.get("column"), str, "prompts.column", "a column name")
    limit = _typed(value.get("limit"), int, "prompts.limit", "an integer >= 1")
    if limit is not None and limit < 1:
        raise ConfigError(f"`prompts.limit` must be an integer >= 1, got {limit}")
    return source, column, limit


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


def _reward_spec(value: Any, what: str) -> RewardSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        return RewardSpec(value)
    if isinstance(value, dict):
        values = _known(value, RewardSpec, what)
        if "spec" not in values:
            raise ConfigError(f"`{what}` has no `spec`; give the reward as {{spec: SPEC, ...}} or as a plain spec")
        if values.get("range") is not None:
            values["range"] = tuple(values["range"])
        if values.get("format") is not None:
            check_format(values["format"], f"{what}.format")
        return RewardSpec(**values)
    raise ConfigError(f"`{what}` must be a spec string or a mapping with a `spec` key, got {describe(value)}")


def _judge_spec(value: Any, what: str) -> RewardSpec:
    if value is None:
        raise ConfigError(f"`{what}` has no reward spec; give one, e.g. {what.split('.')[-1]}: harmless")
    spec = _reward_spec(value, what)
    assert spec is not None
    return spec


def check_format(fmt: str, what: str) -> None:
    """Raise :class:`ConfigError` unless ``fmt`` is a format string over ``{prompt}`` and ``{response}`` only
    (checked here, before any model loads, not when the first text is scored)."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(fmt) if name is not None]
    except ValueError as exc:
        raise ConfigError(f"`{what}` {fmt!r} is not a valid format string ({exc}); write a literal brace as"
                          " {{ or }}") from None
    unknown = next((name for name in fields if re.split(r"[.\[]", name)[0] not in ("prompt", "response")), None)
    if unknown is not None:
        raise ConfigError(f"`{what}` {fmt!r} uses the field {{{unknown}}}; the fields are {{prompt}} and"
                          " {response} (write a literal brace as {{ or }})")
    if "response" not in fields:
        raise ConfigError(f"`{what}` must contain {{response}}, got {fmt!r}")
    try:
        fmt.format(prompt="p", response="r")
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise ConfigError(f"`{what}` {fmt!r} cannot be filled in ({type(exc).__name__}: {exc}); use plain"
                          " {prompt} and {response} fields") from None


def _known(values: dict[str, Any], cls: type, what: str, extra_keys: Sequence[str] = ()) -> dict[str, Any]:
    """``values`` without nulls, after checking every key is a field of ``cls`` and every value has the field's
    type (for dataclasses whose fields are plain types: strings, numbers, booleans, tuples)."""
    names = {f.name for f in dataclasses.fields(cls)}
    if cls is RunConfig:
        names |= {"prompts_file", "prompts_column"}
    unknown = sorted(set(map(str, values)) - names - set(extra_keys))
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}` in {what}; valid keys are"
                          f" {', '.join(sorted(names | set(extra_keys)))}")
    hints = typing.get_type_hints(cls) if cls is not RunConfig else {}
    for key, value in values.items():
        if key in hints and value is not None and not _accepts(hints[key], value):
            raise ConfigError(f"`{_dotted(what, key)}` must be {_phrase(hints[key])}, got {describe(value)}")
    return {k: v for k, v in values.items() if v is not None}


def _dotted(what: str, key: str) -> str:
    return key if what == "config" else f"{what}.{key}"


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` (from YAML) fits the type ``hint``; an int is a fine float, a bool is not a number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
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
            return all(_accepts(args[0], v) for v in value)
        return len(value) == len(args) and all(_accepts(a, v) for a, v in zip(args, value))
    return isinstance(value, hint)


def _phrase(hint: Any) -> str:
    """How a message names the type ``hint``: "a string", "an integer", "true or false", "a list of 2 numbers"."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_phrase(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return "a list of " + _phrase(args[0]).removeprefix("a ").removeprefix("an ") + "s"
        return f"a list of {len(args)} " + _phrase(args[0]).removeprefix("a ").removeprefix("an ") + "s"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, hint.__name__)


def _typed(value: Any, kind: type, what: str, phrase: str) -> Any:
    """``value`` itself when it is ``None`` or a ``kind`` (bool is not an int); else a :class:`ConfigError`."""
    if value is None or _accepts(kind, value):
        return value
    raise ConfigError(f"`{what}` must be {phrase}, got {describe(value)}")


def _prompt_list(value: Any) -> list[Prompt]:
    """The ``prompts`` of a run config: a list of prompts (non-empty strings or chat-message lists)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"`prompts` must be a list of strings, got {describe(value)}; write prompts: [\"...\"]")
    return [check_prompt(prompt, f"`prompts[{i}]`") for i, prompt in enumerate(value)]


@dataclass(frozen=True)
class EvalConfig:
    """A ``tqstar eval`` run: the models and rewards of :class:`RunConfig`, judges, methods and a prompt set.

    YAML layout (besides ``sft``, ``baseline``, ``reward``, ``baseline_reward``, ``batch_size``)::

        judges: {harmless: harmless}          # name → reward spec, scored on every response (win rates)
        methods: [{method: sft}, {method: tq-direct, alpha: [0.5, 1, 2]}]
        defaults: {max_new_tokens: 48, k: 10}  # decoding parameters every method starts from
        prompts: {source: rtp:test, limit: 32, column: prompt}
        output: results/run.jsonl
    """

    run: RunConfig
    methods: tuple = ()
    judges: tuple[tuple[str, RewardSpec], ...] = ()
    prompt_source: str = ""
    prompt_column: str | None = None
    prompt_limit: int | None = None
    output: str = "eval.jsonl"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalConfig:
        from .eval.run import expand_methods

        data = dict(data)
        for key, where in (("decode", "under `defaults` (every method) or in each method"),
                           ("prompts_file", "as `prompts: {source: FILE}`"),
                           ("prompts_column", "as `prompts: {source: FILE, column: NAME}`")):
            if key in data:
                raise ConfigError(f"`{key}` is not an eval config key; give it {where}")
        methods = data.pop("methods", None)
        if methods is not None and not isinstance(methods, list):
            raise ConfigError(f"`methods` must be a list of mappings, got {describe(methods)}; write"
                              " methods: [{method: tq-direct}]")
        defaults = _typed(data.pop("defaults", None), dict, "defaults", "a mapping of decoding parameters") or {}
        judges = _typed(data.pop("judges", None), dict, "judges", "a mapping of names to reward specs") or {}
        output = _typed(data.pop("output", None), str, "output", "a file path") or "eval.jsonl"
        check_output(output, "output file")
        source, column, limit = _prompt_source(data.pop("prompts", None))
        return cls(
            run=RunConfig.from_dict(data, extra_keys=EVAL_KEYS),
            methods=tuple(expand_methods(methods or [], defaults)),
            judges=tuple((str(name), _judge_spec(spec, f"judges.{name}")) for name, spec in judges.items()),
            prompt_source=source,
            prompt_column=column,
            prompt_limit=limit,
            output=output,
        )

    def fingerprint(self) -> dict[str, Any]:
        run = self.run
        return {
            "sft": dataclasses.asdict(run.sft) if run.sft else "built-in tiny",
            "baseline": dataclasses.asdict(run.baseline) if run.baseline else None,
            "reward": dataclasses.asdict(run.reward) if run.reward else None,
            "baseline_reward": dataclasses.asdict(run.baseline_reward) if run.baseline_reward else None,
            "judges": {name: dataclasses.asdict(spec) for name, spec in self.judges},
            "prompt_source": self.prompt_source,
        }

    def build(self, progress: bool = True):
        """Load everything and return a ready :class:`~tqstar.eval.run.Evaluation`."""
        from .eval.run import OUTPUT_FIX, Evaluation, check_resumable, fingerprint_of, scan
        from .prompts import load_prompts

        prompts = load_prompts(self.prompt_source, column=self.prompt_column, limit=self.prompt_limit)
        # a file that is not ours, or holds another configuration's results, is refused before any model loads
        check_resumable(scan(self.output, OUTPUT_FIX), fingerprint_of(self.fingerprint(), prompts, self.methods),
                        self.output)
        engine = self.run.build(check=False)
        judges = {name: spec.load() for name, spec in self.judges}
        return Evaluation(engine, prompts, self.methods, self.output, fingerprint=self.fingerprint(), judges=judges,
                          batch_size=self.run.batch_size, concurrency=self.run.concurrency,
                          truncate_prompt=self.run.truncate_prompt, progress=progress)
