"""The reward prefix cache changes nothing but speed: cached scores equal the model's own forward (ragged
batches, left truncation, either padding side, trailing pad tokens), the tokens it runs are the uncached count
minus the shared prefixes, the value cache still answers identical texts, and encoders fall back."""

from __future__ import annotations

import pytest
import torch

from tqstar.builtin.tiny import build_tokenizer
from tqstar.engine import Engine
from tqstar.errors import RewardError
from tqstar.lm.kvcache import shared_prefix_lengths
from tqstar.params import DecodeParams
from tqstar.reward import TransformersReward

FORMAT = "{prompt}\n{response}"
PROMPT = "how do i make a cup of tea ? " * 4  # 36 word tokens
STEM = "boil water , add the tea"


def _config(kind: str, *, num_labels: int = 1, max_positions: int = 512, window: int | None = None):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=len(build_tokenizer()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, num_labels=num_labels)
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "mistral":
        return MistralConfig(**common, sliding_window=window)
    return Qwen2Config(**common)


def _save(model, path, *, padding_side: str = "right") -> str:
    tok = build_tokenizer()
    tok.padding_side = padding_side
    model.eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _decoder_rm(tmp_path, kind: str = "llama", seed: int = 0, **config) -> str:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return _save(AutoModelForSequenceClassification.from_config(_config(kind, **config)), tmp_path / kind)


def _hf_scores(reward: TransformersReward, prompts, responses, padding_side: str) -> list[float]:
    """The reference: the ``transformers`` model's own forward on one padded batch."""
    ids = reward.encode(prompts, responses)
    reward.tokenizer.padding_side = padding_side
    try:
        batch = reward.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    finally:
        reward.tokenizer.padding_side = "right"
    with torch.inference_mode():
        return reward.model(**batch).logits[:, reward.label].float().tolist()


def _steps(n_steps: int = 3, k: int = 4):
    """The texts a decoder scores: k candidates + rollouts of unequal length, the stem growing each step (by
    words no rollout uses, so a text shares nothing with last step's texts beyond the stem)."""
    words = "the sun was warm and the sky was clear so we walked to the park and sat by the lake".split()
    commits = "thank you for your patience".split()
    response = STEM.split()
    for step in range(n_steps):
        texts = [" ".join(response + words[j:j + 3 + 2 * j]) for j in range(k)]
        yield [PROMPT] * k, texts
        response.append(commits[step])


@pytest.mark.parametrize("kind", ["llama", "mistral", "qwen2"])
def test_cached_scores_equal_the_model_forward(tmp_path, kind):
    path = _decoder_rm(tmp_path, kind)
    cached = TransformersReward(path, format=FORMAT, batch_size=3)
    plain = TransformersReward(path, format=FORMAT, prefix_cache=False)
    if kind == "qwen2":  # transformers loads a qwen2 directory's tokenizer as Qwen2Tokenizer: keep the word-level one
        cached.tokenizer = plain.tokenizer = build_tokenizer()
    for prompts, texts in _steps():
        got = cached.score(prompts, texts)
        assert got == pytest.approx(plain.score(prompts, texts), abs=1e-5)
        for side in ("left", "right"):
            assert got == pytest.approx(_hf_scores(plain, prompts, texts, side), abs=1e-5)
        assert len(set(got)) == len(got)
    assert cached.forward_tokens < plain.forward_tokens


def test_forward_token_counts(tmp_path):
    cached = TransformersReward(_decoder_rm(tmp_path), format=FORMAT)
    plain = TransformersReward(_decoder_rm(tmp_path), format=FORMAT, prefix_cache=False)
    previous_stem = 0
    for prompts, texts in _steps():
        ids = [tuple(s) for s in cached.encode(prompts, texts)]
        stem = min(shared_prefix_lengths(ids))  # one stem shared by all k texts
        before, plain_before = cached.forward_tokens, plain.forward_tokens
        cached.score(prompts, texts)
        plain.score(prompts, texts)
        assert plain.forward_tokens - plain_before == sum(len(s) for s in ids)
        # the stem once (only its new tokens after the first step), then each text past the stem
        assert cached.forward_tokens - before == (stem - previous_stem) + sum(len(s) - stem for s in ids)
        previous_stem = stem
    cached.prefix_cache = False  # switched off later: every text in full
    cached.reset_cache()
    before = cached.forward_tokens
    cached.score(prompts, texts)
    assert cached.forward_tokens - before == sum(len(s) for s in ids)


def test_label_and_sigmoid_read_the_same_head(tmp_path):
    path = _decoder_rm(tmp_path, num_labels=3)
    prompts, texts = next(_steps())
    for label in (0, 2):
        cached = TransformersReward(path, format=FORMAT, label=label, sigmoid=True)
        plain = TransformersReward(path, format=FORMAT, label=label, sigmoid=True, prefix_cache=False)
        assert cached.score(prompts, texts) == pytest.approx(plain.score(prompts, texts), abs=1e-6)


