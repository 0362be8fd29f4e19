"""Rewards: callables, weighted sums, spec parsing and its errors, the transformers reward model, built-ins."""

from __future__ import annotations

import math

import pytest
from conftest import vowel_share

from tqstar.errors import ConfigError, RewardError
from tqstar.reward import (
    CallableReward,
    Reward,
    RewardSpec,
    TransformersReward,
    WeightedReward,
    load_reward,
)

PROMPTS = ["how do i make a cup of tea?", "thank you", "the cat sat", "tell me about the park"]
RESPONSES = [
    "boil water, add the tea leaves, wait three minutes and pour.",
    "i am happy to help",
    "on the mat",
    "the sun was warm and the sky was clear, so we walked to the park and sat by the lake.",
]


def _constant(value: float):
    def fn(prompts, responses):
        return [value] * len(responses)

    return fn


def _ranged(fn, reward_range):
    fn.reward_range = reward_range
    return fn


# ---- CallableReward -------------------------------------------------------------------------------------------
def test_callable_reward_scores_a_batch():
    calls = []

    def lengths(prompts, responses):
        calls.append((list(prompts), list(responses)))
        return [len(r) for r in responses]

    reward = CallableReward(lengths)
    assert reward.name == "lengths"
    assert reward.range is None
    values = reward.score(PROMPTS, RESPONSES)
    assert values == [float(len(r)) for r in RESPONSES]
    assert all(isinstance(v, float) for v in values)
    assert calls == [(PROMPTS, RESPONSES)]  # one call for the whole batch
    assert reward.score([], []) == []


def test_callable_reward_picks_up_reward_range():
    reward = CallableReward(vowel_share)
    assert reward.range == (0.0, 1.0)
    assert reward.score(["p"], ["aaa"]) == [1.0]
    assert CallableReward(vowel_share, range=(0.0, 2.0), name="vowels").range == (0.0, 2.0)
    assert CallableReward(vowel_share, name="vowels").name == "vowels"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_reward_names_the_text(bad):
    def broken(prompts, responses):
        return [0.5 if r == "fine" else bad for r in responses]

    with pytest.raises(RewardError) as info:
        CallableReward(broken).score(["p", "p"], ["fine", "the offending response"])
    message = str(info.value)
    assert message.startswith(f"reward broken returned {bad} for the response 'the offending response';"), message
    assert "finite" in message


def test_wrong_count_raises_reward_error():
    def one_value(prompts, responses):
        return [1.0]

    with pytest.raises(RewardError) as info:
        CallableReward(one_value).score(["a", "b"], ["x", "y"])
    assert str(info.value) == (
        "reward one_value returned 1 values for 2 texts; it must return one float per (prompt, response) pair"
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda prompts, responses: [None] * len(responses),
        lambda prompts, responses: ["high"] * len(responses),
        lambda prompts, responses: 1.0,
    ],
    ids=["none", "string", "scalar"],
)
def test_non_numeric_reward_raises_reward_error(fn):
    with pytest.raises(RewardError, match="reward bad returned"):
        CallableReward(fn, name="bad").score(["p"], ["the offending response"])


@pytest.mark.parametrize("value", [2.0, -0.25])
def test_value_outside_the_declared_range_names_text_value_and_range(value):
    """Pruning and the KL bound trust the declared range, so a value outside it is an error, not a silent change."""
    def liar(prompts, responses):
        return [0.5 if r == "fine" else value for r in responses]

    reward = CallableReward(_ranged(liar, (0.0, 1.0)))
    with pytest.raises(RewardError) as info:
        reward.score(["p", "p"], ["fine", "the offending response"])
    assert str(info.value) == (
        f"reward liar returned {value!r} for the response 'the offending response', outside its declared range"
        " [0, 1]; fix the reward or its range, or pass check_range=False (check_range: false) to drop the range"
        " and the pruning and KL bound that trust it"
    )
    assert reward.score(["p", "p"], ["fine", "fine"]) == [0.5, 0.5]  # the bounds themselves and values inside pass
    assert CallableReward(_constant(1.0), range=(0.0, 1.0)).score(["p"], ["x"]) == [1.0]


