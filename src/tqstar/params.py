"""Frozen, validated decoding parameters.

Every field is checked in ``__post_init__`` and never rewritten; an invalid value raises
:class:`~tqstar.errors.ConfigError` reading "`<param>` must be <constraint>, got <value>" before any model
is loaded. Checks that need the loaded models (``k`` against the vocabulary, the method against the models
and rewards that were given) run in :meth:`tqstar.engine.Engine.check`.

Each field describes itself (:class:`ParamInfo`): how it is checked (an integer's least value, whether a real may be
0; every real lies in the numeric envelope of :mod:`tqstar._checks`) and which methods it applies to (a scope of
:data:`tqstar.methods.SCOPES`). A field given for a method outside its scope has no effect, and giving it is refused
(:meth:`DecodeParams.check_given`): that is decided here, from the metadata, for every field at once
(:meth:`DecodeParams.applies`), and ``/v1/models`` lists what a preset uses from the same place. A field that acts
only on decisions over the SFT top-k (``blockwise=False``: pruning) has no effect once ``block_len`` is set either.
Adding a field is one declaration: its default, help, checks and scope in one :func:`param`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ._checks import check_int, check_real
from .errors import ConfigError
from .methods import METHODS, SCOPES, Method, in_scope, method

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
    the server's preset does. ``applies``: the methods the field has an effect on, a key of
    :data:`tqstar.methods.SCOPES`; ``blockwise``: whether it still has an effect when a token-level method decides
    over sampled blocks (``block_len``). ``low``: an integer field's least value (``None``: any integer); ``zero``: a
    real field may be 0 besides the envelope's range (:data:`tqstar._checks.REAL_RANGE`).
    """

    help: str
    scope: Scope = "group"
    flag: Flag | None = None
    choices: tuple[str, ...] | None = None
    request: str | None = None
    unset: str | None = None
    applies: str = "all"
    blockwise: bool = True
    low: int | None = 1
    zero: bool = False


