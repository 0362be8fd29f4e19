"""Incremental text equals whole text: :class:`~tqstar.text.ResponseText`, the server's stream and ``commit_tokens``
give, token by token and block by block, exactly what decoding the whole response gives, on every tokenizer family
tqstar decodes locally — the tiny models' word-level vocabulary, byte-level BPE (SmolLM2's own tokenizer when it is
installed, and a small one built here that splits multi-byte characters), SentencePiece-style byte fallback (a
later byte can turn a whole run of earlier bytes into U+FFFD) and Metaspace — and on tokenizers it decodes whole.
Random token sequences, commit block sizes, candidate continuations and stop strings, including stop strings that
span tokens, that contain U+FFFD (met only while a character is incomplete) and that end inside a character."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tqstar.serving.detok import IncrementalText, held_back
from tqstar.state import PromptState, commit_tokens
from tqstar.text import (
    REPLACEMENT,
    LocalDecoding,
    ResponseText,
    cut_at_stop,
    hits_stop,
    local_decoding,
    response_text,
)

WORDS = ["hello", " world", " café", " naïve", "你好", "🙂", " the", ",", ".", " 's", "\n", " ", "ü", "日本語"]


class TokenizerLM:
    """What the text machinery needs of a model, from a ``transformers`` tokenizer, as every backend decodes:
    special tokens dropped; ``eos`` are the ids ``commit_tokens`` ends a response at."""

    def __init__(self, tokenizer, name: str) -> None:
        self.tokenizer, self.name = tokenizer, name
        self.local_decoding = local_decoding(tokenizer)
        self.eos_token_ids = frozenset(tokenizer.all_special_ids)
        self.calls: list[int] = []  # tokens decoded per call

    def decode(self, ids):
        self.calls.append(len(ids))
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def __repr__(self) -> str:
        return self.name


def _fast(tok, **kwargs):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)


def _byte_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what a ``ByteLevel`` vocabulary spells bytes with)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def byte_level() -> TokenizerLM:
    """Byte-level BPE: the 256 bytes, whole words, and pieces that split multi-byte characters."""
    from tokenizers import Tokenizer, decoders, models

    chars = _byte_chars()
    pieces = [bytes([b]) for b in range(256)] + [w.encode() for w in WORDS]
    pieces += [w.encode()[:2] for w in ("🙂", "你", "é")] + [w.encode()[2:] for w in ("🙂", "你")]
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for piece in pieces:
        vocab.setdefault("".join(chars[b] for b in piece), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.ByteLevel()
    fast = _fast(tok, eos_token="<|endoftext|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    return TokenizerLM(fast, "byte-level BPE")


TEXT = ("The café on the corner serves naïve little pastries — 10 € each, and the owner's dog 🐕 sleeps by the"
        " door. 日本語のテキストも少し。") * 3


def _sentencepiece_vocab() -> dict[str, int]:
    """Byte tokens, the ASCII words of :data:`TEXT` with and without ▁, letters and a few others; the rest of its
    characters (é, €, 🐕, Japanese) fall back to bytes."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    words = [w for w in TEXT.split() if w.isascii()]
    for piece in ["▁", "▁▁", "é", "你", *"abcdefghijklmnopqrstuvwxyzT.,'", *words, *("▁" + w for w in words)]:
        vocab.setdefault(piece, len(vocab))
    return vocab


def sentencepiece_ids(lm: TokenizerLM, text: str) -> list[int]:
    """``text`` in SentencePiece style: spaces as ▁ (one before the text), longest vocabulary piece first, bytes for
    a character no piece covers."""
    vocab, text, ids, i = lm.tokenizer.get_vocab(), "▁" + text.replace(" ", "▁"), [], 0
    while i < len(text):
        j = max((j for j in range(i + 1, len(text) + 1) if text[i:j] in vocab), default=None)
        if j is None:
            ids += [vocab[f"<0x{b:02X}>"] for b in text[i].encode()]
            i += 1
        else:
            ids.append(vocab[text[i:j]])
            i = j
    return ids