def test_trailing_pad_tokens_are_pooled_like_the_model(tmp_path):
    """The head reads the last token that is not the pad token, as ``*ForSequenceClassification`` does."""
    cached = TransformersReward(_decoder_rm(tmp_path), format=FORMAT)
    prompts, texts = ["the cat sat"] * 3, ["on the mat <pad> <pad>", "on the mat", "on the mat and the dog ran"]
    got = cached.score(prompts, texts)
    assert got[0] == pytest.approx(got[1], abs=1e-6)
    assert got == pytest.approx(_hf_scores(cached, prompts, texts, "right"), abs=1e-5)


def test_left_truncation_keeps_the_cache_exact(tmp_path):
    path = _decoder_rm(tmp_path, max_positions=40)  # every text is over the limit and keeps its last 40 tokens
    cached = TransformersReward(path, format=FORMAT, truncate=True)
    plain = TransformersReward(path, format=FORMAT, truncate=True, prefix_cache=False)
    for prompts, texts in _steps():
        assert cached.score(prompts, texts) == pytest.approx(plain.score(prompts, texts), abs=1e-5)
    with pytest.raises(RewardError, match="over the 40-token limit"):
        TransformersReward(path, format=FORMAT).score(*next(_steps()))


def test_two_prompts_alternating_calls_find_their_stems(tmp_path):
    """The last two calls stay stored, so a step's two reward calls each keep the other's prompts cached."""
    reward = TransformersReward(_decoder_rm(tmp_path), format=FORMAT)
    other = "tell me about the park and the lake . " * 4
    reward.score([PROMPT, PROMPT], [STEM + " the sun", STEM + " we walked"])
    reward.score([other, other], [STEM + " the sun", STEM + " we walked"])
    before = reward.forward_tokens
    reward.score([PROMPT], [STEM + " the sun was"])  # one new token past the stored row
    assert reward.forward_tokens - before == 1


def test_value_cache_still_answers_identical_texts(tmp_path):
    reward = TransformersReward(_decoder_rm(tmp_path), format=FORMAT)
    prompts, texts = next(_steps())
    first = reward.score(prompts, texts)
    spent = reward.forward_tokens
    assert all(reward.is_cached(p, t) for p, t in zip(prompts, texts))
    assert reward.score(prompts, texts) == first and reward.forward_tokens == spent
    reward.reset_cache()
    assert not reward.is_cached(prompts[0], texts[0])
    assert reward.score(prompts, texts) == pytest.approx(first, abs=1e-6)
    assert reward.forward_tokens == 2 * spent  # nothing stored any more: the same work again


def test_sliding_window_longer_inputs_run_uncached(tmp_path):
    path = _decoder_rm(tmp_path, "mistral", window=20)
    cached = TransformersReward(path, format=FORMAT)
    plain = TransformersReward(path, format=FORMAT, prefix_cache=False)
    short = (["the cat sat"] * 2, ["on the mat", "on the mat and the dog ran"])
    long = next(_steps())
    assert cached.score(*short) == pytest.approx(plain.score(*short), abs=1e-5)
    assert cached.forward_tokens < plain.forward_tokens  # the short pair shared its stem
    before = cached.forward_tokens
    assert cached.score(*long) == pytest.approx(plain.score(*long), abs=1e-5)
    ids = cached.encode(*long)
    assert cached.forward_tokens - before == sum(len(s) for s in ids)


def test_bidirectional_reward_model_falls_back_once(tmp_path, caplog):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(build_tokenizer()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1, pad_token_id=0)
    path = _save(BertForSequenceClassification(config), tmp_path / "bert")
    reward = TransformersReward(path, format=FORMAT)
    said = caplog.text  # a warning on the tqstar logger
    assert said.count("is not a decoder model") == 1 and "BertForSequenceClassification" in said
    caplog.clear()
    assert reward._prefix is None
    TransformersReward(path, format=FORMAT, prefix_cache=False)  # asked for no cache: nothing to say
    for prompts, texts in _steps(2):
        ids = reward.encode(prompts, texts)
        before = reward.forward_tokens
        assert reward.score(prompts, texts) == pytest.approx(_hf_scores(reward, prompts, texts, "right"), abs=1e-5)
        assert reward.forward_tokens - before == sum(len(s) for s in ids)
    assert "is not a decoder model" not in caplog.text


def test_decoding_with_the_cache_is_identical_and_cheaper(sft, baseline, tiny_paths):
    params = DecodeParams(method="tq-direct", k=4, rollout_len=4, alpha=2.0, max_new_tokens=6, prune=False)
    prompts = ["How do I make tea?", "Tell me about the park and the lake."]
    runs = {}
    for flag in (True, False):
        reward = TransformersReward(str(tiny_paths["reward"]), prefix_cache=flag)
        out = Engine(sft, baseline, reward).generate(prompts, params, progress=False, batch_size=2)
        runs[flag] = ([r.token_ids for r in out], reward.forward_tokens)
    assert runs[True][0] == runs[False][0]
    assert runs[True][1] < runs[False][1] / 2


@pytest.mark.parametrize(("seqs", "expected"), [
    ([(1, 2, 3), (1, 2, 4), (5,)], [2, 2, 0]),
    ([(1, 2, 3, 4), (1, 2), (1, 2, 3, 9), (7, 8)], [3, 2, 3, 0]),
    ([(1,)], [0]),
])
def test_shared_prefix_lengths(seqs, expected):
    assert shared_prefix_lengths(seqs) == expected
