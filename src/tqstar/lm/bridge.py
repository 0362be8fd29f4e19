"""The text bridge: a baseline with another tokenizer (another model family) reads and writes *text*.

Rollout-based TQ* needs nothing from the baseline but the text of its continuations, so the baseline need not
share the SFT model's vocabulary (weak-to-strong transfer: a small aligned model of another family guides a large
SFT model). The decoder keeps working in SFT token ids; only the baseline's side of a rollout goes through text.

Definitions, for prompt x, SFT response ids y and candidate z (``D``: decode with special tokens dropped, ``E``:
encode without adding special tokens and with special-token text kept as text, ``P_bl(x)``: the prompt in the
baseline's own format — its chat template, its system prompt, its BOS)::

    c(y, z)  = D_sft(y + [z]), an incomplete trailing character dropped       the response text if z is committed
    B(x,y,z) = P_bl(x) + E_bl(c)                                               the baseline's state
    τ        ~ π_bl(· | B), at most L baseline tokens, ends at the baseline's EOS
    t(c, τ)  = D_bl(E_bl(c) + τ) minus its longest common prefix with D_bl(E_bl(c))
    Q̂(s, z)  = (1/N) Σ_i r(x, cut(c + t(c, τ_i)))

``cut`` drops an incomplete trailing character and cuts before the first stop string, as for every text a reward
reads (:mod:`tqstar.text`). Token boundaries:

* c is decoded from the *whole* response, so a candidate that is part of a word, or whose leading space the SFT
  tokenizer spells its own way (byte-level ``Ġ``, SentencePiece ``▁``), joins the response as the SFT model
  means it. A candidate that is only part of a UTF-8 character has no text yet: its c is the response text
  without it, so it is valued like the state before it (two such candidates get the same Q̂).
* B re-encodes the whole text: the candidate's text may merge with the response's tail into one baseline token
  (``"hel" + "lo"`` → ``"hello"``). The baseline sees the canonical tokenisation of the text, as in training.
* t is the rollout's text *in the context of* E_bl(c): the baseline's decoder decides its leading space (a
  SentencePiece ``▁word`` after a word is `` word``; alone it would be ``word``), a rollout that continues a
  partial word (``"hel"`` → ``"lo"``) adds only its own characters, and one that ends inside a character leaves
  an incomplete character that ``cut`` drops. Nothing is invented or lost: c + t(c, τ) = c + (what the baseline
  wrote). A baseline whose decoding of E_bl(c) is not c itself (a lower-casing or word-level tokenizer, an
  unknown token) still appends only its own new text to the SFT's c.
* Special tokens: the SFT's are dropped from c (its EOS ends the response before any rollout); the baseline's
  prompt carries its own BOS and template tokens, its response part has none, and its EOS ends a rollout and is
  dropped from t.

``rollout_len`` counts the baseline's tokens. The baseline's prefix cache (:mod:`tqstar.lm.hf`, or a server's)
still pays: the text grows at its end, so B changes only in its last tokens from one step to the next and the
longest stored prefix is reused. Greedy rollout reuse is exact at the text level: a stored rollout τ from B
answers any later state B' = B + τ[:m] with τ[m:] (:func:`stored_continuation`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from ..errors import PromptTooLongError
from ..text import REPLACEMENT, cut_at_stop
from .base import LanguageModel, TokenIds


class TextBridge:
    """The baseline's view of SFT states through text (module docstring: the definitions).

    ``prefix`` gives the baseline's sequence for a response (the SFT ids so far plus the candidate), ``text`` the
    reward text of that response continued by a baseline rollout. Encodings are memoised (a step asks for the same
    response several times), so the bridge adds a decode and an encode per candidate per step.
    """

    def __init__(self, sft: LanguageModel, baseline: LanguageModel, cache_size: int = 4096) -> None:
        self.sft, self.baseline = sft, baseline
        self._encoded = functools.lru_cache(maxsize=cache_size)(self._encode_response)

    def response_text(self, ids: TokenIds) -> str:
        """c: the SFT text of response ids, an incomplete trailing character dropped."""
        return self.sft.decode(list(ids)).rstrip(REPLACEMENT)

    def prefix(self, prompt_ids: Sequence[int], ids: TokenIds, room: int = 0) -> list[int]:
        """B: the baseline's prompt ids (its own format) + its encoding of the text of response ``ids``.

        Raises :class:`PromptTooLongError` when B and ``room`` more tokens (the rollout) outgrow the baseline's
        context: its tokenizer may need more tokens for the text than the SFT's, which the start-up check of the
        prompt (:meth:`LanguageModel.check_fits`) cannot foresee."""
        seq = list(prompt_ids) + list(self._encoded(tuple(ids))[1])
        limit = self.baseline.max_context
        if limit is not None and len(seq) + room > limit:
            raise PromptTooLongError(
                f"the response so far is {len(seq) - len(prompt_ids)} tokens for baseline {self.baseline.name} (text"
                f" bridge), which with its {len(prompt_ids)}-token prompt and {room} rollout tokens outgrows its"
                f" {limit}-token context; lower max_new_tokens or rollout_len, or shorten the prompt")
        return seq

    def text(self, ids: TokenIds, tail: Sequence[int], stop: Sequence[str] = ()) -> str:
        """cut(c + t(c, τ)): the reward text of response ``ids`` continued by the baseline's rollout ``tail``."""
        text, encoded, decoded = self._encoded(tuple(ids))
        return cut_at_stop((text + self.tail_text(encoded, decoded, tail)).rstrip(REPLACEMENT), stop)

    def tail_text(self, encoded: Sequence[int], decoded: str, tail: Sequence[int]) -> str:
        """t: the text the baseline's ``tail`` adds after ``encoded`` (whose decoding is ``decoded``)."""
        if not tail:
            return ""
        full = self.baseline.decode(list(encoded) + list(tail))
        return full[len(os.path.commonprefix([decoded, full])):]

    def _encode_response(self, ids: tuple[int, ...]) -> tuple[str, tuple[int, ...], str]:
        """(c, E_bl(c), D_bl(E_bl(c))) of response ids."""
        text = self.response_text(ids)
        encoded = tuple(self.baseline.encode_text(text)) if text else ()
        return text, encoded, self.baseline.decode(list(encoded)) if encoded else ""


def stored_continuation(stored: dict[tuple[int, ...], list[int]], seq: Sequence[int], budget: int,
                        eos: frozenset[int]) -> list[int] | None:
    """What stored greedy rollouts already tell about the greedy rollout of ``seq`` (at most ``budget`` tokens).

    ``stored`` maps rolled-out sequences B to their greedy continuations τ. If ``seq`` = B + τ[:m] for some stored
    B and 0 ≤ m ≤ len(τ), with no EOS in τ[:m], the greedy continuation of ``seq`` starts with τ[m:] (greedy decoding
    is a function of the sequence), so τ[m:][:budget] is returned — complete when it ends with EOS or fills the
    budget, else to be extended. With several matches the longest known continuation wins; ``None``: no match.
    In the shared-vocabulary case B = [s, z*] and seq = [s, z*, z'] with z' = τ[0] (m = 1): the chosen candidate's
    rollout is its first token's rollout at the next step.
    """
    seq = tuple(seq)
    for length in sorted({len(key) for key in stored}, reverse=True):  # longest B first: the smallest m
        m = len(seq) - length
        if m < 0:
            continue
        tail = stored.get(seq[:length])
        if tail is not None and m <= len(tail) and tuple(tail[:m]) == seq[length:] and not eos & set(tail[:m]):
            return list(tail[m:m + budget])
    return None
