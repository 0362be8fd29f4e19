"""ARGS (reward-guided search): Q̂(s, b) = r(x, [y_<t, b]), the reward of the partial text. No rollout.

The text is cut at the row's first stop string, so a candidate that completes one is valued like EOS. A candidate
that ends the response is valued by the response's own reward — which is how ``bon`` and ``soft-bon`` value their
samples (blocks of the whole response) with this estimator.
"""

from __future__ import annotations

import torch

from ..state import PromptState
from .base import Blocks, ValueEstimator, nan_values, score_texts


class ArgsValue(ValueEstimator):
    """The target reward of the response so far extended by the candidate.

    The candidate's tokens are the SFT model's, or (``bon``/``soft-bon`` of the baseline) those of ``policy``."""

    def estimate(self, states: list[PromptState], candidates: Blocks,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        q = nan_values(candidates)
        lm = self.models.lm(self.policy or "sft")
        pairs = [tuple(p) for p in (needed if needed is not None else torch.ones_like(q, dtype=torch.bool)).nonzero().tolist()]
        texts = [states[b].decoded(lm).text(candidates[b][j]) for b, j in pairs]
        for (b, j), value in zip(pairs, score_texts(self.models.reward, states, [b for b, _ in pairs], texts)):
            q[b, j] = value
        return q


class NoValue(ValueEstimator):
    """Q̂ = 0: top-k decoding of the SFT model (the α = 0 reference)."""

    def known(self, states: list[PromptState], candidates: Blocks,
              wanted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        q = torch.zeros_like(nan_values(candidates))
        return q, torch.zeros(q.shape, dtype=torch.bool)

    def estimate(self, states: list[PromptState], candidates: Blocks,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(nan_values(candidates))
