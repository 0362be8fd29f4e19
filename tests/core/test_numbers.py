"""The numeric envelope (tqstar._checks): every real parameter in [1e-6, 1e6] (or 0), every reward within ±1e12, and
the soft value in a form that is finite for any of them -- so a decode at the envelope's corners stays finite."""

from __future__ import annotations

import math

import pytest
import torch

from tqstar import CallableReward, DecodeParams, Engine
from tqstar._checks import REAL_RANGE, REWARD_LIMIT
from tqstar.errors import RewardError
from tqstar.value import soft_value


def naive(r, log_ratio, beta):
    return beta * (torch.logsumexp(r.double() / beta + log_ratio.double(), dim=-1) - math.log(r.shape[-1]))


def test_the_soft_value_is_the_formula_and_finite_at_every_corner():
    g = torch.Generator().manual_seed(0)
    r, ratio = torch.rand(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    for beta in (0.1, 1.0, 7.0):
        assert torch.allclose(soft_value(r, ratio, beta), naive(r, ratio, beta), rtol=1e-12, atol=1e-12)
    for beta in REAL_RANGE:
        for scale in (REWARD_LIMIT, -REWARD_LIMIT, 1.0):
            for ratios in (1e4 * ratio, torch.zeros_like(ratio)):  # log-likelihood ratios of long rollouts, or none
                value = soft_value(scale * r, ratios, beta)
                assert torch.isfinite(value).all(), (beta, scale)
                top = (scale * r + beta * ratios).max(dim=-1).values
                assert (value <= top + 1e-6 * top.abs().clamp(min=1)).all()  # within [M - β log N, M]
    # the shifted form needs no envelope: even β = 1e-300 (r/β overflows in the textbook form) stays finite
    assert torch.isfinite(soft_value(REWARD_LIMIT * r, ratio, 1e-300)).all()
    assert not torch.isfinite(naive(REWARD_LIMIT * r, ratio, 1e-300)).all()


@pytest.mark.parametrize("changes", [
    {"alpha": REAL_RANGE[0]},  # β = 1/α = 1e6
    {"alpha": REAL_RANGE[1]},  # β = 1e-6
    {"alpha": REAL_RANGE[1], "soft_beta": REAL_RANGE[1]},
    {"alpha": REAL_RANGE[0], "soft_beta": REAL_RANGE[0], "temperature": REAL_RANGE[0]},
])
def test_tq_soft_at_the_corners_of_the_envelope_decodes(sft, baseline, changes):
    def huge(prompts, responses):
        return [REWARD_LIMIT * (len(r) % 3 - 1) for r in responses]

    huge.reward_range = (-REWARD_LIMIT, REWARD_LIMIT)
    params = DecodeParams(method="tq-soft", k=3, n_rollouts=2, rollout_temperature=1.0, rollout_len=3,
                          max_new_tokens=4, trace=True, **changes)
    response = Engine(sft, baseline, CallableReward(huge)).generate(["The food was"], params, progress=False)[0]
    assert len(response.token_ids) >= 1 and math.isfinite(response.kl)
    assert all(q is None or math.isfinite(q) for row in response.trace for q in row["q"])


def test_a_reward_beyond_the_envelope_is_one_sentence():
    reward = CallableReward(lambda p, r: [1e13] * len(r), name="huge")
    with pytest.raises(RewardError, match=r"reward huge returned 10000000000000.0 for the response 'b', beyond ±1e\+12"):
        reward.score(["a"], ["b"])


@pytest.mark.parametrize("changes", [
    {"method": "soft-bon", "bon_beta": REAL_RANGE[0]},  # softmax(r/β): r/β = 1e18, shifted before exp
    {"method": "soft-bon", "bon_beta": REAL_RANGE[1]},
    {"method": "bon"},
    {"method": "tq-direct", "block_len": 2, "alpha": REAL_RANGE[1], "temperature": REAL_RANGE[0]},  # α·Q̂/T = 1e24
    {"method": "tq-soft", "block_len": 2, "alpha": REAL_RANGE[0], "rollout_temperature": 1.0},  # soft β = 1e6
    {"method": "args", "block_len": 1, "alpha": REAL_RANGE[1]},  # argmax over blocks
])
def test_blockwise_decisions_and_soft_bon_at_the_corners_of_the_envelope(sft, baseline, changes):
    """The choice softmax(weight·Q̂/T) over sampled blocks or samples (soft-bon: r/bon_beta) is formed in log space and
    shifted, so every probability, value and KL at the envelope's corners is finite and each choice sums to 1."""
    def huge(prompts, responses):
        return [REWARD_LIMIT * (len(r) % 3 - 1) for r in responses]

    huge.reward_range = (-REWARD_LIMIT, REWARD_LIMIT)
    params = DecodeParams(**{"k": 3, "rollout_len": 3, "max_new_tokens": 4, "trace": True, "temperature": 1.0,
                             "bon_n": 4, **changes})
    response = Engine(sft, baseline, CallableReward(huge)).generate(["The food was"], params, progress=False)[0]
    assert len(response.token_ids) >= 1 and response.trace
    for number in (response.kl, response.kl_bound, response.reward):
        assert number is None or math.isfinite(number)
    for row in response.trace:
        assert all(q is None or math.isfinite(q) for q in row["q"])
        assert all(math.isfinite(p) for p in row["p_dec"]) and math.isclose(sum(row["p_dec"]), 1.0, abs_tol=1e-5)


def test_the_selection_law_is_right_at_the_envelopes_corners():
    """The law of the chosen value (the blockwise KL estimate) where strength x gap reaches 1e24: the levels that far
    apart are chosen as by argmax between them, and levels close together keep their soft law."""
    import numpy as np

    from tqstar.blocks import APART, _soft_law, selection_law

    p, k = np.array([0.3, 0.3, 0.4]), 4
    argmax = selection_law([0.0, 2.0, 1.0], p, k, math.inf)
    for strength, scale in [(1e6, 1e12), (1e12, 1e12), (1e12, 1.0), (REAL_RANGE[0], 2e12)]:
        assert np.allclose(selection_law([0.0, 2 * scale, scale], p, k, strength), argmax, atol=1e-12)
    soft = selection_law([0.0, 1.0, 2.0], p, k, 1.0)
    for shift in (1e6, 1e12):  # a shift of every value changes nothing
        assert np.allclose(selection_law([shift, shift + 1, shift + 2], p, k, 1.0), soft, atol=1e-9)
    # levels further apart than APART: the clustered law is the integral itself (which is still precise this close)
    gap = APART + 100
    values = np.array([0.0, gap, gap + 1])
    direct = _soft_law(values - values.max(), p, k)
    assert np.allclose(selection_law(values, p, k, 1.0), direct / direct.sum(), atol=1e-12)
    assert math.isclose(selection_law([0.0, 1e12, 1e12 + 1], p, k, 1.0)[0], 0.3 ** k, rel_tol=1e-9)
