"""The speed techniques change nothing but speed: the engine matches the naive reference token for token,
and pruning, rollout reuse and the reward cache leave the output unchanged (the prefix cache: test_decoder)."""

from __future__ import annotations

import pytest
from conftest import vowel_share

from tqstar.decoder import pruning_off_reason
from tqstar.engine import Engine
from tqstar.params import DecodeParams
from tqstar.reward import CallableReward
from tqstar.testing.reference import naive_generate

PROMPTS = ["How do I make tea?", "The food was", "Tell me about the park and the lake."]


@pytest.fixture()
def reward():
    return CallableReward(vowel_share)


@pytest.mark.parametrize(
    "settings",
    [dict(method="tq-direct", k=2, rollout_len=1, alpha=1.0), dict(method="tq-direct", k=5, rollout_len=4, alpha=3.0),
     dict(method="cd", k=4, rollout_len=3, alpha=0.5), dict(method="tq-direct", k=3, rollout_len=6, alpha=10.0)],
)
@pytest.mark.parametrize("fast", [True, False], ids=["prune+reuse", "plain"])
def test_engine_matches_the_naive_reference(sft, baseline, reward, settings, fast):
    params = DecodeParams(max_new_tokens=6, prune=fast, reuse_rollouts=fast, prune_probe=int(fast), **settings)
    engine = Engine(sft, baseline, reward)
    got = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    assert got == [naive_generate(engine, p, params) for p in PROMPTS]


def _run(engine, params):
    return engine.generate(PROMPTS, params, progress=False)


@pytest.mark.parametrize(("method", "reuse", "probe"), [("tq-direct", False, 1), ("tq-direct", True, 2), ("cd", True, 0),
                                                      ("args", False, 1)])
def test_pruning_is_exact_and_saves_work(sft, baseline, reward, method, reuse, probe):
    engine = Engine(sft, baseline, reward)
    params = DecodeParams(method=method, k=6, alpha=0.3, rollout_len=4, max_new_tokens=8, reuse_rollouts=reuse,
                          prune_probe=probe)
    pruned, full = _run(engine, params), _run(engine, params.replace(prune=False))
    assert [r.token_ids for r in pruned] == [r.token_ids for r in full]
    assert sum(r.accounting.pruned for r in pruned) > 0 and sum(r.accounting.pruned for r in full) == 0
    if method != "args":
        assert sum(r.accounting.rollouts for r in pruned) < sum(r.accounting.rollouts for r in full)


def test_pruning_needs_a_declared_range(sft, baseline):
    unbounded = CallableReward(lambda p, r: vowel_share(p, r), name="unbounded")  # no reward_range
    (r,) = Engine(sft, baseline, unbounded).generate(PROMPTS[:1], DecodeParams(alpha=0.3, max_new_tokens=4),
                                                     progress=False)
    assert r.accounting.pruned == 0


def test_pruning_off_reason_says_why():
    bounded, unbounded = CallableReward(vowel_share), CallableReward(lambda p, r: vowel_share(p, r), name="unbounded")
    params = DecodeParams(alpha=0.3)
    assert pruning_off_reason(bounded, params) is None
    assert pruning_off_reason(unbounded, params) == (
        "pruning off: reward unbounded declares no range; give --reward-sigmoid or a declared range"
        " (range: [R_MIN, R_MAX] in the reward's config entry)")
    assert pruning_off_reason(bounded, params.replace(prune=False)) == "pruning off: switched off (prune=False)"
    assert pruning_off_reason(bounded, params.replace(temperature=0.7)) == (
        "pruning off: it needs greedy choice (temperature 0), got temperature 0.7")
    for quiet in (params.replace(method="sft"), params.replace(method="none"), params.replace(alpha=0.0)):
        assert pruning_off_reason(unbounded, quiet) is None
    assert pruning_off_reason(None, params) is None


def test_rollout_reuse_is_exact_and_saves_rollouts(sft, reward):
    engine = Engine(sft, sft, reward)  # baseline = SFT: the chosen rollout's first token is a top candidate
    params = DecodeParams(method="tq-direct", k=4, alpha=2.0, rollout_len=5, max_new_tokens=8, prune=False)
    reused, plain = _run(engine, params), _run(engine, params.replace(reuse_rollouts=False))
    assert [r.token_ids for r in reused] == [r.token_ids for r in plain]
    assert sum(r.accounting.reused_rollouts for r in reused) > 0
    assert sum(r.accounting.rollouts for r in reused) < sum(r.accounting.rollouts for r in plain)