def test_check_range_false_drops_the_range_instead_of_checking_it():
    def liar(prompts, responses):
        return [2.0] * len(responses)

    reward = CallableReward(_ranged(liar, (0.0, 1.0)), check_range=False)
    assert reward.range is None  # the decoder then neither prunes nor reports a KL bound
    assert reward.score(["p"], ["x"]) == [2.0]
    spec = RewardSpec("1*conftest:vowel_share + 1*conftest:vowel_share", check_range=False)
    assert spec.load().range is None
    assert RewardSpec("conftest:vowel_share").load().range == (0.0, 1.0)


def test_range_check_allows_float_rounding_at_the_bounds():
    rounded = (0.1 + 0.2) / 0.3  # 1.0000000000000002
    assert CallableReward(_constant(rounded), range=(0.0, 1.0)).score(["p"], ["x"]) == [rounded]
    with pytest.raises(RewardError, match="outside its declared range"):
        CallableReward(_constant(1.001), range=(0.0, 1.0)).score(["p"], ["x"])


# ---- WeightedReward -------------------------------------------------------------------------------------------
def test_weighted_reward_values_and_range():
    a = CallableReward(_ranged(_constant(0.5), (-1.0, 1.0)), name="a")
    b = CallableReward(vowel_share)
    weighted = WeightedReward([(0.7, a), (0.3, b)])
    assert weighted.name == "0.7*a + 0.3*vowel_share"
    expected = [0.7 * 0.5 + 0.3 * v for v in vowel_share(PROMPTS, RESPONSES)]
    assert weighted.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-12)
    assert weighted.range == pytest.approx((-0.7, 1.0))


def test_weighted_reward_range_with_negative_weight():
    a = CallableReward(_ranged(_constant(0.5), (-1.0, 1.0)), name="a")
    b = CallableReward(vowel_share)
    weighted = WeightedReward([(1.0, a), (-0.5, b)])
    assert weighted.range == pytest.approx((-1.5, 1.0))
    expected = [0.5 - 0.5 * v for v in vowel_share(PROMPTS, RESPONSES)]
    assert weighted.score(PROMPTS, RESPONSES) == pytest.approx(expected, abs=1e-12)


def test_weighted_reward_range_unknown_when_a_part_has_none():
    weighted = WeightedReward([(1.0, CallableReward(vowel_share)), (1.0, CallableReward(_constant(1.0)))])
    assert weighted.range is None


def test_weighted_reward_needs_parts():
    with pytest.raises(ConfigError, match=r"must be a non-empty list of \(weight, reward\) pairs"):
        WeightedReward([])


# ---- RewardSpec -----------------------------------------------------------------------------------------------
def test_spec_terms_with_minus_and_exponents():
    assert RewardSpec("0.5*sentiment - 0.2*harmless").terms() == [(0.5, "sentiment"), (-0.2, "harmless")]
    assert RewardSpec("1e+3*sentiment+2E-1*harmless").terms() == [(1000.0, "sentiment"), (0.2, "harmless")]


def test_spec_weighted_terms():
    spec = RewardSpec("0.7*sentiment + 0.3*harmless")
    assert spec.terms() == [(0.7, "sentiment"), (0.3, "harmless")]
    assert RewardSpec("sentiment").terms() == [(1.0, "sentiment")]
    assert RewardSpec("1*sentiment + -0.5*conftest:vowel_share").terms() == [
        (1.0, "sentiment"), (-0.5, "conftest:vowel_share")]


def test_spec_module_function_resolves():
    reward = RewardSpec("conftest:vowel_share").load()
    assert isinstance(reward, CallableReward)
    assert reward.fn is vowel_share
    assert reward.range == (0.0, 1.0)
    assert reward.score(["p"], ["ab"]) == [0.5]
    weighted = load_reward("2*conftest:vowel_share")
    assert isinstance(weighted, WeightedReward)
    assert weighted.score(["p"], ["ab"]) == [1.0]
    assert weighted.range == (0.0, 2.0)


def test_load_reward_passes_through():
    assert load_reward(None) is None
    reward = CallableReward(vowel_share)
    assert load_reward(reward) is reward
    assert isinstance(load_reward(RewardSpec("conftest:vowel_share")), Reward)


