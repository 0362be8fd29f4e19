"""The exact testbed: properties of TQ*, CD and ARGS checked against enumeration, not against our outputs."""

from __future__ import annotations

import math

import pytest
import torch

from tqstar.decoder import decision_logprobs, step_kl
from tqstar.engine import Engine
from tqstar.eval.testbed import (
    TAIL_MODES,
    TabularReward,
    completions,
    decoding_policy,
    effective_soft_policy,
    eft_value,
    exact_report,
    expected_reward,
    format_gap_closed,
    format_matched_kl,
    format_report,
    interpolate_at,
    log_partition,
    matched_kl,
    method_values,
    optimal_policy,
    optimum_at_kl,
    q_value,
    random_reward,
    tail_report,
    trajectory_kl,
)
from tqstar.lm.tabular import EOS, TabularLM, prefixes
from tqstar.params import DecodeParams
from tqstar.value import indirect_q, soft_value

V, H = 4, 3


@pytest.fixture(params=[0, 1, 2])
def instance(request):
    seed = request.param
    sft = TabularLM.random(V, H, seed=seed)
    return sft, random_reward(V, H, seed=seed), random_reward(V, H, seed=seed + 100)


def _trajectory_prob(lm: TabularLM, y) -> float:
    return math.prod(lm.probs(y[:i])[y[i]].item() for i in range(len(y)))


def test_completions_are_a_distribution(instance):
    sft, _, _ = instance
    assert sum(p for _, p in completions(sft)) == pytest.approx(1.0, abs=1e-12)
    assert all(y[-1] == EOS and len(y) <= H + 1 for y, _ in completions(sft))


def test_optimal_policy_is_the_tilted_trajectory_distribution(instance):
    sft, r, _ = instance
    beta = 0.3
    opt = optimal_policy(sft, r, beta)
    tilted = {y: p * math.exp(r(y) / beta) for y, p in completions(sft)}
    z = sum(tilted.values())
    for y, weight in tilted.items():
        assert _trajectory_prob(opt, y) == pytest.approx(weight / z, rel=1e-9, abs=1e-12)


def test_alpha_zero_decoding_policy_is_the_sft_policy(instance):
    sft, r, _ = instance
    for q in method_values(sft, sft, r).values():
        policy = decoding_policy(sft, q, alpha=0.0, k=V, temperature=1.0)
        for prefix in prefixes(V, H):
            torch.testing.assert_close(policy.probs(prefix), sft.probs(prefix), rtol=0, atol=1e-12)
        assert trajectory_kl(policy, sft) == pytest.approx(0.0, abs=1e-12)


def test_alpha_zero_engine_samples_from_the_sft_policy(instance):
    sft, r, _ = instance
    engine = Engine(sft, sft, TabularReward(r, sft))
    params = DecodeParams(method="tq-direct", k=V, alpha=0.0, temperature=1.0, max_new_tokens=H + 1,
                          rollout_len=H + 1, trace=True, seed=3)
    for response in engine.generate(["x"] * 4, params, progress=False):
        for row in response.trace:
            prefix = tuple(response.token_ids[:row["step"]])
            expected = sft.probs(prefix)[row["candidates"]]
            torch.testing.assert_close(torch.tensor(row["p_dec"], dtype=torch.float64), expected, atol=1e-6, rtol=0)
        assert response.kl == pytest.approx(0.0, abs=1e-5)


def test_direct_equals_cd_when_the_baseline_is_the_sft_model(instance):
    sft, r, _ = instance
    engine = Engine(sft, sft, TabularReward(r, sft))
    base = dict(k=3, alpha=4.0, n_rollouts=8, rollout_temperature=1.0, rollout_len=H + 1, trace=True, seed=5,
                max_new_tokens=H + 1)
    direct = engine.generate(["x", "x"], DecodeParams(method="tq-direct", **base), progress=False)
    cd = engine.generate(["x", "x"], DecodeParams(method="cd", **base), progress=False)
    for a, b in zip(direct, cd):
        assert a.token_ids == b.token_ids
        assert [row["q"] for row in a.trace] == [row["q"] for row in b.trace]


