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
