"""The methods table (tqstar.methods): every row documented, and every row agrees with what its estimator does.

Each method decodes tabular prompts with spies on the models and rewards (the decoder alone, not the final scoring
every method gets): which model rolls out, whether likelihoods of given tokens are asked for, which of the baseline,
the reward and the baseline's reward are used at all, and whether Q̂ stays in the reward's range must be what the row
says. A new row, or a changed estimator, that disagrees fails here.
"""

from __future__ import annotations

import functools

import pytest

import tqstar
from tqstar.engine import Engine
from tqstar.eval.testbed import TabularReward, optimal_policy, random_reward
from tqstar.lm.tabular import TabularLM
from tqstar.methods import METHODS, NEEDS, TABLE, help_table, markdown_table
from tqstar.params import DecodeParams
from tqstar.value import ESTIMATORS

PROMPTS = ["How do I make tea?", "The food was", "thank you"]
SAMPLED = dict(temperature=1.0, n_rollouts=3, rollout_temperature=1.0)


def test_the_table_lists_every_method_once_in_the_public_order():
    assert METHODS == tqstar.METHODS == ("tq-direct", "tq-indirect", "tq-soft", "cd", "soft-cd", "args", "eft", "none",
                                         "sft", "baseline", "bon", "soft-bon")
    assert len(set(METHODS)) == len(TABLE)


@pytest.mark.parametrize("row", TABLE, ids=lambda m: m.name)
def test_every_method_has_a_doc_line_and_known_parts(row):
    assert row.doc.strip() and "\n" not in row.doc, f"{row.name} has no one-line doc"
    assert row.needs <= set(NEEDS)
    if row.kind == "token":
        assert row.value in ESTIMATORS, f"{row.name}: no estimator {row.value!r} in tqstar.value.ESTIMATORS"
    assert row.name in help_table() and f"`{row.name}`" in markdown_table()


def test_every_estimator_is_used_by_a_row():
    assert {row.value for row in TABLE if row.kind == "token"} == set(ESTIMATORS)


