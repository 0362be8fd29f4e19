"""Blockwise decisions: k continuations sampled from the proposing model, one chosen by its value.

A blockwise decision at state s = [x, y] (``block_len`` = m on a token-level method; ``bon`` and ``soft-bon``, whose
block is the whole response)::

    1. propose   b_1..b_k i.i.d. from the proposing model at temperature T: up to m tokens each, fewer where EOS, a
                 stop string (which may straddle y and the block) or the budget ends the response
    2. estimate  Q̂_i = Q̂(s, b_i) with the method's estimator, from the block's end (baseline rollouts for TQ*, SFT
                 rollouts for CD, the reward of [s, b_i] for ARGS; a block that ends the response: its own text's
                 reward); identical blocks are valued once
    3. choose    argmax_i Q̂_i (first maximal index; temperature 0, blocks sampled at T = 1), or
                 P(i) = exp(α·Q̂_i/T) / Σ_j exp(α·Q̂_j/T)      (T > 0, blocks sampled at T)

**Why no log π_sft term.** The target of a decision is the block-level analogue of the token rule,
π_α(b | s) ∝ p(b)·exp(α·Q(s, b)/T), with p = π_sft^(T) the (tempered) SFT law of a block. The k proposals are
already draws from p, so sampling-importance-resampling weighs each by target/proposal:
w_i = π_α(b_i)/p(b_i) ∝ exp(α·Q̂_i/T), self-normalised over the k samples. Adding log π_sft(b_i) to the score, as
the token rule does for its *enumerated* top-k, would count the proposal twice and target p(b)²·exp(αQ/T) — the
SFT sharpened to temperature ½ at the block level. Duplicated samples are separate particles: each counts as often
as it was drawn (its value is computed once). As k → ∞ the chosen block's law tends to π_α (SIR is consistent).

Limit cases:

* m ≥ the budget: every block is a whole response, valued by its own reward — argmax is **best-of-k** and soft
  selection is **soft best-of-k** with β = T/α. ``bon`` and ``soft-bon`` *are* this case (k = ``bon_n``, weights
  exp(r/``bon_beta``)), on the same code path.
* m = 1: k i.i.d. tokens z_i ~ p chosen ∝ exp(α·Q̂(s, z_i)/T): **token-level importance resampling** of
  p(z)·exp(αQ(z)/T); as k → ∞ it tends to the untruncated token rule with every token's own value.
* k = 1, or α = 0: the choice ignores the samples' values, so the block is a plain draw from p (KL 0); no value is
  computed.

**KL per decision** (reported only when the blocks come from π_sft itself at T = 1; :class:`~tqstar.state.Response`
labels what each number is). *Bound*, for any rule that selects one of k i.i.d. samples — argmax, soft, ties,
selections that use rollouts: the chosen Y satisfies P(Y ∈ A) ≤ 1 − (1 − p(A))^k for every set A, so the density
ratio's decreasing rearrangement is majorised by k(1 − u)^(k−1) and, φ(x) = x log x being convex,
KL(q ‖ p) ≤ ∫_0^1 φ(k(1 − u)^(k−1)) du = log k − (k − 1)/k (Beirami et al. 2024 give it for best-of-N; the
extension to any selection rule is derived here). Soft selection with values in a range of width Δ and
λ = α/T also has q(b)/p(b) ≤ k / (1 + (k − 1)·e^(−λΔ)), hence the smaller of the two (:func:`selection_kl_bound`).
Summed over the decisions of a response it bounds the response's KL (chain rule). *Estimate*: the choice depends on
a block only through its value, and within a value level the chosen block is p-distributed (exchangeability), so
KL(q_block ‖ p_block) = KL(q_value ‖ p_value); :func:`selection_kl_estimate` puts p at the empirical law of the k
values and computes the selected value's law exactly under it (:func:`selection_law`): the tie-aware best-of-N
plug-in for argmax, the integral law below for soft selection. A plug-in on k points, it is coarse and biased low
when values are distinct (1.79 against the continuous 1.84 nats at k = 16).

**Keyed randomness** (:mod:`tqstar.randomness`): block i of the decision at response position t is the ``"block"``
stream :func:`~tqstar.randomness.block_seeds` ``(seed, prompt, t)[i]`` (token j of the block is the stream's j-th
uniform, as in a rollout); the choice is the ``"choice"`` stream at t; a sampled rollout from block b is the
``"rollout"`` stream keyed by b's tokens. Keyed by position and content, never by a decision counter or a sample's
rank, a prompt decodes to the same text alone, batched, resumed and served.

**Pruning** is off for blocks: argmax scores a block by Q̂ alone (no log π_sft margin to compare against R_max) and
soft selection needs every value (:func:`tqstar.decoder.pruning_off_reason` says so in ``--trace``). **Rollout
reuse** stays on and exact: a next-decision block that starts the chosen block's greedy rollout is valued from it
(rare for m > 1). **Dedupe** of identical blocks is exact and always on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .params import DecodeParams
from .randomness import block_seeds, stream_at
from .state import Models, PromptState
from .text import ResponseText
from .value.base import Block, Blocks


@dataclass(frozen=True)
class BlockPlan:
    """How a blockwise decision runs, read off the parameters (:meth:`of`).

    Attributes:
        role: the model that samples the blocks (the SFT model; ``bon``/``soft-bon``: ``bon_policy``).
        k: samples per decision.
        block_len: tokens per block; ``None``: the whole remaining budget (``bon``, ``soft-bon``).
        temperature: the temperature the blocks are sampled at (1 when the choice is argmax).
        weight: α, the choice's scores are weight·Q̂.
        choice_temperature: 0 picks the best score; > 0 samples softmax(score / choice_temperature).
        needs_values: whether the choice depends on the values (not when α = 0 or k = 1: then the first sample, a
            plain draw, is taken at temperature 0 and a uniform one otherwise, without valuing any).
        tracks_kl: the blocks are samples of π_sft itself (the SFT model at temperature 1), so the KL to π_sft is
            reported.
    """

    role: str
    k: int
    block_len: int | None
    temperature: float
    weight: float
    choice_temperature: float
    needs_values: bool
    tracks_kl: bool

    @classmethod
    def of(cls, params: DecodeParams) -> BlockPlan:
        """The plan of blockwise ``params``: a token method's ``block_len`` (blocks from the SFT model, chosen by
        α·Q̂ at ``temperature``), or ``bon``/``soft-bon`` (whole responses from ``bon_policy`` at ``temperature``,
        chosen by the reward: the best, or softmax(r/``bon_beta``))."""
        assert params.is_blockwise, params.method
        if params.method_row.kind == "best-of-n":
            role, k, m, weight = params.bon_policy, params.bon_n, None, 1.0
            temperature = params.temperature
            choice_temperature = params.bon_beta if params.method_row.soft_selection else 0.0
        else:
            role, k, m, weight = "sft", params.k, params.block_len, params.alpha
            temperature = params.temperature or 1.0
            choice_temperature = params.temperature
        return cls(role, k, m, temperature, weight, choice_temperature, needs_values=weight > 0 and k > 1,
                   tracks_kl=role == "sft" and temperature == 1.0)

    @property
    def strength(self) -> float:
        """λ = weight / choice temperature: the choice is softmax(λ·Q̂); ∞ for argmax, 0 when values are ignored."""
        if not self.needs_values:
            return 0.0
        return math.inf if self.choice_temperature == 0 else self.weight / self.choice_temperature


# ---- 1. propose ----------------------------------------------------------------------------------------------------
#: Rows with stop strings sample their blocks this many tokens at a time, checking the stop strings in between, so a
#: block is sampled at most this many tokens past the stop string that ends it (a continued block draws exactly
#: what one call would have: :func:`~tqstar.randomness.stream_at`).
STOP_CHUNK = 8


def propose(models: Models, plan: BlockPlan, rows: Sequence[PromptState]) -> Blocks:
    """The k sampled blocks of every row ``(B, k)``: one rollout call of the proposing model for all of them, each
    block its own keyed stream, ended by EOS or the block's budget, and cut after the token that completes a stop
    string (rows with stop strings are sampled :data:`STOP_CHUNK` tokens at a time, and a block that completed one
    is not continued). Every sampled token is charged to its row."""
    lm, k = models.lm(plan.role), plan.k
    budget = {b: row.remaining if plan.block_len is None else min(plan.block_len, row.remaining)
              for b, row in enumerate(rows)}
    seeds = {b: block_seeds(row.seed, row.key, row.step, k) for b, row in enumerate(rows)}
    blocks: Blocks = [[()] * k for _ in rows]
    sampling = [(b, i) for b in range(len(rows)) for i in range(k)]  # the blocks still growing
    while sampling:
        grown = [len(blocks[b][i]) for b, i in sampling]
        chunks = [min(budget[b] - n, STOP_CHUNK if rows[b].stop else budget[b]) for (b, _), n in zip(sampling, grown)]
        out = lm.rollout([rows[b].seq(plan.role) + list(blocks[b][i]) for b, i in sampling], chunks,
                         plan.temperature, [stream_at(seeds[b][i], n) for (b, i), n in zip(sampling, grown)])
        still = []
        for (b, i), n, tokens, cost in zip(sampling, grown, out.tokens, out.forward_tokens):
            row = rows[b]
            row.accounting.add_forward(plan.role, cost)
            row.accounting.rollouts += int(n == 0)  # a block is one rollout, however many calls it took
            row.accounting.rollout_tokens += len(tokens)
            blocks[b][i], stopped = until_stop(row.decoded(lm), blocks[b][i] + tuple(tokens))
            if not stopped and len(blocks[b][i]) < budget[b] and tokens[-1] not in lm.eos_token_ids:
                still.append((b, i))
        sampling = still
    return blocks


def until_stop(response: ResponseText, tokens: Sequence[int]) -> tuple[Block, bool]:
    """``tokens`` up to and including the first one whose text, after the committed ``response`` (its text and
    stop strings, kept incrementally), completes a stop string (the response would end there; a stop string may
    straddle the response and the block), and whether one did. Costs the block's tokens, not the response's."""
    block = tuple(int(t) for t in tokens)
    assert block, "a sampled block has at least one token"
    if not response.hits_stop(block):
        return block, False
    end = next(j for j in range(1, len(block) + 1) if response.hits_stop(block[:j]))
    return block[:end], True


def first_occurrences(blocks: Blocks) -> torch.Tensor:
    """``(B, k)`` bool: the first sample of each distinct block of a row (the ones valued)."""
    return torch.tensor([[block not in row[:j] for j, block in enumerate(row)] for row in blocks], dtype=torch.bool)


def spread_values(blocks: Blocks, q: torch.Tensor) -> torch.Tensor:
    """``q`` ``(B, k)`` with every block's value copied from its first occurrence in the row."""
    out = q.clone()
    for b, row in enumerate(blocks):
        first: dict[Block, int] = {}
        for j, block in enumerate(row):
            out[b, j] = q[b, first.setdefault(block, j)]
    return out


