"""Blockwise decisions in the decoder (tqstar.blocks): the choice rule, dedupe, the limit cases, the KL labels and
numbers, stop strings inside blocks, and the forward tokens a block costs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import vowel_share

from tqstar import blocks
from tqstar.blocks import selection_kl_bound, selection_kl_estimate, until_stop
from tqstar.engine import Engine
from tqstar.eval.testbed import TabularReward, optimal_policy, random_reward
from tqstar.lm.tabular import TabularLM
from tqstar.params import DecodeParams
from tqstar.reward import CallableReward
from tqstar.text import ResponseText

PROMPTS = ["How do I make tea?", "The food was", "Tell me about the park and the lake."]


@pytest.fixture()
def engine(sft, baseline):
    return Engine(sft, baseline, CallableReward(vowel_share))


def tabular_engine(seed: int = 0) -> Engine:
    sft = TabularLM.random(5, 4, seed=seed)
    r = random_reward(5, 4, seed=seed)
    return Engine(sft, optimal_policy(sft, r, beta=0.5), TabularReward(r, sft))


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.5])
@pytest.mark.parametrize("method", ["tq-direct", "cd", "args"])
def test_the_choice_is_argmax_or_softmax_of_alpha_q_over_t_without_a_log_pi_term(engine, method, temperature):
    alpha = 3.0
    params = DecodeParams(method=method, k=4, alpha=alpha, block_len=3, rollout_len=3, max_new_tokens=9,
                          temperature=temperature, trace=True)
    for response in engine.generate(PROMPTS, params, progress=False):
        committed = []
        for row in response.trace:
            q = torch.tensor(row["q"], dtype=torch.float64)
            assert row["choice"] == ("argmax" if temperature == 0 else "soft")
            if temperature == 0:
                assert row["chosen"] == int(q.argmax()) and row["p_dec"][row["chosen"]] == 1.0  # first maximal
            else:
                want = torch.softmax(alpha * q / temperature, dim=0)
                assert torch.allclose(torch.tensor(row["p_dec"], dtype=torch.float64), want, atol=1e-6)
            committed += row["blocks"][row["chosen"]]
            assert all(1 <= len(b) <= 3 for b in row["blocks"])
        assert committed == response.token_ids


def test_identical_blocks_are_valued_once_and_deduping_changes_nothing(monkeypatch):
    engine = tabular_engine(2)  # 4 tokens and EOS: duplicates among k = 6 samples of 1-2 tokens are common
    params = DecodeParams(method="tq-direct", k=6, alpha=2.0, block_len=2, rollout_len=3, max_new_tokens=5,
                          temperature=1.0, n_rollouts=2, rollout_temperature=1.0, trace=True)
    deduped = engine.generate(PROMPTS, params, progress=False)
    rows = [row for r in deduped for row in r.trace]
    assert any(any(row["duplicate"]) for row in rows), "no duplicate block was drawn: the test shows nothing"
    for row in rows:
        for i, dup in enumerate(row["duplicate"]):
            first = row["blocks"].index(row["blocks"][i])
            assert dup == (first < i) and row["q"][i] == row["q"][first]
    monkeypatch.setattr(blocks, "first_occurrences", lambda b: torch.ones(len(b), len(b[0]), dtype=torch.bool))
    monkeypatch.setattr("tqstar.decoder.first_occurrences", blocks.first_occurrences)
    every = engine.generate(PROMPTS, params, progress=False)
    assert [r.token_ids for r in every] == [r.token_ids for r in deduped]  # sampled rollouts keyed by content
    assert sum(r.accounting.rollouts for r in every) > sum(r.accounting.rollouts for r in deduped)


@pytest.mark.parametrize(("k", "alpha"), [(1, 2.0), (4, 0.0)])
def test_when_the_choice_ignores_the_values_none_is_computed_and_the_kl_is_zero(engine, k, alpha):
    params = DecodeParams(method="tq-direct", k=k, alpha=alpha, block_len=2, rollout_len=3, max_new_tokens=6,
                          temperature=1.0, trace=True)
    for r in engine.generate(PROMPTS, params, progress=False):
        assert r.accounting.baseline_forward_tokens == 0 and r.accounting.reward_calls == 0
        assert r.kl == 0.0 and r.kl_bound == 0.0 and r.kl_kind == "estimate"
        assert r.accounting.rollouts == k * len(r.trace)  # the sampled blocks only


def test_soft_bon_at_a_tiny_beta_is_bon_and_bon_keeps_the_best_sample(engine):
    bon = DecodeParams(method="bon", bon_n=4, temperature=1.0, max_new_tokens=8, trace=True)
    best = engine.generate(PROMPTS, bon, progress=False)
    soft = engine.generate(PROMPTS, bon.replace(method="soft-bon", bon_beta=1e-6), progress=False)
    assert [r.token_ids for r in soft] == [r.token_ids for r in best]
    for r in best:
        (row,) = r.trace
        assert row["blocks"][row["chosen"]] == r.token_ids and row["q"][row["chosen"]] == max(row["q"])
        assert r.kl == pytest.approx(selection_kl_estimate(row["q"], math.inf))
        assert r.kl_bound == pytest.approx(math.log(4) - 3 / 4) and r.kl_kind == "estimate"
        assert r.accounting.rollouts == 4 and r.accounting.steps == len(r.token_ids)
    warm = engine.generate(PROMPTS, bon.replace(method="soft-bon", bon_beta=10.0), progress=False)
    assert all(r.kl < b.kl + 1e-9 for r, b in zip(warm, best))  # a softer choice spends less KL


def test_kl_is_labelled_and_untracked_where_the_blocks_are_not_pi_sft(engine):
    def one(**kw):
        return engine.generate(PROMPTS[:1], DecodeParams(max_new_tokens=4, k=3, rollout_len=2, **kw),
                               progress=False)[0]

    assert one(method="tq-direct").kl_kind == "exact"
    assert one(method="sft").kl_kind == "exact"
    assert one(method="tq-direct", block_len=2).kl_kind == "estimate"
    tempered = one(method="tq-direct", block_len=2, temperature=0.7)  # blocks drawn from π_sft at 0.7
    assert tempered.kl is None and tempered.kl_bound is None and tempered.kl_kind is None
    from_baseline = one(method="bon", temperature=1.0, bon_policy="baseline")
    assert from_baseline.kl is None and from_baseline.kl_kind is None


def test_the_kl_bound_and_estimate_per_decision():
    assert selection_kl_bound(1, math.inf) == 0 and selection_kl_bound(8, 0.0) == 0
    assert selection_kl_bound(16, math.inf) == pytest.approx(math.log(16) - 15 / 16)
    assert selection_kl_bound(16, 0.1, spread=1.0) == pytest.approx(math.log(16) - math.log1p(15 * math.exp(-0.1)))
    assert selection_kl_bound(16, 100.0, spread=1.0) == selection_kl_bound(16, math.inf)
    distinct = list(range(16))
    assert selection_kl_estimate(distinct, math.inf) == pytest.approx(1.79404, abs=1e-5)  # the BoN plug-in
    assert selection_kl_estimate(distinct, 1e4) == pytest.approx(selection_kl_estimate(distinct, math.inf))
    assert selection_kl_estimate(distinct, 1e-4) < 1e-4 and selection_kl_estimate([0.3] * 5, math.inf) == 0
    ties = [0.0, 0.0, 1.0, 1.0]  # argmax: the top level w.p. 1 - (1/2)^4 against p = 1/2
    q = 1 - 0.5 ** 4
    assert selection_kl_estimate(ties, math.inf) == pytest.approx(q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5))


def test_a_stop_string_may_straddle_the_response_and_the_block(sft):
    ids = sft.tokenizer(" the park and the lake", add_special_tokens=False)["input_ids"]
    response, block = ids[:2], ids[2:]
    text = sft.decode(response)
    stop = text[-2:] + sft.decode(ids[:3])[len(text):][:2]  # the response's last 2 characters + the block's first 2
    assert stop not in text
    def committed(stops):
        text = ResponseText(sft, stops)
        text.extend(response)
        return text

    cut, stopped = until_stop(committed((stop,)), block)
    assert stopped and cut == tuple(block[:1]) and until_stop(committed(("zzz",)), block) == (tuple(block), False)


def test_rows_with_stop_strings_draw_the_same_blocks_chunk_by_chunk(engine):
    """Sampling a block STOP_CHUNK tokens at a time continues each block's own stream: with a stop string that never
    occurs, bon's 24-token samples are the ones drawn in one call."""
    params = DecodeParams(method="bon", bon_n=3, temperature=1.0, max_new_tokens=24, trace=True)
    once = engine.generate(PROMPTS, params, progress=False)
    chunked = engine.generate(PROMPTS, params.replace(stop=("\u2603",)), progress=False)
    assert [r.trace[0]["blocks"] for r in chunked] == [r.trace[0]["blocks"] for r in once]
    assert [r.token_ids for r in chunked] == [r.token_ids for r in once]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("method", ["tq-direct", "cd"])