# ---- spies ------------------------------------------------------------------------------------------------------
class Calls:
    """What the models and rewards were asked while decoding, by role and call."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.rollout_temperatures: set[float] = set()

    def spy_lm(self, lm: TabularLM, role: str) -> TabularLM:
        for call in ("top_logprobs", "next_logprobs", "rollout", "score_continuations", "next_token_logprobs"):
            setattr(lm, call, self._wrap(getattr(lm, call), role, call))
        return lm

    def spy_reward(self, reward: TabularReward, role: str) -> TabularReward:
        reward._score = self._wrap(reward._score, role, "score")
        return reward

    def _wrap(self, fn, role: str, call: str):
        @functools.wraps(fn)
        def spy(*args, **kwargs):
            self.seen.add((role, call))
            if call == "rollout":
                self.rollout_temperatures.add(float(args[2] if len(args) > 2 else kwargs.get("temperature", 0.0)))
            return fn(*args, **kwargs)
        return spy

    def roles(self) -> set[str]:
        return {role for role, _ in self.seen}

    def asked(self, call: str) -> set[str]:
        return {role for role, c in self.seen if c == call}


def spied_engine(seed: int = 0) -> tuple[Engine, Calls]:
    calls = Calls()
    sft = TabularLM.random(5, 4, seed=seed)
    r, r_bl = random_reward(5, 4, seed=seed), random_reward(5, 4, seed=seed + 100)
    baseline = optimal_policy(sft, r, beta=0.5)
    reward, baseline_reward = TabularReward(r, sft), TabularReward(r_bl, sft, name="r_BL")
    for model in (reward, baseline_reward):
        model.cache_size = 0  # every call reaches the spy
    engine = Engine(calls.spy_lm(sft, "sft"), calls.spy_lm(baseline, "baseline"), calls.spy_reward(reward, "reward"),
                    calls.spy_reward(baseline_reward, "baseline_reward"))
    return engine, calls


def params_for(row) -> DecodeParams:
    sampled = SAMPLED if row.kind == "token" and row.rolls is not None else {"temperature": 1.0}
    return DecodeParams(method=row.name, k=3, alpha=2.0, rollout_len=3, max_new_tokens=4, bon_n=3, prune=False,
                        trace=True, **sampled)


def decode(engine: Engine, params: DecodeParams):
    """The decoder alone over the prompts (no final scoring: that reads the reward for every method)."""
    return engine.decoder(params).run([engine.new_state(p, params) for p in PROMPTS])


# ---- each row against its estimator -----------------------------------------------------------------------------
@pytest.mark.parametrize("row", TABLE, ids=lambda m: m.name)
def test_a_row_uses_exactly_what_it_needs(row):
    engine, calls = spied_engine()
    params = params_for(row)
    decode(engine, params)
    used = calls.roles() - {"sft"}
    assert used == set(params.needs), f"{row.name} used {sorted(used)}, its row needs {sorted(params.needs)}"
    if row.kind == "best-of-n":  # bon samples from bon_policy: the baseline when asked to
        engine, calls = spied_engine()
        decode(engine, params.replace(bon_policy="baseline"))
        assert "baseline" in calls.roles() and params.replace(bon_policy="baseline").uses_baseline


@pytest.mark.parametrize("row", [m for m in TABLE if m.kind == "token"], ids=lambda m: m.name)
def test_a_token_row_names_the_model_its_estimator_rolls_out(row):
    engine, calls = spied_engine()
    decode(engine, params_for(row))
    assert calls.asked("rollout") == ({row.rolls} if row.rolls else set()), row.name
    assert params_for(row).rolls_out is (row.rolls is not None)


@pytest.mark.parametrize("row", [m for m in TABLE if m.kind == "token"], ids=lambda m: m.name)
def test_a_token_row_asks_for_likelihoods_exactly_when_it_says_so(row):
    engine, calls = spied_engine()
    decode(engine, params_for(row))
    asked = calls.asked("score_continuations") | calls.asked("next_token_logprobs")
    assert bool(asked) is row.likelihoods, f"{row.name}: likelihoods asked of {sorted(asked)}"
    assert params_for(row).scores_likelihoods is row.likelihoods


@pytest.mark.parametrize("row", [m for m in TABLE if m.kind == "token" and m.in_reward_range], ids=lambda m: m.name)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_row_in_the_reward_range_keeps_every_value_there(row, seed):
    engine, _ = spied_engine(seed)
    low, high = engine.models.reward.range
    for state in decode(engine, params_for(row)):
        values = [q for step in state.trace for q in step["q"] if q is not None]
        assert all(low - 1e-9 <= q <= high + 1e-9 for q in values), (row.name, values)


def test_the_rows_out_of_range_are_likelihood_ratios():
    assert {m.name for m in TABLE if m.kind == "token" and not m.in_reward_range} == {
        m.name for m in TABLE if m.value in ("soft", "log-ratio") and m.likelihoods}


@pytest.mark.parametrize("row", [m for m in TABLE if m.kind == "token" and m.rolls], ids=lambda m: m.name)
def test_sampled_rollouts_are_required_exactly_by_the_soft_value(row):
    assert row.sampled_rollouts is (row.value == "soft")
    greedy = dict(method=row.name, rollout_temperature=0.5)
    if row.sampled_rollouts:
        with pytest.raises(tqstar.ConfigError, match="`rollout_temperature` must be 1"):
            DecodeParams(**greedy)
    else:
        DecodeParams(**greedy)
    engine, calls = spied_engine()
    decode(engine, params_for(row))
    assert calls.rollout_temperatures == {1.0}


@pytest.mark.parametrize("row", [m for m in TABLE if m.kind == "plain"], ids=lambda m: m.name)
def test_a_plain_row_decodes_its_model(row):
    engine, calls = spied_engine()
    states = decode(engine, params_for(row))
    assert calls.asked("rollout") == {row.rolls}
    assert all(s.accounting.rollouts == 0 for s in states)
