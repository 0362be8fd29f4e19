"""What the decoder tracks per prompt, and what every method returns: :class:`Response` with accounting.

:func:`commit_tokens` ends every method's step: it appends each row's tokens — one token, or the block a blockwise
decision chose — and finishes the rows that reached EOS, a stop string or their budget."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .text import ResponseText

if TYPE_CHECKING:
    from .lm.base import LanguageModel
    from .lm.bridge import TextBridge
    from .reward import Reward


#: What a response's ``kl`` is: ``"exact"`` — the sum over steps of KL(π_dec(·|s_t) ‖ π_sft(·|s_t)) of the distribution
#: each token was drawn from (token-level and plain decoding, the ``mean`` and ``rollout`` tails included);
#: ``"estimate"`` — the sum over decisions of a plug-in estimate of the selection's KL from the values it saw
#: (blockwise decisions, best-of-N; :mod:`tqstar.blocks`), or of the ``rolling`` tail's KL from its one tail token
#: (exact only for an optimal baseline: :mod:`tqstar.tail`).
KL_KINDS = ("exact", "estimate")


@dataclass
class Models:
    """The models and rewards one engine decodes with; ``None`` where a method does not need one. ``bridge``: the
    text bridge when the baseline has another tokenizer (:mod:`tqstar.lm.bridge`), else ``None``."""

    sft: LanguageModel
    baseline: LanguageModel | None = None
    reward: Reward | None = None
    baseline_reward: Reward | None = None
    bridge: TextBridge | None = None

    def lm(self, role: str) -> LanguageModel:
        model = self.sft if role == "sft" else self.baseline
        assert model is not None, f"no {role} model"
        return model


@dataclass
class Accounting:
    """Compute spent on one response, reported the same way by every method.

    ``*_forward_tokens`` count tokens each model actually ran (cached prefix tokens are not re-counted);
    ``rollouts`` and ``rollout_tokens`` count continuations run and their generated tokens (the value rollouts,
    and the sampled blocks of a blockwise decision or best-of-N, whole, even past a stop string);
    ``reused_rollouts`` counts candidates valued from the previous step's rollout (at the cost of at most one
    generated token); ``pruned`` counts candidates whose value was never computed because it could not change the
    choice (pruned by the reward bound, or every candidate when α = 0 or k = 1); ``reward_calls`` counts texts a
    reward actually evaluated during decoding (identical or cached texts are scored once); ``steps`` counts tokens
    committed (a blockwise decision commits its block in one step, best-of-N its whole sample); ``wall_time_s``
    runs from this response's first step until it finished; ``batch_size`` is the most rows that were stepped
    together with it (they shared that wall time).
    """

    sft_forward_tokens: int = 0
    baseline_forward_tokens: int = 0
    rollouts: int = 0
    rollout_tokens: int = 0
    reused_rollouts: int = 0
    pruned: int = 0
    reward_calls: int = 0
    steps: int = 0
    wall_time_s: float = 0.0
    batch_size: int = 1

    def add_forward(self, role: str, tokens: int) -> None:
        if role == "sft":
            self.sft_forward_tokens += tokens
        else:
            self.baseline_forward_tokens += tokens


@dataclass
class PromptState:
    """One prompt being decoded — a *row* — with everything that belongs to it alone.

    A row's output depends only on this state and the shared decoding parameters
    (:meth:`~tqstar.params.DecodeParams.group_key`): its random streams are keyed by ``seed`` (``rollout_seed``
    for rollouts when set), ``key`` (the prompt's identity, :func:`tqstar.randomness.prompt_key`) and its own
    position ``step``; its rollout-reuse memory is its own. So rows can join and leave a batch at any step.

    Attributes:
        prompt: the prompt text rewards read (for a chat message list: the last user message).
        prompt_ids: the prompt's token ids per role (``"sft"``, ``"baseline"``).
        key: the prompt's identity for its random streams.
        seed, rollout_seed, max_new_tokens, stop: this row's settings.
        response: the response token ids so far; ``step`` (read-only): the row's position, ``len(response)`` — what
            its keyed streams are keyed by, so a decision's randomness does not depend on how many decisions came
            before (one per token, or one per block).
        previous_rollouts / current_rollouts: greedy rollouts run at the row's previous / current step, keyed
            by the rolled-out sequence ``[s, z]`` (what rollout reuse reads and writes).
        accounting, kl, kl_bound, trace: bookkeeping, one ``kl`` / ``kl_bound`` entry per decision; ``kl_kind``: what
            the ``kl`` entries are (:data:`KL_KINDS`; ``None`` while nothing is recorded); ``started``: when the
            row's first step began.
        finish_reason (``"eos"``, ``"stop"``, ``"length"``) and text: set when the row finishes.
        texts: the response's :class:`~tqstar.text.ResponseText` per model that decodes it (:meth:`decoded`), with
            the response list it follows.
    """

    prompt: str
    prompt_ids: dict[str, list[int]]
    key: str = ""
    seed: int = 0
    rollout_seed: int | None = None
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    response: list[int] = field(default_factory=list)
    previous_rollouts: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    current_rollouts: dict[tuple[int, ...], list[int]] = field(default_factory=dict)
    accounting: Accounting = field(default_factory=Accounting)
    kl: list[float] = field(default_factory=list)
    kl_bound: list[float] = field(default_factory=list)
    kl_kind: str | None = None
    trace: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    text: str = ""
    started: float | None = None
    texts: dict[int, tuple[ResponseText, list[int]]] = field(default_factory=dict, init=False, repr=False,
                                                             compare=False)

    def seq(self, role: str) -> list[int]:
        """The sequence the ``role`` model sees: its own prompt ids, then the response so far."""
        return self.prompt_ids[role] + self.response

    def decoded(self, lm: LanguageModel) -> ResponseText:
        """The response as ``lm`` decodes it, kept incrementally: its text, stop strings and reward texts with more
        tokens after it cost what the new tokens cost (:class:`~tqstar.text.ResponseText`). The response only
        grows (:meth:`commit`); one that was replaced or cut starts a new text."""
        text, follows = self.texts.get(id(lm), (None, None))
        if text is None or text.lm is not lm or follows is not self.response or len(text.ids) > len(self.response):
            text = ResponseText(lm, self.stop)
            self.texts[id(lm)] = text, self.response
        if len(text.ids) < len(self.response):
            text.extend(self.response[len(text.ids):])
        return text

    @property
    def step(self) -> int:
        """The row's position: tokens committed so far (a token step moves it by one, a block step by the block)."""
        return len(self.response)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def remaining(self) -> int:
        """Tokens the response may still grow by."""
        return self.max_new_tokens - len(self.response)

    @property
    def stream_seed_base(self) -> int:
        """The seed of this row's rollout streams (``rollout_seed`` when set, else ``seed``)."""
        return self.seed if self.rollout_seed is None else self.rollout_seed

    def begin_step(self, rows_in_step: int) -> None:
        """Start the clock at the row's first step; note how many rows share the step."""
        if self.started is None:
            self.started = time.perf_counter()
        self.accounting.batch_size = max(self.accounting.batch_size, rows_in_step)

    def commit(self, tokens: Sequence[int]) -> None:
        """Append ``tokens`` (a token, or a block): the row moves past them, and this step's rollouts become the
        reusable ones."""
        assert len(tokens) > 0, "a step commits at least one token"
        self.response.extend(int(t) for t in tokens)
        self.accounting.steps += len(tokens)
        self.previous_rollouts, self.current_rollouts = self.current_rollouts, {}

    def finish(self, reason: str, text: str) -> None:
        self.finish_reason = reason
        self.text = text
        assert self.started is not None, "a row finishes after its first step"
        self.accounting.wall_time_s = time.perf_counter() - self.started


def commit_tokens(rows: list[PromptState], tokens: Sequence[Sequence[int]], lm: LanguageModel) -> list[PromptState]:
    """Append each row's tokens (one, or a block that EOS or a stop string can end only at its last token); finish
    rows at EOS, a stop string or their budget. Returns the rows that finished."""
    finished = []
    for row, block in zip(rows, tokens):
        row.commit(block)
        text = row.decoded(lm)
        reason = ("eos" if block[-1] in lm.eos_token_ids else "stop" if text.hits_stop()
                  else "length" if row.remaining <= 0 else None)
        if reason is not None:
            row.finish(reason, text.text())
            finished.append(row)
    return finished


@dataclass
class Response:
    """A finished response with its reward, KL to the SFT model and accounting.

    ``kl_kind`` says what ``kl`` is (:data:`KL_KINDS`); ``kl_bound`` is always a bound; both are ``None`` where the
    method's KL to the SFT model is not tracked. Token-level methods: ``kl`` sums the exact per-step
    KL(π_dec(·|s_t) ‖ π_sft(·|s_t)) of the distribution each token was decoded from (π_sft normalised over the full
    vocabulary; a greedy choice is a point mass; with ``tail`` on and a sampled choice π_dec covers the whole
    vocabulary, its KL in closed form and its bound α·(R_max − R_min) at temperature 1 with Q̂ in the reward's range,
    else ``None`` — the ``rolling`` tail's KL is exact only for an optimal baseline, so it is labelled an estimate:
    :mod:`tqstar.tail`; with ``tail: off`` π_dec is zero outside the top-k). ``kl_bound`` sums a per-step bound that
    holds for the policy actually run (``tail: off`` or greedy):
    −log min_{z ∈ top-k} π_sft(z|s_t), which bounds the KL of *any* π_dec on the top-k (greedy or any
    temperature); at temperature 1 with a reward that declares its range, the smaller of that and
    α·(R_max − R_min) + log(1/π_sft(top-k|s_t)), the bound of softmax(score) (not for ``tq-soft``/``eft``, whose Q̂
    is not in the reward's range). Plain ``sft``/``baseline`` decoding reports the exact per-step KL of the
    distribution it sampled from, over the full vocabulary (local models; ``None`` for served ones) and no bound;
    ``kl_bound``: none. Blockwise decisions (``block_len``), ``bon`` and ``soft-bon`` choose one of k samples of
    the SFT model: ``kl`` sums a plug-in *estimate* of each decision's KL from the k values, ``kl_bound`` sums
    log k − (k−1)/k (any selection among k samples; soft selection with values in the reward's range: the smaller
    soft bound), both only when the samples come from the SFT model at temperature 1 (:mod:`tqstar.blocks`;
    ``kl_per_step`` then holds one entry per decision).
    """

    prompt: str
    method: str
    text: str
    token_ids: list[int]
    finish_reason: str
    reward: float | None
    kl: float | None
    kl_bound: float | None
    kl_per_step: list[float]
    accounting: Accounting
    trace: list[dict[str, Any]] | None = None
    kl_kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
