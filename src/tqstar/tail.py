"""No truncation: the SFT model's top k are scored as always; the rest of the vocabulary (the *tail*) stays, with
π_sft's shape and one shared value.

With p = π_sft(·|s), K the top k, 𝒯 = V ∖ K, α the value weight and T the decoding temperature::

    π_dec(z) = p(z)^{1/T} · exp(α·Q̂(z)/T) / Z       z ∈ K      (Q̂: the method's estimator, as without the tail)
    π_dec(z) = p(z)^{1/T} · exp(α·Q̂_𝒯/T) / Z        z ∈ 𝒯      (one shared value Q̂_𝒯)
    Z = Σ_K p^{1/T} e^{αQ̂/T} + S_T·e^{αQ̂_𝒯/T},      S_T = Σ_𝒯 p^{1/T}

It is sampled in two stages: one of k + 1 *arms* from the row's ``"choice"`` stream — the k candidates, scored
log p + α·Q̂ as today, and the tail, scored T·log S_T + α·Q̂_𝒯 so that softmax(score/T) gives it its weight — and,
when the tail arm wins, a token from p^{1/T} restricted to 𝒯 from the row's ``("tail", step, index 0)`` stream. That
is today's softmax(score/T) extended to every token of the vocabulary with Q̂(z) := Q̂_𝒯 on the tail.

The shared value (``tail``, :data:`tqstar.params.TAILS`):

* ``mean``: Q̂_𝒯 = Σ_K p(z)·Q̂(z) / p(K), the π_sft-weighted mean of the candidates' values. Free, in the reward's
  range, deterministic given the candidates' values; the default (measured best on SmolLM2: docs/methods.md, "No
  truncation").
* ``rollout``: Q̂_𝒯 = Q̂(z′) for one token z′ ~ p^{1/T}|𝒯 (stream ``("tail", step, index 1)``), valued by the
  estimator as one extra candidate (one more rollout, or one reward call for ``args``); the committed token is a
  fresh draw. An unbiased one-sample estimate of the tail's mean value.
* ``rolling``: z′ ~ q̃ = π_roll(·|𝒯) (the model that rolls out, restricted to the tail), the tail arm weighted
  p(z′)^{1/T}·e^{αQ̂(z′)/T} / q̃(z′) (score log p(z′) − T·log q̃(z′) + α·Q̂(z′)), and z′ itself committed when the tail
  wins. With an optimal baseline (π_BL = π* at β = 1/α) and ``tq-soft``'s one-rollout soft value that weight is
  Σ_𝒯 p·W for every z′, so π_dec *is* π* (the exact testbed checks it); with any other model it is a one-particle
  importance resampling inside the tail.

**KL, exact per step.** The tail's in-tail shape s (p^{1/T}/S_T; q̃ for ``rolling``) gives, with π_𝒯 the tail arm's
probability::

    KL(π_dec ‖ p) = Σ_{z∈K} π(z)·log(π(z)/p(z)) + π_𝒯·(log π_𝒯 + Σ_𝒯 s·log(s/p))
    Σ_𝒯 s·log(s/p) = −log S_T + (1/T − 1)·M_T/S_T,   M_T = Σ_𝒯 p^{1/T}·log p        (mean, rollout)

At T = 1 it is the KL over the k + 1 arms with reference masses p(z) and p(𝒯). It is the exact KL of the
distribution the token was drawn from; when Q̂ is random (sampled rollouts, the ``rollout`` draw) that is an unbiased
estimate of an upper bound on the KL of the average policy (convexity), as for ``tq-soft`` without a tail. For
``rolling`` it is exact when the tail weight does not depend on z′ (an optimal baseline), else an estimate.
**Bound** (``mean``, ``rollout`` at T = 1 with Q̂ in the reward's range [R_min, R_max]): π/p ≤ e^{α(R_max − R_min)}, so
KL ≤ α·(R_max − R_min); elsewhere none is claimed.

**Limits.** α = 0 (or nothing to value): every arm has its π_sft mass, π_dec = p^{1/T}/Σ p^{1/T} exactly (KL 0 at
T = 1) — ``rollout`` and ``rolling`` then draw no z′. T = 0: the argmax over K, the tail inert (for ``mean`` that is
the limit itself: the best tail token is the most likely one, z_{k+1}, and log p(z_{k+1}) + α·Q̂_𝒯 ≤ max_K score
since p(z_{k+1}) ≤ p(z) on K and Q̂_𝒯 ≤ max_K Q̂; the others are defined so), so greedy decoding, its pruning and
rollout reuse are exactly as without the tail. k = V, or a tail without mass in floating point: the arm has weight 0.

Backends: log S_T (and M_T at T ≠ 1) come with :meth:`~tqstar.lm.base.LanguageModel.top_logprobs`
(``tail_temperature``); a served model gives T = 1 only (log p(𝒯) = log(1 − Σ_K p)). Tail tokens come from
:meth:`~tqstar.lm.base.LanguageModel.sample_outside` (a server: one-token requests with ``logit_bias`` −100 on
the k candidates). ``rolling`` needs both models' full distributions over one vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .lm.base import FullVocabLM, TopLogprobs
from .params import DecodeParams
from .randomness import sample_by_inversion, stream_seed, uniforms
from .state import Models, PromptState

#: Stream indices of the ``"tail"`` use: the token committed when the tail arm wins, and z′ (``rollout``, ``rolling``).
COMMITTED, REPRESENTATIVE = 0, 1


@dataclass
class TailArm:
    """The tail arm of a step's rows, everything ``(B,)``.

    Attributes:
        mode: ``mean``, ``rollout`` or ``rolling`` (``rollout``/``rolling`` fall back to ``mean`` where no value is
            needed: α = 0, Q̂ ≡ 0).
        temperature: T (> 0).
        log_mass: log S_T = log Σ_𝒯 p^{1/T} (−inf: an empty tail).
        base: the arm's score before its value: T·log S_T, or for ``rolling`` log p(z′) − T·log q̃(z′).
        shape_kl: Σ_𝒯 s·log(s/p) of its in-tail shape s (the KL's tail term, module docstring).
        token: z′, valued as one more candidate (``rollout``, ``rolling``), else ``None``; meaningless where the
            tail is empty (``has_mass`` False).
        value: Q̂_𝒯 (:func:`shared_value`), set once the candidates are valued.
    """

    mode: str
    temperature: float
    log_mass: torch.Tensor
    base: torch.Tensor
    shape_kl: torch.Tensor
    token: torch.Tensor | None = None
    value: torch.Tensor | None = None

    @property
    def has_mass(self) -> torch.Tensor:
        """``(B,)`` bool: the tail has mass (its arm can be chosen)."""
        return torch.isfinite(self.log_mass)

    def candidates(self, top_ids: torch.Tensor) -> torch.Tensor:
        """The candidates the estimator values ``(B, k)``, with z′ as column k when there is one ``(B, k + 1)``."""
        return top_ids if self.token is None else torch.cat([top_ids, self.token[:, None]], dim=-1)


# ---- the math, one function each (the exact testbed calls them too) -------------------------------------------------
def shared_value(mode: str, top_lp: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Q̂_𝒯 ``(B,)``: for ``mean`` Σ_K p·Q̂ / p(K) over the k candidates' values ``q[:, :k]`` (NaN — not computed,
    because no value can change the decision — counts as 0, which leaves every arm at its π_sft weight); otherwise
    the value of z′, column k."""
    k = top_lp.shape[-1]
    if mode != "mean":
        return q[:, k]
    weights = torch.softmax(top_lp, dim=-1)  # (B, k): p / p(K)
    values = q[:, :k].nan_to_num(nan=0.0)
    return torch.where(weights > 0, weights * values, torch.zeros_like(values)).sum(dim=-1)


def arm_scores(top_scores: torch.Tensor, tail: TailArm, alpha: float) -> torch.Tensor:
    """The k + 1 arms' scores ``(B, k + 1)``: the candidates' ``top_scores`` (log p + α·Q̂) and the tail's
    base + α·Q̂_𝒯 (``tail.value``), so that softmax(score / T) is π_dec's mass per arm; −inf for a tail without
    mass or value."""
    assert tail.value is not None, "value the tail before scoring it"
    value = tail.value.to(top_scores.dtype)
    if alpha == 0:
        value = torch.zeros_like(value)
    score = (tail.base.to(top_scores.dtype) + alpha * value).nan_to_num(nan=float("-inf"))
    score = torch.where(tail.has_mass, score, torch.full_like(score, float("-inf")))
    return torch.cat([top_scores, score[:, None]], dim=-1)


def arm_kl(log_dec: torch.Tensor, top_lp: torch.Tensor, tail: TailArm) -> torch.Tensor:
    """KL(π_dec ‖ π_sft) over the whole vocabulary per row ``(B,)`` from the arms' log-probabilities ``(B, k + 1)``:
    Σ_K π·log(π/p) + π_𝒯·(log π_𝒯 + Σ_𝒯 s·log(s/p)).

    At T = 1 π_sft is taken normalised as the decision saw it (p(K) + p(𝒯) = e^c with c ≈ 0 from the backend's
    float32 rounding: KL against p·e^{−c} is the sum + c), so that α = 0 reads KL 0 rather than c ≈ 1e-7."""
    p = log_dec.exp()  # (B, k + 1)
    k = top_lp.shape[-1]
    top_lp = top_lp.to(log_dec.dtype)
    top = torch.where(p[:, :k] > 0, p[:, :k] * (log_dec[:, :k] - top_lp), torch.zeros_like(p[:, :k]))
    rest = torch.where(p[:, k] > 0, p[:, k] * (log_dec[:, k] + tail.shape_kl.to(log_dec.dtype)), torch.zeros_like(p[:, k]))
    kl = top.sum(dim=-1) + rest  # (B,)
    if tail.temperature == 1:
        kl = kl + torch.logsumexp(torch.cat([top_lp, tail.log_mass.to(log_dec.dtype)[:, None]], dim=-1), dim=-1)
    return kl


def tempered_shape_kl(log_mass: torch.Tensor, mean_logprob: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """Σ_𝒯 s·log(s/p) for the tempered shape s = p^{1/T}/S_T: −log S_T + (1/T − 1)·M_T/S_T (0 for an empty tail)."""
    out = -log_mass.double()
    if temperature != 1:
        assert mean_logprob is not None, "the tail's mean log-prob is needed at T != 1"
        out = out + (1.0 / temperature - 1.0) * mean_logprob.double()
    return torch.where(torch.isfinite(log_mass), out, torch.zeros_like(out))


def kl_bound(alpha: float, temperature: float, mode: str, value_range: tuple[float, float] | None,
             rows: int) -> torch.Tensor:
    """A per-step bound ``(B,)`` on KL(π_dec ‖ π_sft) that holds for the policy run: α·(R_max − R_min) for ``mean`` and
    ``rollout`` at T = 1 with Q̂ in the reward's range (0 when nothing is valued, α = 0: π_dec is π_sft), else +inf
    (none claimed)."""
    if temperature == 1 and alpha == 0:
        return torch.zeros(rows)
    if temperature == 1 and value_range is not None and mode != "rolling":
        return torch.full((rows,), alpha * (value_range[1] - value_range[0]))
    return torch.full((rows,), math.inf)


def describe(params: DecodeParams, value_range: tuple[float, float] | None) -> str | None:
    """One line for ``--trace`` output and logs: what the tail does for ``params`` and what its KL numbers are (exact,
    estimate, bound); ``None`` where it does not apply (no top k: a method without one, or ``block_len``)."""
    if not params.applies("tail"):
        return None
    if params.tail == "off":
        return ("tail off: top-k truncation; per-step KL exact (π_dec lives on the top k), bound"
                " −log min π_sft(top k)")
    if params.temperature == 0:
        return (f"tail {params.tail}: inert under a greedy choice (the argmax stays in the top k), as with tail off;"
                " per-step KL exact (a point mass), bound −log min π_sft(top k)")
    exact = ("exact for an optimal baseline, else an estimate" if params.tail == "rolling" else
             "exact for the distribution drawn from")
    bound = ("bound α·(R_max − R_min) per step" if params.temperature == 1 and value_range is not None
             and params.tail != "rolling" else "no bound claimed")
    return (f"tail {params.tail}: the rest of the vocabulary is one arm with π_sft's shape (a <tail> row per step);"
            f" per-step KL over the full vocabulary, {exact}; {bound}")


# ---- the arm of a step ---------------------------------------------------------------------------------------------
class Tail:
    """The tail of a :class:`~tqstar.decoder.Decoder`'s token steps: its arm (:meth:`propose`) and its token
    (:meth:`commit`). ``values_needed``: whether the step values its candidates at all (α > 0, an estimator that is
    not identically zero); without values ``rollout`` and ``rolling`` draw no z′."""

    def __init__(self, models: Models, params: DecodeParams, values_needed: bool) -> None:
        self.models, self.params = models, params
        self.mode = params.tail if values_needed or params.tail == "mean" else "mean"
        self.role = params.method_row.rolls or "sft"
        #: the α that tilts the decision: 0 when nothing is valued (π_dec = p^{1/T}; its bound at T = 1 is 0)
        self.alpha = params.alpha if values_needed else 0.0

    def active(self) -> bool:
        """The tail is part of the decision: on, and a sampled choice (greedy decoding takes the argmax over K)."""
        return self.params.samples_tail

    def top_logprobs(self, rows: Sequence[PromptState], k: int) -> TopLogprobs:
        """Step 1's proposal: the SFT top k, with the tail's sums when the tail is part of the decision."""
        temperature = self.params.temperature if self.active() else None
        return self.models.sft.top_logprobs([r.seq("sft") for r in rows], k, tail_temperature=temperature)

    def propose(self, rows: list[PromptState], proposal: TopLogprobs) -> TailArm | None:
        """The tail arm of every row (``None`` when the tail is off or inert), with z′ drawn where the mode needs it."""
        if not self.active():
            return None
        t = self.params.temperature
        mass = proposal.tail_mass(t)
        log_mass = mass.log_mass.double()
        arm = TailArm(self.mode, t, log_mass, t * log_mass, tempered_shape_kl(log_mass, mass.mean_logprob, t))
        if self.mode == "rollout":
            arm.token = self._draw(rows, proposal.token_ids, arm.has_mass, REPRESENTATIVE)
        elif self.mode == "rolling":
            self._rolling(rows, proposal.token_ids, arm)
        return arm

    def commit(self, rows: list[PromptState], arm_index: torch.Tensor, top_ids: torch.Tensor,
               arm: TailArm | None) -> torch.Tensor:
        """The token of each row's chosen arm ``(B,)``: its candidate, or — the tail arm — z′ (``rolling``) or a fresh
        draw from p^{1/T}|𝒯 (stream ``("tail", step, 0)``)."""
        k = top_ids.shape[-1]
        won = arm_index == k  # (B,)
        safe = arm_index.clamp(max=k - 1)
        tokens = top_ids.gather(-1, safe[:, None]).squeeze(-1)  # (B,)
        if arm is None or not bool(won.any()):
            return tokens
        if arm.mode == "rolling":
            return torch.where(won, arm.token, tokens)
        return torch.where(won, self._draw(rows, top_ids, won, COMMITTED), tokens)

    # ---- helpers --------------------------------------------------------------------------------------------
    def _draw(self, rows: list[PromptState], top_ids: torch.Tensor, where: torch.Tensor, index: int) -> torch.Tensor:
        """A token from p^{1/T}|𝒯 for the rows in ``where`` (each from its own ``"tail"`` stream), charged to them;
        the row's top-1 elsewhere (never used)."""
        tokens = top_ids[:, 0].clone()
        picked = where.nonzero().flatten().tolist()
        if not picked:
            return tokens
        sub = [rows[b] for b in picked]
        seeds = [stream_seed(r.seed, r.key, "tail", r.step, -1, index) for r in sub]
        out = self.models.sft.sample_outside([r.seq("sft") for r in sub], top_ids[picked], self.params.temperature,
                                             seeds)
        for b, row, drawn, cost in zip(picked, sub, out.tokens, out.forward_tokens):
            tokens[b] = drawn[0]
            row.accounting.add_forward("sft", cost)
        return tokens

    def _rolling(self, rows: list[PromptState], top_ids: torch.Tensor, arm: TailArm) -> None:
        """z′ ~ q̃ = π_roll(·|𝒯) per row (stream ``("tail", step, 1)``), its arm's base log p(z′) − T·log q̃(z′) and
        in-tail shape q̃ (both models' full distributions: local models over one vocabulary, Engine.check)."""
        sft, roll = self.models.sft, self.models.lm(self.role)
        assert isinstance(sft, FullVocabLM) and isinstance(roll, FullVocabLM), "rolling needs full distributions"
        p_out = sft.next_logprobs([r.seq("sft") for r in rows])
        q_out = p_out if self.role == "sft" else roll.next_logprobs([r.seq(self.role) for r in rows])
        for row, a, b in zip(rows, p_out.forward_tokens, q_out.forward_tokens if q_out is not p_out else [0] * len(rows)):
            row.accounting.add_forward("sft", a)
            row.accounting.add_forward(self.role, b)
        log_p = p_out.logprobs.double()  # (B, V)
        log_q = q_out.logprobs.double().scatter(-1, top_ids, float("-inf"))  # (B, V): the rolling model off K
        log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)  # log q̃, normalised over 𝒯 (NaN: no mass)
        has = torch.isfinite(log_q).any(dim=-1) & arm.has_mass  # (B,)
        log_q = torch.where(has[:, None], log_q, torch.full_like(log_q, float("-inf")))
        u = torch.from_numpy(uniforms([stream_seed(r.seed, r.key, "tail", r.step, -1, REPRESENTATIVE) for r in rows], 1)[:, 0])
        token = sample_by_inversion(log_q.exp(), u)  # (B,)
        token = torch.where(has, token, top_ids[:, 0])
        t = self.params.temperature
        chosen_q, chosen_p = log_q.gather(-1, token[:, None]).squeeze(-1), log_p.gather(-1, token[:, None]).squeeze(-1)
        q_mass = log_q.exp()
        shape = torch.where(q_mass > 0, q_mass * (log_q - log_p), torch.zeros_like(q_mass)).sum(dim=-1)  # Σ q̃ log(q̃/p)
        arm.token = token
        arm.base = torch.where(has, chosen_p - t * chosen_q, torch.full_like(chosen_p, float("-inf")))
        arm.shape_kl = torch.where(has, shape, torch.zeros_like(shape))
        arm.log_mass = torch.where(has, arm.log_mass, torch.full_like(arm.log_mass, float("-inf")))
