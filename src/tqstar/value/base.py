"""The value-estimator interface and the rollout machinery the rollout-based estimators share.

A *candidate* is a sequence of tokens that may follow the state s = [x, y]: a token z of the SFT top-k is the block
``(z,)``, a blockwise decision's candidate is a sampled block b of up to ``block_len`` tokens (:data:`Blocks`), and
every estimator values Q̂(s, b) from the candidate's end, [s, b], the same way whatever its length. An estimator
answers two questions for the ``(B, k)`` candidates of a decision, with NaN meaning "not computed":

* :meth:`ValueEstimator.known` — values that cost (almost) nothing: a candidate that *finishes* the response —
  one that ends with an EOS id, completes a stop string, or reaches the budget — is valued like EOS (the reward of
  the response text it ends, cut before the stop string), without a rollout; and, for greedy single rollouts, the
  candidate whose rollout the row's previous step already ran (the chosen candidate's rollout τ from ``[s, b*]``
  continues every later sequence ``[s, b*, τ[:j]]``: the next step's candidate τ[:j] needs only τ's rest, one token
  generated when j = 1; :func:`~tqstar.lm.bridge.stored_continuation` states the rule for any policy sequence).
* :meth:`ValueEstimator.estimate` — the rest, for the candidates marked ``needed`` (the decoder skips candidates
  that cannot change the choice, and values each distinct block once) as one batch.

Each rollout's budget is ``min(rollout_len, max_new_tokens − len(response) − len(b))``: it never runs past what the
response has left. A baseline with another tokenizer rolls out from text through the text bridge
(:mod:`tqstar.lm.bridge`: its sequence is its own prompt plus the re-encoded response text, its rollout's text is
appended to the SFT response text); the estimator only asks :meth:`RolloutEstimator.prefix` and
:meth:`RolloutEstimator.text`. Every text a reward reads is cut at the row's first stop string (:mod:`tqstar.text`).
Sampled rollouts draw from the row's keyed streams (:mod:`tqstar.randomness`): rollout i of candidate b at the
row's position t uses the stream ``(seed, prompt, "rollout", t, b, i)`` — keyed by the candidate's tokens, whatever
else is in the batch, so two identical candidates get identical rollouts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from ..lm.bridge import stored_continuation
from ..params import DecodeParams
from ..randomness import stream_seed
from ..reward import Reward
from ..state import Models, PromptState

Pair = tuple[int, int]  # (prompt row b, candidate column j)
Block = tuple[int, ...]
#: The candidates of a decision, ``(B, k)``: per row, k token sequences (a token z is the block ``(z,)``).
Blocks = list[list[Block]]


def token_blocks(candidates: torch.Tensor) -> Blocks:
    """The ``(B, k)`` token ids of a token-level decision as candidates: blocks of one token."""
    return [[(int(z),) for z in row] for row in candidates.tolist()]


def nan_values(candidates: Blocks) -> torch.Tensor:
    """``(B, k)`` NaN: no value computed yet."""
    return torch.full((len(candidates), len(candidates[0]) if candidates else 0), float("nan"))


class ValueEstimator(ABC):
    """Q̂(s_t, b) for the ``(B, k)`` candidates of every active row (:data:`Blocks`).

    ``policy``: the model whose rollouts value a candidate (``"sft"`` or ``"baseline"``: the method's row in
    :mod:`tqstar.methods` says which); ``None`` for an estimator that rolls nothing out.
    """

    def __init__(self, models: Models, params: DecodeParams, policy: str | None = None) -> None:
        self.models = models
        self.params = params
        self.policy = policy

    def known(self, states: list[PromptState], candidates: Blocks,
              wanted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Values available without new rollouts ``(B, k)`` (NaN where unknown), and which of them were reused
        from the previous step's rollout ``(B, k)`` bool; only for the candidates in ``wanted`` ``(B, k)`` (all when
        ``None``: a column may hold a placeholder, e.g. the tail's z′ of a row whose tail is empty)."""
        q = nan_values(candidates)
        return q, torch.zeros(q.shape, dtype=torch.bool)

    @abstractmethod
    def estimate(self, states: list[PromptState], candidates: Blocks,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        """Q̂ ``(B, k)`` for the ``needed`` candidates (all when ``None``); NaN elsewhere."""


@dataclass
class Rollouts:
    """The N rollouts of some candidates, all in one order: candidate ``i`` is ``pairs[i]`` = (row b, column j).

    ``tails[i]``: its N continuations (token ids of the rolling model; ``[]`` for a candidate that ends the
    response); ``texts[i]``: the N reward texts; ``logprobs``: the rolling model's log-probs of the continuation
    tokens, by pair, where the backend returned them (estimators that weigh rollouts by likelihood ratios read them).
    """

    candidates: Blocks  # (B, k)
    pairs: list[Pair]
    tails: list[list[list[int]]]  # (P, N)
    texts: list[list[str]]  # (P, N)
    logprobs: dict[Pair, list[list[float]]]

    @property
    def owners(self) -> list[int]:
        """The prompt row of each candidate."""
        return [b for b, _ in self.pairs]

    def flat(self, n: int) -> tuple[list[int], list[str]]:
        """The owner and the text of each of the P×N rollouts, candidate by candidate."""
        return [b for b in self.owners for _ in range(n)], [t for group in self.texts for t in group]


class RolloutEstimator(ValueEstimator):
    """Q̂ from N rollouts of the ``policy`` model from ``[s_t, b]``; subclasses turn the N rollouts into Q̂.

    A rollout stops at EOS or at its budget; one that stops at the budget is scored as the partial text it is.
    """

    def __init__(self, models: Models, params: DecodeParams, policy: str | None = "baseline") -> None:
        assert policy in ("sft", "baseline"), f"a rollout estimator rolls a model out, got policy {policy!r}"
        super().__init__(models, params, policy)
        self.lm = models.lm(self.policy)
        self.bridge = models.bridge if self.policy == "baseline" else None  # None: the policy shares the SFT ids
        self.reuse = params.reuse_rollouts and params.n_rollouts == 1 and params.rollout_temperature == 0

    @abstractmethod
    def aggregate(self, states: list[PromptState], rollouts: Rollouts) -> list[float]:
        """Q̂ for each candidate of ``rollouts`` from its N rollouts (their texts, tokens and log-probs)."""

    # ---- the two questions ------------------------------------------------------------------------------
    def known(self, states: list[PromptState], candidates: Blocks,
              wanted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.params.n_rollouts
        allowed = (torch.ones(len(candidates), len(candidates[0]), dtype=torch.bool) if wanted is None
                   else wanted).tolist()
        ends = [(b, j) for b, row in enumerate(candidates) for j, block in enumerate(row)
                if allowed[b][j] and self._ends_response(states[b], block)]
        reused = {pair: tail for pair, tail in self._reused(states, candidates).items()
                  if pair not in ends and allowed[pair[0]][pair[1]]}
        short = [(b, j) for (b, j), tail in reused.items()
                 if self._is_short(tail, self._budget(states[b], candidates[b][j]))]
        if short:  # generate the missing last tokens of each reused rollout (one, with shared ids), as one batch
            prefixes = [self.prefix(states[b], candidates[b][j]) + reused[(b, j)] for b, j in short]
            budgets = [self._budget(states[b], candidates[b][j]) - len(reused[(b, j)]) for b, j in short]
            out = self.lm.rollout(prefixes, budgets, 0.0)
            for (b, j), tokens, cost in zip(short, out.tokens, out.forward_tokens):
                reused[(b, j)] = reused[(b, j)] + tokens
                states[b].accounting.add_forward(self.policy, cost)
                states[b].accounting.rollout_tokens += len(tokens)
        mask = torch.zeros(len(candidates), len(candidates[0]), dtype=torch.bool)
        for b, j in reused:
            mask[b, j] = True
            states[b].accounting.reused_rollouts += 1
            self._remember(states[b], candidates[b][j], reused[(b, j)])
        tails = {**{pair: [[]] * n for pair in ends}, **{pair: [tail] * n for pair, tail in reused.items()}}
        return self._values(states, candidates, tails), mask

    def estimate(self, states: list[PromptState], candidates: Blocks,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        if needed is None:
            needed = torch.ones(len(candidates), len(candidates[0]), dtype=torch.bool)
        pairs = [(b, j) for b, j in needed.nonzero().tolist()]
        n = self.params.n_rollouts
        rolled = [(b, j) for b, j in pairs if not self._ends_response(states[b], candidates[b][j])]
        prefixes = [self.prefix(states[b], candidates[b][j]) for b, j in rolled for _ in range(n)]
        budgets = [self._budget(states[b], candidates[b][j]) for b, j in rolled for _ in range(n)]
        out = self.lm.rollout(prefixes, budgets, self.params.rollout_temperature, self._seeds(states, candidates, rolled))
        tails: dict[Pair, list[list[int]]] = {pair: [[]] * n for pair in pairs}  # finishing candidates: no rollout
        logprobs: dict[Pair, list[list[float]]] = {}
        for i, (b, j) in enumerate(rolled):
            tails[(b, j)] = out.tokens[i * n:(i + 1) * n]
            if out.logprobs is not None:
                logprobs[(b, j)] = out.logprobs[i * n:(i + 1) * n]
            acct = states[b].accounting
            for tokens, cost in zip(tails[(b, j)], out.forward_tokens[i * n:(i + 1) * n]):
                acct.add_forward(self.policy, cost)
                acct.rollouts += 1
                acct.rollout_tokens += len(tokens)
            self._remember(states[b], candidates[b][j], tails[(b, j)][0])
        return self._values(states, candidates, tails, logprobs)

    # ---- the policy's view of a state ----------------------------------------------------------------------
    def prefix(self, state: PromptState, block: Block) -> list[int]:
        """The sequence the policy rolls out from for candidate ``block``: its prompt ids + the response + the
        block, or through the text bridge its prompt ids + its encoding of the response text with the block."""
        if self.bridge is None:
            return state.seq(self.policy) + list(block)
        return self.bridge.prefix(state.prompt_ids[self.policy], state.response + list(block),
                                  self._budget(state, block))

    def text(self, state: PromptState, block: Block, tail: list[int]) -> str:
        """The reward text of the response continued by ``block`` and the policy's rollout ``tail``."""
        if self.bridge is None:
            return state.decoded(self.lm).text([*block, *tail])
        return self.bridge.text(state.response + list(block), tail, state.stop)

    # ---- helpers ----------------------------------------------------------------------------------------
    def _ends_response(self, state: PromptState, block: Block) -> bool:
        """Whether committing ``block`` would finish the response: it ends with EOS (the decoder's, the SFT
        model's), completes a stop string, or reaches the budget. Such a candidate is valued by its own text,
        without a rollout."""
        return (block[-1] in self.models.sft.eos_token_ids or self._budget(state, block) <= 0
                or state.decoded(self.models.sft).hits_stop(block))

    def _budget(self, state: PromptState, block: Block) -> int:
        """Rollout length after a candidate: ``rollout_len``, capped by what the response has left after it."""
        return min(self.params.rollout_len, state.remaining - len(block))

    def _seeds(self, states: list[PromptState], candidates: Blocks, rolled: list[Pair]) -> list[int] | None:
        """One keyed stream per rollout (``None`` for greedy rollouts)."""
        if self.params.rollout_temperature == 0:
            return None
        return [stream_seed(states[b].stream_seed_base, states[b].key, "rollout", states[b].step, candidates[b][j], i)
                for b, j in rolled for i in range(self.params.n_rollouts)]

    def _remember(self, state: PromptState, block: Block, tail: list[int]) -> None:
        if self.reuse:
            state.current_rollouts[tuple(self.prefix(state, block))] = tail

    def _reused(self, states: list[PromptState], candidates: Blocks) -> dict[Pair, list[int]]:
        """Candidates whose greedy rollout the row's previous step already ran (from the chosen candidate's)."""
        found: dict[Pair, list[int]] = {}
        if not self.reuse:
            return found
        for b, state in enumerate(states):
            if not state.previous_rollouts:
                continue
            for j, block in enumerate(candidates[b]):
                tail = stored_continuation(state.previous_rollouts, self.prefix(state, block),
                                           self._budget(state, block), self.lm.eos_token_ids)
                if tail is not None:
                    found[(b, j)] = tail
        return found

    def _is_short(self, tail: list[int], budget: int) -> bool:
        """A reused rollout lacks its last token unless it already ended with EOS or fills the budget."""
        return len(tail) < budget and not (tail and tail[-1] in self.lm.eos_token_ids)

    def _values(self, states: list[PromptState], candidates: Blocks, tails: dict[Pair, list[list[int]]],
                logprobs: dict[Pair, list[list[float]]] | None = None) -> torch.Tensor:
        """Q̂ ``(B, k)`` for the candidates in ``tails`` (their N rollout continuations); NaN elsewhere. ``logprobs``:
        the rolling model's log-probs of those tokens where the backend returned them (for estimators that weigh
        rollouts by likelihood ratios)."""
        q = nan_values(candidates)
        if not tails:
            return q
        texts = [[self.text(states[b], candidates[b][j], t) for t in group] for (b, j), group in tails.items()]
        rollouts = Rollouts(candidates, list(tails), list(tails.values()), texts, logprobs or {})
        for (b, j), value in zip(tails, self.aggregate(states, rollouts)):
            q[b, j] = value
        return q


def score_texts(reward: Reward, states: list[PromptState], owners: list[int], texts: list[str]) -> list[float]:
    """Score ``texts`` (``owners[i]`` is the prompt row of text i) with ``reward`` in one batch.

    Identical (prompt, text) pairs are scored once, and pairs the reward has cached not at all; each prompt is
    charged for the texts actually evaluated for it.
    """
    pairs = [(states[b].prompt, t) for b, t in zip(owners, texts)]
    unique = list(dict.fromkeys(pairs))
    fresh = {pair for pair in unique if not reward.is_cached(*pair)}
    values = dict(zip(unique, reward.score([p for p, _ in unique], [t for _, t in unique])))
    charged: set[tuple[int, str, str]] = set()
    for b, pair in zip(owners, pairs):
        if pair in fresh and (b, *pair) not in charged:
            charged.add((b, *pair))
            states[b].accounting.reward_calls += 1
    return [values[p] for p in pairs]
