"""TQ* direct transfer: Q̂(s, z) = (1/N) Σ_i r(x, [y_<t, z, τ_i]),  τ_i ~ π_baseline(· | s, z).

The baseline is a model already aligned to the *target* reward r (e.g. a DPO model); its rollouts, scored
by r, estimate the target's optimal Q* (Chakraborty et al., 2024, Transfer Q*).
"""

from __future__ import annotations

import torch

from ..state import PromptState
from .base import ValueEstimator, rollout_texts, score_texts


class DirectValue(ValueEstimator):
    """Mean target reward of N rollouts of the ``policy`` model (the baseline) from ``[s, z]``."""

    policy = "baseline"

    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        texts = rollout_texts(self.models, self.policy, states, candidates, self.params, step)
        rewards = score_texts(self.models.reward, states, texts)  # (B, k·N)
        return rewards.view(*candidates.shape, self.params.n_rollouts).mean(dim=-1)  # (B, k)
