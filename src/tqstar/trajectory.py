"""Trajectory-level methods: plain decoding of one model, and best-of-N.

``sft`` / ``baseline``: decode that model over its full vocabulary, one token per decoder step (greedy at
temperature 0, else sampled from the row's keyed ``"plain"`` stream at its step), so they stop at EOS, a stop string
or the budget as they generate, and can stream. ``bon``: one step per row — ``bon_n`` responses from ``bon_policy``
at ``temperature`` (sample i from the row's keyed stream ``(seed, prompt, "bon", 0, -1, i)``), each cut at the
token that completes a stop string, keep the one the target reward scores highest. The decoder records their KL to
the SFT model: exact per step for ``sft``/``baseline`` (:meth:`tqstar.decoder.Decoder._record_plain_kl`), and for
``bon`` of the SFT model at temperature 1 the bound log N − (N − 1)/N beside a tie-aware estimate
(:func:`tqstar.decoder.bon_kl_estimate`).
"""

from __future__ import annotations

import torch

from .params import DecodeParams
from .randomness import stream_seed
from .state import Models, PromptState
from .text import response_text, stop_length
from .value.base import score_texts


def plain_tokens(models: Models, params: DecodeParams, rows: list[PromptState]) -> list[int]:
    """The next token of every row from the ``params.method`` model's full distribution; charged to each row."""
    role = params.method
    seeds = None if params.temperature == 0 else [stream_seed(r.seed, r.key, "plain", r.step) for r in rows]
    out = models.lm(role).rollout([r.seq(role) for r in rows], 1, params.temperature, seeds)
    for row, cost in zip(rows, out.forward_tokens):
        row.accounting.add_forward(role, cost)
    return [tokens[0] for tokens in out.tokens]


def best_of_n(models: Models, params: DecodeParams,
              rows: list[PromptState]) -> list[tuple[list[int], str, list[float]]]:
    """Per row, the best of ``bon_n`` samples (token ids, finish reason) and the rewards of all ``bon_n``; every
    sample is charged to its row."""
    role, n = params.bon_policy, params.bon_n
    lm = models.lm(role)
    seeds = [stream_seed(r.seed, r.key, "bon", 0, -1, i) for r in rows for i in range(n)]
    out = lm.rollout([r.seq(role) for r in rows for _ in range(n)], [r.max_new_tokens for r in rows for _ in range(n)],
                     params.temperature, seeds)
    samples = []
    for b, row in enumerate(rows):
        for tokens, cost in zip(out.tokens[b * n:(b + 1) * n], out.forward_tokens[b * n:(b + 1) * n]):
            row.accounting.add_forward(role, cost)
            row.accounting.rollouts += 1
            row.accounting.rollout_tokens += len(tokens)
            cut = stop_length(lm, tokens, row.stop)
            reason = "stop" if cut is not None else "eos" if tokens and tokens[-1] in lm.eos_token_ids else "length"
            samples.append((list(tokens[:cut]), reason))
    owners = [b for b in range(len(rows)) for _ in range(n)]
    texts = [response_text(lm, tokens, rows[b].stop) for b, (tokens, _) in zip(owners, samples)]
    rewards = torch.tensor(score_texts(models.reward, rows, owners, texts)).view(len(rows), n)  # (B, N)
    return [(*samples[b * n + i], rewards[b].tolist()) for b, i in enumerate(rewards.argmax(dim=-1).tolist())]