@functools.cache
def byte_fallback() -> TokenizerLM:
    """Llama 2 / Mistral's decoder: ▁ -> space, byte tokens gathered into runs (an invalid run: one U+FFFD per byte
    token), fused, one leading space stripped."""
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.BPE(vocab=_sentencepiece_vocab(), merges=[], unk_token="<unk>", byte_fallback=True))
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return TokenizerLM(_fast(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"), "byte fallback")


@functools.cache
def metaspace() -> TokenizerLM:
    from tokenizers import Tokenizer, decoders, models

    tok = Tokenizer(models.BPE(vocab=_sentencepiece_vocab(), merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return TokenizerLM(_fast(tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>"), "metaspace")


@functools.cache
def tiny(cleanup: bool = False) -> TokenizerLM:
    from tqstar.builtin.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.clean_up_tokenization_spaces = cleanup  # on: " ," -> "," over the whole text, so not local
    return TokenizerLM(tokenizer, "tiny word-level" + (", clean-up on" if cleanup else ""))


@functools.cache
def smollm2() -> TokenizerLM:
    from transformers import AutoTokenizer

    try:
        from tqstar.builtin.models import smollm2_dir

        path = smollm2_dir()
    except Exception as exc:  # noqa: BLE001 - not installed: skip with why
        pytest.skip(f"SmolLM2 is not installed ({exc}); make models")
    return TokenizerLM(AutoTokenizer.from_pretrained(str(path)), "SmolLM2")


LOCAL = {"tiny": tiny, "byte-level": byte_level, "byte-fallback": byte_fallback, "metaspace": metaspace,
         "smollm2": smollm2}
WHOLE = {"tiny, clean-up on": functools.partial(tiny, True)}


@functools.cache
def pool(lm: TokenizerLM) -> list[int]:
    """Ids to draw from: every id of a small vocabulary; for a large one, the special ids, the pieces of the words
    above (multi-byte characters split) and a spread of others."""
    size = len(lm.tokenizer)
    if size <= 600:
        return list(range(size))
    ids = set(lm.tokenizer.all_special_ids)
    for word in WORDS + ["Hello, world. It's 20°C — très bien! 🙂🙂 ünïcödé 中文"]:
        ids.update(lm.tokenizer(word, add_special_tokens=False)["input_ids"])
    ids.update(i for i in range(3, size) if lm.tokenizer.decode([i]) == REPLACEMENT and i % 7 == 0)  # lone bytes
    ids.update(range(0, size, size // 200))
    return sorted(ids)


def stop_strings(lm, ids: list[int], draw) -> tuple[str, ...]:
    """0–3 stop strings: pieces of the text of random spans of ``ids`` (they span tokens, and contain U+FFFD when the
    span cuts a character), a character's first bytes' U+FFFD itself, or a multi-byte character."""
    stops = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["span", "span", "fixed"]))
        if kind == "fixed" or len(ids) < 2:
            stops.append(draw(st.sampled_from([REPLACEMENT, "é", "🙂", " ", ".", "l", "you", "\n", "a" + REPLACEMENT])))
            continue
        i = draw(st.integers(0, len(ids) - 1))
        j = draw(st.integers(i + 1, min(len(ids), i + 6)))
        text = lm.decode(ids[i:j])
        if text:
            a = draw(st.integers(0, len(text) - 1))
            stops.append(text[a:draw(st.integers(a + 1, min(len(text), a + 8)))])
    return tuple(stops)


def blocks(ids: list[int], draw) -> list[list[int]]:
    """``ids`` cut into commits of 1–4 tokens (a blockwise decoder commits several at once)."""
    out, i = [], 0
    while i < len(ids):
        n = draw(st.integers(1, 4))
        out.append(ids[i:i + n])
        i += n
    return out


SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", [*LOCAL, *WHOLE])
@SETTINGS
@given(data=st.data())
def test_response_text_equals_the_whole_text(name, data):
    lm = {**LOCAL, **WHOLE}[name]()
    assert (lm.local_decoding is not None) == (name in LOCAL)
    ids = data.draw(st.lists(st.sampled_from(pool(lm)), max_size=40), label="ids")
    stop = stop_strings(lm, ids, data.draw)
    text = ResponseText(lm, stop)
    done = []
    for block in blocks(ids, data.draw):
        text.extend(block)
        done += block
        for _ in range(data.draw(st.integers(0, 2))):  # candidates and rollouts after the committed tokens
            more = data.draw(st.lists(st.sampled_from(pool(lm)), max_size=6))
            assert text.decode(more) == lm.decode(done + more)
            assert text.hits_stop(more) == hits_stop(lm, done + more, stop)
            assert text.text(more) == response_text(lm, done + more, stop)
        assert text.decode() == lm.decode(done)
        assert text.hits_stop() == hits_stop(lm, done, stop)
        assert text.text() == response_text(lm, done, stop)
        whole = lm.decode(done)
        assert text.stop_at() == (whole, min((whole.find(s) for s in stop if s in whole), default=-1))


def stream_whole(lm, ids: list[int], stop: tuple[str, ...], final: str) -> list[str]:
    """The streamed deltas as the server sent them before: the whole text decoded at every token."""
    sent, pieces = "", []

    def extend(safe: str) -> str:
        nonlocal sent
        if len(safe) <= len(sent) or not safe.startswith(sent):
            return ""
        delta, sent = safe[len(sent):], safe
        return delta

    for j in range(len(ids)):
        text = lm.decode(ids[:j + 1])
        cut = cut_at_stop(text, stop)
        pieces.append(extend(cut if len(cut) < len(text) else text[:len(text) - held_back(text, stop)]))
    return pieces + [extend(final)]


@pytest.mark.parametrize("name", [*LOCAL, *WHOLE])
@SETTINGS
@given(data=st.data())
def test_the_stream_equals_the_whole_text_stream(name, data):
    lm = {**LOCAL, **WHOLE}[name]()
    ids = data.draw(st.lists(st.sampled_from(pool(lm)), min_size=1, max_size=40), label="ids")
    stop = stop_strings(lm, ids, data.draw)
    final = response_text(lm, ids, stop)
    detok = IncrementalText(lm, stop)
    pieces = [detok.update(ids[:j + 1]) for j in range(len(ids))] + [detok.finish(final)]
    assert pieces == stream_whole(lm, ids, stop, final)


def commit_whole(lm, tokens: list[int], budget: int, stop: tuple[str, ...]) -> tuple[list[int], str, str]:
    """Where a response ends, by the whole text after every token: (its tokens, finish reason, text)."""
    response: list[int] = []
    for token in tokens:
        response.append(token)
        reason = ("eos" if token in lm.eos_token_ids else "stop" if hits_stop(lm, response, stop)
                  else "length" if len(response) >= budget else None)
        if reason:
            return response, reason, response_text(lm, response, stop)
    return response, "", ""


@pytest.mark.parametrize("name", [*LOCAL, *WHOLE])
@SETTINGS
@given(data=st.data())
def test_commit_tokens_ends_rows_where_the_whole_text_does(name, data):
    """Several rows at once, each with its own tokens (EOS among them), budget and stop strings."""
    lm = {**LOCAL, **WHOLE}[name]()
    rows, expected = [], []
    for _ in range(data.draw(st.integers(1, 3))):
        tokens = data.draw(st.lists(st.sampled_from(pool(lm)), min_size=30, max_size=30))
        budget = data.draw(st.integers(1, 30))
        stop = stop_strings(lm, tokens, data.draw)
        rows.append((PromptState(prompt="", prompt_ids={"sft": [1]}, max_new_tokens=budget, stop=stop), tokens))
        expected.append(commit_whole(lm, tokens, budget, stop))
    step = 0
    while active := [(row, tokens) for row, tokens in rows if not row.done]:
        for row, _ in active:
            row.begin_step(len(active))
        commit_tokens([row for row, _ in active], [[tokens[step]] for _, tokens in active], lm)
        step += 1
    assert [(row.response, row.finish_reason, row.text) for row, _ in rows] == expected



@pytest.mark.parametrize("name", list(LOCAL))
def test_decoding_costs_the_new_tokens_only(name):
    """Token by token through a long natural text (multi-byte characters included), with a stop string and ten
    one-token candidates a step, no decode call reads more than a few tokens: the cost per step does not grow with
    the response."""
    from tqstar.builtin.tiny import CORPUS

    lm = LOCAL[name]()
    if name in ("byte-fallback", "metaspace"):
        ids = sentencepiece_ids(lm, TEXT)
    else:
        ids = lm.tokenizer(CORPUS if name == "tiny" else TEXT, add_special_tokens=False)["input_ids"]
    ids = [i for i in ids if i not in lm.eos_token_ids]
    assert len(ids) > 100
    runs = lm.local_decoding.runs
    longest_run = max((n for n in range(1, len(ids) + 1) for i in range(len(ids) - n + 1)
                       if all(t in runs for t in ids[i:i + n])), default=0)
    assert (longest_run > 3) == (name == "byte-fallback")  # a run of byte tokens: the text after it is unsettled
    text, stop = ResponseText(lm, ("<end>",)), ("<end>",)
    for i, token in enumerate(ids):
        text.extend([token])
        for z in ids[i + 1:i + 11]:
            lm.calls.clear()
            got = text.hits_stop([z]), text.text([z])
            assert max(lm.calls) <= ResponseText.MAX_CONTEXT + longest_run + 2, (i, z, lm.calls)
            assert got == (hits_stop(lm, ids[:i + 1] + [z], stop), response_text(lm, ids[:i + 1] + [z], stop))
    assert text.text() == response_text(lm, ids, stop)


def test_which_tokenizers_decode_locally():
    from tokenizers import Tokenizer, decoders, models

    assert local_decoding(tiny().tokenizer) == LocalDecoding()  # no decoder: words joined by spaces
    assert local_decoding(byte_level().tokenizer) == LocalDecoding()
    assert local_decoding(byte_fallback().tokenizer).runs == frozenset(range(3, 259))  # the <0xXX> tokens
    assert local_decoding(metaspace().tokenizer) == LocalDecoding()
    assert local_decoding(tiny(cleanup=True).tokenizer) is None  # " ," -> "," over the whole text
    word_piece = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}, unk_token="[UNK]"))
    word_piece.decoder = decoders.WordPiece()
    assert local_decoding(_fast(word_piece, unk_token="[UNK]")) is None  # not on the list: decoded whole
    end_strip = Tokenizer(models.BPE(vocab=_sentencepiece_vocab(), merges=[], unk_token="<unk>"))
    end_strip.decoder = decoders.Sequence([decoders.Fuse(), decoders.Strip(" ", 0, 1)])  # strips the text's end
    assert local_decoding(_fast(end_strip, unk_token="<unk>")) is None
    assert local_decoding(object()) is None  # no ``tokenizers`` backend (a slow tokenizer)


class Shouting:
    """A decoder that rewrites the text before a new token (a "!" puts the word before it in capitals), declared
    local."""

    local_decoding = LocalDecoding()
    words = ["hi", "there", "!", "you"]

    def decode(self, ids):
        import re

        return re.sub(r"(\w+) !", lambda m: m[1].upper() + " !", " ".join(self.words[i] for i in ids))


def test_new_text_that_rewrites_settled_text_is_decoded_whole():
    """The safety net under the law: new text that does not extend its context's text means the decoder rewrote
    text before the cut, and the whole sequence is decoded instead."""
    lm, ids, stop = Shouting(), [0, 1, 3, 0, 2, 3, 1], ("THERE", "you")
    text = ResponseText(lm, stop)
    for i in range(len(ids)):
        text.extend(ids[i:i + 1])
        for more in ([], [2], [3, 1]):
            assert text.decode(more) == lm.decode(ids[:i + 1] + more)
            assert text.hits_stop(more) == hits_stop(lm, ids[:i + 1] + more, stop)
            assert text.text(more) == response_text(lm, ids[:i + 1] + more, stop)
