"""Blockwise selection on the exact testbed: the law of the chosen block enumerated (no Monte Carlo), its limits, its
convergence to the frontier as k grows, its KL bound, and the decoder against that law."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tqstar.blocks import selection_kl_bound, selection_law
from tqstar.engine import Engine
from tqstar.eval.testbed import (
    TabularReward,
    block_decoding,
    block_law,
    block_rows,
    block_values,
    blocks_from,
    distribution_kl,
    optimal_policy,
    random_reward,
    sequences,
    total_variation,
)
from tqstar.lm.tabular import EOS, TabularLM
from tqstar.params import DecodeParams

V, H = 4, 3


def instance(seed: int):
    sft = TabularLM.random(V, H, seed=seed)
    r = random_reward(V, H, seed=seed)
    return sft, r, optimal_policy(sft, r, 0.2)


def close(p: dict, q: dict, tol: float = 1e-12) -> bool:
    return total_variation(p, q) < tol


@pytest.mark.parametrize("m", [1, 2, None])
def test_blocks_from_a_state_are_a_distribution_ending_at_eos_or_m(m):
    sft, _, _ = instance(0)
    for prefix in [(), (1,), (2, 3)]:
        blocks = blocks_from(sft, prefix, m)
        assert math.isclose(sum(p for _, p in blocks), 1.0, abs_tol=1e-12)
        assert all(b[-1] == EOS or len(b) == m for b, _ in blocks)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("m", [1, 2, None])
def test_alpha_zero_or_one_sample_is_the_sft_model_exactly(seed, m):
    sft, r, baseline = instance(seed)
    values = block_values(sft, baseline, r, beta=0.5)
    ref = sequences(sft)
    for name, value in values.items():
        for temperature in (0.0, 1.0):
            assert close(block_decoding(sft, value, alpha=3.0, k=1, block_len=m, temperature=temperature), ref), name
            if temperature:  # α = 0: uniform among k i.i.d. samples (argmax would be the first sample: also π_sft)
                assert close(block_decoding(sft, value, alpha=0.0, k=4, block_len=m, temperature=temperature), ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("m", [1, 2, None])
def test_soft_values_with_soft_choice_converge_to_the_optimum_as_k_grows(seed, m):
    """Sampling-importance-resampling of π_sft's blocks with weights W(s b) = exp(V/β) targets ρ*'s block factor:
    the k → ∞ limit is ρ* at β = 1/α exactly, and the distance to it falls with k (to < 1e-3 nats at k = 64)."""
    sft, r, baseline = instance(seed)
    alpha = 4.0
    optimum = sequences(optimal_policy(sft, r, 1.0 / alpha))
    soft = block_values(sft, baseline, r, 1.0 / alpha)["soft"]
    assert close(block_decoding(sft, soft, alpha=alpha, k=None, block_len=m), optimum, 1e-10)
    gaps = [distribution_kl(block_decoding(sft, soft, alpha=alpha, k=k, block_len=m), optimum) for k in (1, 2, 4, 16, 64)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-3, gaps


@pytest.mark.parametrize("value", ["tq-direct", "cd"])
def test_hard_values_converge_to_their_own_block_tilted_policy_not_the_optimum(value):
    """With hard values (a mean reward) SIR converges to p(b)·exp(αQ(s, b)), which re-applies α to the same future
    reward at every decision: a point of its own curve, away from ρ* (except with one decision, m = all)."""
    sft, r, baseline = instance(3)
    alpha, q = 4.0, block_values(sft, baseline, r, 0.25)[value]
    optimum = sequences(optimal_policy(sft, r, 1.0 / alpha))
    limit = block_decoding(sft, q, alpha=alpha, k=None, block_len=1)
    gaps = [total_variation(block_decoding(sft, q, alpha=alpha, k=k, block_len=1), limit) for k in (1, 4, 16, 64)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 0.01
    assert distribution_kl(limit, optimum) > 1e-3
    whole = block_decoding(sft, q, alpha=alpha, k=None, block_len=None)  # one decision: Q is r itself
    assert close(whole, optimum, 1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(("k", "temperature"), [(2, 0.0), (4, 0.0), (16, 0.0), (4, 1.0), (16, 1.0)])
def test_best_of_k_and_soft_best_of_k_stay_within_their_kl_bounds(seed, k, temperature):
    """m = the whole response, valued by its reward: best-of-k (argmax) and soft best-of-k, exactly enumerated;
    KL to π_sft within log k − (k−1)/k, and soft selection (here at λ = 1) within its smaller bound (rewards in
    [0, 1])."""
    sft, r, baseline = instance(seed)
    alpha = 1.0 if temperature else 5.0
    dist = block_decoding(sft, block_values(sft, baseline, r, 1.0)["reward"], alpha=alpha, k=k, block_len=None,
                          temperature=temperature)
    kl = distribution_kl(dist, sequences(sft))
    strength = math.inf if temperature == 0 else alpha / temperature
    assert 0 < kl <= selection_kl_bound(k, strength, spread=1.0) + 1e-12 <= selection_kl_bound(k, math.inf) + 1e-12
    if temperature:  # the soft bound on its own: log sup q/p with q/p <= k / (1 + (k - 1)·e^(−λΔ))
        assert kl <= math.log(k) - math.log1p((k - 1) * math.exp(-strength)) + 1e-12


@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_blockwise_kl_is_within_the_summed_per_decision_bound(m, temperature):
    """The chain rule: KL(ρ_dec ‖ ρ_sft) ≤ E[number of decisions]·(log k − (k−1)/k)."""
    sft, r, baseline = instance(5)
    k = 4
    q = block_values(sft, baseline, r, 0.25)["tq-direct"]
    dist = block_decoding(sft, q, alpha=4.0, k=k, block_len=m, temperature=temperature)
    decisions = sum(mass * math.ceil(len(y) / m) for y, mass in dist.items())
    assert distribution_kl(dist, sequences(sft)) <= decisions * selection_kl_bound(k, math.inf) + 1e-12


def test_ties_are_one_level_and_the_chosen_block_is_sft_distributed_within_it():
    """Two blocks of equal value split the level's selection probability in proportion to π_sft."""
    sft, _, _ = instance(0)
    tie = lambda s, b: 1.0 if b[0] in (1, 2) else 0.0  # noqa: E731 - blocks starting with 1 or 2 tie at the top
    law = dict(block_law(sft, tie, (), alpha=1.0, k=3, block_len=1, temperature=0.0))
    p = sft.probs(()).tolist()
    top = p[1] + p[2]
    assert math.isclose(law[(1,)] + law[(2,)], 1 - (1 - top) ** 3, rel_tol=1e-12)
    assert math.isclose(law[(1,)] / law[(2,)], p[1] / p[2], rel_tol=1e-12)


