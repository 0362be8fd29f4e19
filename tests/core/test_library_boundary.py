"""The library boundary, as a table: every argument of the public calls, with a wrong type, an empty value, NaN and an
out-of-range value, ends in ONE :class:`~tqstar.errors.ConfigError` sentence that names the argument -- the same
sentence the command line gives for the same value (``tests/cli/test_bad_inputs.py``) -- and never in a raw
TypeError, a silent acceptance or a crash later on.

A case is ``(call, argument, value, fragment)``: the call is made with the argument set to the value (everything else
valid), and the message must name the argument in backticks and contain the fragment.
"""

from __future__ import annotations

import math

import pytest

from tqstar import (
    CallableReward,
    ConfigError,
    DecodeParams,
    Engine,
    RewardSpec,
    TabularLM,
    TransformersLM,
    WeightedReward,
    load_reward,
)
from tqstar.errors import TQStarError

NAN, INF = math.nan, math.inf


def zeros(prompts, responses):
    return [0.0] * len(responses)


def _engine() -> Engine:
    return Engine(TabularLM.random(4, 3, seed=0))


SFT = DecodeParams(method="sft", max_new_tokens=2)


def generate(**kw):
    kw = {"prompts": ["a"], "params": SFT, "progress": False, **kw}
    return _engine().generate(kw.pop("prompts"), kw.pop("params"), **kw)


def stream(**kw):
    kw = {"batches": [["a"]], "params": SFT, **kw}
    return list(_engine().stream(kw.pop("batches"), kw.pop("params"), **kw))


def new_state(**kw):
    kw = {"prompt": "a", "params": SFT, **kw}
    return _engine().new_state(kw.pop("prompt"), kw.pop("params"), **kw)


def engine(**kw):
    kw = {"sft": TabularLM.random(4, 3), **kw}
    return Engine(kw.pop("sft"), **kw)


def callable_reward(**kw):
    kw = {"fn": zeros, **kw}
    return CallableReward(kw.pop("fn"), **kw)


def weighted(parts):
    return WeightedReward(parts)


def fn_with_range(reward_range):
    def fn(prompts, responses):
        return [0.0] * len(responses)

    fn.reward_range = reward_range
    return CallableReward(fn)


def reward_spec(**kw):
    return RewardSpec(**{"spec": "sentiment", **kw})


def reward_load(**kw):
    kw = {"spec": "sentiment", **kw}
    return load_reward(kw.pop("spec"), **kw)


def from_pretrained(**kw):
    kw = {"path": "x", **kw}
    return TransformersLM.from_pretrained(kw.pop("path"), **kw)


def random_table(**kw):
    return TabularLM.random(**kw)


#: each helper -> the public call whose every argument the table must cover
COVERS = {generate: Engine.generate, stream: Engine.stream, new_state: Engine.new_state, engine: Engine.__init__,
          callable_reward: CallableReward.__init__, weighted: WeightedReward.__init__, reward_spec: RewardSpec,
          reward_load: load_reward, from_pretrained: TransformersLM.from_pretrained, random_table: TabularLM.random}


R = CallableReward(zeros, range=(0, 1))

