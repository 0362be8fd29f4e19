"""DecodeParams: every invalid value raises ConfigError with one exact vLLM-style sentence."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tqstar.errors import ConfigError
from tqstar.methods import BY_NAME
from tqstar.params import FIELDS, GROUP_FIELDS, METHODS, DecodeParams

BAD = [
    ({"method": "best"},
     "`method` must be one of tq-direct, tq-indirect, tq-soft, cd, soft-cd, args, eft, none, sft, baseline, bon,"
     " soft-bon, got 'best'"),
    ({"k": 0}, "`k` must be an integer >= 1, got 0"),
    ({"k": -1}, "`k` must be an integer >= 1, got -1"),
    ({"k": 1.5}, "`k` must be an integer >= 1, got 1.5"),
    ({"k": True}, "`k` must be an integer >= 1, got True"),
    ({"alpha": -0.1}, "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -0.1"),
    ({"alpha": math.nan}, "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got nan"),
    ({"alpha": math.inf}, "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got inf"),
    ({"alpha": "1"}, "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got '1'"),
    ({"n_rollouts": 0}, "`n_rollouts` must be an integer >= 1, got 0"),
    ({"rollout_len": 0}, "`rollout_len` must be an integer >= 1, got 0"),
    ({"rollout_temperature": -0.5}, "`rollout_temperature` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -0.5"),
    ({"beta": 0}, "`beta` must be a finite number > 0 (1e-06 to 1e+06), got 0"),
    ({"beta": -1}, "`beta` must be a finite number > 0 (1e-06 to 1e+06), got -1"),
    ({"temperature": -1}, "`temperature` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got -1"),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be an integer >= 1, got 0"),
    ({"bon_n": 0}, "`bon_n` must be an integer >= 1, got 0"),
    ({"stop": ("",)}, "`stop` must be a tuple of non-empty strings, got ('',)"),
    ({"stop": ("ok", 3)}, "`stop` must be a tuple of non-empty strings, got ('ok', 3)"),
    ({"bon_policy": "x"}, "`bon_policy` must be 'sft' or 'baseline', got 'x'"),
    ({"seed": 1.5}, "`seed` must be an integer, got 1.5"),
    ({"method": "tq-direct", "n_rollouts": 4},
     "`n_rollouts` = 4 with greedy rollouts gives 4 identical rollouts; set `rollout_temperature` > 0 or use"
     " n_rollouts = 1"),
    ({"method": "tq-indirect", "n_rollouts": 2},
     "`n_rollouts` = 2 with greedy rollouts gives 2 identical rollouts; set `rollout_temperature` > 0 or use"
     " n_rollouts = 1"),
    ({"alpha": 1e-39}, "`alpha` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got 1e-39"),  # 1/α overflows
    ({"soft_beta": 1e39}, "`soft_beta` must be a finite number > 0 (1e-06 to 1e+06) or None (= 1/alpha), got 1e+39"),
    ({"temperature": 1e-9}, "`temperature` must be a finite number >= 0 (0, or 1e-06 to 1e+06), got 1e-09"),
    ({"beta": 2e6}, "`beta` must be a finite number > 0 (1e-06 to 1e+06), got 2000000.0"),
    ({"trace": 1}, "`trace` must be True or False, got 1"),
    ({"prune_probe": -1}, "`prune_probe` must be an integer >= 0, got -1"),
    ({"rollout_seed": 2.0}, "`rollout_seed` must be an integer or None (= --seed), got 2.0"),
    ({"soft_beta": 0}, "`soft_beta` must be a finite number > 0 (1e-06 to 1e+06) or None (= 1/alpha), got 0"),
    ({"method": "tq-soft"},
     "`rollout_temperature` must be 1 for tq-soft (its estimator averages over samples of the rolling model itself),"
     " got 0.0; set rollout_temperature: 1"),
    ({"method": "soft-cd", "rollout_temperature": 0.7},
     "`rollout_temperature` must be 1 for soft-cd (its estimator averages over samples of the rolling model itself),"
     " got 0.7; set rollout_temperature: 1"),
    ({"tail": "none"}, "`tail` must be one of off, mean, rollout, rolling, got 'none'"),
    ({"method": "sft", "tail": "off"},
     "`tail` applies to the token-level methods (tq-direct, tq-indirect, tq-soft, cd, soft-cd, args, eft, none), not to"
     " sft, which decodes its full vocabulary; leave `tail` out for sft"),
    ({"method": "bon", "temperature": 1.0, "tail": "rollout"},
     "`tail` applies to the token-level methods (tq-direct, tq-indirect, tq-soft, cd, soft-cd, args, eft, none), not to"
     " bon, which samples whole responses; leave `tail` out for bon"),
    ({"method": "tq-direct", "block_len": 4, "tail": "off"},
     "`tail` applies to token-level decisions over the SFT top k, not to blockwise ones (block_len 4), whose k"
     " candidates are sampled blocks with nothing truncated; leave `tail` out or drop block_len"),
    ({"method": "args", "tail": "rolling"},
     "`tail` 'rolling' draws the tail token from the model that rolls out, and method 'args' rolls nothing out; use"
     " tail: mean or tail: rollout"),
    ({"method": "none", "tail": "rolling"},  # not "and none rolls out none"
     "`tail` 'rolling' draws the tail token from the model that rolls out, and method 'none' rolls nothing out; use"
     " tail: mean or tail: rollout"),
    ({"method": "bon", "temperature": 0},
     "`temperature` must be > 0 for bon (greedy samples are all identical), got 0; try temperature=1.0"),
    ({"method": "soft-bon", "temperature": 0},
     "`temperature` must be > 0 for soft-bon (greedy samples are all identical), got 0; try temperature=1.0"),
    ({"bon_beta": 0}, "`bon_beta` must be a finite number > 0 (1e-06 to 1e+06), got 0"),
    ({"bon_beta": 1e-39}, "`bon_beta` must be a finite number > 0 (1e-06 to 1e+06), got 1e-39"),  # r/β overflows
    ({"block_len": 0}, "`block_len` must be an integer >= 1 or None (= one token, the SFT top-k), got 0"),
    ({"block_len": 2.5}, "`block_len` must be an integer >= 1 or None (= one token, the SFT top-k), got 2.5"),
    ({"method": "eft", "block_len": 4},
     "`block_len` does not apply to eft: its value is the per-token likelihood ratio β·log(π_BL/π_sft), which a block"
     " of sampled tokens does not have; drop block_len or use one of tq-direct, tq-indirect, tq-soft, cd, soft-cd,"
     " args, none"),
    ({"method": "bon", "temperature": 1.0, "block_len": 4},
     "`block_len` does not apply to bon: it already chooses among whole responses (a block of the whole budget); drop"
     " block_len or use one of tq-direct, tq-indirect, tq-soft, cd, soft-cd, args, none"),
    ({"method": "sft", "block_len": 4},
     "`block_len` does not apply to sft: it decodes one model token by token without candidates; drop block_len or"
     " use one of tq-direct, tq-indirect, tq-soft, cd, soft-cd, args, none"),
]


@pytest.mark.parametrize(("values", "message"), BAD, ids=[repr(v) for v, _ in BAD])
def test_invalid_params_raise_one_exact_sentence(values, message):
    with pytest.raises(ConfigError) as info:
        DecodeParams(**values)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)
    named = message.split("`")[1]  # the error carries the parameter its message names (a server maps it)
    assert info.value.param == named


@pytest.mark.parametrize(("values", "message"), BAD, ids=[repr(v) for v, _ in BAD])
def test_from_dict_and_replace_validate_too(values, message):
    with pytest.raises(ConfigError) as info:
        DecodeParams.from_dict(values)
    assert str(info.value) == message
    with pytest.raises(ConfigError):
        DecodeParams().replace(**values)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"method": "tq-direct", "n_rollouts": 4, "rollout_temperature": 0.7},
        {"method": "args", "n_rollouts": 4},  # args does not roll out
        {"method": "bon", "temperature": 1.0, "bon_policy": "baseline"},
        {"alpha": 0, "beta": 0.1, "temperature": 0.5, "k": 1, "stop": ("\n\n", "###")},
    ]
    + [{"method": m, "temperature": 1.0, **({"rollout_temperature": 1.0} if BY_NAME[m].sampled_rollouts else {})}
       for m in METHODS]
    + [{"method": "tq-soft", "rollout_temperature": 1.0, "n_rollouts": 4, "soft_beta": 0.2}],
)
def test_valid_params(values):
    params = DecodeParams(**values)
    for name, value in values.items():
        assert getattr(params, name) == value


def test_from_dict_rejects_unknown_key():
    with pytest.raises(ConfigError) as info:
        DecodeParams.from_dict({"k": 3, "top_k": 5})
    assert str(info.value) == (
        "unknown decoding parameter `top_k`; valid ones are alpha, beta, block_len, bon_beta, bon_n, bon_policy, k,"
        " max_new_tokens, method, n_rollouts, prune, prune_probe, reuse_rollouts, rollout_len, rollout_seed,"
        " rollout_temperature, seed, soft_beta, stop, tail, temperature, trace"
    )


def test_from_dict_stop_string_becomes_tuple():
    assert DecodeParams.from_dict({"stop": "###"}).stop == ("###",)
    assert DecodeParams.from_dict({"stop": ["a", "b"]}).stop == ("a", "b")
    assert DecodeParams.from_dict({"stop": None}).stop == ()


def test_from_dict_drops_none_and_keeps_values():
    params = DecodeParams.from_dict({"method": "cd", "k": 4, "alpha": None, "seed": 7})
    assert params == DecodeParams(method="cd", k=4, seed=7)
    assert params.alpha == DecodeParams().alpha


def test_params_are_frozen():
    params = DecodeParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.k = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.method = "cd"  # type: ignore[misc]
    changed = params.replace(k=3)
    assert (params.k, changed.k) == (10, 3)
    assert hash(params) == hash(DecodeParams())


@pytest.mark.parametrize(
    ("method", "token_level", "baseline", "reward", "rolls_out"),
    [
        ("tq-direct", True, True, True, True),
        ("tq-indirect", True, True, True, True),
        ("cd", True, False, True, True),
        ("args", True, False, True, False),
        ("none", True, False, False, False),
        ("sft", False, False, False, False),
        ("baseline", False, True, False, False),
        ("bon", False, False, True, False),
        ("soft-bon", False, False, True, False),
    ],
)
def test_method_properties(method, token_level, baseline, reward, rolls_out):
    params = DecodeParams(method=method, temperature=1.0)
    assert params.is_token_level is token_level
    assert params.uses_baseline is baseline
    assert params.needs_reward is reward
    assert params.rolls_out is rolls_out
    assert params.is_blockwise is method.endswith("bon")
    if method.endswith("bon"):
        assert params.replace(bon_policy="baseline").uses_baseline


# ---- what the fields say about themselves ----------------------------------------------------------------------
@pytest.mark.parametrize("field", dataclasses.fields(DecodeParams), ids=lambda f: f.name)
def test_every_field_has_help_and_a_scope(field):
    info = field.metadata.get("tqstar")
    assert info is not None and info.help.strip(), f"DecodeParams.{field.name} has no help"
    assert info.scope in ("row", "group")
    assert info.request is None or info.request.split(".")[-1] in (field.name, "max_tokens")
    assert info.unset is None or field.default is None, f"{field.name}: `unset` explains a None default"


def test_derived_lists_are_what_they_were_by_hand():
    """The group key, the CLI's decoding flags and the server's overrides, derived from the fields."""
    from tqstar.config import DECODE_FLAGS
    from tqstar.serving.protocol import OVERRIDABLE, TQStarOptions

    assert GROUP_FIELDS == ("method", "k", "block_len", "alpha", "n_rollouts", "rollout_len", "rollout_temperature",
                            "beta", "soft_beta", "temperature", "tail", "bon_n", "bon_policy", "bon_beta", "prune",
                            "prune_probe", "reuse_rollouts")
    assert set(DECODE_FLAGS) == {"method", "k", "block_len", "alpha", "n_rollouts", "rollout_len",
                                 "rollout_temperature", "rollout_seed", "beta", "soft_beta", "temperature", "tail",
                                 "max_new_tokens", "seed", "bon_n", "bon_policy", "bon_beta", "stop", "trace"}
    assert set(OVERRIDABLE) == {"alpha", "k", "block_len", "n_rollouts", "rollout_len", "rollout_temperature", "beta",
                                "tail", "bon_n", "bon_beta", "prune", "prune_probe", "reuse_rollouts"}
    assert set(TQStarOptions.model_fields) == set(OVERRIDABLE) | {"trace"}
    assert {name for name, info in FIELDS.items() if info.scope == "row"} == {
        "rollout_seed", "max_new_tokens", "stop", "seed", "trace"}


def test_generate_flags_show_the_fields_defaults():
    from tqstar.cli import build_parser

    parser = build_parser()
    generate = parser._subparsers._group_actions[0].choices["generate"]
    shown = {a.dest: a.help for a in generate._actions}
    for name, info in FIELDS.items():
        if info.flag == "value":
            default = DecodeParams.__dataclass_fields__[name].default
            assert shown[name] == f"{info.help} (default: {info.unset if default is None else default})"
    assert "--prune" not in generate._option_string_actions  # YAML and requests only, as before


def test_a_default_reaches_only_the_methods_it_applies_to():
    """An eval's or a server's ``defaults`` (from_dict's ``base``) give a field to every method it has an effect on;
    the others leave it out (``block_len`` would be refused by eft, ``bon_beta`` means nothing to tq-direct), but a bad
    value is refused all the same."""
    base = {"block_len": 4, "bon_beta": 0.5, "k": 5}
    assert DecodeParams.from_dict({"method": "tq-direct"}, base=base).block_len == 4
    eft = DecodeParams.from_dict({"method": "eft"}, base=base)
    assert eft.block_len is None and eft.bon_beta == DecodeParams().bon_beta and eft.k == 5
    soft_bon = DecodeParams.from_dict({"method": "soft-bon", "temperature": 1.0}, base=base)
    assert soft_bon.bon_beta == 0.5 and soft_bon.block_len is None and soft_bon.k == DecodeParams().k
    with pytest.raises(ConfigError, match=r"`block_len` must be an integer >= 1 or None .*, got 0"):
        DecodeParams.from_dict({"method": "eft"}, base={"block_len": 0})
    with pytest.raises(ConfigError, match="`bon_policy` must be 'sft' or 'baseline', got 'dpo'"):
        DecodeParams.from_dict({"method": "tq-direct"}, base={"bon_policy": "dpo"})
    with pytest.raises(ConfigError, match="`block_len` does not apply to eft"):  # the method's own key: refused
        DecodeParams.from_dict({"method": "eft", "block_len": 4})


def test_runs_that_differ_only_where_nothing_acts_decode_the_same():
    """:func:`in_effect` keeps what a method uses, so a resume compares only that."""
    from dataclasses import asdict

    from tqstar.params import in_effect

    a, b = DecodeParams(method="sft"), DecodeParams(method="sft", k=3, bon_beta=2.0)
    assert in_effect(asdict(a)) == in_effect(asdict(b)) and asdict(a) != asdict(b)
    blocks = DecodeParams(block_len=2)
    assert "prune" not in in_effect(asdict(blocks)) and "prune" in in_effect(asdict(DecodeParams()))