@pytest.mark.parametrize("method", ["tq-direct", "cd"])
def test_rollout_estimates_converge_to_the_exact_q(method):
    sft = TabularLM.random(V, H, seed=11)
    r = random_reward(V, H, seed=11)
    baseline = optimal_policy(sft, r, beta=0.3)
    engine = Engine(sft, baseline, TabularReward(r, sft))
    params = DecodeParams(method=method, k=V, alpha=1.0, n_rollouts=600, rollout_temperature=1.0,
                          rollout_len=H + 1, max_new_tokens=H + 1, trace=True, seed=1, prune=False)
    policy = baseline if method == "tq-direct" else sft
    (response,) = engine.generate(["x"], params, progress=False)
    for row in response.trace:
        prefix = tuple(response.token_ids[:row["step"]])
        exact = [q_value(policy, r, prefix, z) for z in row["candidates"]]
        # rewards lie in [0, 1]: the standard error of a 600-sample mean is at most 0.02
        assert row["q"] == pytest.approx(exact, abs=0.08)


def test_indirect_weights_recover_the_target_optimum_exactly(instance):
    sft, r, r_bl = instance
    beta = 0.5
    baseline = optimal_policy(sft, r_bl, beta)  # aligned to r_BL, not to the target r
    target = optimal_policy(sft, r, beta)
    for prefix in prefixes(V, H):
        for z in range(1, V):
            start = prefix + (z,)
            ys = list(completions(baseline, start))
            rr = torch.tensor([r(start + y) for y, _ in ys], dtype=torch.float64)
            rb = torch.tensor([r_bl(start + y) for y, _ in ys], dtype=torch.float64)
            log_mass = torch.tensor([math.log(p) for _, p in ys], dtype=torch.float64)
            assert indirect_q(rr, rb, beta, log_mass).item() == pytest.approx(q_value(target, r, prefix, z), abs=1e-9)


def test_indirect_estimator_converges_to_the_target_optimum():
    sft = TabularLM.random(V, H, seed=21)
    r, r_bl = random_reward(V, H, seed=21), random_reward(V, H, seed=121)
    beta = 0.5
    baseline = optimal_policy(sft, r_bl, beta)
    target = optimal_policy(sft, r, beta)
    engine = Engine(sft, baseline, TabularReward(r, sft), TabularReward(r_bl, sft))
    params = DecodeParams(method="tq-indirect", k=V, beta=beta, n_rollouts=800, rollout_temperature=1.0,
                          rollout_len=H + 1, max_new_tokens=H + 1, trace=True, seed=2, prune=False)
    (response,) = engine.generate(["x"], params, progress=False)
    row = response.trace[0]
    exact = [q_value(target, r, (), z) for z in row["candidates"]]
    assert row["q"] == pytest.approx(exact, abs=0.08)


def test_indirect_with_one_rollout_is_direct():
    r = torch.tensor([[0.3], [0.9]])
    r_bl = torch.tensor([[5.0], [-2.0]])
    assert indirect_q(r, r_bl, beta=0.1).tolist() == pytest.approx(r.squeeze(-1).tolist())


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("alpha", [0.5, 3.0, 20.0])
def test_softmax_score_kl_never_exceeds_the_bound(instance, k, alpha):
    sft, r, _ = instance
    for q in method_values(sft, optimal_policy(sft, r, 0.3), r).values():
        for prefix in prefixes(V, H):
            top_lp, cand = sft.probs(prefix).log().topk(k)
            scores = top_lp + alpha * torch.tensor([q(prefix, z) for z in cand.tolist()], dtype=torch.float64)
            kl = step_kl(decision_logprobs(scores[None], 1.0), top_lp[None]).item()
            bound = alpha * (1.0 - 0.0) - torch.logsumexp(top_lp, 0).item()
            assert kl <= bound + 1e-9


def test_engine_reports_kl_within_the_bound_when_sampling():
    sft = TabularLM.random(V, H, seed=4)
    r = random_reward(V, H, seed=4)
    engine = Engine(sft, optimal_policy(sft, r, 0.3), TabularReward(r, sft))
    params = DecodeParams(method="tq-direct", k=2, alpha=5.0, temperature=1.0, rollout_len=H + 1,
                          max_new_tokens=H + 1, seed=0)
    for response in engine.generate(["x"] * 6, params, progress=False):
        assert len(response.kl_per_step) == len(response.token_ids)
        assert 0 <= response.kl <= response.kl_bound + 1e-6


