"""The token-level decoder: propose, estimate, score, choose — batched over prompts.

At each step, for every active prompt with state s_t = [x, y_<t]::

    1. propose   top-k tokens z of log π_sft(· | s_t)
    2. estimate  Q̂(s_t, z) with the method's value estimator
    3. score     score(z) = log π_sft(z | s_t) + α · Q̂(s_t, z)
    4. choose    argmax (temperature 0) or sample softmax(score / temperature); stop at EOS, a stop string or
                 the token budget

Bookkeeping (KL, trace, stopping) lives in helpers so the loop reads top to bottom.
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from .lm.base import _generator
from .params import DecodeParams
from .state import Models, PromptState
from .value.base import ValueEstimator


def decision_logprobs(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π_dec over the k candidates ``(B, k)``: one-hot argmax for temperature 0, else log-softmax(score/T)."""
    if temperature == 0:
        best = scores.argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, float("-inf")).scatter(-1, best, 0.0)
    return torch.log_softmax(scores / temperature, dim=-1)


def score(top_lp: torch.Tensor, q: torch.Tensor, alpha: float) -> torch.Tensor:
    """log π_sft + α·Q̂ per candidate; −inf where Q̂ is NaN (not computed: pruned, it cannot win)."""
    return (top_lp + alpha * q).nan_to_num(nan=float("-inf"))


def step_kl(log_dec: torch.Tensor, top_lp: torch.Tensor) -> torch.Tensor:
    """KL(π_dec ‖ π_sft) per row, ``(B,)``: π_dec lives on the k candidates, ``top_lp`` is log π_sft there."""
    p = log_dec.exp()
    terms = torch.where(p > 0, p * (log_dec - top_lp), torch.zeros_like(p))
    return terms.sum(dim=-1)


def kl_bound(top_lp: torch.Tensor, alpha: float, reward_range: tuple[float, float] | None) -> torch.Tensor | None:
    """α·(R_max − R_min) + log(1/π_sft(top-k)) per row: bounds the KL of softmax(score) to π_sft."""
    if reward_range is None:
        return None
    return alpha * (reward_range[1] - reward_range[0]) - torch.logsumexp(top_lp, dim=-1)


def decode(models: Models, states: list[PromptState], estimator: ValueEstimator, params: DecodeParams,
           *, progress: bool = True) -> list[PromptState]:
    """Decode every state to completion with the token-level method ``estimator``; returns ``states``."""
    sft = models.sft
    generator = _generator(params.seed)
    reward_range = models.reward.range if models.reward is not None else None
    r_max = reward_range[1] if reward_range is not None and params.prune and params.temperature == 0 else None
    bar = tqdm(total=params.max_new_tokens, desc=params.method, unit="tok", disable=not progress, leave=False)
    for step in range(params.max_new_tokens):
        active = [s for s in states if not s.done]
        if not active:
            break
        # 1. propose: top-k of the SFT model's next-token distribution
        proposal = sft.top_logprobs([s.seq("sft") for s in active], params.k)
        top_lp, candidates = proposal.logprobs, proposal.token_ids  # (B, k)
        # 2. estimate: Q̂(s_t, z) for every candidate that can still win (NaN: pruned)
        q = estimate(estimator, active, top_lp, candidates, step, params, r_max)  # (B, k)
        # 3. score
        scores = score(top_lp, q, params.alpha)  # (B, k)
        # 4. choose
        log_dec = decision_logprobs(scores, params.temperature)  # (B, k)
        pick = log_dec.argmax(-1) if params.temperature == 0 else torch.multinomial(log_dec.exp(), 1, generator=generator).squeeze(-1)
        chosen = candidates.gather(-1, pick[:, None]).squeeze(-1)  # (B,)
        _record(active, proposal.forward_tokens, top_lp, candidates, q, scores, log_dec, chosen, params,
                kl_bound(top_lp, params.alpha, reward_range), sft)
        _advance(active, chosen, params, sft)
        bar.update(1)
    bar.close()
    for state in states:
        if not state.done:
            _finish(state, "length", sft)
    return states


def estimate(estimator: ValueEstimator, states: list[PromptState], top_lp: torch.Tensor, candidates: torch.Tensor,
             step: int, params: DecodeParams, r_max: float | None) -> torch.Tensor:
    """Q̂ ``(B, k)``: cheap known values first, then one batch for the candidates that can still win.

    With ``r_max`` (greedy decoding, a reward range, pruning on), candidate z is skipped when
    log π_sft(z) + α·R_max ≤ the best score already computed: it cannot be the argmax (ties go to the
    earlier, higher-probability candidate), so the output is the same token. Skipped candidates are NaN.
    """
    q = estimator.known(states, candidates, step)  # (B, k), NaN = unknown
    if r_max is not None and params.prune_probe:  # rows with nothing known: value the top candidates first
        probe = q.isnan().all(dim=-1, keepdim=True) & (torch.arange(q.shape[1]) < params.prune_probe)  # (B, k)
        if bool(probe.any()):
            q = torch.where(probe, estimator.estimate(states, candidates, step, probe), q)
    needed = q.isnan()
    if r_max is not None:
        best = score(top_lp, q, params.alpha).max(dim=-1, keepdim=True).values  # (B, 1)
        needed &= top_lp + params.alpha * r_max > best
    if bool(needed.any()):
        q = torch.where(needed, estimator.estimate(states, candidates, step, needed), q)
    for b, state in enumerate(states):
        state.accounting.pruned += int(q[b].isnan().sum())
    return q


def _record(active, forward_tokens, top_lp, candidates, q, scores, log_dec, chosen, params, bound, sft) -> None:
    """Per-step accounting, KL and (optionally) the trace row."""
    kls = step_kl(log_dec, top_lp)
    for b, state in enumerate(active):
        state.accounting.add_forward("sft", forward_tokens[b])
        state.accounting.steps += 1
        state.kl.append(float(kls[b]))
        if bound is not None:
            state.kl_bound.append(float(bound[b]))
        if params.trace:
            state.trace = state.trace or []
            state.trace.append({
                "step": len(state.response),
                "candidates": candidates[b].tolist(),
                "tokens": [sft.decode([z]) for z in candidates[b].tolist()],
                "logp_sft": top_lp[b].tolist(),
                "q": [None if v != v else v for v in q[b].tolist()],  # None: pruned
                "score": [None if v == float("-inf") else v for v in scores[b].tolist()],
                "p_dec": log_dec[b].exp().tolist(),
                "chosen": int(chosen[b]),
            })


def _advance(active: list[PromptState], chosen: torch.Tensor, params: DecodeParams, sft) -> None:
    """Append the chosen tokens; finish prompts at EOS, a stop string or the token budget."""
    for state, token in zip(active, chosen.tolist()):
        state.response.append(token)
        if token in sft.eos_token_ids:
            _finish(state, "eos", sft)
        elif params.stop and any(s in sft.decode(state.response) for s in params.stop):
            _finish(state, "stop", sft, params.stop)
        elif len(state.response) >= params.max_new_tokens:
            _finish(state, "length", sft)


def _finish(state: PromptState, reason: str, lm, stop: tuple[str, ...] = ()) -> None:
    state.finish_reason = reason
    state.text = cut_at_stop(lm.decode(state.response), stop)
    state.accounting.wall_time_s = time.perf_counter() - state.started


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to (not including) the first stop string in it."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]
