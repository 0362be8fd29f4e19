"""Incremental detokenisation for streaming: release only text that can no longer change.

The decoder commits one token per step; the text of a response is ``decode(ids)`` of all its tokens, cut at the
first stop string. While a response is still running, :class:`IncrementalText` releases a prefix of that text
which every later step keeps:

* a trailing U+FFFD (``\\ufffd``) is held back: it is how a tokenizer spells the first bytes of a multi-byte
  character whose last bytes are in a token not yet committed;
* the longest suffix that is a prefix of a stop string is held back (``"...<"`` with stop ``"<end>"``): if the
  stop string completes, that text is cut and must never have been sent;
* text is released only while it extends what was already sent, so a tokenizer that rewrites earlier text once
  more tokens arrive (clean-up of spaces) delays text instead of contradicting it.

When the response finishes, :meth:`IncrementalText.finish` releases the rest of the final text, so the
concatenated deltas equal the non-streamed response text exactly. Each update decodes only the new tokens (with a
few before them) and searches only the new text for stop strings (:class:`~tqstar.text.ResponseText`), so a token
costs the same at the end of a long response as at its start.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..text import REPLACEMENT, Decodes, ResponseText


def held_back(text: str, stop: Sequence[str]) -> int:
    """Characters at the end of ``text`` that could still become (part of) a stop string or a broken character.

    The count is the longest suffix of ``text`` that is a proper prefix of some stop string, at least the run of
    trailing U+FFFD characters.
    """
    hold = 0
    while hold < len(text) and text[-1 - hold] == REPLACEMENT:
        hold += 1
    for s in stop:
        for j in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:j]):
                hold = j
                break
    return hold


class IncrementalText:
    """The streamed text of one response: ``update(ids)`` after each step returns the newly safe text.

    Args:
        lm: the model whose ids these are (its ``decode`` drops special tokens).
        stop: the request's stop strings.
    """

    def __init__(self, lm: Decodes, stop: Sequence[str] = ()) -> None:
        self.stop = tuple(stop)
        self.response = ResponseText(lm, self.stop)
        self.sent = ""

    def update(self, ids: Sequence[int]) -> str:
        """The text that became safe to send now that ``ids`` (the response so far) are committed ("" if none)."""
        self.response.extend(ids[len(self.response.ids):])
        text, cut = self.response.stop_at()
        safe = text[:cut] if cut >= 0 else text[: len(text) - held_back(text, self.stop)]
        return self._extend(safe)

    def finish(self, text: str) -> str:
        """The rest of the final response ``text`` (already cut at its stop string)."""
        return self._extend(text)

    def _extend(self, safe: str) -> str:
        if len(safe) <= len(self.sent) or not safe.startswith(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent):], safe
        return delta