def test_engine_kl_matches_the_exact_decoding_policy_kl():
    """Sampling at T = 1 with α = 0 and top-k truncation: each step's KL is exactly log(1/π_sft(top-k))."""
    sft = TabularLM.random(V, H, seed=8)
    r = random_reward(V, H, seed=8)
    engine = Engine(sft, sft, TabularReward(r, sft))
    params = DecodeParams(method="none", k=2, alpha=0.0, temperature=1.0, max_new_tokens=H + 1, seed=0, tail="off")
    (response,) = engine.generate(["x"], params, progress=False)
    for t, kl in enumerate(response.kl_per_step):
        top = sft.probs(tuple(response.token_ids[:t])).topk(2).values.sum().item()
        assert kl == pytest.approx(-math.log(top), abs=1e-5)


def test_decoded_text_ends_at_eos_on_the_tabular_model(instance):
    sft, r, _ = instance
    engine = Engine(sft, sft, TabularReward(r, sft))
    for response in engine.generate(["x"] * 3, DecodeParams(method="args", k=V, max_new_tokens=10), progress=False):
        assert response.finish_reason == "eos" and response.token_ids[-1] == EOS
        assert response.reward == pytest.approx(r(tuple(response.token_ids)))


def test_report_has_every_method_and_is_exact_at_reference_points():
    rows = exact_report(instances=2, alphas=(1.0, 5.0), vocab_size=3, horizon=3, beta_baseline=0.2, draws=50)
    methods = {(row["method"], row["alpha"]) for row in rows}
    for alpha in (1.0, 5.0):
        assert {("tq-direct", alpha), ("cd", alpha), ("args", alpha), ("tq-indirect", alpha), ("eft", alpha),
                ("tq-soft(N=1)", alpha), ("tq-soft(N=16)", alpha), ("soft-cd(N=4)", alpha),
                ("optimal(β=1/α)", alpha)} <= methods
    by = {(row["method"], row["alpha"]): row for row in rows}
    assert by[("sft", 0.0)]["kl"] == 0.0
    # ρ*_r at β = 1/α with α = 5 is the baseline (β_BL = 0.2) itself ...
    assert by[("optimal(β=1/α)", 5.0)]["reward"] == pytest.approx(by[("baseline", 0.0)]["reward"], abs=1e-12)
    # ... which one rollout of tq-soft reproduces exactly (its V̂ is then deterministic), as eft does at λ = αβ = 1
    for method in ("tq-soft(N=1)", "tq-soft(N=4)", "eft"):
        assert by[(method, 5.0)]["reward"] == pytest.approx(by[("baseline", 0.0)]["reward"], abs=1e-9), method
        assert by[(method, 5.0)]["kl"] == pytest.approx(by[("baseline", 0.0)]["kl"], abs=1e-9), method
    # with the baseline aligned to the target, the indirect weights are all 1: tq-indirect is tq-direct
    assert by[("tq-indirect", 1.0)]["reward"] == pytest.approx(by[("tq-direct", 1.0)]["reward"], abs=1e-12)
    assert "tq-soft(N=16)" in format_report(rows)


def test_expected_reward_of_the_optimum_beats_sft(instance):
    sft, r, _ = instance
    assert expected_reward(optimal_policy(sft, r, 0.1), r) >= expected_reward(sft, r) - 1e-12


def test_interpolation_follows_the_sweep_and_stops_where_it_ends():
    points = [(0.0, 0.4), (0.1, 0.5), (0.3, 0.7)]
    assert interpolate_at(points, 0.05) == pytest.approx(0.45)
    assert interpolate_at(points, 0.2) == pytest.approx(0.6)
    assert interpolate_at(points, 0.5) is None


