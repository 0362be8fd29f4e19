"""Every method end to end on tiny random transformers models; batching, seeding, stopping, caching, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import vowel_share

from tqstar.engine import Engine
from tqstar.errors import ConfigError, PromptTooLongError, RewardError, VocabularyMismatchError
from tqstar.lm.hf import TransformersLM
from tqstar.params import DecodeParams
from tqstar.reward import CallableReward

PROMPTS = ["How do I make tea?", "The food was", "Tell me about the park and the lake."]
SHORT = dict(k=4, alpha=2.0, rollout_len=5, max_new_tokens=6)


@pytest.fixture()
def reward():
    return CallableReward(vowel_share)


@pytest.fixture()
def engine(sft, baseline, reward):
    return Engine(sft, baseline, reward, CallableReward(lambda p, r: [len(t) / 100 for t in r], name="length"))


METHOD_PARAMS = {
    "tq-direct": {},
    "tq-indirect": dict(n_rollouts=3, rollout_temperature=1.0),
    "cd": {},
    "args": {},
    "none": {},
    "sft": {},
    "baseline": {},
    "bon": dict(temperature=1.0, bon_n=3),
}


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_every_method_decodes_and_accounts(engine, method):
    params = DecodeParams(method=method, **{**SHORT, **METHOD_PARAMS[method]})
    responses = engine.generate(PROMPTS, params, progress=False)
    assert [r.prompt for r in responses] == PROMPTS
    for r in responses:
        assert r.method == method and 1 <= len(r.token_ids) <= params.max_new_tokens
        assert r.reward == pytest.approx(vowel_share([r.prompt], [r.text])[0])
        a = r.accounting
        assert a.wall_time_s > 0 and a.steps == len(r.token_ids)
        if method in ("tq-direct", "tq-indirect", "cd"):
            per_step = params.k * params.n_rollouts
            assert a.rollouts <= per_step * a.steps and a.rollouts > 0 and a.rollout_tokens > 0
            assert a.reward_calls > 0
            rolled = a.baseline_forward_tokens if method != "cd" else a.sft_forward_tokens
            assert rolled >= a.rollout_tokens
        if params.is_token_level:
            assert len(r.kl_per_step) == len(r.token_ids) and r.kl >= 0
            assert r.kl_bound is not None  # the reward declares its range
        else:
            assert r.kl is None


def test_batch_equals_singles(engine):
    params = DecodeParams(method="tq-direct", **SHORT)
    together = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    alone = [engine.generate([p], params, progress=False)[0].token_ids for p in PROMPTS]
    assert together == alone


def test_kv_cache_gives_the_same_decisions_as_full_re_encoding(sft, baseline, reward):
    params = DecodeParams(method="tq-direct", trace=True, **SHORT)
    cached = Engine(sft, baseline, reward).generate(PROMPTS, params, progress=False)
    plain = Engine(sft.with_prompt_format(prefix_cache=False), baseline.with_prompt_format(prefix_cache=False), reward)
    fresh = plain.generate(PROMPTS, params, progress=False)
    for a, b in zip(cached, fresh):
        assert a.token_ids == b.token_ids
        for row_a, row_b in zip(a.trace, b.trace):
            assert row_a["logp_sft"] == pytest.approx(row_b["logp_sft"], abs=1e-4)
            assert row_a["q"] == pytest.approx(row_b["q"], abs=1e-6)
        # the cache is why the cached run encodes fewer tokens
        assert a.accounting.baseline_forward_tokens < b.accounting.baseline_forward_tokens


def test_seeded_sampling_repeats_and_seeds_differ(engine):
    params = DecodeParams(method="tq-direct", temperature=1.0, n_rollouts=2, rollout_temperature=1.0, **SHORT)
    first = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    again = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    other = [r.token_ids for r in engine.generate(PROMPTS, params.replace(seed=1), progress=False)]
    assert first == again and first != other


def test_alpha_zero_greedy_is_sft_greedy(engine):
    tq = engine.generate(PROMPTS, DecodeParams(method="tq-direct", **{**SHORT, "alpha": 0.0}), progress=False)
    plain = engine.generate(PROMPTS, DecodeParams(method="sft", **SHORT), progress=False)
    assert [r.token_ids for r in tq] == [r.token_ids for r in plain]


def test_direct_equals_cd_with_the_sft_model_as_baseline(sft, reward):
    engine = Engine(sft, sft, reward)
    params = DecodeParams(method="tq-direct", trace=True, **SHORT)
    direct = engine.generate(PROMPTS, params, progress=False)
    cd = engine.generate(PROMPTS, params.replace(method="cd"), progress=False)
    assert [r.token_ids for r in direct] == [r.token_ids for r in cd]


def test_indirect_with_one_rollout_equals_direct(engine):
    params = DecodeParams(method="tq-direct", rollout_temperature=1.0, **SHORT)
    direct = engine.generate(PROMPTS, params, progress=False)
    indirect = engine.generate(PROMPTS, params.replace(method="tq-indirect"), progress=False)
    assert [r.token_ids for r in direct] == [r.token_ids for r in indirect]


def test_trace_rows_are_consistent(engine):
    params = DecodeParams(method="tq-direct", trace=True, **SHORT)
    (r,) = engine.generate(PROMPTS[:1], params, progress=False)
    assert len(r.trace) == len(r.token_ids)
    for t, row in enumerate(r.trace):
        assert len(row["candidates"]) == params.k and row["chosen"] == r.token_ids[t]
        assert sum(row["p_dec"]) == pytest.approx(1.0)
        assert row["score"] == pytest.approx([lp + params.alpha * q for lp, q in zip(row["logp_sft"], row["q"])])
        assert row["chosen"] == row["candidates"][max(range(params.k), key=row["score"].__getitem__)]
        assert r.kl_per_step[t] == pytest.approx(-row["logp_sft"][row["candidates"].index(row["chosen"])], abs=1e-5)


def test_stop_strings_cut_the_response(engine):
    params = DecodeParams(method="none", **{**SHORT, "max_new_tokens": 12})
    (full,) = engine.generate(PROMPTS[:1], params, progress=False)
    word = full.text.split()[2]
    (cut,) = engine.generate(PROMPTS[:1], params.replace(stop=(word,)), progress=False)
    assert cut.finish_reason == "stop" and word not in cut.text and full.text.startswith(cut.text)


def test_decoding_stops_at_eos(sft, baseline, reward):
    eos = next(iter(sft.eos_token_ids))
    bias = torch.zeros(sft.vocab_size)
    bias[eos] = 100.0  # EOS becomes the SFT model's overwhelming favourite
    sft.model.lm_head.bias = torch.nn.Parameter(bias)
    engine = Engine(sft, baseline, reward)
    for r in engine.generate(PROMPTS, DecodeParams(method="tq-direct", **{**SHORT, "alpha": 0.0}), progress=False):
        assert r.finish_reason == "eos" and r.token_ids == [eos] and r.text == ""


def test_prompts_finish_independently_in_a_batch(engine):
    params = DecodeParams(method="none", **{**SHORT, "max_new_tokens": 10})
    (long,) = engine.generate(PROMPTS[1:2], params, progress=False)
    word = long.text.split()[1]
    mixed = engine.generate(PROMPTS, params.replace(stop=(word,)), progress=False)
    alone = [engine.generate([p], params.replace(stop=(word,)), progress=False)[0].token_ids for p in PROMPTS]
    assert [r.token_ids for r in mixed] == alone
    assert mixed[1].finish_reason == "stop"


def test_vocabulary_mismatch_names_both_models(tiny_paths, tmp_path, sft):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from tqstar.tiny import build_tokenizer, tiny_config

    tok = build_tokenizer()
    tok.add_tokens(["extra1", "extra2"])
    other = LlamaForCausalLM(tiny_config(len(tok))).eval()
    lm = TransformersLM(other, tok, name="other-model")
    assert isinstance(tok, PreTrainedTokenizerFast)
    with pytest.raises(VocabularyMismatchError, match=r"tiny-sft.*other-model") as err:
        Engine(sft, lm)
    assert str(sft.vocab_size) in str(err.value) and str(lm.vocab_size) in str(err.value)


@pytest.mark.parametrize(
    ("method", "missing"),
    [("tq-direct", "--baseline"), ("baseline", "--baseline"), ("tq-indirect", "--baseline-reward"), ("cd", "--reward")],
)
def test_missing_parts_fail_before_decoding(sft, baseline, reward, method, missing):
    parts = {"--baseline": dict(reward=reward), "--baseline-reward": dict(baseline=baseline, reward=reward),
             "--reward": dict(baseline=baseline)}[missing]
    extra = dict(n_rollouts=2, rollout_temperature=1.0) if method == "tq-indirect" else {}
    with pytest.raises(ConfigError, match=f"method '{method}' needs .*{missing}"):
        Engine(sft, **parts).generate(PROMPTS, DecodeParams(method=method, **extra), progress=False)


def test_k_larger_than_the_vocabulary(engine, sft):
    with pytest.raises(ConfigError, match=rf"`k` must be <= the vocabulary size of tiny-sft \({sft.vocab_size}\)"):
        engine.generate(PROMPTS, DecodeParams(k=sft.vocab_size + 1), progress=False)


def test_reward_nan_names_the_text(sft, baseline):
    bad = CallableReward(lambda p, r: [math.nan] * len(r), name="broken")
    with pytest.raises(RewardError, match=r"reward broken returned nan for the response '.*'"):
        Engine(sft, baseline, bad).generate(PROMPTS[:1], DecodeParams(**SHORT), progress=False)


def test_prompt_longer_than_the_context(engine, sft):
    long_prompt = "the cat sat on the mat " * 100
    params = DecodeParams(**SHORT)
    with pytest.raises(PromptTooLongError, match=r"over the 512-token context of tiny-sft.*truncate"):
        engine.generate([long_prompt], params, progress=False)
    (r,) = engine.generate([long_prompt], params, truncate_prompt=True, progress=False)
    assert len(r.token_ids) == params.max_new_tokens


def test_prompted_baseline_shares_weights(sft, reward):
    prompted = sft.with_prompt_format(system_prompt="Be kind and happy.", name="prompted")
    assert prompted.model is sft.model
    assert prompted.encode_prompt("hi") != sft.encode_prompt("hi")
    (r,) = Engine(sft, prompted, reward).generate(PROMPTS[:1], DecodeParams(**SHORT), progress=False)
    assert r.accounting.baseline_forward_tokens > 0


def test_on_response_sees_each_response_as_its_batch_finishes(engine):
    seen = []
    engine.generate(PROMPTS, DecodeParams(method="none", **SHORT), batch_size=2, progress=False,
                    on_response=lambda r: seen.append(r.prompt))
    assert seen == PROMPTS


def test_rollout_seed_is_separate_from_the_choice_seed(engine):
    params = DecodeParams(method="tq-direct", n_rollouts=2, rollout_temperature=1.0, trace=True, **SHORT)
    a = engine.generate(PROMPTS[:1], params.replace(rollout_seed=7), progress=False)[0]
    b = engine.generate(PROMPTS[:1], params.replace(rollout_seed=7, seed=9), progress=False)[0]
    c = engine.generate(PROMPTS[:1], params.replace(rollout_seed=8), progress=False)[0]
    assert a.trace[0]["q"] == b.trace[0]["q"]  # greedy choice: only the rollout seed matters
    assert a.trace[0]["q"] != c.trace[0]["q"]
