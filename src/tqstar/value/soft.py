"""Soft values: the exact per-token factor of the KL-regularised optimum, from rollouts of any model.

The optimum of E[r] − β·KL(ρ ‖ ρ_sft) factorises over tokens with a *soft* value::

    π*(z | s) ∝ π_sft(z | s) · exp(V(s, z) / β),     V(s, z) = β · log E_{y ~ ρ_sft(· | s, z)}[exp(r(y) / β)]

so decoding with score = log π_sft + α·V̂ and α = 1/β (the default β) samples π* when V̂ is exact. With N rollouts
y_i from a model ρ (the baseline for ``tq-soft``, the SFT model for ``soft-cd``) importance weighting gives, for a
candidate b (a token z, or a block of tokens)::

    V̂(s, b) = β · log( (1/N) Σ_i exp( r(y_i)/β + log ρ_sft(y_i | s, b) − log ρ(y_i | s, b) ) )

computed in log space (logsumexp). It needs no knowledge of the baseline's own reward, so it serves direct and
indirect transfer alike. If the baseline is the optimum for r at strength β, every term equals log W(s, z), a
constant: one rollout gives the exact value. ``soft-cd`` is the same with SFT rollouts (ratio 1).

Rollouts must be *samples* of ρ (temperature 1, full distribution). A rollout cut at ``rollout_len`` tokens
without EOS is scored as the partial text it is and its ratio covers only its tokens, so V̂ then estimates
β·log E_{ρ_sft}[exp(r(y_≤L)/β)] — the soft value of the *partial* text under SFT's L-token continuations (what
``soft-cd`` estimates too), not V; the one-rollout exactness holds only for rollouts that reach EOS. Both are
biased for finite N (Jensen: E[V̂] ≤ V) and consistent as N grows.
"""

from __future__ import annotations

import math

import torch

from ..state import PromptState
from .base import Blocks, Pair, RolloutEstimator, Rollouts, score_texts


def soft_value(r: torch.Tensor, log_ratio: torch.Tensor, beta: float) -> torch.Tensor:
    """β·log mean_i exp(r_i/β + log_ratio_i) over the last axis: ``r`` and ``log_ratio`` ``(..., N)`` → ``(...)``.

    Computed as M + β·log mean_i exp((u_i − M)/β) with u_i = r_i + β·log_ratio_i and M = max_i u_i (the same
    number: β·log Σ exp(u_i/β) = M + β·log Σ exp((u_i − M)/β)). Every exponent is ≤ 0 and the result lies in
    [M − β·log N, M], so it is finite for any finite inputs: r/β is never formed, which overflowed for a small β
    (``--alpha`` near 0 makes β = 1/α large, ``--soft-beta`` small), and β·(…) never multiplies a large logsumexp."""
    n = r.shape[-1]
    u = r.double() + beta * log_ratio.double()  # (..., N)
    top = u.max(dim=-1, keepdim=True).values  # (..., 1)
    return top.squeeze(-1) + beta * (torch.logsumexp((u - top) / beta, dim=-1) - math.log(n))


class SoftValue(RolloutEstimator):
    """The soft value from N rollouts of the ``policy`` model, weighted by ρ_sft/ρ of their tokens: ``tq-soft``
    (the baseline rolls out) and ``soft-cd`` (the SFT model rolls out, so the ratio is 1 and nothing is scored).

    The baseline's log-probs come with its rollouts (or from ``score_continuations`` when the backend does not
    return them); the SFT model scores the k×N rollouts in one ``score_continuations`` batch from its cached prefix.
    """

    def aggregate(self, states: list[PromptState], rollouts: Rollouts) -> list[float]:
        n = self.params.n_rollouts
        log_ratio = self.log_ratios(states, rollouts)  # (P, N)
        r = torch.tensor(score_texts(self.models.reward, states, *rollouts.flat(n)), dtype=torch.float64).view(-1, n)
        return soft_value(r, log_ratio, self.params.soft_temperature).tolist()  # (P,)

    def log_ratios(self, states: list[PromptState], rollouts: Rollouts) -> torch.Tensor:
        """log ρ_sft(y_i | s, z) − log ρ(y_i | s, z) per rollout ``(P, N)``, in ``rollouts`` order (0 when the SFT
        model itself rolled out)."""
        n = self.params.n_rollouts
        pairs, tails, logprobs, candidates = rollouts.pairs, rollouts.tails, rollouts.logprobs, rollouts.candidates
        ratio = torch.zeros(len(pairs), n, dtype=torch.float64)
        flat = [(p, i) for p in range(len(pairs)) for i in range(n) if tails[p][i]]
        if self.policy == "sft" or not flat:
            return ratio
        conts = [tails[p][i] for p, i in flat]
        sft = self._score("sft", states, candidates, [pairs[p] for p, _ in flat], conts)
        missing = [f for f, (p, _) in enumerate(flat) if pairs[p] not in logprobs]
        own = {f: sum(logprobs[pairs[p]][i]) for f, (p, i) in enumerate(flat) if pairs[p] in logprobs}
        if missing:
            rescored = self._score(self.policy, states, candidates, [pairs[flat[f][0]] for f in missing],
                                   [conts[f] for f in missing])
            own.update(zip(missing, rescored))
        for f, (p, i) in enumerate(flat):
            ratio[p, i] = sft[f] - own[f]
        return ratio

    def _score(self, role: str, states: list[PromptState], candidates: Blocks, pairs: list[Pair],
               conts: list[list[int]]) -> list[float]:
        """log ρ_role(y | s, b) of each continuation (one batch), charged to its row."""
        prefixes = [states[b].seq(role) + list(candidates[b][j]) for b, j in pairs]
        out = self.models.lm(role).score_continuations(prefixes, conts)
        for (b, _), cost in zip(pairs, out.forward_tokens):
            states[b].accounting.add_forward(role, cost)
        return out.sums