CASES = [
    # Engine.generate: every argument
    (generate, "prompts", None, "must be a list of prompts"),
    (generate, "prompts", 5, "must be a list of prompts"),
    (generate, "prompts", b"hi", "must be a list of prompts"),
    (generate, "prompts", [], "no prompts given"),
    (generate, "prompts[0]", [None], "must be a non-empty string, got None"),
    (generate, "prompts[1]", ["hi", 5], "must be a non-empty string, got 5"),
    (generate, "prompts[0]", [""], "must be a non-empty string, got ''"),
    (generate, "prompts[0]", [NAN], "must be a non-empty string, got nan"),
    (generate, "prompts[0]", [[]], "must be a non-empty string, got []"),
    (generate, "prompts[0]", [[{"role": "bot", "content": "x"}]], "a list of chat messages"),
    (generate, "params", {"method": "sft"}, "must be a DecodeParams"),
    (generate, "params", None, "must be a DecodeParams"),
    (generate, "batch_size", 2.5, "must be an integer >= 1, got 2.5"),
    (generate, "batch_size", 0, "must be an integer >= 1, got 0"),
    (generate, "batch_size", NAN, "must be an integer >= 1, got nan"),
    (generate, "batch_size", True, "must be an integer >= 1, got True"),
    (generate, "batch_size", "8", "must be an integer >= 1, got '8'"),
    (generate, "concurrency", 0, "must be an integer >= 1, got 0"),
    (generate, "concurrency", 1.5, "must be an integer >= 1, got 1.5"),
    (generate, "concurrency", 2, "decodes several batches at once, which needs remote models"),
    (generate, "truncate_prompt", "yes", "must be true or false, got 'yes'"),
    (generate, "progress", "yes", "must be true or false, got 'yes'"),
    (generate, "on_response", "print", "must be a function, got 'print'"),
    # Engine.stream
    (stream, "batches", 5, "must be a list of lists of prompts"),
    (stream, "batches", "ab", "must be a list of lists of prompts"),
    (stream, "batches[0]", [5], "must be a list of prompts"),
    (stream, "batches[0]", [[]], "no prompts given"),
    (stream, "batches[0][0]", [[None]], "must be a non-empty string, got None"),
    (stream, "params", "sft", "must be a DecodeParams"),
    (stream, "truncate_prompt", 1, "must be true or false, got 1"),
    (stream, "on_step", 5, "must be a function, got 5"),
    (stream, "concurrency", 0, "must be an integer >= 1, got 0"),
    (stream, "concurrency", NAN, "must be an integer >= 1, got nan"),
    # Engine.new_state
    (new_state, "prompt", None, "must be a non-empty string, got None"),
    (new_state, "params", {"k": 2}, "must be a DecodeParams"),
    (new_state, "prompt", "  ", "must be a non-empty string, got '  '"),
    (new_state, "seed", 1.5, "must be an integer, got 1.5"),
    (new_state, "max_new_tokens", 0, "must be an integer >= 1, got 0"),
    (new_state, "max_new_tokens", NAN, "must be an integer >= 1, got nan"),
    (new_state, "stop", [""], "must be a tuple of non-empty strings"),
    (new_state, "trace", "yes", "must be True or False, got 'yes'"),
    (new_state, "truncate_prompt", "no", "must be true or false, got 'no'"),
    (new_state, "ending", "sideways", "must be one of"),
    # Engine()
    (engine, "sft", None, "must be a LanguageModel, got None"),
    (engine, "sft", "models/sft", "must be a LanguageModel, got 'models/sft'"),
    (engine, "baseline", 5, "must be a LanguageModel, got 5"),
    (engine, "reward", zeros, "must be a Reward or None, got function"),
    (engine, "reward", "sentiment", "must be a Reward or None, got 'sentiment'"),
    (engine, "baseline_reward", NAN, "must be a Reward or None, got nan"),
    (engine, "bridge", "yes", "must be true or false, got 'yes'"),
    # CallableReward / WeightedReward / a function's reward_range
    (callable_reward, "fn", 5, "must be a function (prompts, responses) -> floats, got 5"),
    (callable_reward, "fn", None, "must be a function (prompts, responses) -> floats, got None"),
    (callable_reward, "name", "", "must be a non-empty string or None, got ''"),
    (callable_reward, "name", 5, "must be a non-empty string or None, got 5"),
    (callable_reward, "range", (1, 0), "with R_min < R_max"),
    (callable_reward, "range", "wide", "got 'wide'"),
    (callable_reward, "range", (0, NAN), "got (0, nan)"),
    (callable_reward, "range", (0, 1e300), "each within ±1e+12"),
    (callable_reward, "range", (0,), "two numbers"),
    (callable_reward, "range", (), "two numbers"),
    (callable_reward, "check_range", "no", "must be True or False, got 'no'"),
    (fn_with_range, "reward_range", "wide", "got 'wide'"),
    (fn_with_range, "reward_range", (2, 1), "with R_min < R_max"),
    (weighted, "parts", [], "must be a non-empty list of (weight, reward) pairs"),
    (weighted, "parts", None, "must be a non-empty list of (weight, reward) pairs"),
    (weighted, "parts[0]", [(1.0,)], "must be a (weight, reward) pair"),
    (weighted, "parts[0]", [(1.0, zeros)], "must be a Reward, got function"),
    (weighted, "parts[0]", [(NAN, R)], "must be a finite number from -1e+06 to 1e+06, got nan"),
    (weighted, "parts[0]", [(INF, R)], "got inf"),
    (weighted, "parts[0]", [(1e7, R)], "got 10000000.0"),
    (weighted, "parts[0]", [("1", R)], "got '1'"),
    # RewardSpec / load_reward
    (reward_spec, "spec", "", "must be a non-empty string, got ''"),
    (reward_spec, "spec", 5, "must be a non-empty string, got 5"),
    (reward_spec, "truncate", "no", "must be true or false, got 'no'"),
    (reward_spec, "sigmoid", 1, "must be true or false, got 1"),
    (reward_spec, "label", "first", "must be an integer, got 'first'"),
    (reward_spec, "format", 5, "must be a string, got 5"),
    (reward_spec, "dtype", 5, "must be a string, got 5"),
    (reward_spec, "check_range", "no", "must be true or false, got 'no'"),
    (reward_spec, "range", (1, 0), "with R_min < R_max"),
    (reward_spec, "device", 5, "must be a string, got 5"),
    (reward_spec, "format", "{prompt} {response}", "applies to a reward-model"),
    (reward_load, "spec", 5, "must be a reward spec string, a RewardSpec or a Reward, got 5"),
    (reward_load, "spec", zeros, "wrap a function with CallableReward(fn)"),
    (reward_load, "frobnicate", 1, "unknown reward option"),
    # TabularLM.random
    (random_table, "vocab_size", 1, "must be an integer >= 2, got 1"),
    (random_table, "vocab_size", 2.5, "must be an integer >= 2, got 2.5"),
    (random_table, "vocab_size", 10**4, "keep vocab_size ** horizon <= 10,000,000"),
    (random_table, "horizon", 0, "must be an integer >= 1, got 0"),
    (random_table, "seed", 1.5, "must be an integer, got 1.5"),
    (random_table, "concentration", 0, "must be a finite number > 0"),
    (random_table, "concentration", NAN, "got nan"),
    (random_table, "eos_weight", -1, "must be a finite number >= 0"),
    (random_table, "name", 5, "must be a string, got 5"),
    # TransformersLM.from_pretrained: checked before anything loads
    (from_pretrained, "path", 5, "must be a string or a path, got 5"),
    (from_pretrained, "path", "", "must be a model directory or hub id, got ''"),
    (from_pretrained, "dtype", "float8", "must be one of"),
    (from_pretrained, "dtype", 3, "must be a string, got 3"),
    (from_pretrained, "device", 0, "must be a string, got 0"),
    (from_pretrained, "chat_template", 5, "must be true or false or a string"),
    (from_pretrained, "system_prompt", 5, "must be a string, got 5"),
    (from_pretrained, "name", NAN, "must be a string, got nan"),
    (from_pretrained, "adapter", 5, "got 5"),
    (from_pretrained, "allow_download", "no", "must be true or false"),
    (from_pretrained, "trust_remote_code", 1, "must be true or false"),
    (from_pretrained, "parse_special_tokens", "yes", "must be true or false"),
]

