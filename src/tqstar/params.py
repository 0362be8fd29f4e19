"""Frozen, validated decoding parameters.

Every field is checked in ``__post_init__`` and never rewritten; an invalid value raises
:class:`~tqstar.errors.ConfigError` reading "`<param>` must be <constraint>, got <value>" before any model
is loaded. Checks that need the loaded models (``k`` against the vocabulary, the method against the models
and rewards that were given) run in :meth:`tqstar.engine.Engine.check`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import ConfigError

#: Token-level methods: score(z) = log π_sft(z|s) + α·Q̂(s, z) over the top-k of π_sft.
TOKEN_METHODS = ("tq-direct", "tq-indirect", "tq-soft", "cd", "soft-cd", "args", "eft", "none")
#: Soft-value methods: Q̂ = β·log mean_i exp(r_i/β + log ρ_sft(y_i)/ρ(y_i)) over N rollouts sampled at temperature 1.
SOFT_METHODS = ("tq-soft", "soft-cd")
#: Trajectory-level methods: plain decoding of one model, or best-of-N.
TRAJECTORY_METHODS = ("sft", "baseline", "bon")
METHODS = TOKEN_METHODS + TRAJECTORY_METHODS


def _fail(name: str, constraint: str, value: object) -> None:
    raise ConfigError(f"`{name}` must be {constraint}, got {value!r}")


@dataclass(frozen=True)
class DecodeParams:
    """Parameters of one decoding method.

    Attributes:
        method: one of ``tq-direct`` (baseline rollouts scored by the target reward), ``tq-indirect``
            (the same, importance-weighted by ``exp((r - r_BL)/β)``), ``tq-soft`` (the soft value
            β·log mean_i exp(r_i/β + log ρ_sft(y_i)/ρ_BL(y_i)) of N baseline rollouts), ``cd`` (rollouts of the SFT
            model), ``soft-cd`` (the soft value of N SFT rollouts), ``args`` (reward of the partial text), ``eft``
            (emulated fine-tuning: Q̂ = β·log(π_BL(z|s)/π_sft(z|s)), no rollout, no reward), ``none`` (Q̂ = 0: top-k
            SFT decoding), ``sft`` / ``baseline`` (plain decoding of that model over its full vocabulary), ``bon``
            (best of ``bon_n`` samples).
        k: number of SFT top-k candidates scored per step (token-level methods).
        alpha: weight of Q̂ in the score ``log π_sft + α·Q̂``; 0 decodes the SFT model.
        n_rollouts: rollouts per candidate (N); with N = 1 ``tq-indirect`` reduces to ``tq-direct``.
        rollout_len: rollout length L in tokens; a rollout that reaches L without EOS is scored as the
            partial text it is.
        rollout_temperature: 0 for greedy rollouts, > 0 to sample them; ``tq-soft`` and ``soft-cd`` need 1 (their
            estimator averages over samples of the rolling model itself, untruncated).
        rollout_seed: seed of the rollouts' sampling (defaults to ``seed``); each rollout has its own stream keyed
            by (rollout_seed, prompt, step, candidate token, rollout index) — see :mod:`tqstar.randomness`.
        beta: KL strength β of the baseline's alignment (``tq-indirect``; ``eft``, whose mixing weight is λ = α·β).
        soft_beta: temperature β of the soft value (``tq-soft``, ``soft-cd``); ``None`` (default) uses 1/α, which
            makes the decoding policy the token factorisation of the optimum ρ_sft·exp(α·r) when Q̂ is exact.
        temperature: 0 picks the best-scoring candidate; > 0 samples from softmax(score / temperature).
        max_new_tokens: response budget.
        stop: stop strings; the response is cut before the first one found.
        seed: seed of every random draw (candidate sampling, rollouts, plain sampling, best-of-N samples). Each
            draw has its own stream keyed by (seed, prompt, use, step, candidate, index), so a prompt's output
            does not depend on the other prompts in its batch, the batch size, a resume or pruning.
        bon_n: samples drawn by ``bon``.
        bon_policy: the model ``bon`` samples from (``sft`` or ``baseline``).
        trace: record, per step, the candidates, their log π_sft, Q̂, score and the choice.
        prune: for greedy decoding with a reward that declares its range, skip candidates that cannot win
            (log π_sft(z) + α·R_max ≤ the best score already computed). Exact: the same tokens, fewer rollouts.
        prune_probe: when pruning finds no cheaply known value to compare against (no reused rollout), value
            the top ``prune_probe`` candidates first and the rest only if they can still win. This trades one
            extra sequential rollout batch for the chance to skip the rest; 0 (default) never probes.
        reuse_rollouts: with greedy single rollouts, reuse the chosen candidate's rollout as the next step's
            rollout of its first token (only its last token is generated). Exact.
    """

    method: str = "tq-direct"
    k: int = 10
    alpha: float = 1.0
    n_rollouts: int = 1
    rollout_len: int = 20
    rollout_temperature: float = 0.0
    rollout_seed: int | None = None
    beta: float = 1.0
    soft_beta: float | None = None
    temperature: float = 0.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 0
    bon_n: int = 4
    bon_policy: str = "sft"
    trace: bool = False
    prune: bool = True
    prune_probe: int = 0
    reuse_rollouts: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail("method", "one of " + ", ".join(METHODS), self.method)
        for name in ("k", "n_rollouts", "rollout_len", "max_new_tokens", "bon_n"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                _fail(name, "an integer >= 1", value)
        if isinstance(self.prune_probe, bool) or not isinstance(self.prune_probe, int) or self.prune_probe < 0:
            _fail("prune_probe", "an integer >= 0", self.prune_probe)
        for name in ("alpha", "rollout_temperature", "temperature"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                _fail(name, "a finite number >= 0", value)
        if not _is_real(self.beta) or not math.isfinite(self.beta) or self.beta <= 0:
            _fail("beta", "a finite number > 0", self.beta)
        if self.soft_beta is not None and (not _is_real(self.soft_beta) or not math.isfinite(self.soft_beta)
                                           or self.soft_beta <= 0):
            _fail("soft_beta", "a finite number > 0 or None (= 1/alpha)", self.soft_beta)
        if self.method in SOFT_METHODS and self.rollout_temperature != 1:
            raise ConfigError(f"`rollout_temperature` must be 1 for {self.method} (its estimator averages over samples"
                              f" of the rolling model itself), got {self.rollout_temperature!r}; set"
                              " rollout_temperature: 1")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            _fail("stop", "a tuple of non-empty strings", self.stop)
        if self.bon_policy not in ("sft", "baseline"):
            _fail("bon_policy", "'sft' or 'baseline'", self.bon_policy)
        if self.n_rollouts > 1 and self.rollout_temperature == 0 and self.rolls_out:
            raise ConfigError(
                f"`n_rollouts` = {self.n_rollouts} with greedy rollouts gives {self.n_rollouts} identical rollouts;"
                " set `rollout_temperature` > 0 or use n_rollouts = 1"
            )
        if self.method == "bon" and self.temperature == 0:
            raise ConfigError(
                "`temperature` must be > 0 for bon (greedy samples are all identical), got 0; try temperature=1.0"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            _fail("seed", "an integer", self.seed)
        if self.rollout_seed is not None and (isinstance(self.rollout_seed, bool) or not isinstance(self.rollout_seed, int)):
            _fail("rollout_seed", "an integer or None", self.rollout_seed)
        for name in ("trace", "prune", "reuse_rollouts"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "True or False", getattr(self, name))

    #: The fields rows must share to be stepped together (seed, rollout_seed, max_new_tokens, stop and trace are
    #: per row: :meth:`tqstar.engine.Engine.new_state`).
    GROUP_FIELDS = ("method", "k", "alpha", "n_rollouts", "rollout_len", "rollout_temperature", "beta", "soft_beta",
                    "temperature", "bon_n", "bon_policy", "prune", "prune_probe", "reuse_rollouts")

    def group_key(self) -> tuple:
        """What rows stepped together by one :class:`~tqstar.decoder.Decoder` must agree on."""
        return tuple(getattr(self, name) for name in self.GROUP_FIELDS)

    @property
    def is_token_level(self) -> bool:
        return self.method in TOKEN_METHODS

    @property
    def uses_baseline(self) -> bool:
        """Whether the method runs the baseline model."""
        return self.method in ("tq-direct", "tq-indirect", "tq-soft", "eft", "baseline") or (
            self.method == "bon" and self.bon_policy == "baseline")

    @property
    def needs_reward(self) -> bool:
        """Whether the method itself calls the target reward (every method is *scored* by it when given)."""
        return self.method in ("tq-direct", "tq-indirect", "tq-soft", "cd", "soft-cd", "args", "bon")

    @property
    def rolls_out(self) -> bool:
        """Whether each step rolls candidates out (each rollout stays within the response budget, so the context
        a row needs is its prompt plus ``max_new_tokens`` either way)."""
        return self.method in ("tq-direct", "tq-indirect", "tq-soft", "cd", "soft-cd")

    @property
    def scores_likelihoods(self) -> bool:
        """Whether the method asks models for log-likelihoods of given tokens (``score_continuations``)."""
        return self.method in ("tq-soft", "eft")

    @property
    def value_in_reward_range(self) -> bool:
        """Whether Q̂ always lies in the reward's range [R_min, R_max] (a mean, or a soft mean, of rewards). Reward-
        bound pruning and the softmax KL bound rely on it; a likelihood ratio (``tq-soft``, ``eft``) breaks it."""
        return self.method not in ("tq-soft", "eft")

    @property
    def soft_temperature(self) -> float:
        """β of the soft value: ``soft_beta``, else 1/α (α > 0 whenever a value is estimated)."""
        return self.soft_beta if self.soft_beta is not None else 1.0 / self.alpha

    def replace(self, **changes: object) -> DecodeParams:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> DecodeParams:
        """Build from a mapping (a YAML section), rejecting unknown keys by name."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(
                f"unknown decoding parameter `{unknown[0]}`; valid ones are " + ", ".join(sorted(names))
            )
        values = dict(values)
        if isinstance(values.get("stop"), (str, list)):  # one string or a list; other shapes fail the check
            stop = values["stop"]
            values["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(**{k: v for k, v in values.items() if v is not None})


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
