"""The longest-prefix KV reuse shared by the ``transformers`` LM backend and the causal reward-model scorer.

Moved here from :mod:`tqstar.lm.hf` so both use one implementation (see that module's docstring for how the
LM backend uses it, and :mod:`tqstar.reward.prefix_cache` for the reward side):

* :class:`Rows` — encoded sequences: tokens, per-layer KV ``(R, H, T, D)``, an attention mask ``(R, T)`` and
  the model's output after each row's last token (``last_logits``: LM logits, or a reward head's output);
* :class:`PrefixKV` — ``_encode(seqs)``: each sequence starts from the stored row (``self._rows``) sharing its
  longest common prefix and only the rest is run, left-padded inside the block, padding masked out, position
  ids counting real tokens only. A user supplies ``_forward`` (the model call) and the attributes below;
* :func:`longest_common_prefixes` — per sequence, the stored row to start from and how much of it to keep;
  :func:`make_cache` — a ``transformers`` cache over stored KV, without copying;
* :func:`concat_rows` and :func:`shared_prefix_lengths` — a pool of rows from several calls, and the stem a
  sequence shares with its batch mates (used by the reward scorer to encode a common stem once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Rows:
    """Encoded sequences: tokens, KV per layer ``(R, H, T, D)``, mask ``(R, T)``, last logits ``(R, V)``."""

    tokens: list[tuple[int, ...]]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    mask: torch.Tensor
    last_logits: torch.Tensor | None

    def token_array(self) -> np.ndarray:
        """Stored tokens as ``(R, T)`` int64, right-padded with -1 (for prefix matching)."""
        width = max((len(t) for t in self.tokens), default=0)
        table = np.full((len(self.tokens), max(width, 1)), -1, dtype=np.int64)
        for i, t in enumerate(self.tokens):
            table[i, :len(t)] = t
        return table

    def keep_first(self, kept: Sequence[int]) -> Rows:
        """Each row cut to its first ``kept[i]`` tokens: later positions are masked out, and columns masked in
        every row are dropped. Rows that keep everything keep their last logits."""
        if all(n == len(t) for n, t in zip(kept, self.tokens)):
            return self
        limit = torch.as_tensor(list(kept), device=self.mask.device)[:, None]
        mask = self.mask * (self.mask.cumsum(dim=1) <= limit)  # (R, T)
        cols = mask.any(dim=0).nonzero().squeeze(-1)
        kv = None
        if self.kv is not None and len(cols):
            kv = [(k.index_select(2, cols), v.index_select(2, cols)) for k, v in self.kv]
        tokens = [t[:n] for t, n in zip(self.tokens, kept)]
        return Rows(tokens, kv, mask.index_select(1, cols), self.last_logits)

    def select(self, idx: Sequence[int]) -> Rows:
        """The rows ``idx`` (repeats allowed). Selecting every row in order returns these rows uncopied: plain
        decoding selects its one stored row every step, and copying its KV cost O(sequence) per token."""
        if len(idx) == len(self.tokens) and all(i == j for j, i in enumerate(idx)):
            return self
        index = torch.as_tensor(list(idx), dtype=torch.long, device=self.mask.device)
        kv = None if self.kv is None else [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.kv]
        last = None if self.last_logits is None else self.last_logits.index_select(0, index)
        return Rows([self.tokens[i] for i in idx], kv, self.mask.index_select(0, index), last)


class PrefixKV:
    """Encode sequences reusing the stored rows ``self._rows``.

    A user sets ``_rows`` (``None``: nothing stored), ``prefix_cache`` (``False``: always encode in full),
    ``_pad_id`` (filler under masked positions) and ``device``, and defines
    ``_forward(kv, past_mask (R, T), ids (R, S), block_mask (R, S)) -> (last (R, X), new kv)``.
    """

    _rows: Rows | None
    prefix_cache: bool
    _pad_id: int
    device: torch.device

    def _forward(self, kv, past_mask: torch.Tensor, ids: torch.Tensor, block_mask: torch.Tensor):
        raise NotImplementedError

    def _encode(self, seqs: list[tuple[int, ...]]) -> tuple[Rows, list[int]]:
        """Encode ``seqs`` reusing the stored rows; returns the rows and per-sequence tokens run.

        Each sequence starts from the stored row sharing its longest common prefix (the row's tail beyond it is
        masked out), and only the rest of the sequence is run.
        """
        stored = self._rows
        if stored is None or not self.prefix_cache:
            return self._prefill(seqs)
        if stored.tokens == seqs:  # the stored rows themselves (plain decoding's stem, every step)
            return Rows(list(seqs), stored.kv, stored.mask, stored.last_logits), [0] * len(seqs)
        rows, kept = longest_common_prefixes(stored, seqs)
        base = stored.select(rows).keep_first(kept)
        suffixes = [s[n:] for s, n in zip(seqs, kept)]
        width = max(len(s) for s in suffixes)
        if width == 0:  # every sequence is exactly a stored row: its last logits are stored too
            return Rows(list(seqs), base.kv, base.mask, base.last_logits), [0] * len(seqs)
        ids, block_mask = self._left_pad(suffixes, width)
        logits, kv = self._forward(base.kv, base.mask, ids, block_mask)
        has_new = torch.tensor([len(s) > 0 for s in suffixes], device=self.device)[:, None]
        last = logits if base.last_logits is None else torch.where(has_new, logits, base.last_logits)
        mask = torch.cat([base.mask, block_mask], dim=1)
        return Rows(list(seqs), kv, mask, last), [len(s) for s in suffixes]

    def _prefill(self, seqs: list[tuple[int, ...]]) -> tuple[Rows, list[int]]:
        width = max(len(s) for s in seqs)
        empty = torch.zeros(len(seqs), 0, dtype=torch.long, device=self.device)
        if width == 0:
            return Rows(list(seqs), None, empty, None), [0] * len(seqs)
        ids, mask = self._left_pad(seqs, width)
        logits, kv = self._forward(None, empty, ids, mask)
        return Rows(list(seqs), kv, mask, logits), [len(s) for s in seqs]

    def _left_pad(self, seqs: Sequence[Sequence[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
                mask[i, width - len(s):] = 1
        return ids.to(self.device), mask.to(self.device)

def make_cache(kv):
    """A ``DynamicCache`` holding ``kv`` without copying it (the forward pass appends by concatenation)."""
    from transformers import DynamicCache

    if kv is None:
        return DynamicCache()
    cache = DynamicCache(ddp_cache_data=[(None, None)] * len(kv))
    for layer, (k, v) in zip(cache.layers, kv):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return cache


def longest_common_prefixes(stored: Rows, seqs: list[tuple[int, ...]]) -> tuple[list[int], list[int]]:
    """Per sequence, the stored row with the longest common prefix and how many of its tokens to keep.

    A kept prefix never covers a whole sequence unless the row *is* that sequence (then its stored last logits
    are valid); otherwise the sequence's last token is re-run so its logits exist.
    """
    table = stored.token_array()  # (R, T) right-padded with -1
    rows, kept = [], []
    for start in range(0, len(seqs), 64):  # bounded (B, R, T) comparisons
        chunk = seqs[start:start + 64]
        width = min(table.shape[1], max(len(s) for s in chunk))
        query = np.full((len(chunk), width), -2, dtype=np.int64)
        for i, s in enumerate(chunk):
            query[i, :min(len(s), width)] = s[:width]
        same = query[:, None, :] == table[None, :, :width]  # (b, R, width)
        lcp = np.cumprod(same, axis=2).sum(axis=2)  # (b, R)
        best = lcp.argmax(axis=1)
        for i, s in enumerate(chunk):
            row, n = int(best[i]), int(lcp[i, best[i]])
            if n == len(s) and len(stored.tokens[row]) != n:
                n -= 1
            rows.append(row)
            kept.append(n)
    return rows, kept


def concat_rows(parts: Sequence[Rows | None]) -> Rows | None:
    """The rows of ``parts`` as one :class:`Rows` (shorter parts left-padded with masked zeros)."""
    parts = [p for p in parts if p is not None and p.kv is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    width = max(p.mask.shape[1] for p in parts)

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # left-pad dimension ``dim`` to ``width``
        shape = list(t.shape)
        shape[dim] = width - t.shape[dim]
        return torch.cat([t.new_zeros(shape), t], dim=dim)

    kv = [(torch.cat([pad(p.kv[i][0], 2) for p in parts]), torch.cat([pad(p.kv[i][1], 2) for p in parts]))
          for i in range(len(parts[0].kv))]  # per layer (R, H, T, D)
    mask = torch.cat([pad(p.mask, 1) for p in parts])  # (R, T)
    last = torch.cat([p.last_logits for p in parts])  # (R, X)
    return Rows([t for p in parts for t in p.tokens], kv, mask, last)


def shared_prefix_lengths(seqs: Sequence[tuple[int, ...]]) -> list[int]:
    """Per sequence, the longest prefix it shares with another sequence of ``seqs`` (0 if none).

    In sorted order a sequence's longest common prefix with any other is the one with a sorted neighbour.
    """
    order = sorted(range(len(seqs)), key=lambda i: seqs[i])
    out = [0] * len(seqs)
    for a, b in zip(order, order[1:]):
        n = min(len(seqs[a]), len(seqs[b]))
        differ = np.flatnonzero(np.asarray(seqs[a][:n]) != np.asarray(seqs[b][:n]))
        common = int(differ[0]) if len(differ) else n
        out[a], out[b] = max(out[a], common), max(out[b], common)
    return out
