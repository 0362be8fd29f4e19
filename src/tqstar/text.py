"""Response text from token ids: the one way every path (rewards, stop strings, final text) turns tokens into text.

* An incomplete trailing character — a multi-byte character whose last bytes are in tokens not generated yet,
  which a byte-level tokenizer decodes as U+FFFD — is dropped, so a reward never reads a replacement character
  that the full text would not contain.
* Text is cut before the first stop string: a response that completes a stop string ends there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REPLACEMENT = "\ufffd"


class Decodes(Protocol):
    """What this module needs of a model: token ids to text (every :class:`~tqstar.lm.base.LanguageModel` does it)."""

    def decode(self, ids: list[int]) -> str: ...


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the first stop string in it."""
    cut = min((text.find(s) for s in stop if s in text), default=-1)
    return text if cut < 0 else text[:cut]


def response_text(lm: Decodes, ids: Sequence[int], stop: Sequence[str] = ()) -> str:
    """The text of response tokens ``ids`` as a reward must see it: decoded, an incomplete trailing character
    dropped, cut before the first stop string."""
    return cut_at_stop(lm.decode(list(ids)).rstrip(REPLACEMENT), stop)


def hits_stop(lm: Decodes, ids: Sequence[int], stop: Sequence[str]) -> bool:
    """Whether the text of ``ids`` contains a stop string."""
    if not stop:
        return False
    text = lm.decode(list(ids))  # once, not once per stop string
    return any(s in text for s in stop)
