"""TQ* indirect transfer: rollouts of a baseline aligned to a *different* reward r_BL, importance-weighted.

If the baseline is the KL-regularised optimum for r_BL, ρ_BL ∝ ρ_sft·exp(r_BL/β), then ρ*_r ∝ ρ_BL·exp((r − r_BL)/β),
so for the N rollouts τ_i of candidate b (a token, or a block)::

    w_i = softmax_i((r(τ_i) − r_BL(τ_i)) / β)        (self-normalised over the N rollouts, in log space)
    Q̂(s, b) = Σ_i w_i · r(τ_i)

estimates E_{ρ*_r}[r | s, b]. With N = 1 the single weight is 1 and this *is* direct transfer. β should match
the strength of the baseline's alignment (DPO's β); rollouts must be sampled (rollout_temperature > 0) for
the weights to be meaningful.
"""

from __future__ import annotations

import torch

from ..state import PromptState
from .base import RolloutEstimator, Rollouts, score_texts


def indirect_q(r: torch.Tensor, r_bl: torch.Tensor, beta: float, log_mass: torch.Tensor | None = None) -> torch.Tensor:
    """Self-normalised importance-weighted mean of ``r`` over the last axis.

    ``r`` and ``r_bl`` are ``(..., N)``. ``log_mass`` (optional, same shape) adds log-probabilities of the
    samples for exact enumeration over all trajectories instead of N samples.
    """
    log_w = (r - r_bl) / beta  # (..., N)
    if log_mass is not None:
        log_w = log_w + log_mass
    return (torch.softmax(log_w, dim=-1) * r).sum(dim=-1)


class IndirectValue(RolloutEstimator):
    """Baseline rollouts scored by the target r and the baseline's reward r_BL, weighted by exp((r − r_BL)/β)."""

    def aggregate(self, states: list[PromptState], rollouts: Rollouts) -> list[float]:
        n = self.params.n_rollouts
        flat_owners, flat_texts = rollouts.flat(n)
        r = torch.tensor(score_texts(self.models.reward, states, flat_owners, flat_texts)).view(-1, n)  # (P, N)
        r_bl = torch.tensor(score_texts(self.models.baseline_reward, states, flat_owners, flat_texts)).view(-1, n)
        return indirect_q(r, r_bl, self.params.beta).tolist()  # (P,)
