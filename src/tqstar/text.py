"""Response text from token ids: the one way every path (rewards, stop strings, final text) turns tokens into text.

* An incomplete trailing character — a multi-byte character whose last bytes are in tokens not generated yet,
  which a byte-level tokenizer decodes as U+FFFD — is dropped, so a reward never reads a replacement character
  that the full text would not contain.
* Text is cut before the first stop string: a response that completes a stop string ends there.

:func:`response_text` and :func:`hits_stop` are the definitions, on the whole text. :class:`ResponseText` gives the
same answers for a response that grows token by token (or block by block) at a cost that depends on the new tokens,
not on the length of the response: the decoder, the rollout values and the server's stream use it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

REPLACEMENT = "\ufffd"


class Decodes(Protocol):
    """What this module needs of a model: token ids to text (every :class:`~tqstar.lm.base.LanguageModel` does it).

    A model whose ``decode`` is *local* (its ``local_decoding`` is a :class:`LocalDecoding`, see
    :func:`local_decoding`) lets :class:`ResponseText` decode only the new tokens; any other is decoded whole every
    time."""

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


# ---- incremental ------------------------------------------------------------------------------------------------
#: Decoders of the ``tokenizers`` library whose output for a token depends only on that token, on whether it is the
#: first one (a leading space dropped), and on the tokens that share its character (``ByteLevel``: UTF-8 bytes) or
#: its byte run (``ByteFallback``). For them the law of :class:`ResponseText` holds; no decoder at all (tokens joined
#: by single spaces) is covered too.
LOCAL_DECODERS = frozenset({"ByteLevel", "Metaspace", "Replace", "ByteFallback", "Fuse", "Strip", "Sequence"})
_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass(frozen=True)
class LocalDecoding:
    """A model's ``decode`` is local (:class:`ResponseText` decodes only new tokens and a few before them).

    ``runs``: ids the decoder gathers into runs that a later token can rewrite as a whole (``ByteFallback``'s
    ``<0xXX>`` byte tokens: an invalid run becomes one U+FFFD per byte); a response's text is settled only after
    another id.
    """

    runs: frozenset[int] = frozenset()


def local_decoding(tokenizer: Any) -> LocalDecoding | None:
    """How ``tokenizer.decode(ids, skip_special_tokens=True)`` is local, or ``None`` when it is not known to be.

    Local: a ``transformers`` fast tokenizer whose ``tokenizers`` decoder is none (tokens joined by spaces) or a
    chain of :data:`LOCAL_DECODERS` (``Strip`` only at the start), and that does not clean up tokenization spaces
    afterwards (a rewrite of the whole text, e.g. ``" ," -> ","``). That covers byte-level BPE (GPT-2, Llama 3,
    Qwen2, SmolLM2), SentencePiece-style byte fallback (Llama 2, Mistral, Gemma) and word-level vocabularies.
    Anything else (a slow tokenizer, WordPiece, an unknown decoder) is decoded whole, as before.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or _cleans_up(tokenizer, backend):
        return None
    if backend.decoder is None:
        return LocalDecoding()
    try:
        spec = json.loads(backend.decoder.__getstate__())
    except (AttributeError, TypeError, ValueError):
        return None
    if not _local(spec):
        return None
    if "ByteFallback" not in json.dumps(spec):
        return LocalDecoding()
    return LocalDecoding(frozenset(i for t, i in backend.get_vocab().items() if _BYTE_TOKEN.fullmatch(t)))


