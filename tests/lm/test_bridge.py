"""The text bridge: SFT and baseline models with different tokenizers (weak-to-strong transfer across families).

Three tokenizer families are built here with the ``tokenizers`` library — word-level (tqstar.builtin.tiny's), byte-level
BPE and SentencePiece-style Unigram (Metaspace) — each with its own special tokens, EOS id and chat template, and
a tiny random Llama model per family. Every SFT/baseline combination is checked against an explicit text-level
reference (decode, re-encode, roll out with ``generate``, decode, join, score: the definition in
:mod:`tqstar.lm.bridge`), and the engine's invariance checks run on bridged pairs.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import TEST_DEVICE
from fake_openai import FakeServer
from invariance import CASES, assert_batch_invariant, assert_join_invariant, assert_speedups_exact

from tqstar import CallableReward, DecodeParams, Engine, PromptTooLongError
from tqstar.builtin.tiny import CORPUS, build_tokenizer, tiny_config
from tqstar.lm.bridge import TextBridge, stored_continuation
from tqstar.lm.hf import TransformersLM
from tqstar.lm.remote import RemoteLM
from tqstar.testing.reference import naive_bridged_q

FAMILIES = ("word", "bpe", "unigram")
PAIRS = [(a, b) for a in FAMILIES for b in FAMILIES]
TEXT = CORPUS + "naïve café, 東京, 🙂 — tabs\tand  spaces.\nNew line. Hello world!\n"
PROMPTS = ["How do I make a cup of tea?", "naïve café 🙂", "The food was"]
UNICODE = ["naïve café, 東京, 🙂 — tabs\tand  spaces.\nNew line.", "Hello world", " leading", "trailing  ", "\n\n"]


# ---- three tokenizer families and a tiny model for each ---------------------------------------------------------
def _wrap(tok, specials: dict[str, str], template: str):
    """A transformers tokenizer around ``tok``; the special tokens are *added* tokens (not pieces of the model's
    vocabulary), so text that spells them is never encoded as them."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    fast.chat_template = template
    return fast