def param(default: Any, help: str, *, scope: Scope = "group", flag: Flag | None = None,
          choices: tuple[str, ...] | None = None, request: str | None = None, unset: str | None = None,
          applies: str = "all", blockwise: bool = True, low: int | None = 1, zero: bool = False) -> Any:
    """A :class:`DecodeParams` field with its :class:`ParamInfo`."""
    assert applies in SCOPES, f"unknown scope {applies!r}"
    info = ParamInfo(help, scope, flag, choices, request, unset, applies, blockwise, low, zero)
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
        trace: record, per decision, the candidates (top-k tokens, sampled blocks or best-of-N's samples), their
            Q̂ (and log π_sft, score for tokens) and the choice; plain methods have none.
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
                   request="tqstar.k", applies="token")
    block_len: int | None = param(None, "tokens per decision: choose among k sampled blocks of this length",
                                  unset="one token, the SFT top-k", flag="value", request="tqstar.block_len",
                                  applies="blocks")
    alpha: float = param(1.0, "weight of Q in log pi_sft + alpha*Q", flag="value", request="tqstar.alpha",
                         applies="valued", zero=True)
    n_rollouts: int = param(1, "rollouts per candidate, N", flag="value", request="tqstar.n_rollouts",
                            applies="rollouts")
    rollout_len: int = param(20, "rollout length in tokens, L", flag="value", request="tqstar.rollout_len",
                             applies="rollouts")
    rollout_temperature: float = param(0.0, "0 = greedy rollouts", flag="value",
                                       request="tqstar.rollout_temperature", applies="rollouts", zero=True)
    rollout_seed: int | None = param(None, "seed of the rollouts", unset="--seed", scope="row", flag="value",
                                     applies="rollouts", low=None)
    beta: float = param(1.0, "baseline's KL strength, tq-indirect and eft", flag="value", request="tqstar.beta",
                        applies="kl-strength")
    soft_beta: float | None = param(None, "temperature of the soft value, tq-soft and soft-cd", unset="1/alpha",
                                    flag="value", applies="soft")
    temperature: float = param(0.0, "0 = greedy choice, else sample softmax(score/T)", flag="value",
                               request="temperature", zero=True)
    tail: str = param(DEFAULT_TAIL, "the vocabulary outside the top k: off = dropped (top-k truncation), mean /"
                      " rollout / rolling = kept with pi_sft's shape and one shared value (docs/methods.md)",
                      flag="value", choices=TAILS, request="tqstar.tail", applies="token", blockwise=False)
    max_new_tokens: int = param(64, "response budget", scope="row", flag="value", request="max_tokens")
    stop: tuple[str, ...] = param((), "stop string (repeatable)", scope="row", flag="append", request="stop")
    seed: int = param(0, "seed of every random choice", scope="row", flag="value", request="seed", low=None)
    bon_n: int = param(4, "samples for bon and soft-bon", flag="value", request="tqstar.bon_n", applies="best-of-n")
    bon_policy: str = param("sft", "model bon and soft-bon sample from", flag="value", choices=("sft", "baseline"),
                            applies="best-of-n")
    bon_beta: float = param(0.1, "temperature of soft-bon's choice softmax(r/bon_beta)", flag="value",
                            request="tqstar.bon_beta", applies="soft-selection")
    trace: bool = param(False, "print the per-decision candidate table", scope="row", flag="switch",
                        request="tqstar.trace", applies="choices")
    prune: bool = param(True, "skip candidates that cannot win (exact; greedy choice, a reward range)",
                        request="tqstar.prune", applies="bounded", blockwise=False)
    prune_probe: int = param(0, "value the top candidates first when pruning has nothing to compare with",
                             request="tqstar.prune_probe", applies="bounded", blockwise=False, low=0)
    reuse_rollouts: bool = param(True, "reuse the chosen candidate's greedy rollout at the next step (exact)",
                                 request="tqstar.reuse_rollouts", applies="rollouts")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            _fail("method", "one of " + ", ".join(METHODS), self.method)
        for name in FIELDS:
            check_value(name, getattr(self, name))
        row = self.method_row
        if self.block_len is not None and not self.applies("block_len"):  # not only no effect: another decision
            why = {"token": "its value is the per-token likelihood ratio β·log(π_BL/π_sft), which a block of"
                            " sampled tokens does not have",  # eft, the one token method without blocks
                   "best-of-n": "it already chooses among whole responses (a block of the whole budget)",
                   "plain": "it decodes one model token by token without candidates"}[row.kind]
            raise ConfigError(f"`block_len` does not apply to {self.method}: {why}; drop block_len or use one of"
                              f" {', '.join(in_scope(FIELDS['block_len'].applies))}", param="block_len",
                              value=self.block_len)
        if row.sampled_rollouts and self.rollout_temperature != 1:
            raise ConfigError(f"`rollout_temperature` must be 1 for {self.method} (its estimator averages over samples"
                              f" of the rolling model itself), got {self.rollout_temperature!r}; set"
                              " rollout_temperature: 1", param="rollout_temperature", value=self.rollout_temperature)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            _fail("stop", "a tuple of non-empty strings", self.stop)
        if self.n_rollouts > 1 and self.rollout_temperature == 0 and self.rolls_out:
            raise ConfigError(
                f"`n_rollouts` = {self.n_rollouts} with greedy rollouts gives {self.n_rollouts} identical rollouts;"
                " set `rollout_temperature` > 0 or use n_rollouts = 1", param="n_rollouts", value=self.n_rollouts)
        if row.kind == "best-of-n" and self.temperature == 0:
            raise ConfigError(f"`temperature` must be > 0 for {self.method} (greedy samples are all identical), got 0;"
                              " try temperature=1.0", param="temperature", value=self.temperature)
        self._check_tail()

    def _check_tail(self) -> None:
        """``tail`` where its declared scope (token-level decisions over the SFT top k: ``applies="token"``,
        ``blockwise=False``) does not hold, and where the method cannot give it.

        The default is accepted, and has no effect, outside the scope — methods without a top k, and blockwise
        decisions (``block_len``), whose k candidates are sampled blocks rather than a truncation; another value is
        refused, saying why. ``rolling`` draws its tail token from the model that rolls out, so a method whose row rolls
        nothing out (``args``, ``eft``, ``none``) cannot use it."""
        row = self.method_row
        if not self.applies("tail") and self.tail != DEFAULT_TAIL:
            if row.kind == "token":  # block_len: sampled blocks
                raise ConfigError(f"`tail` applies to token-level decisions over the SFT top k, not to blockwise ones"
                                  f" (block_len {self.block_len}), whose k candidates are sampled blocks with nothing"
                                  " truncated; leave `tail` out or drop block_len", param="tail", value=self.tail)
            token = ", ".join(in_scope(FIELDS["tail"].applies))
            raise ConfigError(f"`tail` applies to the token-level methods ({token}), not to {self.method}, which"
                              f" {'decodes its full vocabulary' if row.kind == 'plain' else 'samples whole responses'};"
                              f" leave `tail` out for {self.method}", param="tail", value=self.tail)
        if self.tail == "rolling" and row.rolls is None:
            raise ConfigError(f"`tail` 'rolling' draws the tail token from the model that rolls out, and method"
                              f" {self.method!r} rolls nothing out; use tail: mean or tail: rollout", param="tail",
                              value=self.tail)

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
        """β of the soft value: ``soft_beta``, else 1/α (α > 0 whenever a value is estimated; α in the envelope
        [1e-6, 1e6] keeps 1/α there too)."""
        return self.soft_beta if self.soft_beta is not None else 1.0 / self.alpha

    def replace(self, **changes: object) -> DecodeParams:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def applies(self, name: str) -> bool:
        """Whether field ``name`` has an effect on these parameters: the scope its metadata declares holds the method's
        row, and, when a token-level method decides over blocks (``block_len``), the field acts on blocks too."""
        return _applies(name, self.method_row, self.block_len is not None)

    def unused(self, given: Iterable[str]) -> str | None:
        """The first of the fields named in ``given`` that has no effect on these parameters (:meth:`applies`), or
        ``None``."""
        given = set(given)
        return next((name for name in FIELDS if name in given and not self.applies(name)), None)

    def check_given(self, given: Iterable[str], where: str = "") -> None:
        """Raise :class:`ConfigError` if a field named in ``given`` (set by a flag, a YAML key or a request) has no
        effect on this method: it would be silently ignored. ``where`` prefixes the message ("preset 'x': ")."""
        name = self.unused(given)
        if name is not None:
            raise ConfigError(f"{where}{unused_message(name, self)}", param=name, value=getattr(self, name))

    @classmethod
    def from_dict(cls, values: dict, *, base: dict | None = None, where: str = "") -> DecodeParams:
        """Build from a mapping (a YAML section) over ``base`` (defaults every method starts from, e.g. an eval's
        ``defaults``), rejecting unknown keys by name and a key of ``values`` that has no effect on the method
        (:meth:`check_given`; a key of ``base`` the method has no use for is left out)."""
        for what, mapping in (("decoding parameters", values), ("defaults", base or {})):
            if not isinstance(mapping, dict):
                raise ConfigError(f"the {what} must be a mapping like {{method: tq-direct, k: 10}}, got"
                                  f" {mapping!r}", param="decode", value=mapping)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, (set(values) | set(base or {})) - names))
        if unknown:
            raise ConfigError(
                f"unknown decoding parameter `{unknown[0]}`; valid ones are " + ", ".join(sorted(names))
            )
        merged = {**(base or {}), **values}
        if isinstance(merged.get("stop"), (str, list)):  # one string or a list; other shapes fail the check
            stop = merged["stop"]
            merged["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        name = merged.get("method", cls.method)
        if isinstance(name, str) and name in METHODS:  # else the method's own check names it
            blockwise = merged.get("block_len") is not None  # tail: token-level decisions over the top k only
            unused = [k for k in merged if k not in values and not _applies(k, method(name), blockwise)]
            for k in unused:  # a bad value is refused all the same
                check_value(k, merged.pop(k))
        params = cls(**{k: v for k, v in merged.items() if v is not None})
        params.check_given([k for k, v in values.items() if v is not None], where)
        return params


def check_value(name: str, value: object) -> None:
    """Check one field's value by its kind and metadata (every real in :mod:`tqstar._checks`' envelope; a choice among
    its ``choices``)."""
    info, kind = FIELDS[name], KINDS[name]
    if info.choices is not None and value not in info.choices:
        if isinstance(value, bool):  # YAML 1.1 reads a bare off/on/no/yes as a boolean
            raise ConfigError(f"`{name}` must be one of {', '.join(info.choices)}, got the boolean {value!r} (YAML"
                              f" reads a bare off, on, no or yes as one); quote it, e.g. {name}: \"{info.choices[0]}\"",
                              param=name, value=value)
        _fail(name, " or ".join(map(repr, info.choices)) if len(info.choices) == 2 else
              "one of " + ", ".join(info.choices), value)
    elif kind is int:
        check_int(value, name, low=info.low, none=info.unset)
    elif kind is float:
        check_real(value, name, zero=info.zero, none=info.unset)
    elif kind is bool and not isinstance(value, bool):
        _fail(name, "True or False", value)


def _applies(name: str, row: Method, blockwise: bool) -> bool:
    info = FIELDS[name]
    return SCOPES[info.applies][0](row) and (info.blockwise or not blockwise)


def in_effect(values: dict[str, Any]) -> dict[str, Any]:
    """The entries of a parameter mapping (:func:`dataclasses.asdict` of a :class:`DecodeParams`, as results files
    record it) that have an effect on its method: two runs that differ elsewhere decode the same."""
    name = values.get("method")
    if not isinstance(name, str) or name not in METHODS:
        return dict(values)
    blockwise = values.get("block_len") is not None
    return {k: v for k, v in values.items() if k not in FIELDS or _applies(k, method(name), blockwise)}


def unused_message(name: str, params: DecodeParams) -> str:
    """Why field ``name`` has no effect on ``params`` (:meth:`DecodeParams.applies` is false), and the fix, as one
    sentence."""
    row, (test, scope) = params.method_row, SCOPES[FIELDS[name].applies]
    if test(row):  # in scope, but it does not act on blocks
        return (f"`{name}` has no effect on blockwise decisions (block_len {params.block_len} with {params.method}): it"
                " acts on decisions over the SFT top-k only; drop it, or drop block_len")
    return (f"`{name}` has no effect on method {params.method!r} ({row.doc}): it applies to {scope}"
            f" ({', '.join(in_scope(FIELDS[name].applies))}); drop it, or choose one of those methods")


def info(name: str) -> ParamInfo:
    """The :class:`ParamInfo` of the :class:`DecodeParams` field ``name``."""
    return FIELDS[name]


#: field name -> its :class:`ParamInfo`, in declaration order.
FIELDS: dict[str, ParamInfo] = {f.name: f.metadata["tqstar"] for f in dataclasses.fields(DecodeParams)}
#: field name -> the plain type of its values (``int``, ``float``, ``str``, ``bool``, ``tuple``), ``None`` dropped.
KINDS: dict[str, type] = {
    name: next(typing.get_origin(t) or t for t in typing.get_args(hint) or (hint,) if t is not type(None))
    for name, hint in typing.get_type_hints(DecodeParams).items()}
#: The fields rows must share to be stepped together (:meth:`DecodeParams.group_key`).
GROUP_FIELDS: tuple[str, ...] = tuple(name for name, i in FIELDS.items() if i.scope == "group")
