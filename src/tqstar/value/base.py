"""The value-estimator interface and the rollout/scoring helpers the rollout-based estimators share."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ..params import DecodeParams
from ..reward import Reward
from ..state import Models, PromptState


class ValueEstimator(ABC):
    """Q̂(s_t, z) for the top-k candidates of every active prompt."""

    def __init__(self, models: Models, params: DecodeParams) -> None:
        self.models = models
        self.params = params

    @abstractmethod
    def estimate(self, states: list[PromptState], candidates: torch.Tensor, step: int) -> torch.Tensor:
        """``candidates`` ``(B, k)`` token ids → ``Q̂`` ``(B, k)`` float32."""


def rollout_texts(models: Models, role: str, states: list[PromptState], candidates: torch.Tensor,
                  params: DecodeParams, step: int) -> list[str]:
    """Roll the ``role`` model out N times from every ``[s_t, z]``; return the B·k·N texts, flattened.

    A rollout stops at EOS or after ``rollout_len`` tokens; one that stops at the length limit is scored as
    the partial text it is. A candidate that is itself EOS ends the response: its "rollout" is empty.
    """
    policy = models.lm(role)
    n = params.n_rollouts
    prefixes, owners = [], []
    for b, state in enumerate(states):
        for z in candidates[b].tolist():
            if z not in policy.eos_token_ids:
                for _ in range(n):
                    prefixes.append(state.seq(role) + [z])
                    owners.append(b)
    out = policy.rollout(prefixes, params.rollout_len, params.rollout_temperature,
                         seed=params.step_seed(step))
    continuations = iter(out.tokens)
    for b, tokens, cost in zip(owners, out.tokens, out.forward_tokens):
        acct = states[b].accounting
        acct.add_forward(role, cost)
        acct.rollouts += 1
        acct.rollout_tokens += len(tokens)
    texts = []
    for b, state in enumerate(states):
        for z in candidates[b].tolist():
            for _ in range(n):
                tail = next(continuations) if z not in policy.eos_token_ids else []
                texts.append(policy.decode(state.response + [z] + tail))
    return texts


def score_texts(reward: Reward, states: list[PromptState], texts: list[str]) -> torch.Tensor:
    """Score ``texts`` (B·m of them, grouped by prompt) with ``reward``; returns ``(B, m)``.

    Identical (prompt, text) pairs are scored once; each prompt is charged for its distinct texts.
    """
    per_prompt = len(texts) // len(states)
    pairs = [(states[i // per_prompt].prompt, t) for i, t in enumerate(texts)]
    unique = list(dict.fromkeys(pairs))
    values = dict(zip(unique, reward.score([p for p, _ in unique], [t for _, t in unique])))
    for b, state in enumerate(states):
        state.accounting.reward_calls += len(set(pairs[b * per_prompt:(b + 1) * per_prompt]))
    return torch.tensor([values[p] for p in pairs], dtype=torch.float32).view(len(states), per_prompt)
