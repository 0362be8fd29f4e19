"""No truncation (``tail``): the tail arm's math against the whole-vocabulary distribution it stands for, and the
decoder with it — α = 0 is π_sft (KL 0), greedy decoding is unchanged, the KL is exact, the refusals are one sentence.

The random instances are seeded draws of next-token distributions (peaked and flat), values and temperatures; the
properties hold for every one."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import vowel_share

from tqstar.cli.generate import format_trace
from tqstar.decoder import decision_logprobs, score
from tqstar.engine import Engine
from tqstar.errors import ConfigError
from tqstar.eval.testbed import TabularReward, optimal_policy, random_reward
from tqstar.lm.base import LanguageModel, TopLogprobs, sample_excluding, tail_sums
from tqstar.lm.tabular import TabularLM
from tqstar.params import TAILS, DecodeParams
from tqstar.reward import CallableReward
from tqstar.tail import TailArm, arm_kl, arm_scores, shared_value, tempered_shape_kl

INSTANCES = range(40)
TOKEN_METHODS = {  # every token-level method, with what it needs to sample
    "tq-direct": {}, "cd": {}, "args": {}, "none": {}, "eft": dict(beta=0.5),
    "tq-indirect": dict(n_rollouts=2, rollout_temperature=1.0),
    "tq-soft": dict(n_rollouts=2, rollout_temperature=1.0),
    "soft-cd": dict(n_rollouts=2, rollout_temperature=1.0),
}


def instance(seed: int, vocab: int = 12, k: int = 4):
    """A random next-token distribution (log p, float64), its top k, values in [0, 1] for every token, α, T."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, generator=g, dtype=torch.float64) * (0.5 + 3 * torch.rand(1, generator=g).item())
    logp = torch.log_softmax(logits, 0)
    top_lp, top = logp.topk(k)
    values = torch.rand(vocab, generator=g, dtype=torch.float64)
    alpha = float(torch.rand(1, generator=g)) * 8
    temperature = [0.5, 1.0, 2.0][seed % 3]
    return logp, top_lp, top, values, alpha, temperature


def mean_arm(logp, top, top_lp, temperature: float, q_top) -> TailArm:
    """The ``mean`` tail arm of one row, from the full distribution."""
    mass = tail_sums(logp[None], top[None], temperature)
    arm = TailArm("mean", temperature, mass.log_mass, temperature * mass.log_mass,
                  tempered_shape_kl(mass.log_mass, mass.mean_logprob, temperature))
    arm.value = shared_value("mean", top_lp[None], q_top[None])
    return arm


def full_policy(logp, top, values_on_vocab, alpha, temperature):
    """π_dec over the whole vocabulary by its definition: p^{1/T}·e^{αQ/T}, Q the candidates' own values on K and
    one shared value on the rest."""
    weights = logp / temperature + alpha * values_on_vocab / temperature
    return torch.softmax(weights, 0)


# ---- the math ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", INSTANCES)
def test_the_arms_are_the_whole_vocabulary_rule_and_their_kl_is_exact(seed):
    logp, top_lp, top, values, alpha, t = instance(seed)
    arm = mean_arm(logp, top, top_lp, t, values[top])
    log_dec = decision_logprobs(arm_scores(score(top_lp[None], values[top][None], alpha), arm, alpha), t)[0]
    shared = torch.full_like(values, float(arm.value[0]))
    shared[top] = values[top]
    full = full_policy(logp, top, shared, alpha, t)
    torch.testing.assert_close(log_dec[:-1].exp(), full[top], rtol=0, atol=1e-12)  # each candidate
    rest = torch.ones_like(full, dtype=torch.bool)
    rest[top] = False
    assert float(log_dec[-1].exp()) == pytest.approx(float(full[rest].sum()), abs=1e-12)  # the tail arm
    exact = float((full * (full.log() - logp)).sum())
    assert float(arm_kl(log_dec[None], top_lp[None], arm)[0]) == pytest.approx(exact, abs=1e-10)


