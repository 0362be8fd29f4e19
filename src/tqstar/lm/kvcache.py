"""The longest-prefix KV reuse shared by the ``transformers`` LM backend and the causal reward-model scorer.

Moved here from :mod:`tqstar.lm.hf` so both use one implementation (see that module's docstring for how the
LM backend uses it, and :mod:`tqstar.reward.prefix_cache` for the reward side):

* :class:`Rows` — encoded sequences: tokens, per-layer KV ``(R, H, T, D)``, an attention mask ``(R, T)`` and
  the model's output after each row's last token (``last_logits``: LM logits, or a reward head's output);
* :class:`PrefixKV` — ``_encode(seqs)``: each sequence starts from the stored row (``self._rows``) sharing its
  longest common prefix and only the rest is run, left-padded inside the block, padding masked out, position
  ids counting real tokens only; ``_encode_shared(seqs)``: the same, after encoding once each prefix that
  several of the sequences share past the stored rows (:func:`new_stems`). A user supplies ``_forward`` (the
  model call) and the attributes below;
* :func:`longest_common_prefixes` — per sequence, the stored row to start from and how much of it to keep;
  :func:`make_cache` — a ``transformers`` cache over stored KV, without copying;
* :func:`concat_rows`, :func:`shared_prefix_lengths` and :func:`new_stems` — a pool of rows from several calls,
  the stem a sequence shares with its batch mates, and the stems worth encoding once (the LM backend's calls and
  the reward scorer's).
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

    def _encode(self, seqs: list[tuple[int, ...]],
                match: tuple[list[int], list[int]] | None = None) -> tuple[Rows, list[int]]:
        """Encode ``seqs`` reusing the stored rows; returns the rows and per-sequence tokens run.

        Each sequence starts from the stored row sharing its longest common prefix (the row's tail beyond it is
        masked out), and only the rest of the sequence is run. ``match``: that row and prefix length per sequence
        (:func:`longest_common_prefixes`), when the caller has them.
        """
        stored = self._rows
        if stored is None or not self.prefix_cache:
            return self._prefill(seqs)
        if stored.tokens == seqs:  # the stored rows themselves (plain decoding's stem, every step)
            return Rows(list(seqs), stored.kv, stored.mask, stored.last_logits), [0] * len(seqs)
        rows, kept = match or longest_common_prefixes(stored, seqs)
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

    def _encode_shared(self, seqs: list[tuple[int, ...]], min_saved: int = 0) -> tuple[Rows, list[int]]:
        """:meth:`_encode`, after first encoding once each prefix that several of ``seqs`` share past what the stored
        rows cover (:func:`new_stems`; none unless together they spare more than ``min_saved`` tokens). Without it
        k sequences that share a prompt the stored rows lack (a first decision's k sampled blocks, each its own
        stem) would each run the whole prompt. Returns the rows of ``seqs`` only (the stems are not kept) and the
        tokens run per sequence, a stem's charged to a sequence that starts from it (each pays at most its length)."""
        stored = self._rows
        if len(seqs) < 2 or not self.prefix_cache or (stored is not None and stored.tokens == seqs):
            return self._encode(seqs)
        match, stems = new_stems(stored, seqs, min_saved)
        if not stems:
            return self._encode(seqs, match)
        stem_rows, stem_cost = self._encode_shared(stems, min_saved)  # on top of the stored rows
        kept_rows = [] if stored is None else sorted(set(match[0]))
        self._rows = pool = concat_rows([None if stored is None else stored.select(kept_rows), stem_rows])
        match = longest_common_prefixes(pool, seqs)
        rows, cost = self._encode(seqs, match)
        for j, (stem, n) in enumerate(zip(stems, stem_cost)):  # to a sequence that starts from it: each pays <= its length
            starts = [i for i, r in enumerate(match[0]) if r == len(kept_rows) + j]
            cost[starts[0] if starts else next(i for i, s in enumerate(seqs) if s[:len(stem)] == stem)] += n
        return rows, cost

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
    are valid); otherwise the sequence's last token is re-run so its logits exist. Among rows sharing as long a
    prefix, one that is wholly that prefix is preferred (the sequence itself, when it is stored).
    """
    table = stored.token_array()  # (R, T) right-padded with -1
    lengths = np.array([len(t) for t in stored.tokens])  # (R,)
    rows, kept = [], []
    for start in range(0, len(seqs), 64):  # bounded (B, R, T) comparisons
        chunk = seqs[start:start + 64]
        width = min(table.shape[1], max(len(s) for s in chunk))
        query = np.full((len(chunk), width), -2, dtype=np.int64)
        for i, s in enumerate(chunk):
            query[i, :min(len(s), width)] = s[:width]
        same = query[:, None, :] == table[None, :, :width]  # (b, R, width)
        lcp = np.cumprod(same, axis=2).sum(axis=2)  # (b, R)
        best = (2 * lcp + (lcp == lengths[None, :])).argmax(axis=1)  # the longest; on a tie, a whole row
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


def new_stems(stored: Rows | None, seqs: Sequence[tuple[int, ...]], min_saved: int = 0
              ) -> tuple[tuple[list[int], list[int]] | None, list[tuple[int, ...]]]:
    """The distinct prefixes shared by several of ``seqs`` that reach past what ``stored`` already covers, and the
    stored row each sequence starts from with the length it keeps (:func:`longest_common_prefixes`; ``None`` when
    nothing is stored). Encoding a stem once spares its new tokens for every other sequence that shares it; no
    stems are returned unless together they spare more than ``min_saved`` tokens (an extra forward pass for a
    token or two shared by chance costs more than it saves)."""
    shared = shared_prefix_lengths(seqs)
    match = None if stored is None else longest_common_prefixes(stored, list(seqs))
    covered = [0] * len(seqs) if match is None else match[1]
    start = {s[:n]: c for s, n, c in zip(seqs, shared, covered) if n > c}  # stem → what its first sharer has
    saved = sum(n - c for n, c in zip(shared, covered) if n > c) - sum(len(stem) - c for stem, c in start.items())
    return match, (list(start) if start and saved > min_saved else [])


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