def test_matched_kl_interpolates_per_instance_then_averages():
    """Two instances whose sweeps reach KL 0.1 at very different α: averaging the curves first (the old table)
    would read 0.1 off a mean curve that neither instance follows."""
    rows = [{"instance": 0, "method": "sft", "alpha": 0.0, "reward": 0.4, "kl": 0.0},
            {"instance": 0, "method": "m", "alpha": 1.0, "reward": 0.6, "kl": 0.2},
            {"instance": 1, "method": "sft", "alpha": 0.0, "reward": 0.2, "kl": 0.0},
            {"instance": 1, "method": "m", "alpha": 1.0, "reward": 0.3, "kl": 0.05},
            {"instance": 1, "method": "m", "alpha": 2.0, "reward": 0.5, "kl": 0.15}]
    table = matched_kl(rows, (0.1, 0.3), vocab_size=3, horizon=2)
    (at_01, at_03) = table["m"]
    assert at_01["reached"] == 2 and at_01["reward"] == pytest.approx(((0.4 + 0.1) + 0.4) / 2)
    assert at_03["reached"] == 0 and at_03["reward"] is None
    optimum = table["optimum (exact)"][0]["reward"]
    assert at_01["gap"] == pytest.approx(at_01["reward"] - optimum)
    text = format_matched_kl(table, instances=2)
    assert "0.4500" in text and "-" in text.splitlines()[-1]


def test_optimum_at_kl_hits_the_target(instance):
    sft, r, _ = instance
    reward, beta = optimum_at_kl(sft, r, 0.1)
    assert trajectory_kl(optimal_policy(sft, r, beta), sft) == pytest.approx(0.1, abs=1e-9)
    assert reward == pytest.approx(expected_reward(optimal_policy(sft, r, beta), r), abs=1e-12)


# ---- soft values ------------------------------------------------------------------------------------------------
def _soft_value(lm: TabularLM, r, prefix, z, beta: float) -> float:
    """V(s, z) = β·log E_{y ~ lm(·|s z)}[exp(r(s z y)/β)]."""
    start = prefix + (z,)
    return beta * math.log(sum(p * math.exp(r(start + y) / beta) for y, p in completions(lm, start)))


def _soft_engine(sft, baseline, r):
    return Engine(sft, baseline, TabularReward(r, sft))


def _soft_params(**changes):
    values = dict(method="tq-soft", k=V, n_rollouts=1, rollout_temperature=1.0, rollout_len=H + 1,
                  max_new_tokens=H + 1, temperature=1.0, trace=True, seed=0, prune=False)
    return DecodeParams(**{**values, **changes})


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_one_soft_rollout_of_an_optimal_baseline_reproduces_the_optimum_through_the_decoder(seed):
    """π_dec of tq-soft (N = 1, untruncated rollouts, α = 1/β_BL) is π* at every visited state."""
    beta = 0.25
    sft, r = TabularLM.random(V, H, seed=seed), random_reward(V, H, seed=seed)
    optimum = optimal_policy(sft, r, beta)
    for response in _soft_engine(sft, optimum, r).generate(["x", "y", "z"], _soft_params(alpha=1 / beta),
                                                           progress=False):
        for row in response.trace:
            prefix = tuple(response.token_ids[:row["step"]])
            exact = optimum.probs(prefix)[row["candidates"]]
            torch.testing.assert_close(torch.tensor(row["p_dec"], dtype=torch.float64), exact, atol=1e-6, rtol=0)
            values = [_soft_value(sft, r, prefix, z, beta) for z in row["candidates"]]
            assert row["q"] == pytest.approx(values, abs=1e-5)


def test_soft_enumeration_with_one_rollout_is_the_optimum(instance):
    sft, r, _ = instance
    beta = 0.3
    optimum = optimal_policy(sft, r, beta)
    policy = effective_soft_policy(sft, optimum, r, 1 / beta, 1, k=V, draws=3)
    for prefix in prefixes(V, H):
        torch.testing.assert_close(policy.probs(prefix), optimum.probs(prefix), atol=1e-12, rtol=0)


def test_truncated_rollouts_lose_the_exactness():
    """Rollouts cut at L tokens before EOS: the ratio covers only their tokens and V̂ is no longer V (the bias the
    docs state)."""
    beta, seed = 0.25, 1
    sft, r = TabularLM.random(V, H, seed=seed), random_reward(V, H, seed=seed)
    optimum = optimal_policy(sft, r, beta)
    (response,) = _soft_engine(sft, optimum, r).generate(["x"], _soft_params(alpha=1 / beta, rollout_len=1),
                                                         progress=False)
    row = response.trace[0]
    values = [_soft_value(sft, r, (), z, beta) for z in row["candidates"]]
    assert max(abs(a - b) for a, b, z in zip(row["q"], values, row["candidates"]) if z != EOS) > 1e-3