def test_a_blocks_kv_is_continued_by_its_rollout_and_the_next_decision(sft, baseline, method, temperature):
    """Counted SFT forward tokens per decision: k·m to sample the blocks plus at most one re-run token (the chosen
    block is a stored row at the next decision), and for CD k·L' more for the rollouts from each block — which
    continue the block's own cache instead of re-encoding it (was k·(2m + L')). The baseline runs its prompt once,
    argmax and soft choice alike: a cold first decision's k block stems share it (was k copies, the prompt per
    block), then each block's m − 1 tokens and its rollout."""
    with torch.no_grad():  # no EOS: every block and rollout runs to its budget
        for lm in (sft, baseline):
            bias = torch.zeros(lm.vocab_size)
            bias[min(lm.eos_token_ids)] = -1e4
            lm.model.lm_head.bias = torch.nn.Parameter(bias.to(lm.device))
    engine = Engine(sft, baseline, CallableReward(vowel_share))
    k, m, L, budget = 6, 4, 5, 16
    params = DecodeParams(method=method, k=k, alpha=2.0, block_len=m, rollout_len=L, max_new_tokens=budget,
                          temperature=temperature)
    for r in engine.generate(PROMPTS, params, progress=False):
        prompt = len(sft.encode_prompt(r.prompt))
        decisions = budget // m
        rolled = sum(min(L, budget - t - m) for t in range(0, budget, m))  # L' per decision, 0 at the last
        sft_tokens = prompt + decisions * (k * m + 1) + (k * rolled if method == "cd" else 0)
        assert r.accounting.sft_forward_tokens <= sft_tokens, (r.accounting, sft_tokens)
        if method == "tq-direct":  # the baseline runs each block once (m − 1 tokens) and its rollout
            assert r.accounting.baseline_forward_tokens <= len(baseline.encode_prompt(r.prompt)) + sum(
                k * (m - 1 + min(L, budget - t - m)) + k for t in range(0, budget - m, m)), r.accounting
