"""Keyed randomness: every random draw has its own stream, so a prompt's output depends only on itself.

A draw's stream is named by ``(seed, prompt identity, use, step, candidate, index)`` and hashed
(``hashlib.blake2b``) to a 63-bit *stream seed*:

* ``use`` is a domain tag — ``"choice"`` (choosing among the candidates of a decision: a token among the k and the
  tail arm, or a block among the k samples), ``"rollout"`` (one rollout of one candidate), ``"tail"`` (a token drawn
  from outside the top k: index 0 the one committed when the tail arm wins, index 1 the one valued as its
  representative; :mod:`tqstar.tail`), ``"plain"`` (one token of plain ``sft``/``baseline`` decoding), ``"block"``
  (the k sampled blocks of a blockwise decision, ``bon`` and ``soft-bon`` included: :func:`block_seeds`) — so no two
  uses ever share a stream, whatever the seed (the step-0 rollouts and the step-0 choice of the default seed 0 are
  different streams);
* the prompt identity is the prompt as given: a str, or the canonical JSON of a chat message list;
* ``step`` is the row's position (its response length at the decision), ``candidate`` the candidate's *content* —
  its token id, or for a block of several tokens their ids (not its rank or sample number, so identical candidates
  get identical rollouts and valuing each distinct one once is exact) — and ``index`` the rollout number.

Nothing else enters — not the batch, its size, the row's place in it, other rows, a resume or pruning — so a prompt
decodes to the same text alone, in any batch, in a server beside strangers' requests, and with pruning on or off.

A stream seed drives a *counter-based* generator: the t-th uniform of stream s is ``splitmix64(s + t·γ)``
(:func:`uniforms`), computed on the host for a whole rollout at once (one host→device copy per call), and a token
is drawn by inversion: the first index whose cumulative probability reaches ``u`` (:func:`sample_by_inversion`),
a vectorised ``(B, V)`` operation on any device. A row's tokens depend only on its stream seed and its logits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch

USES = ("choice", "rollout", "tail", "plain", "block")
_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # splitmix64's increment (the golden ratio in 64 bits)
_MASK63 = (1 << 63) - 1


def prompt_key(prompt: str | Sequence[Mapping[str, str]]) -> str:
    """The identity of a prompt for its random streams: the str itself, or the canonical JSON of the messages."""
    if isinstance(prompt, str):
        return prompt
    return json.dumps([dict(m) for m in prompt], sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def stream_seed(seed: int, key: str, use: str, step: int, candidate: int | Sequence[int] = -1, index: int = 0) -> int:
    """The 63-bit seed of one stream: blake2b of ``(use, seed, key, step, candidate, index)``. ``candidate``: a token
    id, or a sequence of them (a block; a block of one token is keyed as that token)."""
    assert use in USES, use
    ids = [int(candidate)] if isinstance(candidate, (int, np.integer)) else [int(t) for t in candidate]
    content: int | list[int] = ids[0] if len(ids) == 1 else ids
    payload = json.dumps([use, int(seed), key, int(step), content, int(index)], ensure_ascii=False)
    digest = hashlib.blake2b(payload.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


def block_seeds(seed: int, key: str, step: int, k: int) -> list[int]:
    """The stream seeds of the k sampled blocks of the decision at position ``step``: ``s, s + 1, …, s + k − 1``
    (mod 2^63) with ``s`` the ``"block"`` stream of ``(seed, key, step)``.

    Consecutive rather than hashed one by one, because that is how vLLM and llama-server seed the ``n`` samples of
    one request (child i gets ``seed + i``): a served proposer draws the k blocks in one request
    (:mod:`tqstar.lm.remote`) and each is still the sample of its own seed. splitmix64 scrambles neighbouring
    seeds into unrelated streams, and a stream of one use cannot run into another's (their counters would have to
    differ by the inverse of γ mod 2^64)."""
    base = stream_seed(seed, key, "block", step)
    return [(base + i) & _MASK63 for i in range(k)]


def stream_at(seed: int, offset: int) -> int:
    """The stream that continues stream ``seed`` after its first ``offset`` uniforms: its t-th uniform is the
    ``offset + t``-th of ``seed`` (a 64-bit seed; a sample continued from token ``offset`` on draws what it would have
    drawn in one call)."""
    return (int(seed) + int(offset) * int(_GAMMA)) % 2**64


def uniforms(seeds: Sequence[int], count: int) -> np.ndarray:
    """``(len(seeds), count)`` float64 uniforms in (0, 1): the first ``count`` draws of each stream."""
    state = np.asarray([int(s) for s in seeds], dtype=np.uint64)[:, None] + _GAMMA * np.arange(
        1, count + 1, dtype=np.uint64)[None, :]  # (B, count); uint64 arithmetic wraps modulo 2^64
    z = state
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return ((z >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # 53 random bits, never 0 or 1


def sample_by_inversion(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One index per row of ``probs`` ``(B, n)`` (unnormalised is fine): the first whose cumulative mass reaches
    ``u`` ``(B,)`` times the row's total. Zero-probability entries are never drawn."""
    cdf = probs.cumsum(dim=-1)  # (B, n)
    target = u.to(cdf.dtype)[:, None] * cdf[:, -1:]  # (B, 1)
    return (cdf < target).sum(dim=-1).clamp(max=probs.shape[-1] - 1)  # (B,)


def sample_tokens(logits: torch.Tensor, temperature: float, u: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy (``temperature`` 0) or sampled next tokens for ``(B, V)`` log-probs or logits; returns ``(B,)``.

    Sampling draws from softmax(logits / temperature) by inversion with the uniforms ``u`` ``(B,)``; without
    ``u`` (an unseeded call) fresh uniforms come from torch's global generator.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if u is None:
        u = torch.rand(logits.shape[0], dtype=torch.float64, device=logits.device)
    return sample_by_inversion(probs, u)
