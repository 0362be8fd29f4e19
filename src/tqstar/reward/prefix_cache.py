"""Prefix-cached scoring for causal (decoder) reward models: encode the shared stem once, score at the last token.

A TQ* step scores k×N texts ``prompt + response so far + candidate + rollout`` that share a long stem, and the
next step's texts extend that stem by the committed token. A decoder reward model (Llama, Mistral, Qwen,
Gemma, ...: every ``GenericForSequenceClassification`` of ``transformers``) reads its score at one position, so
the score of a token sequence ``x_1..x_n`` is

    r(x) = W · h_p(x_1..x_p),    p = the last position whose token is not the pad token

(``W`` the ``score`` head, ``h`` the base model's last hidden state; exactly how the ``transformers`` class
pools). ``h_p`` depends on ``x_1..x_p`` only, so it can be computed on top of a KV cache of any prefix:

* each token sequence is cut after ``p`` (trailing pad tokens change nothing);
* the stem a sequence shares with its batch mates (:func:`~tqstar.lm.kvcache.new_stems`) is
  encoded once, on top of the stored rows (:class:`~tqstar.lm.kvcache.PrefixKV`, the LM backend's machinery);
* each sequence then runs only its tokens past the longest stored or stem prefix, and the head is applied to
  the hidden state after its last token.

The stored rows are the sequences of the last ``keep_calls`` calls (default 2, so a step's two reward calls —
the cheaply known values, then the estimated ones — each find the other's prompts). Scores equal an uncached
forward within float tolerance (``tests/reward/test_prefix_cache.py``). Sliding-window attention is exact only for
sequences within the window; a call with a longer sequence is scored uncached by the caller.

Forward tokens per scored text, with the prompt P tokens, response t, candidate and rollout L + 1: P + t + L + 1
uncached; about L + 1 with this cache (the stem's P + t once when new, about one token more per step).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch

from ..lm.kvcache import (
    PrefixKV,
    Rows,
    concat_rows,
    make_cache,
    new_stems,
)

Seq = tuple[int, ...]
log = logging.getLogger("tqstar")


def prefix_scorer(model, name: str, *, quiet: bool = False) -> PrefixScorer | None:
    """A :class:`PrefixScorer` for a decoder sequence-classification ``model``; ``None`` (said once, a warning on
    the ``tqstar`` logger, unless ``quiet``) for a model the cache cannot serve exactly (a bidirectional encoder: BERT, DeBERTa)."""
    from transformers.modeling_layers import GenericForSequenceClassification

    if isinstance(model, GenericForSequenceClassification):
        return PrefixScorer(model)
    if not quiet:
        log.warning(f"reward model {name} ({type(model).__name__}) is not a decoder model; it is scored with full"
                    " forwards, without the reward prefix cache")
    return None


class PrefixScorer(PrefixKV):
    """Scores of a ``GenericForSequenceClassification`` model for token sequences, reusing encoded prefixes.

    Args:
        model: the loaded classification model (eval mode); its base model and ``score`` head are run directly.
        keep_calls: how many calls' sequences stay stored for reuse.
    """

    def __init__(self, model, *, keep_calls: int = 2) -> None:
        config = model.config.get_text_config()
        self.base = getattr(model, model.base_model_prefix)
        self.head = model.score
        self.device = next(model.parameters()).device
        self.prefix_cache = True
        self.pool_pad_id = config.pad_token_id  # the pooling rule's pad token (None: pool at the last token)
        self._pad_id = config.pad_token_id if config.pad_token_id is not None else 0  # filler, always masked
        self.window: int | None = getattr(config, "sliding_window", None)
        self.keep_calls = keep_calls
        self._rows: Rows | None = None
        self._calls: list[Rows] = []
        params = inspect.signature(self.base.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"

    def fits(self, seqs: Sequence[Sequence[int]]) -> bool:
        """Whether the cache is exact for ``seqs`` (all within the sliding-attention window, if any)."""
        return self.window is None or max(len(s) for s in seqs) <= self.window

    def pooled(self, seq: Sequence[int]) -> Seq:
        """``seq`` cut after the token the head reads: the last one that is not the pad token (the first one
        when all are)."""
        if self.pool_pad_id is None:
            return tuple(seq)
        end = len(seq)
        while end > 1 and seq[end - 1] == self.pool_pad_id:
            end -= 1
        return tuple(seq[:end])

    def score(self, seqs: Sequence[Sequence[int]], batch_size: int = 16) -> tuple[torch.Tensor, int]:
        """Head outputs ``(M, labels)`` at each sequence's pooled token, and the tokens the model ran.

        Sequences are encoded ``batch_size`` rows per forward pass; every sequence must be non-empty.
        """
        seqs = [self.pooled(s) for s in seqs]
        assert all(seqs), "reward-model inputs must be non-empty"
        unique = list(dict.fromkeys(seqs))
        stored = concat_rows(self._calls)
        stems = new_stems(stored, unique)[1]
        cost = 0
        if stems:  # 1. the stems shared by several sequences, once each
            stem_rows, stem_cost = self._encode_chunks(stored, stems, batch_size)
            stored, cost = concat_rows([stored, stem_rows]), sum(stem_cost)
        rows, costs = self._encode_chunks(stored, unique, batch_size)  # 2. each sequence past its prefix
        self._calls = (self._calls + [rows])[-self.keep_calls:]
        assert rows.last_logits is not None
        index = {s: i for i, s in enumerate(unique)}
        out = rows.last_logits.index_select(0, torch.tensor([index[s] for s in seqs], device=self.device))
        return out, cost + sum(costs)  # (M, labels)

    def reset(self) -> None:
        """Forget the stored rows (frees their memory; scores are unaffected)."""
        self._calls = []

    def _encode_chunks(self, stored: Rows | None, seqs: list[Seq], batch_size: int) -> tuple[Rows, list[int]]:
        parts, costs = [], []
        for start in range(0, len(seqs), batch_size):
            self._rows = stored
            rows, cost = self._encode(seqs[start:start + batch_size])
            parts.append(rows)
            costs += cost
        self._rows = None
        rows = concat_rows(parts)
        assert rows is not None
        return rows, costs

    @torch.inference_mode()
    def _forward(self, kv, past_mask: torch.Tensor, ids: torch.Tensor, block_mask: torch.Tensor):
        """Run ``ids`` ``(R, S)`` after the cached ``kv``; returns the head at each row's last position ``(R, labels)``
        and the new KV."""
        full_mask = torch.cat([past_mask, block_mask], dim=1)  # (R, T + S)
        positions = (full_mask.cumsum(dim=1) - 1).clamp(min=0)[:, -ids.shape[1]:]  # (R, S)
        cache = make_cache(kv)
        out = self.base(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                        **{self._cache_kwarg: cache})
        new_kv = [(layer.keys, layer.values) for layer in cache.layers]  # the forward pass appended in place
        return self.head(out.last_hidden_state[:, -1]).float(), new_kv  # (R, labels)
