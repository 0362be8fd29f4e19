"""Trajectory-level methods: plain decoding of one model, and best-of-N.

``sft`` / ``baseline``: decode that model over its full vocabulary, one token per decoder step (greedy at
temperature 0, else sampled from the row's keyed ``"plain"`` stream at its step), so they stop at EOS, a stop string
or the budget as they generate, and can stream. ``bon``: one decoder step per row — ``bon_n`` responses from ``bon_policy``
at ``temperature``, sample i decoded exactly as plain decoding of the sub-row ``(seed, prompt#bon<i>)`` (so each
stops at EOS, a stop string or the budget while it generates), keep the one the target reward scores highest. The decoder records their KL to
the SFT model: exact per step for ``sft``/``baseline`` (:meth:`tqstar.decoder.Decoder._record_plain_kl`), and for
``bon`` of the SFT model at temperature 1 the bound log N − (N − 1)/N beside a tie-aware estimate
(:func:`tqstar.decoder.bon_kl_estimate`).
"""

from __future__ import annotations

import torch

from .params import DecodeParams
from .randomness import stream_seed
from .state import Models, PromptState, commit_tokens
from .value.base import score_texts


def plain_tokens(models: Models, params: DecodeParams, rows: list[PromptState]) -> tuple[list[int], list[float] | None]:
    """The next token of every row from the full distribution of the model the plain method decodes; charged to each
    row. Also each token's log-probability under that model (untempered), where the backend returns it."""
    role = params.method_row.rolls
    seeds = None if params.temperature == 0 else [stream_seed(r.seed, r.key, "plain", r.step) for r in rows]
    out = models.lm(role).rollout([r.seq(role) for r in rows], 1, params.temperature, seeds)
    for row, cost in zip(rows, out.forward_tokens):
        row.accounting.add_forward(role, cost)
    return [tokens[0] for tokens in out.tokens], None if out.logprobs is None else [lp[0] for lp in out.logprobs]


def best_of_n(models: Models, params: DecodeParams,
              rows: list[PromptState]) -> list[tuple[PromptState, list[float]]]:
    """Per row, the best by reward of ``bon_n`` samples, each decoded like ``bon_policy`` alone (a sub-row with its
    own keyed stream, stopping at EOS, a stop string or the budget as it generates); every sample is charged to
    its row. Returns per row the finished best sample (its response, finish reason and text are the row's) and the
    rewards of all ``bon_n``."""
    role, n = params.bon_policy, params.bon_n
    lm = models.lm(role)
    samples = [PromptState(prompt=row.prompt, prompt_ids={role: row.prompt_ids[role]}, key=f"{row.key}#bon{i}",
                           seed=row.seed, max_new_tokens=row.max_new_tokens, stop=row.stop)
               for row in rows for i in range(n)]
    plain = params.replace(method=role)
    active = samples
    while active:  # the N samples of every row, one token per pass, as one batch
        for sample in active:
            sample.begin_step(len(active))
        commit_tokens(active, plain_tokens(models, plain, active)[0], lm)
        active = [s for s in active if not s.done]
    for b, row in enumerate(rows):
        for sample in samples[b * n:(b + 1) * n]:
            row.accounting.add_forward(role, sample.accounting.sft_forward_tokens + sample.accounting.baseline_forward_tokens)
            row.accounting.rollouts += 1
            row.accounting.rollout_tokens += len(sample.response)
    owners = [b for b in range(len(rows)) for _ in range(n)]
    rewards = torch.tensor(score_texts(models.reward, rows, owners, [s.text for s in samples])).view(len(rows), n)
    return [(samples[b * n + i], rewards[b].tolist()) for b, i in enumerate(rewards.argmax(dim=-1).tolist())]
