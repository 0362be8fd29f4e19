"""ARGS (reward-guided search): Q̂(s, z) = r(x, [y_<t, z]), the reward of the partial text. No rollout."""

from __future__ import annotations

import torch

from ..state import PromptState
from .base import ValueEstimator, score_texts


class ArgsValue(ValueEstimator):
    """The target reward of the response so far extended by the candidate."""

    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        sft = self.models.sft
        texts = [sft.decode(s.response + [z]) for s, row in zip(states, candidates.tolist()) for z in row]
        return score_texts(self.models.reward, states, texts)  # (B, k)


class NoValue(ValueEstimator):
    """Q̂ = 0: top-k decoding of the SFT model (the α = 0 reference)."""

    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        return torch.zeros(candidates.shape, dtype=torch.float32)