@pytest.mark.parametrize("method", ["tq-soft", "soft-cd"])
def test_soft_estimates_converge_to_the_exact_soft_value_for_an_imperfect_baseline(method):
    """A baseline aligned to another reward: V̂ from N = 800 rollouts is within 5 standard errors (delta method:
    β·sd(w)/(√N·E[w]), w the importance-weighted terms, computed exactly) plus the Jensen bias of V."""
    sft = TabularLM.random(V, H, seed=21)
    r, r_bl = random_reward(V, H, seed=21), random_reward(V, H, seed=121)
    baseline = optimal_policy(sft, r_bl, 0.3)
    alpha, n = 2.0, 800
    beta = 1 / alpha
    (response,) = _soft_engine(sft, baseline, r).generate(
        ["x"], _soft_params(method=method, alpha=alpha, n_rollouts=n), progress=False)
    rolling = baseline if method == "tq-soft" else sft
    for row in response.trace:
        prefix = tuple(response.token_ids[:row["step"]])
        for z, got, logp in zip(row["candidates"], row["q"], row["logp_sft"]):
            if logp == float("-inf"):  # an impossible candidate (past the horizon): it cannot be chosen
                continue
            start = prefix + (z,)
            ys = list(completions(rolling, start))
            w = torch.tensor([math.exp(r(start + y) / beta) * math.prod(
                sft.probs(start + y[:i])[y[i]].item() for i in range(len(y))) / p for y, p in ys], dtype=torch.float64)
            mass = torch.tensor([p for _, p in ys], dtype=torch.float64)
            mean = (mass * w).sum()
            sd = ((mass * (w - mean) ** 2).sum()).sqrt()
            se = beta * float(sd / mean) / math.sqrt(n)
            assert got == pytest.approx(_soft_value(sft, r, prefix, z, beta), abs=5 * se + se**2 + 1e-6), (z, se)


def test_soft_value_is_a_log_mean_exp():
    r = torch.tensor([[0.2, 0.8], [0.5, 0.5]], dtype=torch.float64)
    ratio = torch.tensor([[0.0, 0.0], [math.log(2.0), 0.0]], dtype=torch.float64)
    got = soft_value(r, ratio, beta=0.5)
    assert got[0].item() == pytest.approx(0.5 * math.log((math.exp(0.4) + math.exp(1.6)) / 2))
    assert got[1].item() == pytest.approx(0.5 * math.log((2 * math.exp(1.0) + math.exp(1.0)) / 2))


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_eft_equals_tq_soft_at_the_baselines_beta_when_the_baseline_is_optimal(alpha):
    """λ = α·β_BL: eft's mixture π_sft^(1−λ)·π_BL^λ is tq-soft with soft_beta = β_BL and one rollout."""
    beta, seed = 0.2, 5
    sft, r = TabularLM.random(V, H, seed=seed), random_reward(V, H, seed=seed)
    engine = _soft_engine(sft, optimal_policy(sft, r, beta), r)
    soft = engine.generate(["x", "y"], _soft_params(alpha=alpha, soft_beta=beta), progress=False)
    eft = engine.generate(["x", "y"], _soft_params(method="eft", alpha=alpha, beta=beta), progress=False)
    for a, b in zip(soft, eft):
        assert a.token_ids == b.token_ids
        for row_a, row_b in zip(a.trace, b.trace):
            assert row_a["p_dec"] == pytest.approx(row_b["p_dec"], abs=1e-6)
    q = eft_value(sft, optimal_policy(sft, r, beta), beta)
    mix = decoding_policy(sft, q, alpha, V)
    for prefix in prefixes(V, H):
        geometric = sft.probs(prefix) ** (1 - alpha * beta) * optimal_policy(sft, r, beta).probs(prefix) ** (alpha * beta)
        torch.testing.assert_close(mix.probs(prefix), geometric / geometric.sum(), atol=1e-12, rtol=0)


