"""The decoder: one step over the active rows — propose, estimate, score, choose.

At each step, for every active row with state s_t = [x, y_<t]::

    1. propose   top-k tokens z of log π_sft(· | s_t), and (``tail`` on, sampled choice) one arm for the rest of the
                 vocabulary, the tail 𝒯 (:mod:`tqstar.tail`)
    2. estimate  Q̂(s_t, z) with the method's value estimator (skipped where it cannot change the choice); the tail's
                 one token z′ too, for the ``rollout``/``rolling`` tails
    3. score     score(z) = log π_sft(z | s_t) + α · Q̂(s_t, z); the tail arm T·log Σ_𝒯 π_sft^{1/T} + α·Q̂_𝒯
    4. choose    argmax over the top k (temperature 0) or a keyed sample of softmax(score / temperature) over the
                 arms, a tail win committing a keyed draw from the tail; stop at EOS, a stop string or the row's
                 token budget

:meth:`Decoder.step` advances every unfinished row by one decision and returns the rows that finished; rows may join
and leave between steps (a server's scheduler steps forever while requests come and go), because everything a
row needs — its seed and random streams, position, budget, stop strings, rollout-reuse memory, accounting,
trace — lives on its :class:`~tqstar.state.PromptState`. :meth:`Decoder.run` steps until every row is done.
With ``block_len`` a decision commits a block: the SFT model samples k blocks, they are valued from their ends and one
is chosen (:meth:`Decoder._block_step`, the rule in :mod:`tqstar.blocks`); ``bon`` and ``soft-bon`` are the same step
with blocks of the whole response, so they finish a row in one step; a block decision has no top k, so no tail (``tail``
applies to token-level decisions only: its declared scope, :meth:`tqstar.params.DecodeParams.applies`). ``sft``/``baseline`` decode one token per step
from their model's full distribution (:mod:`tqstar.trajectory`). Bookkeeping (KL, trace, stopping) lives in helpers so
each step reads top to bottom. The decoder's ``(B, k)`` tensors live on the host: backends hand back top-k results and
continuations there (a GPU backend moves only those small tensors), so nothing here depends on the models' device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .blocks import (
    BlockPlan,
    first_occurrences,
    propose,
    selection_kl_bound,
    selection_kl_estimate,
    spread_values,
)
from .lm.base import FullVocabLM
from .params import DecodeParams
from .randomness import sample_by_inversion, stream_seed, uniforms
from .state import Models, PromptState, commit_tokens
from .tail import Tail, TailArm, arm_kl, arm_scores, shared_value
from .tail import kl_bound as tail_kl_bound
from .trajectory import plain_tokens
from .value import ESTIMATORS
from .value.base import Blocks, nan_values, token_blocks

if TYPE_CHECKING:
    from .reward import Reward

#: ``on_step(stepped, finished)``: called after every step with the rows it advanced and those that finished.
OnStep = Callable[[Sequence[PromptState], Sequence[PromptState]], None]


class Decoder:
    """Steps rows that share ``params.group_key()``; seed, budget, stop strings and trace are per row."""

    def __init__(self, models: Models, params: DecodeParams) -> None:
        self.models = models
        self.params = params
        row = params.method_row  # what the method is: tqstar.methods
        # the estimator values candidates; best-of-n values the samples of its policy (their own rewards)
        policy = params.bon_policy if row.kind == "best-of-n" else row.rolls
        self.estimator = ESTIMATORS[row.value](models, params, policy=policy) if row.value is not None else None
        self.plan = BlockPlan.of(params) if params.is_blockwise else None
        self.reward_range = models.reward.range if models.reward is not None else None
        # the reward bound prunes (greedy choice only) and bounds the KL only when Q̂ lies in the reward's range
        self.value_range = self.reward_range if params.value_in_reward_range else None
        prunes = self.value_range is not None and params.prune and params.temperature == 0 and self.plan is None
        self.r_max = self.value_range[1] if prunes else None
        self.tail = Tail(models, params, values_needed=params.alpha > 0 and row.value not in (None, "zero"))

    def run(self, rows: Sequence[PromptState], *, on_step: OnStep | None = None) -> list[PromptState]:
        """Step ``rows`` until all are done; returns them."""
        rows = list(rows)
        while active := [r for r in rows if not r.done]:
            finished = self.step(active)
            if on_step is not None:
                on_step(active, finished)
        return rows

    def step(self, rows: Sequence[PromptState]) -> list[PromptState]:
        """Advance every unfinished row of ``rows`` by one decision — a token, or a block (``block_len``; ``bon``: the
        whole response); returns those that finished."""
        active = [r for r in rows if not r.done]
        for row in active:
            row.begin_step(len(active))
        if not active:
            return []
        row = self.params.method_row
        if row.kind == "plain":
            tokens, logprobs = plain_tokens(self.models, self.params, active)
            self._record_plain_kl(active, logprobs)  # before the token is committed: the step's distributions
            return commit_tokens(active, [[t] for t in tokens], self.models.lm(row.rolls))
        if self.plan is not None:
            return self._block_step(active)
        return self._token_step(active)

    def _token_step(self, rows: list[PromptState]) -> list[PromptState]:
        p, sft, k = self.params, self.models.sft, self.params.k
        # 1. propose: top-k of the SFT model's next-token distribution, and one arm for the rest (tqstar.tail)
        proposal = self.tail.top_logprobs(rows, k)
        top_lp, candidates = proposal.logprobs, proposal.token_ids  # (B, k)
        arm = self.tail.propose(rows, proposal)  # None: truncation (tail off), or a greedy choice
        # 2. estimate: Q̂(s_t, z) for every candidate that can still change the choice (NaN: skipped), z′ included
        q, reused = self.estimate(rows, top_lp, token_blocks(candidates if arm is None else arm.candidates(candidates)),
                                  None if arm is None else arm.has_mass)  # (B, k[+1]), (B, k[+1])
        # 3. score: log π_sft + α·Q̂ per candidate, and the tail arm's T·log S_T + α·Q̂_𝒯
        scores = score(top_lp, q[:, :k], p.alpha)  # (B, k)
        if arm is not None:
            arm.value = shared_value(arm.mode, top_lp, q)  # (B,) Q̂_𝒯
            scores = arm_scores(scores, arm, p.alpha)  # (B, k + 1)
        # 4. choose: argmax, or sample softmax(score / T) from each row's own stream; the tail arm commits a token
        #    drawn from the tail
        log_dec = decision_logprobs(scores, p.temperature)  # (B, k[+1])
        chosen = self.tail.commit(rows, choose(log_dec, p.temperature, rows), candidates, arm)  # (B,)
        self._record(rows, proposal.forward_tokens, top_lp, candidates, q, reused, scores, log_dec, chosen, arm)
        return commit_tokens(rows, [[z] for z in chosen.tolist()], sft)

    def _block_step(self, rows: list[PromptState]) -> list[PromptState]:
        plan = self.plan
        assert plan is not None
        # 1. propose: k samples of up to m tokens from the proposing model, each its own keyed stream
        blocks = propose(self.models, plan, rows)  # (B, k) token tuples, cut at a stop string
        # 2. estimate: Q̂(s_t, b) of each distinct block, from its end (NaN: the choice ignores the values)
        q, reused = self.estimate_blocks(rows, blocks)  # (B, k), (B, k)
        # 3. score: α·Q̂ — no log π_sft term: the blocks are π_sft's samples already (tqstar.blocks)
        scores = (plan.weight * q).nan_to_num(nan=0.0)  # (B, k)
        # 4. choose: argmax, or sample softmax(score / T) from each row's own stream
        log_sel = decision_logprobs(scores, plan.choice_temperature)  # (B, k)
        chosen = choose(log_sel, plan.choice_temperature, rows).tolist()  # (B,)
        self._record_blocks(rows, blocks, q, reused, log_sel, chosen)
        return commit_tokens(rows, [blocks[b][i] for b, i in enumerate(chosen)], self.models.lm(plan.role))

    def estimate_blocks(self, rows: list[PromptState], blocks: Blocks) -> tuple[torch.Tensor, torch.Tensor]:
        """Q̂ ``(B, k)`` of sampled blocks and which were reused ``(B, k)``: every distinct block of a row valued
        once (cheap known values first, then one batch), duplicates sharing its value. No pruning: a block's score
        carries no log π_sft margin to bound, and soft selection needs every value. Nothing is estimated when the
        choice ignores the values (α = 0, k = 1)."""
        assert self.estimator is not None and self.plan is not None
        q = nan_values(blocks)
        reused = torch.zeros(q.shape, dtype=torch.bool)
        if self.plan.needs_values:
            q, reused = self.estimator.known(rows, blocks)  # (B, k), NaN = unknown
            needed = q.isnan() & first_occurrences(blocks)
            if bool(needed.any()):
                q = torch.where(needed, self.estimator.estimate(rows, blocks, needed), q)
            q = spread_values(blocks, q)
        for b, row in enumerate(rows):
            row.accounting.pruned += int(q[b].isnan().sum())
        return q, reused

    def estimate(self, rows: list[PromptState], top_lp: torch.Tensor, candidates: Blocks,
                 extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Q̂ ``(B, c)`` (NaN: not computed) and which values were reused ``(B, c)``: cheap known values first, then
        one batch for the candidates that can still change the choice. ``candidates`` are the top k as blocks of one
        token, and a tail's z′ as column k (``c = k + 1``) valued only where ``extra`` ``(B,)`` is true.

        Nothing is estimated when α = 0 (Q̂ does not enter the score) or c = 1 (one candidate: with no z′ its value
        tilts every arm alike). With ``r_max`` (greedy decoding, a reward range, pruning on), candidates that cannot
        be the argmax are skipped (:func:`cannot_win`): the output is the same token.
        """
        p, estimator = self.params, self.estimator
        assert estimator is not None
        n_columns = len(candidates[0]) if candidates else 0
        wanted = torch.ones(len(candidates), n_columns, dtype=torch.bool)  # (B, c)
        if extra is not None and n_columns > top_lp.shape[-1]:
            wanted[:, -1] = extra
        if p.alpha == 0 or n_columns == 1:
            q = nan_values(candidates)
            reused = torch.zeros(q.shape, dtype=torch.bool)
        else:
            # (B, c), NaN = unknown; ``wanted`` only with a tail column (an estimator written before it may not take it)
            q, reused = estimator.known(rows, candidates) if extra is None else estimator.known(rows, candidates, wanted)
            if self.r_max is not None and p.prune_probe:  # rows with nothing known: value the top candidates first
                probe = q.isnan().all(dim=-1, keepdim=True) & (torch.arange(q.shape[1]) < p.prune_probe)  # (B, k)
                if bool(probe.any()):
                    q = torch.where(probe, estimator.estimate(rows, candidates, probe), q)
            needed = q.isnan() & wanted
            if self.r_max is not None:  # greedy: no tail column
                needed &= ~cannot_win(top_lp, q, p.alpha, self.r_max)
            if bool(needed.any()):
                q = torch.where(needed, estimator.estimate(rows, candidates, needed), q)
        for b, row in enumerate(rows):
            row.accounting.pruned += int((q[b].isnan() & wanted[b]).sum())
        return q, reused

    # ---- bookkeeping ------------------------------------------------------------------------------------
    def _record(self, rows, forward_tokens, top_lp, candidates, q, reused, scores, log_dec, chosen, arm) -> None:
        """Per-step accounting, KL, its bound and (when the row asked) the trace row (with the tail arm's row)."""
        p, k = self.params, top_lp.shape[-1]
        if arm is None:
            kls = step_kl(log_dec, top_lp)
            bounds = kl_bound(top_lp, p.alpha, p.temperature, self.value_range)
        else:
            kls = arm_kl(log_dec, top_lp, arm).clamp(min=0)  # rounding can leave −1e-8 where π_dec = π_sft
            bounds = tail_kl_bound(self.tail.alpha, p.temperature, arm.mode, self.value_range, len(rows))
        # the rolling tail's KL takes its one tail token's weight for the whole tail: exact for an optimal baseline only
        kind = "estimate" if arm is not None and arm.mode == "rolling" else "exact"
        sft = self.models.sft
        for b, row in enumerate(rows):
            row.accounting.add_forward("sft", forward_tokens[b])
            row.kl.append(float(kls[b]))
            row.kl_bound.append(float(bounds[b]))
            row.kl_kind = kind
            if row.trace is not None:
                row.trace.append({
                    "step": row.step,
                    "candidates": candidates[b].tolist(),
                    "tokens": [sft.decode([z]) for z in candidates[b].tolist()],
                    "logp_sft": top_lp[b].tolist(),
                    "q": [None if v != v else v for v in q[b, :k].tolist()],  # None: not computed
                    "score": [None if v == float("-inf") else v for v in scores[b, :k].tolist()],
                    "p_dec": log_dec[b, :k].exp().tolist(),
                    "chosen": int(chosen[b]),
                    "reused": reused[b, :k].tolist(),
                    "pruned": q[b, :k].isnan().tolist(),
                    **({} if arm is None else {"tail": self._tail_row(b, arm, reused, scores, log_dec, chosen,
                                                                      candidates)}),
                })

    def _tail_row(self, b: int, arm: TailArm, reused, scores, log_dec, chosen, candidates) -> dict[str, Any]:
        """The tail arm's trace entry: its mass (log Σ_𝒯 p^{1/T}: at T = 1 log π_sft(𝒯)), shared value Q̂_𝒯, score
        and probability; z′ where one was valued (``rollout``, ``rolling``); the tail token committed, if any."""
        k, has, sft = candidates.shape[-1], bool(arm.has_mass[b]), self.models.sft
        z = int(arm.token[b]) if arm.token is not None and has else None
        value = float(arm.value[b]) if has else None
        committed = int(chosen[b]) if int(chosen[b]) not in candidates[b].tolist() else None
        return {"mode": arm.mode, "log_mass": float(arm.log_mass[b]) if has else None,
                "q": None if value is None or value != value else value,
                "score": float(scores[b, k]) if has else None, "p_dec": float(log_dec[b, k].exp()),
                "token": z, "text": None if z is None else sft.decode([z]), "reused": z is not None and bool(reused[b, k]),
                "committed": committed, "committed_text": None if committed is None else sft.decode([committed])}

    def _record_plain_kl(self, rows: list[PromptState], logprobs: list[float] | None = None) -> None:
        """Plain ``sft``/``baseline`` decoding: KL(π_dec(·|s_t) ‖ π_sft(·|s_t)) of the distribution the token was
        drawn from (the model's at ``temperature``; a point mass when greedy), exact over the full vocabulary.

        Needs both models' full distributions over one vocabulary (local backends); a served model, or a baseline
        with another tokenizer (text bridge), leaves the KL untracked. Greedy ``sft`` decoding needs no
        distribution: the KL of a point mass on z is −log π_sft(z), the chosen tokens' ``logprobs`` that the rollout
        returned. Otherwise the decoded model's distribution is the one its rollout just computed (stored by its
        prefix cache: free); the SFT model's costs it one cached forward token per step, charged to the row."""
        role, sft = self.params.method_row.rolls, self.models.sft
        lm = self.models.lm(role)
        if not (isinstance(lm, FullVocabLM) and isinstance(sft, FullVocabLM)):
            return
        if role != "sft" and self.models.bridge is not None:  # another vocabulary: no per-token KL to the SFT
            return
        if role == "sft" and self.params.temperature == 0 and logprobs is not None:
            for row, lp in zip(rows, logprobs):
                row.kl.append(max(0.0, -lp))
                row.kl_kind = "exact"
            return
        own = lm.next_logprobs([r.seq(role) for r in rows])  # (B, V)
        ref = own if role == "sft" else sft.next_logprobs([r.seq("sft") for r in rows])  # (B, V)
        for row, a, b in zip(rows, own.forward_tokens, ref.forward_tokens if ref is not own else [0] * len(rows)):
            row.accounting.add_forward(role, a)
            row.accounting.add_forward("sft", b)
        kls = step_kl(decision_logprobs(own.logprobs, self.params.temperature), ref.logprobs).clamp(min=0)  # (B,)
        for row, kl in zip(rows, kls.tolist()):
            row.kl.append(kl)
            row.kl_kind = "exact"

    def _record_blocks(self, rows: list[PromptState], blocks: Blocks, q: torch.Tensor, reused: torch.Tensor,
                       log_sel: torch.Tensor, chosen: list[int]) -> None:
        """A blockwise decision's KL estimate and bound (when its blocks are π_sft's own samples) and trace row."""
        plan = self.plan
        assert plan is not None
        spread = self.value_range[1] - self.value_range[0] if self.value_range is not None else None
        lm = self.models.lm(plan.role)
        first = first_occurrences(blocks)
        for b, row in enumerate(rows):
            values = q[b].tolist()
            if plan.tracks_kl:
                row.kl.append(selection_kl_estimate(values, plan.strength) if plan.needs_values else 0.0)
                row.kl_bound.append(selection_kl_bound(plan.k, plan.strength, spread))
                row.kl_kind = "estimate"
            if row.trace is not None:
                row.trace.append({
                    "step": row.step,
                    "blocks": [list(block) for block in blocks[b]],
                    "texts": [lm.decode(list(block)) for block in blocks[b]],
                    "q": [None if v != v else v for v in values],  # None: not computed (the choice ignores it)
                    "p_dec": log_sel[b].exp().tolist(),
                    "chosen": chosen[b],
                    "duplicate": (~first[b]).tolist(),
                    "reused": reused[b].tolist(),
                    "choice": "argmax" if plan.choice_temperature == 0 else "soft",
                })