@pytest.mark.parametrize("seed", INSTANCES)
def test_alpha_zero_is_pi_sft_exactly(seed):
    logp, top_lp, top, values, _, _ = instance(seed)
    arm = mean_arm(logp, top, top_lp, 1.0, values[top])
    log_dec = decision_logprobs(arm_scores(score(top_lp[None], values[top][None], 0.0), arm, 0.0), 1.0)[0]
    rest = torch.ones_like(logp, dtype=torch.bool)
    rest[top] = False
    want = torch.cat([top_lp, torch.logsumexp(logp[rest], 0)[None]])
    torch.testing.assert_close(log_dec, want, rtol=0, atol=1e-12)
    assert float(arm_kl(log_dec[None], top_lp[None], arm)[0]) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", INSTANCES)
def test_greedy_limit_of_the_mean_tail_stays_in_the_top_k(seed):
    """T → 0: the best tail token is z_{k+1} and log p(z_{k+1}) + α·Q̂_𝒯 ≤ max over K of the score (Q̂_𝒯 is a mean of
    the candidates' values, p(z_{k+1}) ≤ p(z) on K), so the argmax never leaves K: greedy decoding is unchanged.
    Checked as the limit itself: at T = 1e-3 the tail arm has no mass."""
    logp, top_lp, top, values, alpha, _ = instance(seed)
    q = values[top]
    arm = mean_arm(logp, top, top_lp, 1.0, q)
    best_rest = float(logp.sort(descending=True).values[top.shape[0]])
    assert best_rest + alpha * float(arm.value[0]) <= float((top_lp + alpha * q).max()) + 1e-12
    cold = mean_arm(logp, top, top_lp, 1e-3, q)
    log_dec = decision_logprobs(arm_scores(score(top_lp[None], q[None], alpha), cold, alpha), 1e-3)[0]
    assert float(log_dec[-1].exp()) < 1e-6 or math.isclose(best_rest + alpha * float(arm.value[0]),
                                                           float((top_lp + alpha * q).max()), abs_tol=1e-9)


@pytest.mark.parametrize("seed", INSTANCES)
def test_the_kl_stays_within_the_bound_at_temperature_one(seed):
    logp, top_lp, top, values, alpha, _ = instance(seed)
    arm = mean_arm(logp, top, top_lp, 1.0, values[top])
    log_dec = decision_logprobs(arm_scores(score(top_lp[None], values[top][None], alpha), arm, alpha), 1.0)
    assert float(arm_kl(log_dec, top_lp[None], arm)[0]) <= alpha * (1.0 - 0.0) + 1e-12


def test_the_tail_mass_defaults_from_the_top_k_at_temperature_one():
    logp, top_lp, top, _, _, _ = instance(3)
    served = TopLogprobs(top_lp[None].float(), top[None], [1])  # a server: the k numbers only
    full = tail_sums(logp[None], top[None], 1.0)
    assert float(served.tail_mass(1.0).log_mass[0]) == pytest.approx(float(full.log_mass[0]), abs=1e-5)
    with pytest.raises(ConfigError, match="full distribution"):
        served.tail_mass(0.7)
    everything = TopLogprobs(logp[None].float(), torch.arange(12)[None], [1])  # k = V: no tail but float32 rounding
    assert float(everything.tail_mass(1.0).log_mass[0]) < math.log(1e-6)
    assert float(tail_sums(logp[None], torch.arange(12)[None], 1.0).log_mass[0]) == float("-inf")


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_sample_excluding_is_the_inversion_of_the_tempered_tail(temperature):
    logp, _, top, _, _, _ = instance(5)
    seeds = list(range(400))
    out = sample_excluding(logp[None].expand(400, -1), top[None].expand(400, -1), temperature, seeds, [1] * 400)
    drawn = [t[0] for t in out.tokens]
    assert not set(drawn) & set(top.tolist())
    from tqstar.randomness import sample_by_inversion, uniforms
    shape = (logp / temperature).exp()
    shape[top] = 0
    want = sample_by_inversion(shape[None].expand(400, -1).float(), torch.from_numpy(uniforms(seeds, 1)[:, 0]))
    assert drawn == want.tolist()