def test_spec_unknown_string():
    with pytest.raises(ConfigError) as info:
        RewardSpec("no-such-reward")
    assert str(info.value) == (
        "reward spec 'no-such-reward' does not resolve; give a built-in (sentiment, harmless), module:function,"
        " an existing reward-model directory, or a weighted sum like 0.7*sentiment+0.3*harmless"
    )


def test_spec_missing_module():
    with pytest.raises(ConfigError) as info:
        RewardSpec("tqstar_no_such_module:score")
    message = str(info.value)
    assert message.startswith(
        "reward spec 'tqstar_no_such_module:score' does not resolve: cannot import module 'tqstar_no_such_module'"
    ), message
    assert message.endswith("; check the module is on PYTHONPATH")


def test_spec_missing_function():
    with pytest.raises(ConfigError) as info:
        RewardSpec("conftest:no_such_function")
    assert str(info.value) == (
        "reward spec 'conftest:no_such_function' does not resolve: module 'conftest' has no function"
        " 'no_such_function'; give module:function of a function (prompts, responses) -> floats"
    )


def test_spec_unknown_term_in_weighted_sum():
    with pytest.raises(ConfigError, match=r"^reward spec 'nope' does not resolve; give a built-in"):
        RewardSpec("0.5*sentiment + 0.5*nope")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0.7*sentiment + harmless",
         "reward term 'harmless' in '0.7*sentiment + harmless' must read WEIGHT*SPEC, e.g. 0.7*sentiment"),
        ("abc*sentiment", "reward term 'abc*sentiment' in 'abc*sentiment' must read WEIGHT*SPEC, e.g. 0.7*sentiment"),
        ("0.7* + 0.3*harmless", "reward term '0.7*' in '0.7* + 0.3*harmless' must read WEIGHT*SPEC, e.g. 0.7*sentiment"),
        ("1.2.3*sentiment", "reward weight '1.2.3' in '1.2.3*sentiment' must be a number"),
    ],
)
def test_spec_malformed_weighted_term(spec, message):
    with pytest.raises(ConfigError) as info:
        RewardSpec(spec)
    assert str(info.value) == message


@pytest.mark.parametrize("bad_range", [(1.0, 1.0), (1.0, 0.0), (0.0,)])
def test_spec_bad_range(bad_range):
    with pytest.raises(ConfigError) as info:
        RewardSpec("sentiment", range=bad_range)
    assert str(info.value) == ("reward `range` must be (R_min, R_max): two numbers with R_min < R_max, each within"
                               f" ±1e+12, got {bad_range!r}")


@pytest.mark.parametrize("spec", ["", "   "])
def test_spec_empty(spec):
    with pytest.raises(ConfigError, match="non-empty string"):
        RewardSpec(spec)


# ---- TransformersReward (the tiny reward model) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_model(tiny_paths):
    return TransformersReward(str(tiny_paths["reward"]), batch_size=3)


def test_transformers_reward_batch_equals_singles(reward_model):
    batch = reward_model.score(PROMPTS, RESPONSES)  # 4 texts of different lengths in chunks of 3
    singles = [reward_model.score([p], [r])[0] for p, r in zip(PROMPTS, RESPONSES)]
    assert batch == pytest.approx(singles, abs=1e-5)
    assert len(set(batch)) > 1


def test_transformers_reward_format_string(tiny_paths, reward_model):
    fmt = "Human: {prompt}\n\nAssistant: {response}"
    formatted = TransformersReward(str(tiny_paths["reward"]), format=fmt)
    assert formatted._text("the cat sat", "on the mat") == "Human: the cat sat\n\nAssistant: on the mat"
    assert reward_model._text("the cat sat", "on the mat") == "<|user|>the cat sat\n<|assistant|>on the mat\n"
    assert formatted.score(PROMPTS, RESPONSES) != pytest.approx(reward_model.score(PROMPTS, RESPONSES), abs=1e-6)


def test_transformers_reward_format_needs_response(tiny_paths):
    with pytest.raises(ConfigError, match=r"must contain \{response\}"):
        TransformersReward(str(tiny_paths["reward"]), format="{prompt}")