# ---- no truncation (tail) ----------------------------------------------------------------------------------------
def _rest(lm: TabularLM, prefix, k: int) -> torch.Tensor:
    """The tail's tokens (outside the top k of ``lm`` at ``prefix``) as a mask."""
    rest = torch.ones(V, dtype=torch.bool)
    rest[lm.probs(prefix).topk(k).indices] = False
    return rest


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("tail", ["mean", "rollout", "rolling"])
def test_alpha_zero_with_the_tail_is_the_sft_policy_exactly(instance, tail, k):
    sft, r, _ = instance
    q = method_values(sft, optimal_policy(sft, r, 0.3), r)["tq-direct"]
    policy = decoding_policy(sft, q, alpha=0.0, k=k, tail=tail, rolling=optimal_policy(sft, r, 0.3))
    for prefix in prefixes(V, H):
        torch.testing.assert_close(policy.probs(prefix), sft.probs(prefix), rtol=0, atol=1e-12)
    assert trajectory_kl(policy, sft) == pytest.approx(0.0, abs=1e-12)
    truncated = decoding_policy(sft, q, alpha=0.0, k=k)
    assert trajectory_kl(truncated, sft) > 1e-3  # what truncation costs before any steering


@pytest.mark.parametrize("k", [1, 2, 3])
def test_no_truncation_tq_soft_with_an_optimal_baseline_is_the_optimum_under_rolling(instance, k):
    """The rolling tail: z′ ~ π*(·|𝒯), arm weight p(z′)·W(s z′)/π*(z′|𝒯) = Σ_𝒯 p·W for every z′, z′ committed — so
    π_dec = π* at every state, k < V included (averaged over z′ exactly)."""
    sft, r, _ = instance
    beta = 0.3
    optimum = optimal_policy(sft, r, beta)
    lw = log_partition(sft, r, beta)
    policy = decoding_policy(sft, lambda s, z: beta * lw(s + (z,)), 1 / beta, k, tail="rolling", rolling=optimum)
    for prefix in prefixes(V, H):
        torch.testing.assert_close(policy.probs(prefix), optimum.probs(prefix), rtol=0, atol=1e-12)
    assert expected_reward(policy, r) == pytest.approx(expected_reward(optimum, r), abs=1e-12)
    assert trajectory_kl(policy, sft) == pytest.approx(trajectory_kl(optimum, sft), abs=1e-12)
    truncated = decoding_policy(sft, lambda s, z: beta * lw(s + (z,)), 1 / beta, k)
    assert trajectory_kl(truncated, sft) != pytest.approx(trajectory_kl(optimum, sft), abs=1e-6)


def _state_kl(d: torch.Tensor, p: torch.Tensor) -> float:
    return float(torch.where(d > 0, d * (d.log() - p.log()), torch.zeros_like(d)).sum())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_shared_tail_value_at_its_exact_soft_value_is_the_optimum_coarse_grained(instance, k):
    """``mean``'s rule with the exact tail value V_𝒯 = β·log E_{p|𝒯}[W]: π* on every top-k token and on the tail's
    total mass, π_sft's shape inside the tail — and less KL than π* at every state."""
    sft, r, _ = instance
    beta = 0.3
    optimum = optimal_policy(sft, r, beta)
    lw = log_partition(sft, r, beta)

    def tail_value(prefix):
        rest = _rest(sft, prefix, k)
        p = sft.probs(prefix)
        return beta * math.log(sum(p[z].item() * math.exp(lw(prefix + (z,))) for z in range(V) if rest[z])
                               / p[rest].sum().item())

    policy = decoding_policy(sft, lambda s, z: beta * lw(s + (z,)), 1 / beta, k, tail="mean", tail_value=tail_value)
    for prefix in prefixes(V, H):
        rest, got, want, p = _rest(sft, prefix, k), policy.probs(prefix), optimum.probs(prefix), sft.probs(prefix)
        if not rest.any() or p[rest].sum() == 0:
            continue
        torch.testing.assert_close(got[~rest], want[~rest], rtol=0, atol=1e-12)
        assert got[rest].sum().item() == pytest.approx(want[rest].sum().item(), abs=1e-12)
        torch.testing.assert_close(got[rest] / got[rest].sum(), p[rest] / p[rest].sum(), rtol=0, atol=1e-12)
        assert _state_kl(got, p) <= _state_kl(want, p) + 1e-12


