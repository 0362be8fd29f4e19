"""TQ* indirect transfer: rollouts of a baseline aligned to a *different* reward r_BL, importance-weighted.

If the baseline is the KL-regularised optimum for r_BL, ρ_BL ∝ ρ_sft·exp(r_BL/β), then ρ*_r ∝ ρ_BL·exp((r − r_BL)/β),
so for the N rollouts τ_i of candidate z::

    w_i = softmax_i((r(τ_i) − r_BL(τ_i)) / β)        (self-normalised over the N rollouts, in log space)
    Q̂(s, z) = Σ_i w_i · r(τ_i)

estimates E_{ρ*_r}[r | s, z]. With N = 1 the single weight is 1 and this *is* direct transfer. β should match
the strength of the baseline's alignment (DPO's β); rollouts must be sampled (rollout_temperature > 0) for
the weights to be meaningful.
"""

from __future__ import annotations

import torch

from ..state import PromptState
from .base import ValueEstimator, rollout_texts, score_texts


def indirect_q(r: torch.Tensor, r_bl: torch.Tensor, beta: float, log_mass: torch.Tensor | None = None) -> torch.Tensor:
    """Self-normalised importance-weighted mean of ``r`` over the last axis.

    ``r`` and ``r_bl`` are ``(..., N)``. ``log_mass`` (optional, same shape) adds log-probabilities of the
    samples for exact enumeration over all trajectories instead of N samples.
    """
    log_w = (r - r_bl) / beta  # (..., N)
    if log_mass is not None:
        log_w = log_w + log_mass
    return (torch.softmax(log_w, dim=-1) * r).sum(dim=-1)


class IndirectValue(ValueEstimator):
    """Baseline rollouts scored by the target r and the baseline's reward r_BL, weighted by exp((r − r_BL)/β)."""

    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        texts = rollout_texts(self.models, "baseline", states, candidates, self.params, step)
        shape = (*candidates.shape, self.params.n_rollouts)
        r = score_texts(self.models.reward, states, texts).view(shape)  # (B, k, N)
        r_bl = score_texts(self.models.baseline_reward, states, texts).view(shape)  # (B, k, N)
        return indirect_q(r, r_bl, self.params.beta)  # (B, k)
