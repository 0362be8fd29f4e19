"""What each decoding method *is*: one row per method, pure data.

A method is a row, not a class. The row says how a decision is made (``kind``), which value estimator values its
candidates (``value``, a key of :data:`tqstar.value.ESTIMATORS`, the few generic pieces every row points to) and which
model rolls out for it (``rolls``), what it needs besides the SFT model (``needs``), and what its
estimator relies on (likelihoods of given tokens; Q̂ inside the reward's range; sampled rollouts). Everything that
used to list method names by hand reads the row instead: :class:`~tqstar.params.DecodeParams` (its checks and its
``is_token_level`` / ``uses_baseline`` / ... properties), :meth:`tqstar.engine.Engine.check` (what must be given),
the decoder (which estimator, which model), ``tqstar generate --help`` and the server's ``/v1/models``. A test
(``tests/core/test_methods.py``) runs every row's estimator and fails when the row and the estimator disagree.

Adding a method is one row here and, if its estimator is new, one file in ``value/`` with a key in
``value.ESTIMATORS``. Options that apply to every method of a kind (a decision over a longer block, a top-k whose tail
keeps π_sft's shape) are :class:`~tqstar.params.DecodeParams` fields, not rows; a peer of an existing kind (soft
best-of-N beside ``bon``) is a row of that kind with what distinguishes it as a new field with a default.

No import of :mod:`tqstar.value` or of anything that loads models: ``params -> methods`` stays a leaf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

#: How a method decides: ``token`` — score the SFT model's top-k next tokens by log π_sft + α·Q̂ and choose one, the
#: rest of the vocabulary kept as one arm unless ``tail: off`` (:meth:`tqstar.decoder.Decoder._token_step`,
#: :mod:`tqstar.tail`), or with ``block_len`` choose among k sampled blocks (:mod:`tqstar.blocks`; no top k, so no
#: tail); ``plain`` — decode one model over its full vocabulary (:mod:`tqstar.trajectory`); ``best-of-n`` — sample
#: whole responses and keep one: a blockwise decision whose blocks are the whole response.
Kind = Literal["token", "plain", "best-of-n"]
#: The two models a method may run besides its rewards.
Role = Literal["sft", "baseline"]
#: What a method may need besides the SFT model (``Engine(..., baseline=, reward=, baseline_reward=)``).
NEEDS = ("baseline", "reward", "baseline_reward")


@dataclass(frozen=True)
class Method:
    """One decoding method.

    Attributes:
        name: what ``method`` is set to (``--method``, YAML, a preset, a request).
        kind: how a decision is made (:data:`Kind`).
        doc: one line: what Q̂ is (token methods) or what is decoded; shown by ``--help``, ``/v1/models`` and the
            README's table.
        value: token and best-of-n methods: the estimator, a key of :data:`tqstar.value.ESTIMATORS` (``mean``,
            ``importance``, ``soft``, ``partial``, ``log-ratio``, ``zero``); best-of-n values each whole sample by its
            reward, which is the ``partial`` estimator on a finished text.
        rolls: token methods: the model whose rollouts from ``[s, z]`` value a candidate (``None``: no rollout);
            plain methods: the model decoded. ``best-of-n`` samples from the ``bon_policy`` parameter instead.
        needs: what must be given besides the SFT model, from :data:`NEEDS`.
        likelihoods: the estimator asks models for log-likelihoods of given tokens (``score_continuations``), so
            the models must share the SFT vocabulary (no text bridge) and a served model must be able to score.
        in_reward_range: Q̂ always lies in the reward's declared range (a mean, or a soft mean, of rewards):
            reward-bound pruning and the softmax KL bound may trust R_max. A likelihood ratio breaks it.
        sampled_rollouts: the estimator averages over samples of the rolling model itself, untruncated, so
            ``rollout_temperature`` must be 1.
        blockwise: token methods: its estimator values a block of several tokens from the block's end, so
            ``block_len`` applies (not ``eft``: its value is a per-token likelihood ratio).
        soft_selection: best-of-n methods: choose sample i with probability softmax(r_i / ``bon_beta``) instead of
            the best.
    """

    name: str
    kind: Kind
    doc: str
    value: str | None = None
    rolls: Role | None = None
    needs: frozenset[str] = frozenset()
    likelihoods: bool = False
    in_reward_range: bool = True
    sampled_rollouts: bool = False
    blockwise: bool = False
    soft_selection: bool = False

    def __post_init__(self) -> None:
        assert self.needs <= set(NEEDS), f"{self.name}: unknown needs {set(self.needs) - set(NEEDS)}"
        assert (self.kind == "plain") == (self.value is None), f"{self.name}: every method but plain ones has a value"
        assert not self.blockwise or self.kind == "token", f"{self.name}: only token methods take block_len"
        assert not self.soft_selection or self.kind == "best-of-n", f"{self.name}: soft selection is best-of-n's"
        assert self.kind != "plain" or self.rolls is not None, f"{self.name}: a plain method names the model it decodes"
        assert self.rolls != "baseline" or "baseline" in self.needs, f"{self.name}: rolling the baseline needs it"
        assert self.doc and "\n" not in self.doc, f"{self.name}: one doc line"


def _needs(*names: str) -> frozenset[str]:
    return frozenset(names)


#: Every method, in the order messages and tables list them.
TABLE: tuple[Method, ...] = (
    Method("tq-direct", "token", "mean target reward of N baseline rollouts from [s, z] (TQ* direct transfer)",
           value="mean", rolls="baseline", needs=_needs("baseline", "reward"), blockwise=True),
    Method("tq-indirect", "token", "Σ w_i r_i over N baseline rollouts, w = softmax((r − r_BL)/β): a baseline aligned"
           " to another reward r_BL (TQ* indirect transfer)",
           value="importance", rolls="baseline", needs=_needs("baseline", "reward", "baseline_reward"), blockwise=True),
    Method("tq-soft", "token", "β·log mean_i exp(r_i/β + log ρ_sft(y_i)/ρ_BL(y_i)) over N baseline rollouts at"
           " T = 1 (the soft value; β = 1/α by default)",
           value="soft", rolls="baseline", needs=_needs("baseline", "reward"), likelihoods=True,
           in_reward_range=False, sampled_rollouts=True, blockwise=True),
    Method("cd", "token", "mean target reward of N SFT rollouts from [s, z]: Q of the SFT policy (controlled decoding)",
           value="mean", rolls="sft", needs=_needs("reward"), blockwise=True),
    Method("soft-cd", "token", "β·log mean_i exp(r_i/β) over N SFT rollouts at T = 1 (the soft value of CD)",
           value="soft", rolls="sft", needs=_needs("reward"), sampled_rollouts=True, blockwise=True),
    Method("args", "token", "target reward of the partial text [s, z], no rollout (ARGS)",
           value="partial", needs=_needs("reward"), blockwise=True),
    Method("eft", "token", "β·log(π_BL(z|s)/π_sft(z|s)), no rollout, no reward: π_sft^(1−λ)·π_BL^λ, λ = αβ"
           " (emulated fine-tuning)",
           value="log-ratio", needs=_needs("baseline"), likelihoods=True, in_reward_range=False),
    Method("none", "token", "0: top-k decoding of the SFT model (the α = 0 reference)", value="zero", blockwise=True),
    Method("sft", "plain", "plain decoding of the SFT model over its full vocabulary", rolls="sft"),
    Method("baseline", "plain", "plain decoding of the baseline over its full vocabulary", rolls="baseline",
           needs=_needs("baseline")),
    Method("bon", "best-of-n", "the best by target reward of bon_n samples of bon_policy (best-of-N)",
           value="partial", needs=_needs("reward")),
    Method("soft-bon", "best-of-n", "one of bon_n samples of bon_policy drawn with probability softmax(r/bon_beta)"
           " (soft best-of-N; bon_beta -> 0 is bon)", value="partial", needs=_needs("reward"), soft_selection=True),
)

#: name -> row.
BY_NAME: dict[str, Method] = {m.name: m for m in TABLE}
#: Every method name, in table order (``tqstar.METHODS``).
METHODS: tuple[str, ...] = tuple(BY_NAME)


#: Which methods a :class:`~tqstar.params.DecodeParams` field applies to (its ``applies`` metadata): a scope name ->
#: (whether a method's row is in it, how a message names it). A field outside its scope has no effect, so giving it
#: is refused (:meth:`tqstar.params.DecodeParams.check_given`), and ``/v1/models`` lists the fields in scope as what
#: a preset's method uses. A new field names one of these, or a new scope here (with its ``blockwise`` metadata:
#: whether it still acts when a token-level method decides over blocks).
SCOPES: dict[str, tuple[Callable[[Method], bool], str]] = {
    "all": (lambda m: True, "every method"),
    "token": (lambda m: m.kind == "token", "token-level methods"),
    "valued": (lambda m: m.kind == "token" and m.value != "zero", "token-level methods that estimate Q̂"),
    "rollouts": (lambda m: m.kind == "token" and m.rolls is not None, "methods that roll candidates out"),
    "bounded": (lambda m: m.kind == "token" and m.value != "zero" and m.in_reward_range,
                "methods whose Q̂ lies in the reward's range"),
    "kl-strength": (lambda m: m.value in ("importance", "log-ratio"), "the methods weighted by the baseline's β"),
    "soft": (lambda m: m.value == "soft", "the soft-value methods"),
    "blocks": (lambda m: m.blockwise, "token-level methods that can decide over sampled blocks"),
    "choices": (lambda m: m.kind != "plain", "methods that choose among candidates (tokens, blocks or samples)"),
    "best-of-n": (lambda m: m.kind == "best-of-n", "best-of-N"),
    "soft-selection": (lambda m: m.soft_selection, "soft best-of-N"),
}


def in_scope(scope: str) -> tuple[str, ...]:
    """The names of the methods in ``scope`` (a key of :data:`SCOPES`), in table order."""
    test = SCOPES[scope][0]
    return tuple(m.name for m in TABLE if test(m))


def method(name: str) -> Method:
    """The row of ``name`` (a name :class:`~tqstar.params.DecodeParams` has already checked)."""
    return BY_NAME[name]


def help_table(width: int = 13) -> str:
    """The methods as ``name  doc`` lines, for ``--help``."""
    return "\n".join(f"  {m.name:<{width}}{m.doc}" for m in TABLE)


def markdown_table() -> str:
    """The README's methods table: method, what it decodes by (Q̂ for token methods), what it needs."""
    shown = {"baseline": "baseline", "reward": "reward", "baseline_reward": "r_BL"}
    lines = ["| method | Q̂(s, z) or what is decoded | needs |", "|---|---|---|"]
    for m in TABLE:
        needs = ", ".join(shown[n] for n in NEEDS if n in m.needs) or "—"
        lines.append(f"| `{m.name}` | {m.doc.replace('|', chr(92) + '|')} | {needs} |")
    return "\n".join(lines)