def test_the_decoder_with_the_rolling_tail_samples_the_optimum():
    """Through the real decoder: tq-soft, one rollout of the optimal baseline, k = 2 < V, tail rolling — at every
    visited state the candidates and the tail arm carry π*'s masses, and a tail win commits z′."""
    beta, wins = 0.25, 0
    for seed in range(3):
        sft, r = TabularLM.random(V, H, seed=seed), random_reward(V, H, seed=seed)
        wins += _rolling_steps_are_the_optimum(sft, r, beta)
    assert wins > 0, "no tail token was drawn on these prompts"


def _rolling_steps_are_the_optimum(sft, r, beta) -> int:
    optimum = optimal_policy(sft, r, beta)
    engine = _soft_engine(sft, optimum, r)
    wins = 0
    for response in engine.generate(["x", "y", "z", "w"], _soft_params(alpha=1 / beta, k=2, tail="rolling"),
                                     progress=False):
        for row in response.trace:
            prefix = tuple(response.token_ids[:row["step"]])
            exact = optimum.probs(prefix)
            torch.testing.assert_close(torch.tensor(row["p_dec"], dtype=torch.float64), exact[row["candidates"]],
                                       atol=1e-6, rtol=0)
            assert row["tail"]["p_dec"] == pytest.approx(1 - exact[row["candidates"]].sum().item(), abs=1e-6)
            if row["tail"]["committed"] is not None:
                wins += 1
                assert row["tail"]["committed"] == row["tail"]["token"]
    return wins


@pytest.mark.parametrize("tail", ["mean", "rollout"])
def test_the_engine_samples_the_testbed_tail_policy(tail):
    """tq-soft with one rollout of an optimal baseline values every candidate exactly (V = β·log W), so the decoder's
    per-step distribution (its trace) is the testbed's exact policy at every visited state: ``mean`` all of it; for
    ``rollout`` the value of the z′ the row drew, and the candidates' masses given it."""
    beta = 0.25
    sft, r = TabularLM.random(V, H, seed=6), random_reward(V, H, seed=6)
    lw = log_partition(sft, r, beta)

    def q(s, z):
        return beta * lw(s + (z,))

    policy = decoding_policy(sft, q, 1 / beta, 2, tail="mean")
    engine = _soft_engine(sft, optimal_policy(sft, r, beta), r)
    for response in engine.generate(["x", "y", "z"], _soft_params(alpha=1 / beta, k=2, tail=tail), progress=False):
        for row in response.trace:
            prefix = tuple(response.token_ids[:row["step"]])
            if tail == "mean":
                want = policy.probs(prefix)[row["candidates"]]
            else:
                z = row["tail"]["token"]
                if z is None:  # an empty tail (past the horizon)
                    continue
                assert row["tail"]["q"] == pytest.approx(q(prefix, z), abs=1e-5)
                lp = sft.probs(prefix).log()
                weights = torch.tensor([lp[c].item() + q(prefix, c) / beta for c in row["candidates"]]
                                       + [row["tail"]["log_mass"] + q(prefix, z) / beta], dtype=torch.float64)
                want = torch.softmax(weights, 0)[:-1]
            torch.testing.assert_close(torch.tensor(row["p_dec"], dtype=torch.float64), want, atol=1e-5, rtol=0)


def test_the_tail_section_reaches_the_optimum_with_rolling_and_closes_truncations_gap():
    rows, table = tail_report(2, (1.0, 5.0), (0.05,), k=2, vocab_size=4, horizon=3, beta_baseline=0.2)
    by = {(row["instance"], row["method"], row["alpha"]): row for row in rows}
    for i in range(2):
        sft = TabularLM.random(4, 3, seed=i)
        r = random_reward(4, 3, seed=i)
        optimum = optimal_policy(sft, r, 0.2)  # the baseline itself; α = 5 = 1/β_BL
        rolling = by[(i, "tq-soft(N=∞) tail=rolling", 5.0)]
        assert rolling["reward"] == pytest.approx(expected_reward(optimum, r), abs=1e-12)
        assert rolling["kl"] == pytest.approx(trajectory_kl(optimum, sft), abs=1e-12)
        assert by[(i, "tq-soft(N=∞) tail=off", 5.0)]["kl"] != pytest.approx(rolling["kl"], abs=1e-6)
    assert {f"{m} tail={t}" for m, modes in TAIL_MODES.items() for t in modes} <= set(table)
    closed = format_gap_closed(table, 2)
    assert "tq-direct tail=mean" in closed and "tail=off" not in closed
