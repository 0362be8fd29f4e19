"""TQ* direct transfer: Q̂(s, b) = (1/N) Σ_i r(x, [y_<t, b, τ_i]),  τ_i ~ π_baseline(· | s, b).

b is the candidate: a token z of the SFT top-k, or a sampled block of tokens (``block_len``). The baseline is a
model already aligned to the *target* reward r (e.g. a DPO model); its rollouts, scored by r, estimate the target's
optimal Q* (Chakraborty et al., 2024, Transfer Q*).

Controlled decoding (CD) is the same estimator with the SFT model rolling out (``policy="sft"``, the ``cd`` row of
:mod:`tqstar.methods`): Q̂(s, b) = (1/N) Σ_i r(x, [y_<t, b, τ_i]),  τ_i ~ π_sft(· | s, b). It estimates Q^{π_sft},
the value of the *unaligned* policy, which is the paper's main point of comparison (blockwise: Mudgal et al.'s
blockwise CD with the prefix scorer replaced by a rollout scored by r).
"""

from __future__ import annotations

from ..state import PromptState
from .base import RolloutEstimator, Rollouts, score_texts


class DirectValue(RolloutEstimator):
    """Mean target reward of N rollouts of the ``policy`` model (the baseline; the SFT model for CD) from
    ``[s, b]``."""

    def aggregate(self, states: list[PromptState], rollouts: Rollouts) -> list[float]:
        n = self.params.n_rollouts
        flat = score_texts(self.models.reward, states, *rollouts.flat(n))
        return [sum(flat[i * n:(i + 1) * n]) / n for i in range(len(rollouts.pairs))]