# DecodeParams: every field with a wrong type, NaN and an out-of-range value
for _name, _bad in {
    "method": ["", 5, None], "k": [0, 2.5, NAN, "10"], "alpha": [-1, NAN, INF, 1e7, 1e-39, "1"],
    "n_rollouts": [0, 1.5], "rollout_len": [0, NAN], "rollout_temperature": [-1, NAN, 1e-300],
    "rollout_seed": [1.5, "1"], "beta": [0, NAN, 1e300], "soft_beta": [0, NAN, 1e39], "temperature": [-0.5, INF],
    "max_new_tokens": [0, 2.5], "stop": ["", [""], (1,)], "seed": [1.5, NAN], "bon_n": [0, 1.5],
    "bon_policy": ["dpo", 5], "trace": ["yes", 1], "prune": [1, None], "prune_probe": [-1, 0.5],
    "reuse_rollouts": ["no"], "block_len": [0, -1, 2.5, "4", True, NAN], "bon_beta": [0, NAN, INF, 1e-39, 1e7, "0.1"],
    "tail": ["none", 5, None],
}.items():
    CASES += [(DecodeParams, _name, _value, "must be") for _value in _bad]


@pytest.mark.parametrize(("call", "argument", "value", "fragment"), CASES,
                         ids=[f"{c.__name__}-{a}-{v!r}"[:60] for c, a, v, _ in CASES])
def test_a_bad_argument_is_one_sentence_naming_it(call, argument, value, fragment):
    with pytest.raises(TQStarError) as info:
        call(**{argument.split("[")[0]: value})
    assert isinstance(info.value, ConfigError)
    message = str(info.value)
    assert "\n" not in message and fragment in message and argument in message, message


def test_the_table_covers_every_public_argument():
    """Every parameter of the public calls has at least one row (a new argument needs its row here)."""
    import inspect

    for helper, call in COVERS.items():
        names = set(inspect.signature(call).parameters) - {"self", "cls", "options"}
        covered = {a.split("[")[0] for c, a, _, _ in CASES if c is helper}
        assert names <= covered, (call.__qualname__, sorted(names - covered))
    assert set(DecodeParams.__dataclass_fields__) <= {a for c, a, _, _ in CASES if c is DecodeParams}
