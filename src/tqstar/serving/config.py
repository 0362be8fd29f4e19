"""``tqstar serve`` configuration: the models and rewards (as for ``tqstar generate``), presets, limits, address.

YAML layout (every key optional; command-line flags override the file)::

    sft: smollm2                          # models and rewards exactly as in a run config (tqstar.config)
    baseline: {path: smollm2, adapter: builtin:smollm2-sentiment-dpo}
    reward: sentiment
    decode: {k: 10, alpha: 2, max_new_tokens: 64}   # defaults every preset starts from
    name: smollm2                         # prefix of the default preset names (default: the SFT model's name)
    baselines:                            # more baselines by name, for presets that name one
      prompted: {path: smollm2, system_prompt: "You are a cheerful assistant."}
    presets:                              # model id -> decoding parameters (over `decode`)
      smollm2-tq: {method: tq-direct}
      smollm2-tq-prompted: {method: tq-direct, baseline: prompted}
      smollm2-sft: {method: sft}
    limits: {max_batch: 16, max_queue: 64, max_tokens: 512, max_prompt_tokens: 2048}
    host: 127.0.0.1
    port: 8000
    api_keys_env: TQSTAR_API_KEYS         # comma-separated keys in this variable; unset or empty: no auth
    cors_origins: []                      # browser origins allowed to call the API (e.g. a playground's)

Without ``presets`` the server offers ``<name>-tq`` (tq-direct, with a baseline and a reward), ``<name>-cd`` (with a
reward), ``<name>-baseline`` (with a baseline) and ``<name>-sft``, each over the ``decode`` section.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._checks import check_int
from .._schema import known_keys
from ..config import RunConfig
from ..errors import ConfigError, describe
from ..lm.spec import ModelSpec
from ..params import DecodeParams
from .budget import step_rows

PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_RUN_ONLY = ("prompts", "prompts_file", "prompts_column", "batch_size", "concurrency", "truncate_prompt")
SERVE_KEYS = ("presets", "baselines", "limits", "host", "port", "api_keys_env", "name", "cors_origins")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for and how much the server takes on.

    Attributes:
        max_batch: rows decoded at once over all groups (continuous batching joins new requests up to this).
        max_queue: requests waiting for a row; one more is answered 429 with ``Retry-After``.
        max_prompt_tokens: prompt tokens (as the SFT model encodes them).
        max_tokens: ``max_tokens`` a request may ask for.
        max_body_bytes: request body size (413 above).
        request_timeout_s: a request still running after this long ends with a timeout error.
        shutdown_grace_s: on SIGTERM, in-flight requests get this long to finish before they are ended.
        max_k, max_n_rollouts, max_rollout_len, max_bon_n, max_alpha: caps on the ``tqstar`` overrides.
        max_stop: stop strings one request may give (OpenAI's 4).
        max_step_tokens: tokens one step of one request may generate (``k × n_rollouts × rollout_len``;
            ``bon_n × max_tokens`` for best-of-N).
        max_step_rows: sequences one forward pass of a request's step may run (``k × n_rollouts``, ``bon_n``): the
            piece of work the scheduler cannot split, so what another request may have to wait for.
        max_request_kv_mb: KV-cache memory (MiB) one request may keep in the local models
            (:mod:`~tqstar.serving.budget`); a request without ``max_tokens`` is given a budget under it.
    """

    max_batch: int = 16
    max_queue: int = 64
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    max_body_bytes: int = 1_000_000
    request_timeout_s: float = 600.0
    shutdown_grace_s: float = 30.0
    max_k: int = 50
    max_n_rollouts: int = 16
    max_rollout_len: int = 256
    max_bon_n: int = 32
    max_alpha: float = 1000.0
    max_stop: int = 4
    max_step_tokens: int = 4096
    max_step_rows: int = 32
    max_request_kv_mb: float = 1024.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"`limits.{f.name}` must be a number > 0, got {value!r}")
            if f.type == "int" and not isinstance(value, int):
                raise ConfigError(f"`limits.{f.name}` must be an integer >= 1, got {value!r}")

    def check(self, params: DecodeParams) -> tuple[str, str] | None:
        """``(field, message)`` for the first parameter of ``params`` over a cap, else ``None`` (a parameter without
        an effect on the method, as ``k`` on ``sft``, costs nothing)."""
        for name, cap in (("k", self.max_k), ("n_rollouts", self.max_n_rollouts),
                          ("rollout_len", self.max_rollout_len), ("bon_n", self.max_bon_n),
                          ("alpha", self.max_alpha)):
            value = getattr(params, name)
            if value > cap and params.applies(name):
                return name, f"`{name}` must be <= {cap} on this server, got {value!r}; lower it"
        return None