@pytest.mark.parametrize(("method", "block_len", "temperature"),
                         [("args", 1, 1.0), ("args", 2, 0.0), ("bon", None, 1.0), ("soft-bon", None, 1.0)])
def test_the_decoder_follows_the_exact_law(method, block_len, temperature):
    """The decoder's blockwise choice on the tabular model, over 600 seeds, against the enumerated law: ARGS values a
    block by the reward of [s, b] and bon / soft-bon a response by its reward — both exact — so the responses'
    frequencies must match ρ_dec (total variation within sampling noise)."""
    sft, r, _ = instance(7)
    engine = Engine(sft, reward=TabularReward(r, sft))
    k, alpha, bon_beta = 3, 4.0, 0.25
    params = DecodeParams(method=method, k=k, bon_n=k, alpha=alpha, bon_beta=bon_beta, block_len=block_len,
                          temperature=temperature, max_new_tokens=H + 1)
    decoder = engine.decoder(params)
    rows = decoder.run([engine.new_state("x", params, seed=seed) for seed in range(600)])
    counts: dict[tuple, float] = {}
    for row in rows:
        counts[tuple(row.response)] = counts.get(tuple(row.response), 0) + 1 / len(rows)
    weight, choice_temperature = (1.0, bon_beta) if method == "soft-bon" else (alpha, temperature)
    if method == "bon":
        choice_temperature = 0.0
    exact = block_decoding(sft, lambda s, b: r(s + b), alpha=weight, k=k, block_len=block_len,
                           temperature=choice_temperature)
    # E[TV] of 600 draws over ~|support| outcomes is about sqrt(|support| / (2π·600)); 0.12 is well above it
    assert total_variation(counts, exact) < 0.12, (total_variation(counts, exact), len(exact))
    assert total_variation(counts, sequences(sft)) > total_variation(counts, exact)


def test_selection_law_is_a_distribution_and_matches_monte_carlo():
    rng = np.random.default_rng(0)
    values, probs = rng.normal(size=6), rng.dirichlet(np.ones(6))
    for k, strength in ((3, 2.0), (16, 0.5), (8, math.inf)):
        law = selection_law(values, probs, k, strength)
        samples = rng.choice(6, size=(40000, k), p=probs)
        if math.isinf(strength):
            picked = samples[np.arange(len(samples)), np.argmax(values[samples], axis=1)]
        else:
            w = np.exp(strength * values[samples])
            u = rng.random(len(samples))[:, None]
            picked = samples[np.arange(len(samples)), ((w / w.sum(1, keepdims=True)).cumsum(1) < u).sum(1)]
        freq = np.bincount(picked, minlength=6) / len(samples)
        assert math.isclose(law.sum(), 1.0, abs_tol=1e-12) and np.abs(freq - law).max() < 0.01, (freq, law)


def test_the_block_report_reaches_the_optimum_row():
    rows = block_rows(0, alpha=4.0, ks=(1, 64, None), block_lens=(2,), horizon=H)
    optimum = next(row for row in rows if row["value"].startswith("optimum"))
    limit = next(row for row in rows if row["value"] == "soft" and row["choice"] == "soft" and row["k"] is None)
    first = next(row for row in rows if row["value"] == "soft" and row["choice"] == "soft" and row["k"] == 1)
    assert math.isclose(limit["reward"], optimum["reward"], abs_tol=1e-10)
    assert math.isclose(limit["kl"], optimum["kl"], abs_tol=1e-10)
    assert first["kl"] < 1e-12 and first["kl_to_limit"] > 0
