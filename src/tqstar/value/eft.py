"""Emulated fine-tuning (EFT) / proxy-tuning: the baseline's token-level log-ratio as the value. No rollout.

    Q̂(s, z) = β · (log π_BL(z | s) − log π_sft(z | s))
    score(z) = log π_sft(z | s) + α·Q̂(s, z) = (1 − λ)·log π_sft(z | s) + λ·log π_BL(z | s),   λ = α·β

softmax(score) is the geometric mixture π_sft^(1−λ)·π_BL^λ renormalised over the SFT's top-k candidates (k = the
vocabulary size gives the full vocabulary). β·log(π_BL/π_sft) is the baseline's implicit per-token reward when it
was aligned at strength β (DPO's β); then at α = 1/β (λ = 1) decoding reproduces the baseline (over the top-k),
and if the baseline is the optimum for r at β, ``eft`` at α equals ``tq-soft`` at α with ``soft_beta`` = β exactly
(one rollout gives log W(s, z), and β·log W(s, z) − β·log W(s) is β·log(π_BL/π_sft)). No reward is read; it is
the zero-rollout peer every rollout method must beat.
"""

from __future__ import annotations

import torch

from ..state import PromptState
from .base import Blocks, ValueEstimator


class EFTValue(ValueEstimator):
    """β·(log π_BL(z|s) − log π_sft(z|s)) for every candidate token; two next-token calls, no rollout. Its candidates
    are single tokens (``block_len`` does not apply to ``eft``)."""

    def estimate(self, states: list[PromptState], candidates: Blocks,
                 needed: torch.Tensor | None = None) -> torch.Tensor:
        assert all(len(block) == 1 for row in candidates for block in row), "eft values single tokens"
        tokens = torch.tensor([[block[0] for block in row] for row in candidates], dtype=torch.long)  # (B, k)
        logp = {}
        for role in ("sft", "baseline"):
            values, costs = self.models.lm(role).next_token_logprobs([s.seq(role) for s in states], tokens)
            for state, cost in zip(states, costs):
                state.accounting.add_forward(role, cost)
            logp[role] = values.float().cpu()  # (B, k)
        q = self.params.beta * (logp["baseline"] - logp["sft"])  # (B, k)
        return q if needed is None else torch.where(needed, q, torch.full_like(q, float("nan")))