def test_reward_cache_is_exact_and_saves_calls(sft, baseline):
    calls = []

    def counting(prompts, responses):
        calls.append(len(responses))
        return vowel_share(prompts, responses)

    counting.reward_range = (0.0, 1.0)
    params = DecodeParams(method="cd", k=4, rollout_len=5, max_new_tokens=6, prune=False)
    cached = CallableReward(counting)
    with_cache = _run(Engine(sft, baseline, cached), params)
    n_cached = sum(calls)
    calls.clear()
    uncached = CallableReward(counting)
    uncached.cache_size = 0
    without = _run(Engine(sft, baseline, uncached), params)
    assert [r.token_ids for r in with_cache] == [r.token_ids for r in without]
    assert n_cached < sum(calls)


def test_rollout_budgets_per_prefix(sft):
    ids = sft.encode_prompt(PROMPTS[0])
    out = sft.rollout([ids + [10], ids + [11], ids + [12]], [0, 1, 3])
    assert [len(t) <= b for t, b in zip(out.tokens, [0, 1, 3])] == [True] * 3
    assert out.tokens[0] == [] and len(out.tokens[1]) == 1
    full = sft.rollout([ids + [12]], 3)
    assert out.tokens[2] == full.tokens[0]


@pytest.mark.parametrize(("method", "temperature"), [("sft", 0.0), ("sft", 0.8), ("baseline", 0.0)])
def test_plain_decoding_reports_the_exact_kl_per_step(sft, baseline, reward, method, temperature):
    """Greedy sft decoding takes its KL from the rollout's log-prob of the chosen token (no second look-up); every
    plain setting reports KL(π_dec ‖ π_sft) over the full vocabulary, checked here against full forwards."""
    import torch

    engine = Engine(sft, baseline, reward)
    params = DecodeParams(method=method, temperature=temperature, max_new_tokens=6, seed=3)
    for r in engine.generate(PROMPTS, params, progress=False):
        decoded = sft if method == "sft" else baseline
        for t, kl in enumerate(r.kl_per_step):
            with torch.inference_mode():
                own = decoded.model(torch.tensor([decoded.encode_prompt(r.prompt) + r.token_ids[:t]],
                                                 device=decoded.device)).logits[0, -1].float()
                ref = sft.model(torch.tensor([sft.encode_prompt(r.prompt) + r.token_ids[:t]],
                                             device=sft.device)).logits[0, -1].float()
            ref = torch.log_softmax(ref, -1)
            if temperature == 0:
                expected = -ref[int(own.argmax())]
            else:
                dec = torch.log_softmax(own / temperature, -1)
                expected = (dec.exp() * (dec - ref)).sum()
            assert kl == pytest.approx(max(0.0, float(expected)), abs=1e-4)


@pytest.mark.parametrize(("settings", "eos_stops"), [
    (dict(method="tq-direct", k=5, rollout_len=4, alpha=3.0), True),  # the tiny baseline's rollouts reach EOS
    (dict(method="cd", k=4, rollout_len=6, alpha=0.5), False),  # the SFT's greedy ones never do
    (dict(method="tq-direct", k=6, rollout_len=3, alpha=1.0, max_new_tokens=3), False)])
def test_the_rollout_limit_runs_the_engines_rollout_tokens(sft, baseline, reward, settings, eos_stops):
    """The benchmark's limit does tqstar's rollout work without pruning and reuse: the same candidates, budgets
    (capped by what the response has left) and EOS stops, so the same forward tokens, exactly."""
    from tqstar.testing.reference import rollout_limit

    params = DecodeParams(**{"max_new_tokens": 8, **settings}, prune=False, reuse_rollouts=False)
    engine = Engine(sft, baseline, reward)
    responses = engine.generate(PROMPTS, params, progress=False)
    limit = rollout_limit(engine, responses, params)
    assert limit.forward_tokens == sum(r.accounting.rollout_tokens for r in responses) > 0
    assert limit.rollouts == sum(r.accounting.rollouts for r in responses)
    assert limit.steps == sum(len(r.token_ids) for r in responses) and limit.texts == params.k * limit.steps
    assert (limit.eos_stops > 0) == eos_stops  # rollouts that stopped at EOS before their budget, in both


def test_naive_steps_anywhere_in_a_response_match_the_engine(sft, baseline, reward):
    """The benchmark times naive steps spread over a response (and its first tokens), each with the budgets of the
    whole response's steps: each chooses the engine's token at that position."""
    from tqstar.testing.reference import naive_step

    engine = Engine(sft, baseline, reward)
    params = DecodeParams(method="tq-direct", k=4, rollout_len=5, alpha=2.0, max_new_tokens=7)
    for r in engine.generate(PROMPTS, params, progress=False):
        assert naive_generate(engine, r.prompt, params, tokens=3) == r.token_ids[:3]
        for t in (2, len(r.token_ids) - 1):
            assert naive_step(engine, r.prompt, r.token_ids[:t], params) == r.token_ids[t]