# ---- the decoder -------------------------------------------------------------------------------------------------
def tabular_engine(seed: int) -> Engine:
    sft = TabularLM.random(6, 4, seed=seed)
    r = random_reward(6, 4, seed=seed)
    return Engine(sft, optimal_policy(sft, r, beta=0.5), TabularReward(r, sft),
                  TabularReward(random_reward(6, 4, seed=seed + 100), sft))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", list(TOKEN_METHODS))
def test_greedy_decoding_is_the_same_with_and_without_the_tail(method, seed):
    engine = tabular_engine(seed)
    base = DecodeParams(method=method, k=3, alpha=3.0, rollout_len=4, max_new_tokens=5, seed=seed,
                        **TOKEN_METHODS[method], tail="off")
    prompts = ["a", "b", "c"]
    want = engine.generate(prompts, base, progress=False)
    for tail in TAILS[1:]:
        if tail == "rolling" and base.method_row.rolls is None:
            continue
        got = engine.generate(prompts, base.replace(tail=tail), progress=False)
        assert [r.token_ids for r in got] == [r.token_ids for r in want], tail
        assert [r.kl for r in got] == [r.kl for r in want] and [r.kl_bound for r in got] == [r.kl_bound for r in want]
        assert [r.accounting.rollouts for r in got] == [r.accounting.rollouts for r in want]


@pytest.fixture()
def tiny_engine(sft, baseline):
    return Engine(sft, baseline, CallableReward(vowel_share))


@pytest.mark.parametrize("tail", ["mean", "rollout"])
def test_alpha_zero_with_the_tail_samples_pi_sft_with_kl_zero(tiny_engine, sft, tail):
    """Top-5 sampling of the SFT model at α = 0 costs log 1/π(top 5) per step; with the tail kept it is π_sft."""
    params = DecodeParams(method="none", k=5, alpha=0.0, temperature=1.0, max_new_tokens=8, trace=True, tail=tail)
    truncated = tiny_engine.generate(["The food was", "thank you"], params.replace(tail="off"), progress=False)
    assert all(r.kl > 0.5 for r in truncated)
    for response in tiny_engine.generate(["The food was", "thank you"], params, progress=False):
        assert response.kl == pytest.approx(0.0, abs=1e-6)
        for t, row in enumerate(response.trace):
            full = sft.next_logprobs([sft.encode_prompt(response.prompt) + response.token_ids[:t]]).logprobs[0]
            torch.testing.assert_close(torch.tensor(row["p_dec"]), full[row["candidates"]].exp(), atol=1e-6, rtol=0)
            assert row["tail"]["p_dec"] == pytest.approx(1 - float(full[row["candidates"]].exp().sum()), abs=1e-6)


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
@pytest.mark.parametrize("tail", ["mean", "rollout", "rolling"])
def test_the_reported_kl_is_the_exact_kl_of_the_distribution_drawn_from(tiny_engine, sft, baseline, tail, temperature):
    """Rebuild each step's distribution over the whole vocabulary from the trace and the models (for ``rolling``:
    the candidates' masses, z′ carrying the tail arm, i.e. the conditional policy given z′, whose in-tail shape the KL
    takes as the baseline's) and compare its KL with the one reported."""
    params = DecodeParams(method="tq-direct", k=4, alpha=2.0, temperature=temperature, rollout_len=3,
                          max_new_tokens=5, trace=True, tail=tail, seed=1)
    (response,) = tiny_engine.generate(["Tell me about the park"], params, progress=False)
    prompt = sft.encode_prompt(response.prompt)
    for t, (row, kl) in enumerate(zip(response.trace, response.kl_per_step)):
        seq = prompt + response.token_ids[:t]
        logp = sft.next_logprobs([seq]).logprobs[0].double()
        cand = torch.tensor(row["candidates"])
        rest = torch.ones_like(logp, dtype=torch.bool)
        rest[cand] = False
        if tail == "rolling":
            shape = baseline.next_logprobs([seq]).logprobs[0].double().exp() * rest
        else:
            shape = (logp / temperature).exp() * rest
        policy = shape / shape.sum() * row["tail"]["p_dec"]
        policy[cand] = torch.tensor(row["p_dec"], dtype=torch.float64)
        exact = float(torch.where(policy > 0, policy * (policy.log() - logp), torch.zeros_like(policy)).sum())
        assert kl == pytest.approx(exact, abs=2e-4), t
        if row["tail"]["committed"] is not None and tail == "rolling":
            assert row["tail"]["committed"] == row["tail"]["token"]  # rolling commits the token it valued


