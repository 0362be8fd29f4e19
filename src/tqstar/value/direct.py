"""TQ* direct transfer: Q̂(s, z) = (1/N) Σ_i r(x, [y_<t, z, τ_i]),  τ_i ~ π_baseline(· | s, z).

The baseline is a model already aligned to the *target* reward r (e.g. a DPO model); its rollouts, scored
by r, estimate the target's optimal Q* (Chakraborty et al., 2024, Transfer Q*).
"""

from __future__ import annotations

from ..state import PromptState
from .base import RolloutEstimator, score_texts


class DirectValue(RolloutEstimator):
    """Mean target reward of N rollouts of the ``policy`` model (the baseline) from ``[s, z]``."""

    policy = "baseline"

    def aggregate(self, states: list[PromptState], owners: list[int], texts: list[list[str]]) -> list[float]:
        n = self.params.n_rollouts
        flat = score_texts(self.models.reward, states, [b for b in owners for _ in range(n)],
                           [t for group in texts for t in group])
        return [sum(flat[i * n:(i + 1) * n]) / n for i in range(len(texts))]