def _cleans_up(tokenizer: Any, backend: Any) -> bool:
    """Whether ``transformers`` rewrites decoded text with ``clean_up_tokenization`` (releases that know the
    ``..._for_bpe_even_though_it_will_corrupt_output`` switch skip it for BPE vocabularies)."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return False
    forced = getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", None)
    return forced is None or bool(forced) or type(backend.model).__name__ != "BPE"


def _local(spec: dict) -> bool:
    kind = spec.get("type")
    if kind == "Sequence":
        return all(_local(d) for d in spec.get("decoders", []))
    if kind == "Strip":
        return spec.get("stop", 0) == 0
    return kind in LOCAL_DECODERS


class ResponseText:
    """``decode(ids)`` of a response that grows, and its stop and reward texts, at a cost independent of its length.

    ``extend(tokens)`` commits tokens (one, or a block); :meth:`decode`, :meth:`hits_stop` and :meth:`text` answer
    for the committed tokens followed by ``more`` (a candidate, a candidate and its rollout) exactly what
    ``lm.decode``, :func:`hits_stop` and :func:`response_text` answer for the whole sequence.

    How. The committed tokens are split at a *cut* whose text, the *head*, is settled: it has no trailing U+FFFD
    (no character waits for bytes of later tokens), its last token does not belong to a byte run
    (:class:`LocalDecoding`), and the few tokens before the cut, the *context*, decode to a non-empty text without
    U+FFFD at its end. For a local decoder (:func:`local_decoding`) the law

        decode(ids[:cut] + rest) == head + decode(context + rest)[len(decode(context)):]

    then holds: the context carries everything the decoder looks back at — that it is not the first token, the
    bytes of a character or byte run still open. Each call decodes only ``context + rest`` and checks that its text
    starts with the context's; when it does not (the new tokens rewrote settled text, e.g. a byte that turns a whole
    byte-fallback run into U+FFFD), it decodes everything, so the answer is exact either way. The cut moves to the
    end after each commit whose text is settled. A stop string lying wholly inside the head was found when the head
    grew; any other occurrence overlaps the text after it, so only the last ``len(stop) - 1`` characters of the head
    and the new text are searched. (vLLM and ``tokenizers``' ``DecodeStream`` stream text with the same window idea;
    the settled-cut conditions and the rewrite check are what make it exact here.)

    Args:
        lm: the model whose ids these are (its ``local_decoding`` says whether and how its decoder is local).
        stop: the row's stop strings.
    """

    #: The most tokens a context may take (a character is at most 4 byte tokens; a space-joined token needs 1).
    MAX_CONTEXT = 8

    def __init__(self, lm: Decodes, stop: Sequence[str] = ()) -> None:
        self.lm, self.stop = lm, tuple(stop)
        self.local: LocalDecoding | None = getattr(lm, "local_decoding", None)
        self.ids: list[int] = []
        self._cut = 0  # tokens ids[:cut] decode to the head
        self._head = ""
        self._context: list[int] = []  # ids[cut - c:cut]
        self._context_text = ""
        self._head_stop = -1  # start of the first stop string lying wholly inside the head (-1: none)
        self._tried = 0  # the committed length at which the cut last tried to move

    def extend(self, tokens: Sequence[int]) -> None:
        """Commit ``tokens`` (one or several). Nothing is decoded until a question is asked."""
        self.ids.extend(int(t) for t in tokens)

    def decode(self, more: Sequence[int] = ()) -> str:
        """``lm.decode(ids + more)``."""
        return self._decoded(more)[0]

    def hits_stop(self, more: Sequence[int] = ()) -> bool:
        """:func:`hits_stop` of ``ids + more``."""
        return bool(self.stop) and self.stop_at(more)[1] >= 0

    def stop_at(self, more: Sequence[int] = ()) -> tuple[str, int]:
        """``decode(ids + more)`` and where the first stop string starts in it (-1: nowhere)."""
        text, settled = self._decoded(more)
        return text, self._first_stop(text, settled) if self.stop else -1

    def text(self, more: Sequence[int] = ()) -> str:
        """:func:`response_text` of ``ids + more``."""
        text, settled = self._decoded(more)
        text = text.rstrip(REPLACEMENT)  # the head has no trailing U+FFFD: this strips new text only
        if not self.stop:
            return text
        cut = self._first_stop(text, min(settled, len(text)))
        return text if cut < 0 else text[:cut]

    # ---- internals -------------------------------------------------------------------------------------------
    def _decoded(self, more: Sequence[int]) -> tuple[str, int]:
        """``decode(ids + more)`` and how many of its first characters are the head (0 when decoded whole)."""
        if self.local is not None and self._cut < len(self.ids) != self._tried:
            self._tried = len(self.ids)
            self._advance()
        return self._decoded_from_cut(more)

    def _decoded_from_cut(self, more: Sequence[int]) -> tuple[str, int]:
        if not self._cut:
            return self.lm.decode(self.ids + list(more)), 0
        rest = self.ids[self._cut:] + list(more)
        if not rest:
            return self._head, len(self._head)
        text = self.lm.decode(self._context + rest)
        if not text.startswith(self._context_text):  # the new tokens rewrote settled text: decode it all
            return self.lm.decode(self.ids + list(more)), 0
        return self._head + text[len(self._context_text):], len(self._head)

    def _first_stop(self, text: str, settled: int) -> int:
        """Where the first stop string starts in ``text`` (-1: nowhere), whose first ``settled`` characters are the
        head (whose own stop strings are known)."""
        return _earliest(self._find_stop(text, settled), self._head_stop if settled else -1)

    def _advance(self) -> None:
        """Move the cut to the end of the committed tokens if their text is settled."""
        if self.ids[-1] in self.local.runs:
            return
        rest = self.ids[self._cut:]
        text, settled = self._decoded_from_cut(())
        if not text or text.endswith(REPLACEMENT):
            return
        if settled and len(self._context) + len(rest) <= self.MAX_CONTEXT:  # the context grows by the new tokens
            context = self._context + rest, self._context_text + text[settled:]  # its text was just decoded
        else:
            context = self._settled_context()
            if context is None:
                return
        if not settled:  # a new head (first cut, or earlier text rewritten): look for stops in all of it
            self._head_stop = self._find_stop(text, 0)
        else:  # the head grew: stops ending in its new part (one may start before a stop found earlier)
            self._head_stop = _earliest(self._find_stop(text, settled), self._head_stop)
        self._cut, self._head = len(self.ids), text
        self._context, self._context_text = context

    def _find_stop(self, text: str, start: int) -> int:
        """Where the first stop string of ``text`` that ends after ``start`` starts (-1: none)."""
        return _earliest(*(text.find(s, max(0, start - len(s) + 1)) for s in self.stop))

    def _settled_context(self) -> tuple[list[int], str] | None:
        """The fewest last committed tokens (at most :attr:`MAX_CONTEXT`) whose text is non-empty and has no trailing
        U+FFFD, with that text; ``None`` if there are none (the cut then stays where it is)."""
        for c in range(1, min(self.MAX_CONTEXT, len(self.ids)) + 1):
            context = self.ids[-c:]
            text = self.lm.decode(context)
            if text and not text.endswith(REPLACEMENT):
                return context, text
        return None


def _earliest(*starts: int) -> int:
    """The smallest of ``starts`` that is not -1 (not found), or -1."""
    return min((i for i in starts if i >= 0), default=-1)
