"""Configuration of a run: models, rewards, decoding parameters and prompts, from a YAML file and/or flags.

Everything is validated here, before any model loads: the decoding parameters, that reward specs resolve
and that model paths exist. ``RunConfig.build()`` then loads the models and returns an
:class:`~tqstar.engine.Engine`.

YAML layout (every key optional; command-line flags override the file)::

    sft: path/to/sft                 # or {path, adapter, dtype, device, chat_template, system_prompt}
    baseline: openai:http://gpu1:8000#dpo   # a served model: {path, tokenizer, api_key_env, timeout, retries,
                                            #   max_in_flight, chat_template, system_prompt}
    reward: sentiment                # or {spec, format, truncate, sigmoid, label, range}
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .http import JsonClient
from .lm.base import LanguageModel
from .lm.hf import DTYPES, TransformersLM, _check_model_path, check_adapter_dir
from .lm.remote import RemoteLM, is_remote_spec, parse_spec
from .models import BUILTIN_MODELS, check_builtin, resolve_adapter, resolve_model
from .params import DecodeParams
from .prompts import read_prompt_file
from .reward import RewardSpec


@dataclass(frozen=True)
class ModelSpec:
    """A causal LM: a local path (or hub id, or ``smollm2``) with an optional LoRA adapter merged at load time,
    dtype and device; or a model on a server, ``openai:<base_url>#<served_name>`` (see :mod:`tqstar.lm.remote`),
    with an optional local ``tokenizer`` directory and the connection settings. Prompt formatting for both."""

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
            _check_model_path(self.path)
        if self.adapter is not None:
            check_adapter_dir(resolve_adapter(self.adapter), repr(self.adapter))

    @classmethod
    def parse(cls, value: Any, what: str) -> ModelSpec | None:
        if value is None:
            return None
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict):
            return cls(**_known(value, cls, what))
        raise ConfigError(f"`{what}` must be a path or a mapping with a `path` key, got {value!r}")


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
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate from a mapping (a YAML file merged with flags)."""
        data = dict(data)
        prompts = list(data.pop("prompts", None) or [])
        prompts_file = data.pop("prompts_file", None)
        if prompts_file:
            prompts.extend(read_prompt_file(prompts_file))
        known = _known(data, cls, "config")
        return cls(
            sft=ModelSpec.parse(known.get("sft"), "sft"),
            baseline=ModelSpec.parse(known.get("baseline"), "baseline"),
            reward=_reward_spec(known.get("reward"), "reward"),
            baseline_reward=_reward_spec(known.get("baseline_reward"), "baseline_reward"),
            decode=DecodeParams.from_dict(known.get("decode") or {}),
            prompts=tuple(prompts),
            batch_size=known.get("batch_size", 8),
            truncate_prompt=bool(known.get("truncate_prompt", False)),
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
                                retries=spec.retries, concurrency=spec.max_in_flight, name=name)
            key = (spec.path, spec.adapter, spec.dtype, spec.device)
            if key in loaded:  # same weights, maybe another prompt format: share them
                return loaded[key].with_prompt_format(chat_template=spec.chat_template,
                                                      system_prompt=spec.system_prompt, name=name)
            lm = TransformersLM.from_pretrained(
                resolve_model(spec.path), adapter=resolve_adapter(spec.adapter), dtype=spec.dtype, device=spec.device,
                chat_template=spec.chat_template, system_prompt=spec.system_prompt, name=name)
            loaded[key] = lm
            return lm

        sft_spec, baseline_spec, reward_spec = self.sft, self.baseline, self.reward
        if sft_spec is None:
            from .tiny import build_tiny_models, default_tiny_dir

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


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; give the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML ({exc}); fix its syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def _reward_spec(value: Any, what: str) -> RewardSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        return RewardSpec(value)
    if isinstance(value, dict):
        values = _known(value, RewardSpec, what)
        if values.get("range") is not None:
            values["range"] = tuple(values["range"])
        return RewardSpec(**values)
    raise ConfigError(f"`{what}` must be a spec string or a mapping with a `spec` key, got {value!r}")


def _known(values: dict[str, Any], cls: type, what: str) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)} | ({"prompts_file"} if cls is RunConfig else set())
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown key `{unknown[0]}` in {what}; valid keys are {', '.join(sorted(names))}")
    return {k: v for k, v in values.items() if v is not None}


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
        from .evaluation import expand_methods

        data = dict(data)
        methods = data.pop("methods", None)
        defaults = data.pop("defaults", None) or {}
        judges = data.pop("judges", None) or {}
        prompts = data.pop("prompts", None) or {}
        output = data.pop("output", None) or "eval.jsonl"
        if isinstance(prompts, str):
            prompts = {"source": prompts}
        if not isinstance(prompts, dict) or not prompts.get("source"):
            raise ConfigError("`prompts` must name a source: a built-in set (rtp, dna, mtbench), a file or hf:NAME")
        unknown = sorted(set(prompts) - {"source", "limit", "column"})
        if unknown:
            raise ConfigError(f"unknown key `{unknown[0]}` in prompts; valid keys are column, limit, source")
        if not isinstance(judges, dict):
            raise ConfigError(f"`judges` must map names to reward specs, got {judges!r}")
        return cls(
            run=RunConfig.from_dict(data),
            methods=tuple(expand_methods(methods or [], defaults)),
            judges=tuple((name, _reward_spec(spec, f"judges.{name}")) for name, spec in judges.items()),
            prompt_source=str(prompts["source"]),
            prompt_column=prompts.get("column"),
            prompt_limit=prompts.get("limit"),
            output=str(output),
        )

    def fingerprint(self) -> dict[str, Any]:
        run = self.run
        return {
            "sft": dataclasses.asdict(run.sft) if run.sft else "built-in tiny",
            "baseline": dataclasses.asdict(run.baseline) if run.baseline else None,
            "reward": dataclasses.asdict(run.reward) if run.reward else None,
            "baseline_reward": dataclasses.asdict(run.baseline_reward) if run.baseline_reward else None,
            "prompt_source": self.prompt_source,
        }

    def build(self, progress: bool = True):
        """Load everything and return a ready :class:`~tqstar.evaluation.Evaluation`."""
        from .evaluation import Evaluation
        from .prompts import load_prompts

        prompts = load_prompts(self.prompt_source, column=self.prompt_column, limit=self.prompt_limit)
        engine = self.run.build(check=False)
        judges = {name: spec.load() for name, spec in self.judges}
        return Evaluation(engine, prompts, self.methods, self.output, fingerprint=self.fingerprint(), judges=judges,
                          batch_size=self.run.batch_size, concurrency=self.run.concurrency, progress=progress)
