"""Trajectory-level methods: plain decoding of one model, and best-of-N.

``sft`` / ``baseline``: decode that model over its full vocabulary (greedy at temperature 0, else sampled).
``bon``: draw ``bon_n`` responses from ``bon_policy`` at ``temperature`` and keep the one the target reward
scores highest. Their KL to the SFT model is not tracked per step (``Response.kl`` is ``None``); best-of-N's
is at most log N − (N − 1)/N.
"""

from __future__ import annotations

import time

import torch

from .decoder import cut_at_stop
from .params import DecodeParams
from .state import Models, PromptState
from .value.base import score_texts


def generate_plain(models: Models, states: list[PromptState], params: DecodeParams, role: str,
                   samples: int = 1) -> list[list[list[int]]]:
    """``samples`` continuations per state from the ``role`` model, as one batch; charged to each state."""
    lm = models.lm(role)
    prefixes = [s.seq(role) for s in states for _ in range(samples)]
    out = lm.rollout(prefixes, params.max_new_tokens, params.temperature, seed=params.seed)
    grouped: list[list[list[int]]] = []
    for b, state in enumerate(states):
        rows = range(b * samples, (b + 1) * samples)
        for i in rows:
            state.accounting.add_forward(role, out.forward_tokens[i])
        if params.method == "bon":
            state.accounting.rollouts += samples
            state.accounting.rollout_tokens += sum(len(out.tokens[i]) for i in rows)
        grouped.append([out.tokens[i] for i in rows])
    return grouped


def decode_trajectory(models: Models, states: list[PromptState], params: DecodeParams) -> list[PromptState]:
    """Run ``sft``, ``baseline`` or ``bon`` on ``states``; returns ``states`` finished."""
    role = params.bon_policy if params.method == "bon" else params.method
    lm = models.lm(role)
    samples = params.bon_n if params.method == "bon" else 1
    grouped = generate_plain(models, states, params, role, samples)
    if params.method == "bon":
        texts = [cut_at_stop(lm.decode(t), params.stop) for tokens in grouped for t in tokens]
        owners = [b for b in range(len(states)) for _ in range(samples)]
        rewards = torch.tensor(score_texts(models.reward, states, owners, texts)).view(len(states), samples)
        best = rewards.argmax(dim=-1).tolist()
        chosen = [tokens[i] for tokens, i in zip(grouped, best)]
    else:
        chosen = [tokens[0] for tokens in grouped]
    for state, tokens in zip(states, chosen):
        state.response = list(tokens)
        state.accounting.steps = len(tokens)
        state.text = cut_at_stop(lm.decode(tokens), params.stop)
        if params.stop and state.text != lm.decode(tokens):
            state.finish_reason = "stop"
        elif tokens and tokens[-1] in lm.eos_token_ids:
            state.finish_reason = "eos"
        else:
            state.finish_reason = "length"
        state.accounting.wall_time_s = time.perf_counter() - state.started
    return states
