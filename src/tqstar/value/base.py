"""The value-estimator interface and the rollout machinery the rollout-based estimators share.

An estimator answers two questions for the ``(B, k)`` candidates of a step, with NaN meaning "not computed":

* :meth:`ValueEstimator.known` — values that cost (almost) nothing: a candidate that is EOS (the response is
  finished: Q = its reward), and, for greedy single rollouts, the candidate whose rollout the previous step
  already ran (the chosen candidate's rollout from ``[s, z*]`` is, one token shorter, the rollout of its own
  first token from the next state; only its last token is generated).
* :meth:`ValueEstimator.estimate` — the rest, for the candidates marked ``needed`` (the decoder prunes
  candidates that cannot win) as one batch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..params import DecodeParams
from ..reward import Reward
from ..state import Models, PromptState

Pair = tuple[int, int]  # (prompt row b, candidate column j)


class ValueEstimator(ABC):
    """Q̂(s_t, z) for the top-k candidates of every active prompt."""

    def __init__(self, models: Models, params: DecodeParams) -> None:
        self.models = models
        self.params = params

    def known(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        """Values available without new rollouts, ``(B, k)``; NaN where unknown."""
        return torch.full(candidates.shape, float("nan"))

    @abstractmethod
    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        """Q̂ ``(B, k)`` for the ``needed`` candidates (all when ``None``); NaN elsewhere."""


class RolloutEstimator(ValueEstimator):
    """Q̂ from N rollouts of the ``policy`` model from ``[s_t, z]``; subclasses turn the N texts into Q̂.

    A rollout stops at EOS or after ``rollout_len`` tokens; one that stops at the length limit is scored as
    the partial text it is.
    """

    policy = "baseline"

    def __init__(self, models: Models, params: DecodeParams) -> None:
        super().__init__(models, params)
        self.lm = models.lm(self.policy)
        self.reuse = params.reuse_rollouts and params.n_rollouts == 1 and params.rollout_temperature == 0
        self._previous: dict[tuple[int, ...], list[int]] = {}  # [s, z] → greedy rollout, from the last step
        self._current: dict[tuple[int, ...], list[int]] = {}
        self._step = -1

    @abstractmethod
    def aggregate(self, states: list[PromptState], owners: list[int], texts: list[list[str]]) -> list[float]:
        """Q̂ for each candidate from its N rollout texts (``owners[i]`` is the candidate's prompt row)."""

    # ---- the two questions ------------------------------------------------------------------------------
    def known(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        self._begin(step)
        eos = [(b, j) for b, row in enumerate(candidates.tolist()) for j, z in enumerate(row)
               if z in self.lm.eos_token_ids]
        reused = self._reused(states, candidates)  # (b, j) → continuation after z (maybe one token short)
        short = [pair for pair, tail in reused.items() if self._is_short(tail)]
        if short:  # generate the one missing last token of each reused rollout, as one batch
            prefixes = [states[b].seq(self.policy) + [int(candidates[b, j])] + reused[(b, j)] for b, j in short]
            out = self.lm.rollout(prefixes, 1, 0.0)
            for (b, j), tokens, cost in zip(short, out.tokens, out.forward_tokens):
                reused[(b, j)] = reused[(b, j)] + tokens
                states[b].accounting.add_forward(self.policy, cost)
                states[b].accounting.rollout_tokens += len(tokens)
        for b, j in reused:
            states[b].accounting.reused_rollouts += 1
            self._remember(states[b], int(candidates[b, j]), reused[(b, j)])
        n = self.params.n_rollouts
        tails = {**{pair: [[]] * n for pair in eos}, **{pair: [tail] * n for pair, tail in reused.items()}}
        return self._values(states, candidates, tails)

    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        self._begin(step)
        if needed is None:
            needed = torch.ones(candidates.shape, dtype=torch.bool)
        pairs = [(b, j) for b, j in needed.nonzero().tolist()]
        n = self.params.n_rollouts
        rolled = [(b, j) for b, j in pairs if int(candidates[b, j]) not in self.lm.eos_token_ids]
        prefixes = [states[b].seq(self.policy) + [int(candidates[b, j])] for b, j in rolled for _ in range(n)]
        out = self.lm.rollout(prefixes, self.params.rollout_len, self.params.rollout_temperature,
                              seed=self.params.step_seed(step))
        tails: dict[Pair, list[list[int]]] = {pair: [[]] * n for pair in pairs}  # EOS candidates: no rollout
        for i, (b, j) in enumerate(rolled):
            tails[(b, j)] = out.tokens[i * n:(i + 1) * n]
            acct = states[b].accounting
            for tokens, cost in zip(tails[(b, j)], out.forward_tokens[i * n:(i + 1) * n]):
                acct.add_forward(self.policy, cost)
                acct.rollouts += 1
                acct.rollout_tokens += len(tokens)
            self._remember(states[b], int(candidates[b, j]), tails[(b, j)][0])
        return self._values(states, candidates, tails)

    # ---- reuse bookkeeping ------------------------------------------------------------------------------
    def _begin(self, step: int) -> None:
        if step != self._step:  # a new step: last step's rollouts become the reusable ones
            self._previous, self._current, self._step = self._current, {}, step

    def _remember(self, state: PromptState, z: int, tail: list[int]) -> None:
        if self.reuse:
            self._current[tuple(state.seq(self.policy)) + (z,)] = tail

    def _reused(self, states: list[PromptState], candidates: torch.Tensor) -> dict[Pair, list[int]]:
        """Candidates whose greedy rollout the last step already ran (from the chosen token's rollout)."""
        found: dict[Pair, list[int]] = {}
        if not self.reuse:
            return found
        for b, state in enumerate(states):
            rollout = self._previous.get(tuple(state.seq(self.policy)))
            if not rollout or rollout[0] in self.lm.eos_token_ids:
                continue
            row = candidates[b].tolist()
            if rollout[0] in row:
                found[(b, row.index(rollout[0]))] = list(rollout[1:])
        return found

    def _is_short(self, tail: list[int]) -> bool:
        """A reused rollout lacks its last token unless it already ended with EOS."""
        return len(tail) < self.params.rollout_len and not (tail and tail[-1] in self.lm.eos_token_ids)

    def _values(self, states: list[PromptState], candidates: torch.Tensor,
                tails: dict[Pair, list[list[int]]]) -> torch.Tensor:
        """Q̂ ``(B, k)`` for the candidates in ``tails`` (their N rollout continuations); NaN elsewhere."""
        q = torch.full(candidates.shape, float("nan"))
        if not tails:
            return q
        texts = [[self.lm.decode(states[b].response + [int(candidates[b, j])] + t) for t in group]
                 for (b, j), group in tails.items()]
        for (b, j), value in zip(tails, self.aggregate(states, [b for b, _ in tails], texts)):
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