def test_the_trace_shows_the_tail_arm(tiny_engine):
    params = DecodeParams(method="tq-direct", k=3, alpha=1.0, temperature=1.0, rollout_len=3, max_new_tokens=6,
                          trace=True, tail="rollout", seed=4)
    (response,) = tiny_engine.generate(["The food was"], params, progress=False)
    text = format_trace(response.trace)
    assert text.count("<tail>") == len(response.token_ids)
    assert "tail rollout, valued by" in text
    for row in response.trace:
        tail = row["tail"]
        assert set(tail) >= {"mode", "log_mass", "q", "score", "p_dec", "token", "committed"}
        assert abs(sum(row["p_dec"]) + tail["p_dec"] - 1) < 1e-5
        assert (tail["committed"] is not None) == (row["chosen"] not in row["candidates"])


def test_rollout_tail_values_one_more_candidate_and_reuse_stays_exact(tiny_engine):
    params = DecodeParams(method="cd", k=3, alpha=2.0, temperature=1.0, rollout_len=3, max_new_tokens=6,
                          tail="rollout", seed=2)
    fast = tiny_engine.generate(["The food was", "thank you"], params, progress=False)
    slow = tiny_engine.generate(["The food was", "thank you"], params.replace(reuse_rollouts=False), progress=False)
    assert [r.token_ids for r in fast] == [r.token_ids for r in slow]
    mean = tiny_engine.generate(["The food was", "thank you"], params.replace(tail="mean"), progress=False)
    steps = sum(len(r.token_ids) for r in slow)
    assert sum(r.accounting.rollouts for r in slow) > sum(r.accounting.rollouts for r in mean)  # z′ is rolled out
    assert sum(r.accounting.rollouts for r in slow) <= 4 * steps


# ---- refusals -----------------------------------------------------------------------------------------------------
def test_tail_at_another_temperature_on_a_model_without_its_full_distribution_is_refused(sft, baseline):
    class TopOnly(type(sft)):  # a backend that gives the top k only, like a server
        def check_tail(self, temperature):
            return LanguageModel.check_tail(self, temperature)

    served = TopOnly(sft.model, sft.tokenizer, name="top-only")
    engine = Engine(served, baseline, CallableReward(vowel_share))
    params = DecodeParams(method="cd", temperature=0.7, max_new_tokens=3)
    with pytest.raises(ConfigError) as info:
        engine.generate(["x"], params, progress=False)
    assert str(info.value) == ("`tail` with `temperature` 0.7 needs the SFT model's full distribution, which top-only"
                               " does not give (only its top k); use a local SFT model, temperature 1, or tail: off")
    engine.generate(["x"], params.replace(tail="off"), progress=False)
    engine.generate(["x"], params.replace(temperature=1.0), progress=False)


@pytest.mark.parametrize("tail", ["off", "mean"])
def test_the_tail_costs_no_sft_forward_tokens(tiny_engine, sft, tail):
    """A row's SFT model runs its prompt once and one token per later step, with or without the tail: the tail's
    sums come with the top k, and its draws read the stored rows without displacing them (a side trip)."""
    sft.reset_cache()
    params = DecodeParams(method="none", k=3, alpha=0.0, temperature=1.0, max_new_tokens=8, tail=tail, trace=True)
    prompts = ["How do I make tea?", "The food was", "Tell me about the park and the lake."]
    responses = tiny_engine.generate(prompts, params, progress=False)
    assert tail == "off" or any(row["tail"]["committed"] is not None for r in responses for row in r.trace)
    for r in responses:
        assert r.accounting.sft_forward_tokens == len(sft.encode_prompt(r.prompt)) + len(r.token_ids) - 1