@dataclass(frozen=True)
class ServeConfig:
    """A whole ``tqstar serve`` setup. ``run`` holds the models, rewards and default decoding parameters."""

    run: RunConfig = field(default_factory=RunConfig)
    presets: tuple[tuple[str, DecodeParams], ...] = ()
    limits: Limits = field(default_factory=Limits)
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys_env: str = "TQSTAR_API_KEYS"
    cors_origins: tuple[str, ...] = ()
    baselines: tuple[tuple[str, ModelSpec], ...] = ()
    preset_baselines: tuple[tuple[str, str], ...] = ()  # preset -> the named baseline it decodes with

    def __post_init__(self) -> None:
        check_int(self.port, "port", low=0, high=65535)
        if not self.presets:
            raise ConfigError("no presets configured; add a `presets:` mapping of model id to decoding parameters")
        for name, params in self.presets:
            over = self.limits.check(params)
            if over is not None:
                raise ConfigError(f"preset {name!r}: {over[1]} (raise `limits.max_{over[0]}` or lower the preset's)")
            rows = step_rows(params)
            if rows > self.limits.max_step_rows:
                raise ConfigError(f"preset {name!r} runs {rows} sequences per forward pass (k × n_rollouts, or bon_n),"
                                  f" over `limits.max_step_rows` {self.limits.max_step_rows}; raise the limit or lower"
                                  " the preset's")
            if params.rolls_out and params.k * params.n_rollouts * params.rollout_len > self.limits.max_step_tokens:
                raise ConfigError(f"preset {name!r} rolls out k × n_rollouts × rollout_len = {params.k} × "
                                  f"{params.n_rollouts} × {params.rollout_len} tokens per step, over"
                                  f" `limits.max_step_tokens` {self.limits.max_step_tokens}; raise the limit or lower"
                                  " the preset's")
            if params.trace:
                raise ConfigError(f"preset {name!r} sets `trace`; a request asks for it with"
                                  ' "tqstar": {"trace": true}')

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        """Build and validate from a mapping (a YAML file merged with flags)."""
        data = {k: v for k, v in data.items() if v is not None}
        own = {k: data.pop(k) for k in SERVE_KEYS if k in data}
        for key in _RUN_ONLY:
            if key in data:
                raise ConfigError(f"`{key}` is a `tqstar generate` setting; a server takes prompts from requests,"
                                  " remove it from the serve config", param=key)
        run = RunConfig.from_dict(data, extra_keys=SERVE_KEYS, decode_defaults=True)  # an unknown key's message lists ours too
        defaults = dict(data.get("decode") or {})
        presets = own.get("presets")
        if presets is None:
            presets = default_presets(own.get("name") or model_name(run), run)
        if not isinstance(presets, dict):
            raise ConfigError(f"`presets` must map model ids to decoding parameters, got {presets!r}",
                              param="presets")
        baselines = own.get("baselines") or {}
        if not isinstance(baselines, dict):
            raise ConfigError(f"`baselines` must map names to model specs, got {baselines!r}", param="baselines")
        named = tuple((str(name), ModelSpec.parse(spec, f"baselines.{name}")) for name, spec in baselines.items())
        built, preset_baselines = [], []
        for name, values in presets.items():
            if not isinstance(name, str) or not PRESET_NAME.match(name):
                raise ConfigError(f"preset name {name!r} must be 1-64 letters, digits or ._:- ; rename it")
            if not isinstance(values, dict):
                raise ConfigError(f"preset {name!r} must be a mapping of decoding parameters, got {values!r}")
            values = dict(values)
            baseline = values.pop("baseline", None)
            if baseline is not None:
                if not isinstance(baseline, str):
                    raise ConfigError(f"preset {name!r}: `baseline` must name one of `baselines`"
                                      f" ({', '.join(map(str, baselines)) or 'none defined'}), got {describe(baseline)}",
                                      param="baseline", value=baseline)
                if baseline not in baselines:
                    raise ConfigError(f"preset {name!r} names baseline {baseline!r}, which `baselines` does not define;"
                                      f" add it there (defined: {', '.join(baselines) or 'none'})")
                preset_baselines.append((name, baseline))
            try:
                params = DecodeParams.from_dict(values, base=defaults)
            except ConfigError as exc:
                raise ConfigError(f"preset {name!r}: {exc}", param=exc.param, value=exc.value) from exc
            if baseline is not None and not params.uses_baseline:
                raise ConfigError(f"preset {name!r} names baseline {baseline!r}, but method {params.method!r} runs no"
                                  " baseline; drop `baseline` from the preset", param="baseline", value=baseline)
            built.append((name, params))
        run.check_used([params for _, params in built])
        limits = own.get("limits") or {}
        if not isinstance(limits, dict):
            raise ConfigError(f"`limits` must be a mapping, got {limits!r}", param="limits")
        origins = own.get("cors_origins") or []
        if isinstance(origins, str) or not all(isinstance(o, str) for o in origins):
            raise ConfigError(f"`cors_origins` must be a list of origins like http://localhost:5173, got {origins!r}",
                              param="cors_origins")
        return cls(run=run, presets=tuple(built), limits=Limits(**known_keys(limits, Limits, "limits")),
                   cors_origins=tuple(origins), baselines=named, preset_baselines=tuple(preset_baselines),
                   **{k: own[k] for k in ("host", "port", "api_keys_env") if k in own})

    def preset(self, name: str) -> DecodeParams | None:
        return dict(self.presets).get(name)

    def baseline_of(self, preset: str) -> str | None:
        """The named baseline ``preset`` decodes with (``None``: the top-level ``baseline``)."""
        return dict(self.preset_baselines).get(preset)


def model_name(run: RunConfig) -> str:
    """A short name for the SFT model: ``tiny`` for the built-in models, else the last part of its path."""
    if run.sft is None:
        return "tiny"
    path = run.sft.path.split("#")[-1] if run.sft.remote else Path(run.sft.path.rstrip("/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", path).strip("-") or "model"


def default_presets(name: str, run: RunConfig) -> dict[str, dict[str, Any]]:
    """The presets offered when the config names none: what the models and rewards given can run."""
    has_reward = run.reward is not None or run.sft is None  # the tiny default comes with the sentiment reward
    has_baseline = run.baseline is not None or run.sft is None
    presets: dict[str, dict[str, Any]] = {}
    if has_reward and has_baseline:
        presets[f"{name}-tq"] = {"method": "tq-direct"}
    if has_reward:
        presets[f"{name}-cd"] = {"method": "cd"}
    if has_baseline:
        presets[f"{name}-baseline"] = {"method": "baseline"}
    presets[f"{name}-sft"] = {"method": "sft"}
    return presets
