"""Frozen, validated decoding parameters.

Every field is checked in ``__post_init__`` and never rewritten; an invalid value raises
:class:`~tqstar.errors.ConfigError` reading "`<param>` must be <constraint>, got <value>" before any model
is loaded. Checks that need the loaded models (``k`` against the vocabulary, the method against the models
and rewards that were given) run in :meth:`tqstar.engine.Engine.check`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .methods import METHODS, TABLE, Method, method

#: Whether a field is the same for every row a decoder steps together (``group``: it is in
#: :meth:`DecodeParams.group_key`) or each row's own (``row``: :meth:`tqstar.engine.Engine.new_state` may set it).
Scope = Literal["row", "group"]
#: What a token-level decision does with the vocabulary outside the SFT model's top k (the *tail*, :mod:`tqstar.tail`):
#: ``off`` drops it (top-k truncation); ``mean``, ``rollout`` and ``rolling`` keep it with π_sft's shape, tilted by
#: one shared value — the π_sft-weighted mean of the candidates' values, the value of one token drawn from the tail,
#: or the importance-weighted value of one token drawn from the rolling model's tail.
TAILS = ("off", "mean", "rollout", "rolling")
#: The default ``tail``: measured best on SmolLM2 (docs/methods.md#no-truncation-the-tail).
DEFAULT_TAIL = "mean"
#: Fields that apply to some decisions only, by what the method's row (:mod:`tqstar.methods`) and the other settings
#: given say: a non-default value where the field does not apply is refused (:meth:`DecodeParams._check_tail`), and an
#: eval config's ``defaults`` leave the field out there (:func:`applies`). ``tail``: token-level decisions over the SFT
#: top k — a token method without ``block_len`` (sampled blocks have no top k whose rest could be kept).
APPLIES: dict[str, Callable[[Method, Mapping[str, Any]], bool]] = {
    "tail": lambda row, given: row.kind == "token" and given.get("block_len") is None}
#: What a field amounted to in runs written before it existed, where that is not its default: a results file whose
#: rows lack the field is read with this value (``tail``: those runs truncated to the top k).
BEFORE: dict[str, Any] = {"tail": "off"}
#: How ``tqstar generate`` sets a field: ``--name VALUE``, ``--name`` repeated, a ``--name`` switch (``None``: only
#: YAML and requests set it).
Flag = Literal["value", "append", "switch"]


@dataclass(frozen=True)
class ParamInfo:
    """What a :class:`DecodeParams` field says about itself (its ``dataclasses.field`` metadata).

    ``help`` is the one line ``--help`` shows (the default is added from the field itself; ``unset`` says what
    ``None`` means); ``scope``; ``flag``, with ``choices``; ``request``: the HTTP request field that sets it per
    request (``tqstar.<name>`` in the extension object, or an OpenAI field such as ``temperature``), ``None`` when only
    the server's preset does.
    """

    help: str
    scope: Scope = "group"
    flag: Flag | None = None
    choices: tuple[str, ...] | None = None
    request: str | None = None
    unset: str | None = None


def param(default: Any, help: str, *, scope: Scope = "group", flag: Flag | None = None,
          choices: tuple[str, ...] | None = None, request: str | None = None, unset: str | None = None) -> Any:
    """A :class:`DecodeParams` field with its :class:`ParamInfo`."""
    info = ParamInfo(help, scope, flag, choices, request, unset)
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"tqstar": info})
    return field(default=default, metadata={"tqstar": info})


def _fail(name: str, constraint: str, value: object) -> None:
    raise ConfigError(f"`{name}` must be {constraint}, got {value!r}", param=name, value=value)


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
            (best of ``bon_n`` samples), ``soft-bon`` (one of ``bon_n`` samples drawn ∝ exp(r/``bon_beta``)).
        k: number of SFT top-k candidates scored per step (token-level methods); with ``block_len``, the number of
            blocks the SFT model samples per decision.
        block_len: ``None`` (default): token-level decisions over the SFT top-k. m ≥ 1: blockwise decisions — the
            SFT model samples k continuations of up to m tokens (fewer where EOS, a stop string or the budget ends
            one), each is valued by the method's estimator from its end, and one is committed: the best Q̂ at
            temperature 0 (blocks then sampled at temperature 1), else sampled ∝ exp(α·Q̂/T) from blocks sampled at
            T (:mod:`tqstar.blocks`: the rule, its KL bound and estimate). Token-level methods with an estimator that
            values a block (all but ``eft``).
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
        temperature: 0 picks the best-scoring candidate; > 0 samples from softmax(score / temperature) (over the
            candidates and, unless ``tail`` is ``off``, the rest of the vocabulary).
        tail: token-level decisions over the SFT top k (not with ``block_len``): what the decision does with the
            vocabulary outside the top k (:data:`TAILS`, :mod:`tqstar.tail`). ``off`` is top-k truncation; the others keep every token with π_sft's shape
            (p^{1/T}) tilted by one shared value for the tail, so at α = 0 sampling *is* π_sft and the per-step KL is
            exact over the whole vocabulary. Greedy decoding (temperature 0) is the same for every value.
        max_new_tokens: response budget.
        stop: stop strings; the response is cut before the first one found.
        seed: seed of every random draw (candidate sampling, rollouts, plain sampling, best-of-N samples). Each
            draw has its own stream keyed by (seed, prompt, use, step, candidate, index), so a prompt's output
            does not depend on the other prompts in its batch, the batch size, a resume or pruning.
        bon_n: samples drawn by ``bon`` and ``soft-bon``.
        bon_policy: the model ``bon`` and ``soft-bon`` sample from (``sft`` or ``baseline``).
        bon_beta: temperature β of ``soft-bon``'s choice softmax(r_i/β) over its samples (reward units); β → 0 is
            ``bon``, β → ∞ the policy itself.
        trace: record, per step, the candidates, their log π_sft, Q̂, score and the choice.
        prune: for greedy decoding with a reward that declares its range, skip candidates that cannot win
            (log π_sft(z) + α·R_max ≤ the best score already computed). Exact: the same tokens, fewer rollouts.
        prune_probe: when pruning finds no cheaply known value to compare against (no reused rollout), value
            the top ``prune_probe`` candidates first and the rest only if they can still win. This trades one
            extra sequential rollout batch for the chance to skip the rest; 0 (default) never probes.
        reuse_rollouts: with greedy single rollouts, reuse the chosen candidate's rollout as the next step's
            rollout of its first token (only its last token is generated). Exact.
    """

    method: str = param("tq-direct", "the decoding method (the table below; tqstar.methods)", flag="value")
    k: int = param(10, "top-k candidates per step (with block_len: sampled blocks per decision)", flag="value",
                   request="tqstar.k")
    block_len: int | None = param(None, "tokens per decision: choose among k sampled blocks of this length",
                                  unset="one token, the SFT top-k", flag="value", request="tqstar.block_len")
    alpha: float = param(1.0, "weight of Q in log pi_sft + alpha*Q", flag="value", request="tqstar.alpha")
    n_rollouts: int = param(1, "rollouts per candidate, N", flag="value", request="tqstar.n_rollouts")
    rollout_len: int = param(20, "rollout length in tokens, L", flag="value", request="tqstar.rollout_len")
    rollout_temperature: float = param(0.0, "0 = greedy rollouts", flag="value",
                                       request="tqstar.rollout_temperature")
    rollout_seed: int | None = param(None, "seed of the rollouts", unset="--seed", scope="row", flag="value")
    beta: float = param(1.0, "baseline's KL strength, tq-indirect and eft", flag="value", request="tqstar.beta")
    soft_beta: float | None = param(None, "temperature of the soft value, tq-soft and soft-cd", unset="1/alpha",
                                    flag="value")
    temperature: float = param(0.0, "0 = greedy choice, else sample softmax(score/T)", flag="value",
                               request="temperature")
    tail: str = param(DEFAULT_TAIL, "the vocabulary outside the top k: off = dropped (top-k truncation), mean /"
                      " rollout / rolling = kept with pi_sft's shape and one shared value (docs/methods.md)",
                      flag="value", choices=TAILS, request="tqstar.tail")
    max_new_tokens: int = param(64, "response budget", scope="row", flag="value", request="max_tokens")
    stop: tuple[str, ...] = param((), "stop string (repeatable)", scope="row", flag="append", request="stop")
    seed: int = param(0, "seed of every random choice", scope="row", flag="value", request="seed")
    bon_n: int = param(4, "samples for bon", flag="value", request="tqstar.bon_n")
    bon_policy: str = param("sft", "model bon samples from", flag="value", choices=("sft", "baseline"))
    bon_beta: float = param(0.1, "temperature of soft-bon's choice softmax(r/bon_beta)", flag="value",
                            request="tqstar.bon_beta")
    trace: bool = param(False, "print the per-step candidate table", scope="row", flag="switch",
                        request="tqstar.trace")
    prune: bool = param(True, "skip candidates that cannot win (exact; greedy choice, a reward range)",
                        request="tqstar.prune")
    prune_probe: int = param(0, "value the top candidates first when pruning has nothing to compare with",
                             request="tqstar.prune_probe")
    reuse_rollouts: bool = param(True, "reuse the chosen candidate's greedy rollout at the next step (exact)",
                                 request="tqstar.reuse_rollouts")

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
        for name in ("beta", "bon_beta"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value <= 0:
                _fail(name, "a finite number > 0", value)
        if self.soft_beta is not None and (not _is_real(self.soft_beta) or not math.isfinite(self.soft_beta)
                                           or self.soft_beta <= 0):
            _fail("soft_beta", "a finite number > 0 or None (= 1/alpha)", self.soft_beta)
        row = self.method_row
        if self.block_len is not None:
            if isinstance(self.block_len, bool) or not isinstance(self.block_len, int) or self.block_len < 1:
                _fail("block_len", "an integer >= 1 or None (token-level decisions)", self.block_len)
            if not row.blockwise:
                blockwise = ", ".join(m.name for m in TABLE if m.blockwise)
                why = {"token": "its value is the per-token likelihood ratio β·log(π_BL/π_sft), which a block of"
                                " sampled tokens does not have",  # eft, the one token method without blocks
                       "best-of-n": "it already chooses among whole responses (a block of the whole budget)",
                       "plain": "it decodes one model token by token without candidates"}[row.kind]
                raise ConfigError(f"`block_len` does not apply to {self.method}: {why}; drop block_len or use one of"
                                  f" {blockwise}", param="block_len", value=self.block_len)
        if row.sampled_rollouts and self.rollout_temperature != 1:
            raise ConfigError(f"`rollout_temperature` must be 1 for {self.method} (its estimator averages over samples"
                              f" of the rolling model itself), got {self.rollout_temperature!r}; set"
                              " rollout_temperature: 1", param="rollout_temperature", value=self.rollout_temperature)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            _fail("stop", "a tuple of non-empty strings", self.stop)
        if self.bon_policy not in ("sft", "baseline"):
            _fail("bon_policy", "'sft' or 'baseline'", self.bon_policy)
        if self.n_rollouts > 1 and self.rollout_temperature == 0 and self.rolls_out:
            raise ConfigError(
                f"`n_rollouts` = {self.n_rollouts} with greedy rollouts gives {self.n_rollouts} identical rollouts;"
                " set `rollout_temperature` > 0 or use n_rollouts = 1", param="n_rollouts", value=self.n_rollouts)
        if row.kind == "best-of-n" and self.temperature == 0:
            raise ConfigError(f"`temperature` must be > 0 for {self.method} (greedy samples are all identical), got 0;"
                              " try temperature=1.0", param="temperature", value=self.temperature)
        self._check_tail()
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            _fail("seed", "an integer", self.seed)
        if self.rollout_seed is not None and (isinstance(self.rollout_seed, bool) or not isinstance(self.rollout_seed, int)):
            _fail("rollout_seed", "an integer or None", self.rollout_seed)
        for name in ("trace", "prune", "reuse_rollouts"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "True or False", getattr(self, name))

    def _check_tail(self) -> None:
        """``tail`` against :data:`TAILS`, the method's row and ``block_len``: the one place that says which decisions
        it applies to.

        It applies to token-level decisions over the SFT top k (the only ones with a rest of the vocabulary to keep);
        the default is accepted, and has no effect, for the others — methods without a top k, and blockwise decisions
        (``block_len``), whose k candidates are sampled blocks rather than a truncation. ``rolling`` draws its tail
        token from the model that rolls out, so a method whose row rolls nothing out (``args``, ``eft``, ``none``)
        cannot use it."""
        if self.tail not in TAILS:
            _fail("tail", "one of " + ", ".join(TAILS), self.tail)
        row = self.method_row
        if not self.applies("tail") and self.tail != DEFAULT_TAIL:
            if row.kind == "token":  # block_len: sampled blocks
                raise ConfigError(f"`tail` applies to token-level decisions over the SFT top k, not to blockwise ones"
                                  f" (block_len {self.block_len}), whose k candidates are sampled blocks with nothing"
                                  " truncated; leave `tail` out or drop block_len", param="tail", value=self.tail)
            token = ", ".join(m for m in METHODS if method(m).kind == "token")
            raise ConfigError(f"`tail` applies to the token-level methods ({token}), not to {self.method}, which"
                              f" {'decodes its full vocabulary' if row.kind == 'plain' else 'samples whole responses'};"
                              f" leave `tail` out for {self.method}", param="tail", value=self.tail)
        if self.tail == "rolling" and row.rolls is None:
            raise ConfigError(f"`tail` 'rolling' draws the tail token from the model that rolls out, and {self.method}"
                              " rolls out none; use tail: mean or tail: rollout", param="tail", value=self.tail)

    def applies(self, name: str) -> bool:
        """Whether field ``name`` means anything for these parameters (:data:`APPLIES`)."""
        return applies(name, vars(self))

    def group_key(self) -> tuple:
        """What rows stepped together by one :class:`~tqstar.decoder.Decoder` must agree on: the ``group`` fields
        (:data:`GROUP_FIELDS`; seed, rollout_seed, max_new_tokens, stop and trace are each row's own)."""
        return tuple(getattr(self, name) for name in GROUP_FIELDS)

    # ---- what the method is (its row in tqstar.methods) ------------------------------------------------------
    @property
    def method_row(self) -> Method:
        """This method's row of :data:`tqstar.methods.TABLE`."""
        return method(self.method)

    @property
    def needs(self) -> frozenset[str]:
        """What the method needs besides the SFT model: its row's ``needs``, and the baseline when ``bon`` samples
        from it (``bon_policy``)."""
        row = self.method_row
        sampled = {"baseline"} if row.kind == "best-of-n" and self.bon_policy == "baseline" else set()
        return row.needs | sampled

    @property
    def is_token_level(self) -> bool:
        """Whether the method scores candidates with Q̂ and α (one token per decision, or a block: ``block_len``)."""
        return self.method_row.kind == "token"

    @property
    def is_blockwise(self) -> bool:
        """Whether a decision chooses among sampled blocks (:mod:`tqstar.blocks`): ``block_len`` on a token method,
        and ``bon`` / ``soft-bon``, whose block is the whole response."""
        return self.block_len is not None or self.method_row.kind == "best-of-n"

    @property
    def samples_tail(self) -> bool:
        """Whether a decision samples over the whole vocabulary with the tail as one arm (:mod:`tqstar.tail`): ``tail``
        applies (a token-level decision, no ``block_len``), is not ``off``, and the choice is sampled (a greedy one
        takes the argmax over the top k)."""
        return self.applies("tail") and self.tail != "off" and self.temperature > 0

    @property
    def uses_baseline(self) -> bool:
        """Whether the method runs the baseline model."""
        return "baseline" in self.needs

    @property
    def needs_reward(self) -> bool:
        """Whether the method itself calls the target reward (every method is *scored* by it when given)."""
        return "reward" in self.needs

    @property
    def rolls_out(self) -> bool:
        """Whether each step rolls candidates out (each rollout stays within the response budget, so the context
        a row needs is its prompt plus ``max_new_tokens`` either way)."""
        return self.is_token_level and self.method_row.rolls is not None

    @property
    def scores_likelihoods(self) -> bool:
        """Whether the method asks models for log-likelihoods of given tokens (``score_continuations``)."""
        return self.method_row.likelihoods

    @property
    def value_in_reward_range(self) -> bool:
        """Whether Q̂ always lies in the reward's range [R_min, R_max] (a mean, or a soft mean, of rewards). Reward-
        bound pruning and the softmax KL bound rely on it; a likelihood ratio (``tq-soft``, ``eft``) breaks it."""
        return self.method_row.in_reward_range

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


def applies(name: str, given: Mapping[str, Any]) -> bool:
    """Whether field ``name`` means anything for the settings ``given`` — a method's name under ``method`` and the
    other fields set with it (:data:`APPLIES`; an unknown method: yes, so that its own check names it)."""
    rule, name_of = APPLIES.get(name), str(given.get("method", DecodeParams.method))
    return rule is None or name_of not in METHODS or rule(method(name_of), given)


def info(name: str) -> ParamInfo:
    """The :class:`ParamInfo` of the :class:`DecodeParams` field ``name``."""
    return FIELDS[name]


#: field name -> its :class:`ParamInfo`, in declaration order.
FIELDS: dict[str, ParamInfo] = {f.name: f.metadata["tqstar"] for f in dataclasses.fields(DecodeParams)}
#: The fields rows must share to be stepped together (:meth:`DecodeParams.group_key`).
GROUP_FIELDS: tuple[str, ...] = tuple(name for name, i in FIELDS.items() if i.scope == "group")