# ---- KL: the law of the chosen value, the bound and the estimate -----------------------------------------------
def selection_law(values: Sequence[float], probs: Sequence[float], k: int, strength: float) -> np.ndarray:
    """P(the chosen sample's value is ``values[l]``) when k i.i.d. samples take value ``values[l]`` with probability
    ``probs[l]`` (distinct values) and one is chosen by softmax(strength·value), argmax at ``strength`` = ∞ (first
    maximal index; ties are one level), uniformly at 0.

    Argmax: with F the CDF of the value, level v is chosen with probability F(v)^k − F(v⁻)^k. Soft: from
    1/(w + S) = ∫_0^∞ e^(−t(w + S)) dt and E[e^(−tS)] = φ(t)^(k−1) for the sum S of the other k − 1 weights,

        q(v) = k·p(v)·∫_0^∞ w(v)·e^(−t·w(v))·φ(t)^(k−1) dt,     w = e^(strength·v),  φ(t) = Σ_v p(v)·e^(−t·w(v)),

    integrated in s = log t by composite Gauss–Legendre over the union of the levels' windows (where
    t·w(v) ∈ [e^−40, 50]); Σ_v q(v) = 1 up to ~1e-13. Exact for any k without enumerating the k samples. Levels whose
    weights differ by more than e^:data:`APART` (strength times their gap) are chosen as by argmax between them: the
    integral runs per cluster of close levels, with the weights taken relative to the cluster's top (a level below
    weighs 0, one above ∞), so log weights stay small wherever the numeric envelope puts strength and values.
    """
    v, p = np.asarray(values, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    if k == 1 or strength == 0 or len(v) == 1:
        return p.copy()
    if math.isinf(strength):
        order = np.argsort(v)
        cdf = np.cumsum(p[order])
        below = np.concatenate([[0.0], cdf[:-1]])
        q = np.empty_like(p)
        q[order] = np.clip(cdf, 0, 1) ** k - np.clip(below, 0, 1) ** k
        return q
    order = np.argsort(v)
    cluster = np.empty(len(v), dtype=np.int64)  # the cluster of each level: sorted levels cut where weights are apart
    cluster[order] = np.concatenate([[0], np.cumsum(strength * np.diff(v[order]) > APART)])
    q = np.zeros_like(p)
    for c in np.unique(cluster):
        inside = cluster == c
        log_w = np.where(inside, strength * (v - v[inside].max()), np.where(cluster < c, -np.inf, np.inf))
        q[inside] = _soft_law(log_w, p, k)[inside]
    return q / q.sum()


#: Levels whose log weights differ by more than this are chosen as by argmax between them (e^−APART is below the
#: smallest float64).
APART = 800.0


def _soft_law(log_w: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """:func:`selection_law`'s integral for the levels with finite log weights ``log_w`` (−∞: weight 0, +∞: a level
    that always wins), unnormalised."""
    finite = log_w[np.isfinite(log_w)]
    # panels of width ½ in s = log t, aligned to one grid: the union of every level's window (t·w ∈ [e^−40, 50])
    starts = np.unique(np.concatenate([np.arange(np.floor(2 * (-40.0 - lw)) / 2, math.log(50.0) - lw, 0.5)
                                       for lw in finite]))  # (P,)
    nodes, weights = np.polynomial.legendre.leggauss(16)
    s = (starts[:, None] + 0.25 + 0.25 * nodes[None, :]).ravel()  # (P·16,)
    ds = np.tile(0.25 * weights, len(starts))  # (P·16,)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        tw = np.exp(s[:, None] + log_w[None, :])  # (P·16, L) t·w(v), inf where huge (its term vanishes)
        log_phi = np.logaddexp.reduce(np.log(p)[None, :] - tw, axis=1)  # (P·16,)
        integrand = np.exp(np.log(tw) - tw + (k - 1) * log_phi[:, None])  # (P·16, L) t·w·e^(−t·w)·φ^(k−1)
    return k * p * (np.nan_to_num(integrand).T @ ds)  # (L,)


def selection_kl_estimate(values: Sequence[float], strength: float) -> float:
    """The plug-in estimate of KL(q ‖ p) of one decision from the values of its k samples (duplicates counted as
    drawn): p is the empirical law of the k values, q the chosen value's law under it (:func:`selection_law`).
    ``strength`` ∞ is the tie-aware best-of-N estimate; 0 (values ignored) gives 0."""
    levels, counts = np.unique(np.asarray(values, dtype=np.float64), return_counts=True)
    p = counts / counts.sum()
    q = selection_law(levels, p, int(counts.sum()), strength)
    mask = q > 0
    return float(max(0.0, np.sum(q[mask] * np.log(q[mask] / p[mask]))))


def selection_kl_bound(k: int, strength: float, spread: float | None = None) -> float:
    """A bound on KL(q ‖ p) of one decision choosing one of k i.i.d. samples of p: log k − (k − 1)/k for any rule;
    for softmax(strength·value) with values in a range of width ``spread``, the smaller of that and
    log k − log(1 + (k − 1)·e^(−strength·spread)); 0 when the values are ignored (``strength`` 0)."""
    if k <= 1 or strength == 0:
        return 0.0
    bound = math.log(k) - (k - 1) / k
    if math.isfinite(strength) and spread is not None:
        bound = min(bound, math.log(k) - math.log1p((k - 1) * math.exp(-strength * spread)))
    return bound
