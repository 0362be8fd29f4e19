"""ARGS (reward-guided search): Q̂(s, z) = r(x, [y_<t, z]), the reward of the partial text. No rollout.

The text is cut at the row's first stop string, so a candidate that completes one is valued like EOS.
"""

from __future__ import annotations

import torch

from ..state import PromptState
from ..text import response_text
from .base import ValueEstimator, score_texts


class ArgsValue(ValueEstimator):
    """The target reward of the response so far extended by the candidate."""

    def estimate(self, states: list[PromptState], candidates: torch.Tensor,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        q = torch.full(candidates.shape, float("nan"))
        pairs = [tuple(p) for p in (needed if needed is not None else torch.ones_like(q, dtype=torch.bool)).nonzero().tolist()]
        texts = [response_text(self.models.sft, states[b].response + [int(candidates[b, j])], states[b].stop)
                 for b, j in pairs]
        for (b, j), value in zip(pairs, score_texts(self.models.reward, states, [b for b, _ in pairs], texts)):
            q[b, j] = value
        return q


class NoValue(ValueEstimator):
    """Q̂ = 0: top-k decoding of the SFT model (the α = 0 reference)."""

    def known(self, states: list[PromptState], candidates: torch.Tensor,
              wanted: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(candidates.shape, dtype=torch.float32), torch.zeros(candidates.shape, dtype=torch.bool)

    def estimate(self, states: list[PromptState], candidates: torch.Tensor,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(candidates.shape, dtype=torch.float32)