def _bpe():
    """Byte-level BPE (GPT-2 / Qwen / SmolLM style): ``Ġ`` spaces, every byte a token, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT.splitlines(keepends=True), trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return _wrap(tok, dict(pad_token="<|pad|>", bos_token="<|endoftext|>", eos_token="<|im_end|>",
                           additional_special_tokens=["<|im_start|>"]),
                 "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _unigram():
    """SentencePiece-style Unigram (Llama / Gemma style): ``▁`` spaces, BOS first, ``[INST]`` template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(TEXT.splitlines(keepends=True), trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<unk>"], unk_token="<unk>", show_progress=False))
    return _wrap(tok, dict(pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                           additional_special_tokens=["[INST]", "[/INST]"]),
                 "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")


TOKENIZERS = {"word": build_tokenizer, "bpe": _bpe, "unigram": _unigram}


@functools.cache
def _weights(family: str, seed: int, eos_bias: float):
    """A tiny random Llama for ``family``'s tokenizer (sharpened; no special token but EOS is ever likely; EOS
    raised by ``eos_bias`` so that it is a likely candidate and rollouts end at various lengths)."""
    from transformers import LlamaForCausalLM

    tok = TOKENIZERS[family]()
    config = tiny_config(len(tok))
    config.bos_token_id, config.eos_token_id, config.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
        others = [i for i in tok.all_special_ids if i != tok.eos_token_id]
        model.lm_head.weight[others] = 0.0
        model.lm_head.bias = torch.nn.Parameter(torch.zeros(len(tok)))
        model.lm_head.bias[tok.eos_token_id] = eos_bias
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.to(TEST_DEVICE), tok


def family_lm(family: str, seed: int = 0, eos_bias: float = 2.0, **kwargs) -> TransformersLM:
    """A fresh backend (its own prefix cache) around the cached weights of ``family``."""
    model, tok = _weights(family, seed, eos_bias)
    return TransformersLM(model, tok, name=f"{family}-{seed}", **kwargs)


def char_sum(prompts, responses):
    """A reward in [0, 1] that every character and its position move (a lost or invented character shows)."""
    return [(sum((i + 1) * ord(ch) for i, ch in enumerate(text)) % 101) / 100 for text in responses]


REWARD = CallableReward(char_sum, name="char-sum", range=(0.0, 1.0))


def bridged(sft_family: str, baseline_family: str, **kwargs) -> Engine:
    """SFT of one family, baseline of another (seed 1); bridged through text even when the family is the same."""
    return Engine(family_lm(sft_family), family_lm(baseline_family, 1), REWARD, bridge=True, **kwargs)


GREEDY = DecodeParams(method="tq-direct", k=4, alpha=3.0, rollout_len=3, max_new_tokens=5, trace=True, prune=False,
                      reuse_rollouts=False)


@pytest.mark.parametrize(("sft_family", "baseline_family"), PAIRS)
def test_q_equals_the_text_level_reference_in_every_combination(sft_family, baseline_family):
    engine = bridged(sft_family, baseline_family)
    sft, baseline = engine.models.sft, engine.models.baseline
    params = GREEDY.replace(stop=("tea",))
    plain = engine.generate(PROMPTS, params, progress=False)
    assert any(z in sft.eos_token_ids for r in plain for row in r.trace for z in row["candidates"])  # EOS is valued
    for response in plain:
        for row in response.trace:
            before = response.token_ids[:row["step"]]
            want = [naive_bridged_q(sft, baseline, response.prompt, before, z, params, char_sum) for z in row["candidates"]]
            assert row["q"] == pytest.approx(want, abs=1e-6), (response.prompt, row["step"])
    # reuse and pruning: the same tokens, and every value they computed is the reference's
    fast = engine.generate(PROMPTS, params.replace(prune=True, reuse_rollouts=True), progress=False)
    assert [r.token_ids for r in fast] == [r.token_ids for r in plain]
    for a, b in zip(fast, plain):
        for row_a, row_b in zip(a.trace, b.trace):
            assert [q for q in row_a["q"] if q is not None] == pytest.approx(
                [q for q, p in zip(row_b["q"], row_a["pruned"]) if not p], abs=1e-6)


def test_cross_family_pairs_are_bridged_automatically_and_said_once(caplog):
    caplog.set_level("INFO", logger="tqstar")
    engine = Engine(family_lm("bpe"), family_lm("unigram", 1), REWARD)
    said = [r.getMessage() for r in caplog.records if r.name == "tqstar"]
    assert engine.models.bridge is not None and len(said) == 1 and "text bridge" in said[0] and "bpe-0" in said[0]
    caplog.clear()
    same = Engine(family_lm("bpe"), family_lm("bpe", 1), REWARD)
    assert same.models.bridge is None and not caplog.records


@pytest.mark.parametrize("method", ["tq-soft", "eft"])
def test_likelihood_methods_are_refused_through_the_bridge(method):
    """tq-soft and eft compare the two models' probabilities of the same token ids: meaningless across vocabularies."""
    from tqstar.errors import ConfigError

    engine = Engine(family_lm("word"), family_lm("bpe", 1), REWARD)
    extra = dict(n_rollouts=2, rollout_temperature=1.0) if method == "tq-soft" else {}
    with pytest.raises(ConfigError, match=rf"^method '{method}' needs the baseline's and the SFT model's likelihoods"
                                          r" .* use tq-direct, tq-indirect or cd with this pair"):
        engine.generate(PROMPTS, GREEDY.replace(method=method, **extra), progress=False)


def test_the_tail_through_the_bridge_values_z_prime_by_its_text_and_rolling_is_refused():
    """``rollout``: z′ is an SFT token, rolled out through the bridge like any candidate (its value is the text-level
    reference's); ``rolling`` would need the baseline's distribution over SFT ids, which another vocabulary cannot
    give: refused in one sentence."""
    from tqstar.errors import ConfigError

    engine = bridged("unigram", "bpe")
    sft, baseline = engine.models.sft, engine.models.baseline
    params = GREEDY.replace(temperature=1.0, tail="rollout", seed=3)
    for response in engine.generate(PROMPTS, params, progress=False):
        for row in response.trace:
            z = row["tail"]["token"]
            if z is not None:
                want = naive_bridged_q(sft, baseline, response.prompt, response.token_ids[:row["step"]], z, params,
                                       char_sum)
                assert row["tail"]["q"] == pytest.approx(want, abs=1e-6)
    with pytest.raises(ConfigError) as info:
        engine.generate(PROMPTS, params.replace(tail="rolling"), progress=False)
    assert str(info.value).startswith("`tail` 'rolling' draws the tail token from the baseline's next-token"
                                      " distribution over the SFT vocabulary, which baseline bpe-1 (another tokenizer,"
                                      " text bridge) cannot give; use tail: mean or tail: rollout")


def test_eos_sets_may_differ_through_the_bridge():
    sft, baseline = family_lm("word"), family_lm("bpe", 1)
    assert sft.eos_token_ids != baseline.eos_token_ids  # the EOS check applies only to token-sharing pairs
    responses = Engine(sft, baseline, REWARD).generate(PROMPTS, GREEDY.replace(max_new_tokens=12), progress=False)
    assert "eos" in {r.finish_reason for r in responses}
    for r in responses:
        assert (r.finish_reason == "eos") == (r.token_ids[-1] in sft.eos_token_ids)
        assert r.text == sft.decode(r.token_ids)


def test_the_bridge_on_a_shared_word_level_vocabulary_is_the_direct_path():
    """Word-level text re-encodes to the same ids, so bridged values equal the token-level ones exactly, and the
    chosen candidate's rollout is reused every step (the SFT weights roll out: its greedy token is a candidate)."""
    sft = family_lm("word", eos_bias=0.0)
    params = GREEDY.replace(max_new_tokens=8, reuse_rollouts=True)
    direct = Engine(sft, sft.with_prompt_format(name="same"), REWARD).generate(PROMPTS, params, progress=False)
    through = Engine(sft, sft.with_prompt_format(name="same"), REWARD, bridge=True).generate(PROMPTS, params,
                                                                                           progress=False)
    for a, b in zip(through, direct):
        assert a.token_ids == b.token_ids and a.text == b.text
        assert [row["q"] for row in a.trace] == [row["q"] for row in b.trace]
        assert a.accounting.reused_rollouts == b.accounting.reused_rollouts > 0


# ---- token boundaries ---------------------------------------------------------------------------------------------
def _ids(lm: TransformersLM, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _token(lm: TransformersLM, piece: str) -> int:
    token = lm.tokenizer.convert_tokens_to_ids(piece)
    assert token is not None and token != lm.tokenizer.unk_token_id, piece
    return token


@pytest.mark.parametrize("baseline_family", ["bpe", "unigram"])
@pytest.mark.parametrize("text", UNICODE)
def test_unicode_and_whitespace_round_trip(text, baseline_family):
    """A byte-level SFT's text reaches the baseline whole, and comes back whole with what the baseline adds."""
    sft, baseline = family_lm("bpe"), family_lm(baseline_family, 1)
    bridge = TextBridge(sft, baseline)
    ids = _ids(sft, text)
    assert bridge.text(ids, []) == text
    assert baseline.decode(bridge.prefix([], ids)) == baseline.tokenizer.decode(_ids(baseline, text),
                                                                                skip_special_tokens=True)
    tail = _ids(baseline, "ok")  # a rollout's tokens
    joined = bridge.text(ids, tail)
    assert joined.startswith(text) and joined[len(text):].strip() == "ok"


def test_partial_utf8_candidates_have_no_text_yet():
    sft, baseline = family_lm("bpe"), family_lm("unigram", 1)
    bridge = TextBridge(sft, baseline)
    stem = _ids(sft, "caf")
    lead, cont = _token(sft, "Ã"), _token(sft, "©")  # the two bytes of 'é' (0xC3 0xA9) in byte-level spelling
    assert bridge.response_text(stem + [lead]) == "caf"
    assert bridge.prefix([7], stem + [lead]) == bridge.prefix([7], stem)  # valued like the state before it
    assert bridge.response_text(stem + [lead, cont]) == "café"
    assert bridge.text(stem + [lead, cont], []) == "café"


def test_a_rollout_that_ends_inside_a_character_or_a_word_is_joined_exactly():
    sft, baseline = family_lm("word"), family_lm("bpe", 1)
    bridge = TextBridge(sft, baseline)
    ids = _ids(sft, "the cat")
    assert bridge.text(ids, [_token(baseline, "Ġ"), _token(baseline, "Ã")]) == "the cat "  # 'é' half written
    assert bridge.text(ids, [_token(baseline, "Ġ"), _token(baseline, "Ã"), _token(baseline, "©")]) == "the cat é"
    assert bridge.text(ids, _ids(baseline, "s are")) == "the cats are"  # continues the word: nothing added
    eos = baseline.tokenizer.eos_token_id
    assert bridge.text(ids, _ids(baseline, " sat") + [eos]) == "the cat sat"  # the baseline's EOS is no text


def test_leading_space_conventions_follow_the_baseline_decoder():
    sft, unigram = family_lm("bpe"), family_lm("unigram", 1)
    bridge = TextBridge(sft, unigram)
    ids = _ids(sft, "Hello")
    assert bridge.text(ids, [_token(unigram, "▁wor"), _token(unigram, "ld")]) == "Hello world"  # ▁ in context
    assert bridge.text(ids, [_token(unigram, "l"), _token(unigram, "o")]) == "Hellolo"  # no ▁: same word
    word = TextBridge(sft, family_lm("word", 1))
    assert word.text(_ids(sft, "The cat"), _ids(word.baseline, "sat")) == "The cat sat"  # word-level joins words


def test_special_tokens_of_each_side():
    sft, baseline = family_lm("bpe"), family_lm("unigram", 1)
    bridge = TextBridge(sft, baseline)
    ids = _ids(sft, "a </s> b <|im_end|>")  # special-token *text* written by the SFT model
    assert bridge.response_text(ids) == "a </s> b <|im_end|>"
    assert baseline.tokenizer.eos_token_id not in bridge.prefix([], ids)  # stays text for the baseline too
    specials = [sft.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|endoftext|>")]
    assert bridge.prefix([], _ids(sft, "a b") + specials[:1]) == bridge.prefix([], _ids(sft, "a b"))
    prompt = baseline.encode_prompt("hi")
    assert prompt[0] == baseline.tokenizer.bos_token_id and bridge.prefix(prompt, ids)[:len(prompt)] == prompt


def test_a_baseline_context_outgrown_by_the_re_encoded_text_is_named():
    sft, baseline = family_lm("word", eos_bias=0.0), family_lm("bpe", 1)  # words are several BPE tokens each
    prompt_ids = baseline.encode_prompt(PROMPTS[0])
    baseline.max_context = len(prompt_ids) + 12
    engine = Engine(sft, baseline, REWARD)
    with pytest.raises(PromptTooLongError, match=r"for baseline bpe-1 \(text bridge\).*outgrows its \d+-token context;"
                                                 r" lower max_new_tokens or rollout_len"):
        engine.generate(PROMPTS[:1], GREEDY.replace(max_new_tokens=10, rollout_len=2), progress=False)


def test_stored_continuation_reads_any_overlap():
    stored = {(1, 2, 3): [4, 5, 6, 9], (1, 2): [7, 8]}
    assert stored_continuation(stored, [1, 2, 3, 4], 5, frozenset({9})) == [5, 6, 9]  # m = 1
    assert stored_continuation(stored, [1, 2, 3], 2, frozenset({9})) == [4, 5]  # m = 0, cut to the budget
    assert stored_continuation(stored, [1, 2, 3, 4, 5, 6], 5, frozenset({9})) == [9]
    assert stored_continuation(stored, [1, 2, 7, 8], 5, frozenset()) == []  # all used: nothing known beyond
    assert stored_continuation(stored, [1, 2, 3, 4, 5, 6, 9], 5, frozenset({9})) is None  # past EOS
    assert stored_continuation(stored, [1, 2, 5], 5, frozenset()) is None


# ---- the engine's guarantees hold for bridged pairs ------------------------------------------------------------
CROSS = [("bpe", "unigram"), ("unigram", "word"), ("word", "bpe")]


@pytest.mark.parametrize("rollouts", [dict(), dict(n_rollouts=2, rollout_temperature=1.0)], ids=["greedy", "sampled"])
@pytest.mark.parametrize(("sft_family", "baseline_family"), CROSS)
def test_pruning_and_reuse_are_exact_through_the_bridge(sft_family, baseline_family, rollouts):
    params = DecodeParams(method="tq-direct", k=5, alpha=0.5, rollout_len=4, max_new_tokens=7, stop=("the",),
                          **rollouts)
    assert_speedups_exact(bridged(sft_family, baseline_family), PROMPTS, params)


@pytest.mark.parametrize(("case", "tail"), [("tq-direct", "mean"), ("tq-direct", "rollout"), ("tq-direct", "off"),
                                          ("tq-indirect", "mean"), ("tq-indirect", "rollout"), ("baseline", None),
                                          ("bon", None), ("soft-bon", None), ("tq-direct[m=2]", None),
                                          ("tq-indirect[m=2]", None), ("tq-direct[m=3,argmax]", None)])
def test_bridged_output_is_batch_and_join_invariant(case, tail):
    """Every tail TQ* takes through the bridge (z′ is an SFT token, rolled out through text like a candidate), and
    blockwise TQ* (a block of SFT tokens is text for the baseline, which rolls out from it)."""
    engine = Engine(family_lm("unigram"), family_lm("bpe", 1), REWARD,
                    CallableReward(lambda p, r: [len(t) / 100 for t in r], name="length"))
    params = DecodeParams(**{**dict(k=4, alpha=2.0, rollout_len=4, max_new_tokens=5, bon_policy="baseline"),
                             **CASES[case], **({} if tail is None else {"tail": tail})})
    assert_batch_invariant(engine, PROMPTS, params)
    assert_join_invariant(engine, PROMPTS, params, seeds=[0, 7, 123])


@pytest.mark.parametrize("method", ["baseline", "bon"])
def test_baseline_decoding_of_a_bridged_pair_is_the_baseline_alone(method):
    """``baseline`` and ``bon`` from the baseline decode in the baseline's own tokens and prompt format."""
    sft, baseline = family_lm("word"), family_lm("unigram", 1)
    params = DecodeParams(method=method, max_new_tokens=6, bon_policy="baseline",
                          **({"temperature": 1.0, "bon_n": 3} if method == "bon" else {}))
    responses = Engine(sft, baseline, REWARD).generate(PROMPTS, params, progress=False)
    for r in responses:
        assert r.text == baseline.decode(r.token_ids) and r.reward == char_sum([r.prompt], [r.text])[0]
        if method == "baseline":
            want = baseline.rollout([baseline.encode_prompt(r.prompt)], 6).tokens[0]
            assert r.token_ids == want


def test_baseline_forward_tokens_stay_per_token_with_the_bridge():
    """The growing text changes only its tail: the baseline's prefix cache keeps the bridge's cost per generated
    token within a small factor of the direct path's (measured: docs/weak-to-strong.md)."""
    sft = family_lm("word", eos_bias=0.0)
    params = GREEDY.replace(max_new_tokens=12, rollout_len=4, reuse_rollouts=False, trace=False)
    runs = {}
    for bridge in (False, True):
        engine = Engine(sft, sft.with_prompt_format(name="same"), REWARD, bridge=bridge)
        (r,) = engine.generate(PROMPTS[:1], params, progress=False)
        runs[bridge] = r.accounting.baseline_forward_tokens
    uncached = Engine(sft, sft.with_prompt_format(name="same", prefix_cache=False), REWARD, bridge=True)
    (r,) = uncached.generate(PROMPTS[:1], params, progress=False)
    assert runs[True] == runs[False]  # word-level re-encoding is the identity: not one token more
    assert r.accounting.baseline_forward_tokens > runs[True]  # what the cache saves


# ---- served baselines -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("flavor", "local_tokenizer"), [("vllm", True), ("llama.cpp", True), ("llama.cpp", False)],
                         ids=["vllm", "llama.cpp", "llama.cpp-server-tokenizer"])
def test_a_served_baseline_with_its_own_tokenizer_is_bridged(flavor, local_tokenizer):
    """Through a local tokenizer, or llama-server's /tokenize (which can keep special-token text as text; vLLM's
    cannot, so a vLLM baseline should be given its tokenizer directory)."""
    sft, baseline = family_lm("word"), family_lm("bpe", 1)
    server = FakeServer(baseline, flavor, "dpo")
    try:
        remote = RemoteLM(server.url, "dpo", tokenizer=baseline.tokenizer if local_tokenizer else None,
                          eos_token_ids=sorted(baseline.eos_token_ids), retries=1, backoff=0.01)
        params = GREEDY.replace(reuse_rollouts=True, prune=True)
        want = Engine(sft, baseline, REWARD).generate(PROMPTS, params, progress=False)
        got = Engine(sft, remote, REWARD).generate(PROMPTS, params, progress=False)
        assert [r.token_ids for r in got] == [r.token_ids for r in want]
        for a, b in zip(got, want):
            for row_a, row_b in zip(a.trace, b.trace):
                assert row_a["pruned"] == row_b["pruned"]
                assert [q for q in row_a["q"] if q is not None] == pytest.approx(
                    [q for q in row_b["q"] if q is not None], abs=1e-6)
    finally:
        server.close()