def pruning_off_reason(reward: Reward | None, params: DecodeParams) -> str | None:
    """Why decoding with ``params`` will not prune candidates, as one line for ``--trace`` output and logs;
    ``None`` when it prunes (or the method has no candidates to prune).

    Pruning skips candidate z when ``log π_sft(z) + α·R_max`` cannot beat the best score already computed, so
    it needs greedy choice and the reward's upper bound R_max.
    """
    row = params.method_row
    if reward is None or row.kind != "token" or row.value == "zero" or params.alpha == 0:
        return None  # nothing is estimated, so nothing is pruned
    if params.is_blockwise:
        why = ("argmax scores a sampled block by Q̂ alone, with no log π_sft margin for R_max to bound"
               if params.temperature == 0 else "soft selection among sampled blocks needs every value")
        return f"pruning off: blockwise decisions ({why}); identical blocks are valued once"
    if not params.prune:
        return "pruning off: switched off (prune=False)"
    if not row.in_reward_range:
        return (f"pruning off: Q̂ of {params.method} is not bounded by the reward's range (a likelihood ratio), so"
                " R_max proves nothing")
    if params.temperature != 0:
        return f"pruning off: it needs greedy choice (temperature 0), got temperature {params.temperature:g}"
    if reward.range is None:
        return (f"pruning off: reward {reward.name} declares no range; give --reward-sigmoid or a declared range"
                " (range: [R_MIN, R_MAX] in the reward's config entry)")
    return None