def test_transformers_reward_sigmoid(tiny_paths, reward_model):
    squashed = TransformersReward(str(tiny_paths["reward"]), sigmoid=True)
    assert squashed.range == (0.0, 1.0)
    values = squashed.score(PROMPTS, RESPONSES)
    assert all(0.0 < v < 1.0 for v in values)
    raw = reward_model.score(PROMPTS, RESPONSES)
    assert values == pytest.approx([1 / (1 + math.exp(-x)) for x in raw], abs=1e-6)
    assert reward_model.range is None


def test_transformers_reward_too_long_input(tiny_paths, reward_model):
    long_response = " ".join(["the cat sat on the mat ."] * 100)  # 700 tokens > 512
    with pytest.raises(RewardError) as info:
        reward_model.score(["hi"], [long_response])
    message = str(info.value)
    assert "over the 512-token limit" in message
    assert "truncate=True" in message
    truncating = TransformersReward(str(tiny_paths["reward"]), truncate=True)
    (value,) = truncating.score(["hi"], [long_response])
    assert math.isfinite(value)


def test_spec_loads_reward_model_directory(tiny_paths):
    path = str(tiny_paths["reward"])
    reward = RewardSpec(path, sigmoid=True).load()
    assert isinstance(reward, TransformersReward)
    assert reward.range == (0.0, 1.0)
    prefixed = load_reward("hf:" + path, range=(-5.0, 5.0))
    assert isinstance(prefixed, TransformersReward)
    assert prefixed.range == (-5.0, 5.0)


# ---- built-ins ------------------------------------------------------------------------------------------------
def test_sentiment_builtin():
    pytest.importorskip("vaderSentiment")
    reward = load_reward("sentiment")
    assert reward.range == (-1.0, 1.0)
    good, bad = reward.score(["p", "p"], ["i love this wonderful idea, thank you", "this is terrible and i hate it"])
    assert good > bad
    assert -1.0 <= bad < 0 < good <= 1.0


def test_harmless_builtin():
    pytest.importorskip("profanity_check")
    reward = load_reward("harmless")
    assert reward.range == (0.0, 1.0)
    clean, profane = reward.score(["p", "p"], ["have a nice day with your friends", "shut up you fucking idiot"])
    assert profane < clean
    assert 0.0 <= profane <= 1.0 and 0.0 <= clean <= 1.0


def test_weighted_builtins():
    pytest.importorskip("vaderSentiment")
    pytest.importorskip("profanity_check")
    reward = load_reward("0.7*sentiment + 0.3*harmless")
    assert isinstance(reward, WeightedReward)
    assert reward.range == pytest.approx((-0.7, 1.0))
    texts = ["i love this wonderful idea", "this is terrible and i hate it"]
    sentiment, harmless = load_reward("sentiment"), load_reward("harmless")
    expected = [0.7 * s + 0.3 * h for s, h in zip(sentiment.score(texts, texts), harmless.score(texts, texts))]
    assert reward.score(texts, texts) == pytest.approx(expected, abs=1e-12)


def test_decoding_with_a_reward_outside_its_range_fails_unless_unchecked(sft, baseline):
    from tqstar import DecodeParams, Engine

    def liar(prompts, responses):
        return [2.0 + len(r) % 3 for r in responses]

    params = DecodeParams(method="tq-direct", k=3, alpha=1.0, rollout_len=3, max_new_tokens=3, trace=True)
    with pytest.raises(RewardError, match=r"^reward liar returned .* outside its declared range \[0, 1\]"):
        Engine(sft, baseline, CallableReward(liar, range=(0.0, 1.0))).generate(["the cat sat"], params, progress=False)
    unchecked = CallableReward(liar, range=(0.0, 1.0), check_range=False)
    (response,) = Engine(sft, baseline, unchecked).generate(["the cat sat"], params, progress=False)
    assert len(response.token_ids) == 3 and response.accounting.pruned == 0  # no range: no pruning
    # and only the reward-free bound, -log min π_sft over the top-k, summed over the steps
    reward_free = sum(-min(row["logp_sft"]) for row in response.trace)
    assert response.kl_bound == pytest.approx(reward_free, rel=1e-5)