# ---- the math, one function each ------------------------------------------------------------------------------
def score(top_lp: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """log π_sft + α·Q̂ per candidate ``(B, k)``; −inf where Q̂ is NaN (skipped: it cannot win). Where no Q̂ was
    computed at all (α = 0, or one candidate and no tail token to compare it with) the score is log π_sft."""
    if alpha == 0 or bool(q.isnan().all()):
        return top_lp.clone()
    return (top_lp + alpha * q).nan_to_num(nan=float("-inf"))


def cannot_win(top_lp: torch.Tensor, q: torch.Tensor, alpha: float, r_max: float) -> torch.Tensor:
    """Candidates ``(B, k)`` that cannot be the argmax of the score whatever their Q̂ ≤ R_max.

    Candidate z can score at most u(z) = log π_sft(z) + α·R_max. Against the best score already computed, s*
    at index j*, argmax (the *first* maximal index) can still pick z if u(z) > s*, or u(z) = s* and z comes
    before j*. Every other unknown candidate is skipped; computing more values only raises s* or moves j* earlier
    on a tie, so a skipped candidate never becomes the argmax.
    """
    known = score(top_lp, q, alpha)  # (B, k)
    best, best_index = known.max(dim=-1, keepdim=True)  # (B, 1): torch's max gives the first maximal index
    upper = top_lp + alpha * r_max  # (B, k)
    before = torch.arange(q.shape[-1])[None, :] < best_index  # (B, k)
    can = (upper > best) | ((upper == best) & before)
    return q.isnan() & ~can


def decision_logprobs(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π_dec over the k candidates ``(B, k)``: one-hot argmax for temperature 0, else log-softmax(score/T)."""
    if temperature == 0:
        best = scores.argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
    return torch.log_softmax(scores / temperature, dim=-1)


def choose(log_dec: torch.Tensor, temperature: float, rows: Sequence[PromptState]) -> torch.Tensor:
    """The chosen candidate index per row ``(B,)``: the argmax at temperature 0, else a draw from π_dec with the
    row's ``"choice"`` stream at its step (independent of the other rows)."""
    if temperature == 0:
        return log_dec.argmax(dim=-1)
    u = uniforms([stream_seed(r.seed, r.key, "choice", r.step) for r in rows], 1)[:, 0]  # (B,)
    return sample_by_inversion(log_dec.exp(), torch.from_numpy(u))


def step_kl(log_dec: torch.Tensor, top_lp: torch.Tensor) -> torch.Tensor:
    """KL(π_dec ‖ π_sft) per row, ``(B,)``: π_dec lives on the k candidates, ``top_lp`` is log π_sft there."""
    p = log_dec.exp()
    terms = torch.where(p > 0, p * (log_dec - top_lp), torch.zeros_like(p))
    return terms.sum(dim=-1)


def kl_bound(top_lp: torch.Tensor, alpha: float, temperature: float,
             reward_range: tuple[float, float] | None) -> torch.Tensor:
    """A bound on KL(π_dec ‖ π_sft) per row ``(B,)`` that holds for the policy run.

    Any π_dec supported on the top-k: KL = Σ π_dec log(π_dec/π_sft) ≤ Σ π_dec·(−log π_sft) ≤ −log min_z π_sft(z).
    π_dec = softmax(score) (temperature 1) with Q̂ ∈ [R_min, R_max] also satisfies
    KL ≤ α·(R_max − R_min) + log(1/π_sft(top-k)); then the smaller of the two is returned.
    """
    bound = -top_lp.min(dim=-1).values  # (B,)
    if temperature == 1 and reward_range is not None:
        softmax_bound = alpha * (reward_range[1] - reward_range[0]) - torch.logsumexp(top_lp, dim=-1)  # (B,)
        bound = torch.minimum(bound, softmax_bound)
    return bound
