"""Every method end to end on tiny random transformers models; batching, seeding, stopping, caching, errors."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import vowel_share

from tqstar.cli.generate import format_trace
from tqstar.decoder import Decoder
from tqstar.engine import Engine, TokenProgress
from tqstar.errors import ConfigError, PromptTooLongError, RewardError, VocabularyMismatchError
from tqstar.lm.hf import TransformersLM
from tqstar.lm.tabular import TabularLM
from tqstar.params import DecodeParams
from tqstar.reward import CallableReward
from tqstar.text import response_text
from tqstar.value.base import ValueEstimator, nan_values

PROMPTS = ["How do I make tea?", "The food was", "Tell me about the park and the lake."]
SHORT = dict(k=4, alpha=2.0, rollout_len=5, max_new_tokens=6)


@pytest.fixture()
def reward():
    return CallableReward(vowel_share)


@pytest.fixture()
def engine(sft, baseline, reward):
    return Engine(sft, baseline, reward, CallableReward(lambda p, r: [len(t) / 100 for t in r], name="length"))


METHOD_PARAMS = {
    "tq-direct": {},
    "tq-indirect": dict(n_rollouts=3, rollout_temperature=1.0),
    "tq-soft": dict(n_rollouts=2, rollout_temperature=1.0),
    "cd": {},
    "soft-cd": dict(n_rollouts=2, rollout_temperature=1.0),
    "args": {},
    "eft": dict(beta=0.5),
    "none": {},
    "sft": {},
    "baseline": {},
    "bon": dict(temperature=1.0, bon_n=3),
}


@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_every_method_decodes_and_accounts(engine, method):
    params = DecodeParams(method=method, **{**SHORT, **METHOD_PARAMS[method]})
    responses = engine.generate(PROMPTS, params, progress=False)
    assert [r.prompt for r in responses] == PROMPTS
    for r in responses:
        assert r.method == method and 1 <= len(r.token_ids) <= params.max_new_tokens
        assert r.reward == pytest.approx(vowel_share([r.prompt], [r.text])[0])
        a = r.accounting
        assert a.wall_time_s > 0 and a.steps == len(r.token_ids)
        if params.rolls_out:
            per_step = params.k * params.n_rollouts
            assert a.rollouts <= per_step * a.steps and a.rollouts > 0 and a.rollout_tokens > 0
            assert a.reward_calls > 0
        if method == "tq-soft":  # the SFT model scored the baseline's rollouts
            assert a.sft_forward_tokens >= a.rollout_tokens
            rolled = a.baseline_forward_tokens if params.uses_baseline else a.sft_forward_tokens
            assert rolled >= a.rollout_tokens
        if method == "bon":  # best of the SFT model's samples at temperature 1: an estimate within the bound
            assert r.kl is not None and 0 <= r.kl <= r.kl_bound
        else:  # every other method: the exact per-step KL along its own path
            assert len(r.kl_per_step) == len(r.token_ids) and r.kl >= 0
            assert (r.kl_bound is not None) == params.is_token_level  # token level: the reward declares its range


def test_batch_equals_singles(engine):
    params = DecodeParams(method="tq-direct", **SHORT)
    together = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    alone = [engine.generate([p], params, progress=False)[0].token_ids for p in PROMPTS]
    assert together == alone


def test_kv_cache_gives_the_same_decisions_as_full_re_encoding(sft, baseline, reward):
    params = DecodeParams(method="tq-direct", trace=True, **SHORT)
    cached = Engine(sft, baseline, reward).generate(PROMPTS, params, progress=False)
    plain = Engine(sft.with_prompt_format(prefix_cache=False), baseline.with_prompt_format(prefix_cache=False), reward)
    fresh = plain.generate(PROMPTS, params, progress=False)
    for a, b in zip(cached, fresh):
        assert a.token_ids == b.token_ids
        for row_a, row_b in zip(a.trace, b.trace):
            assert row_a["logp_sft"] == pytest.approx(row_b["logp_sft"], abs=1e-4)
            assert row_a["q"] == pytest.approx(row_b["q"], abs=1e-6)
        # the cache is why the cached run encodes fewer tokens
        assert a.accounting.baseline_forward_tokens < b.accounting.baseline_forward_tokens


def test_seeded_sampling_repeats_and_seeds_differ(engine):
    params = DecodeParams(method="tq-direct", temperature=1.0, n_rollouts=2, rollout_temperature=1.0, **SHORT)
    first = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    again = [r.token_ids for r in engine.generate(PROMPTS, params, progress=False)]
    other = [r.token_ids for r in engine.generate(PROMPTS, params.replace(seed=1), progress=False)]
    assert first == again and first != other


def test_alpha_zero_greedy_is_sft_greedy(engine):
    tq = engine.generate(PROMPTS, DecodeParams(method="tq-direct", **{**SHORT, "alpha": 0.0}), progress=False)
    plain = engine.generate(PROMPTS, DecodeParams(method="sft", **SHORT), progress=False)
    assert [r.token_ids for r in tq] == [r.token_ids for r in plain]


def test_direct_equals_cd_with_the_sft_model_as_baseline(sft, reward):
    engine = Engine(sft, sft, reward)
    params = DecodeParams(method="tq-direct", trace=True, **SHORT)
    direct = engine.generate(PROMPTS, params, progress=False)
    cd = engine.generate(PROMPTS, params.replace(method="cd"), progress=False)
    assert [r.token_ids for r in direct] == [r.token_ids for r in cd]


def test_indirect_with_one_rollout_equals_direct(engine):
    params = DecodeParams(method="tq-direct", rollout_temperature=1.0, **SHORT)
    direct = engine.generate(PROMPTS, params, progress=False)
    indirect = engine.generate(PROMPTS, params.replace(method="tq-indirect"), progress=False)
    assert [r.token_ids for r in direct] == [r.token_ids for r in indirect]


def test_trace_rows_are_consistent(engine):
    params = DecodeParams(method="tq-direct", trace=True, **SHORT)
    (r,) = engine.generate(PROMPTS[:1], params, progress=False)
    assert len(r.trace) == len(r.token_ids)
    for t, row in enumerate(r.trace):
        assert len(row["candidates"]) == params.k and row["chosen"] == r.token_ids[t]
        assert sum(row["p_dec"]) == pytest.approx(1.0)
        assert row["score"] == pytest.approx([lp + params.alpha * q for lp, q in zip(row["logp_sft"], row["q"])])
        assert row["chosen"] == row["candidates"][max(range(params.k), key=row["score"].__getitem__)]
        assert r.kl_per_step[t] == pytest.approx(-row["logp_sft"][row["candidates"].index(row["chosen"])], abs=1e-5)


def test_stop_strings_cut_the_response(engine):
    params = DecodeParams(method="none", **{**SHORT, "max_new_tokens": 12})
    (full,) = engine.generate(PROMPTS[:1], params, progress=False)
    word = full.text.split()[2]
    (cut,) = engine.generate(PROMPTS[:1], params.replace(stop=(word,)), progress=False)
    assert cut.finish_reason == "stop" and word not in cut.text and full.text.startswith(cut.text)


def test_decoding_stops_at_eos(sft, baseline, reward):
    eos = next(iter(sft.eos_token_ids))
    bias = torch.zeros(sft.vocab_size)
    bias[eos] = 100.0  # EOS becomes the SFT model's overwhelming favourite
    sft.model.lm_head.bias = torch.nn.Parameter(bias.to(sft.device))
    engine = Engine(sft, baseline, reward)
    for r in engine.generate(PROMPTS, DecodeParams(method="tq-direct", **{**SHORT, "alpha": 0.0}), progress=False):
        assert r.finish_reason == "eos" and r.token_ids == [eos] and r.text == ""


def test_prompts_finish_independently_in_a_batch(engine):
    params = DecodeParams(method="none", **{**SHORT, "max_new_tokens": 10})
    (long,) = engine.generate(PROMPTS[1:2], params, progress=False)
    word = long.text.split()[1]
    mixed = engine.generate(PROMPTS, params.replace(stop=(word,)), progress=False)
    alone = [engine.generate([p], params.replace(stop=(word,)), progress=False)[0].token_ids for p in PROMPTS]
    assert [r.token_ids for r in mixed] == alone
    assert mixed[1].finish_reason == "stop"


def test_vocabulary_mismatch_names_both_models(tiny_paths, tmp_path, sft):
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from tqstar.builtin.tiny import build_tokenizer, tiny_config

    tok = build_tokenizer()
    tok.add_tokens(["extra1", "extra2"])
    other = LlamaForCausalLM(tiny_config(len(tok))).eval()
    lm = TransformersLM(other, tok, name="other-model")
    assert isinstance(tok, PreTrainedTokenizerFast)
    with pytest.raises(VocabularyMismatchError, match=r"tiny-sft.*other-model.*bridge them through text") as err:
        Engine(sft, lm, bridge=False)
    assert str(sft.vocab_size) in str(err.value) and str(lm.vocab_size) in str(err.value)
    assert Engine(sft, lm).models.bridge is not None  # by default such a pair is bridged through text


@pytest.mark.parametrize(
    ("method", "missing"),
    [("tq-direct", "--baseline"), ("baseline", "--baseline"), ("tq-indirect", "--baseline-reward"), ("cd", "--reward")],
)
def test_missing_parts_fail_before_decoding(sft, baseline, reward, method, missing):
    parts = {"--baseline": dict(reward=reward), "--baseline-reward": dict(baseline=baseline, reward=reward),
             "--reward": dict(baseline=baseline)}[missing]
    extra = dict(n_rollouts=2, rollout_temperature=1.0) if method == "tq-indirect" else {}
    with pytest.raises(ConfigError, match=f"method '{method}' needs .*{missing}"):
        Engine(sft, **parts).generate(PROMPTS, DecodeParams(method=method, **extra), progress=False)


def test_k_larger_than_the_vocabulary(engine, sft):
    with pytest.raises(ConfigError, match=rf"`k` must be <= the vocabulary size of tiny-sft \({sft.vocab_size}\)"):
        engine.generate(PROMPTS, DecodeParams(k=sft.vocab_size + 1), progress=False)


def test_reward_nan_names_the_text(sft, baseline):
    bad = CallableReward(lambda p, r: [math.nan] * len(r), name="broken")
    with pytest.raises(RewardError, match=r"reward broken returned nan for the response '.*'"):
        Engine(sft, baseline, bad).generate(PROMPTS[:1], DecodeParams(**SHORT), progress=False)


def test_prompt_longer_than_the_context(engine, sft):
    long_prompt = "the cat sat on the mat " * 100
    params = DecodeParams(**SHORT)
    with pytest.raises(PromptTooLongError, match=r"over the 512-token context of tiny-sft.*truncate"):
        engine.generate([long_prompt], params, progress=False)
    (r,) = engine.generate([long_prompt], params, truncate_prompt=True, progress=False)
    assert len(r.token_ids) == params.max_new_tokens


@pytest.mark.parametrize("method", ["tq-direct", "cd", "sft"])
def test_a_prompt_that_leaves_room_for_the_response_fits_whatever_the_rollout_len(engine, sft, method):
    """Rollouts never run past the response budget, so a row needs prompt + max_new_tokens of context, not
    + rollout_len as well: such a prompt decodes, and --truncate-prompt keeps context - max_new_tokens tokens."""
    params = DecodeParams(method=method, k=3, alpha=2.0, rollout_len=50, max_new_tokens=8)
    room = sft.max_context - params.max_new_tokens
    overhead = len(sft.encode_prompt("the")) - 1  # the chat template's tokens
    prompt = " ".join(["the"] * (room - overhead))
    assert len(sft.encode_prompt(prompt)) == room
    (r,) = engine.generate([prompt], params, progress=False)
    assert len(r.token_ids) == params.max_new_tokens or r.finish_reason != "length"
    longer = prompt + " cat sat"
    with pytest.raises(PromptTooLongError, match=r"needs 8 more"):
        engine.generate([longer], params, progress=False)
    state = engine.new_state(longer, params, truncate_prompt=True)
    assert len(state.prompt_ids["sft"]) == room


def test_prompted_baseline_shares_weights(sft, reward):
    prompted = sft.with_prompt_format(system_prompt="Be kind and happy.", name="prompted")
    assert prompted.model is sft.model
    assert prompted.encode_prompt("hi") != sft.encode_prompt("hi")
    (r,) = Engine(sft, prompted, reward).generate(PROMPTS[:1], DecodeParams(**SHORT), progress=False)
    assert r.accounting.baseline_forward_tokens > 0


def test_on_response_sees_each_response_as_its_batch_finishes(engine):
    seen = []
    engine.generate(PROMPTS, DecodeParams(method="none", **SHORT), batch_size=2, progress=False,
                    on_response=lambda r: seen.append(r.prompt))
    assert seen == PROMPTS




# ---- stop strings, budgets and partial text in what the estimators score ------------------------------------
class Recording(CallableReward):
    """``vowel_share``, remembering every text it was asked to score."""

    def __init__(self):
        super().__init__(vowel_share, name="recording")
        self.texts: list[str] = []
        self.cache_size = 0

    def _score(self, prompts, responses):
        self.texts += responses
        return super()._score(prompts, responses)


@pytest.mark.parametrize("method", ["tq-direct", "cd", "args", "bon"])
def test_no_scored_text_runs_past_a_stop_string_or_the_budget(sft, baseline, method):
    reward = Recording()
    engine = Engine(sft, baseline, reward)
    stop = ("the",)
    params = DecodeParams(method=method, k=6, alpha=2.0, rollout_len=12, max_new_tokens=5, stop=stop, prune=False,
                          **({"temperature": 1.0, "bon_n": 4} if method == "bon" else {}))
    engine.generate(PROMPTS, params, progress=False)
    assert reward.texts
    for text in reward.texts:  # word-level tokenizer: one word per token
        assert not any(s in text for s in stop), text
        assert len(text.split()) <= params.max_new_tokens, text


def test_a_candidate_that_completes_a_stop_string_is_valued_like_eos(engine, reward):
    params = DecodeParams(method="tq-direct", k=8, alpha=2.0, rollout_len=6, max_new_tokens=6, stop=("the",),
                          trace=True, prune=False, reuse_rollouts=False)
    responses = engine.generate(PROMPTS, params, progress=False)
    sft, seen = engine.models.sft, 0
    for r in responses:
        rolled = 0
        for row in r.trace:
            before = r.token_ids[:row["step"]]
            for z, q in zip(row["candidates"], row["q"]):
                if "the" in sft.decode(before + [z]):
                    seen += 1
                    assert q == pytest.approx(vowel_share([r.prompt], [response_text(sft, before + [z], ("the",))])[0])
                elif z not in sft.eos_token_ids and row["step"] + 1 < params.max_new_tokens:
                    rolled += 1
        assert r.accounting.rollouts == rolled  # ending candidates (EOS, stop, last token) are not rolled out
    assert seen > 0


def test_rollouts_never_run_past_the_response_budget(sft, baseline, reward):
    budgets = []

    class Counting(type(baseline)):
        def rollout(self, prefixes, max_new_tokens, temperature=0.0, seeds=None):
            budgets.append(max_new_tokens)
            return super().rollout(prefixes, max_new_tokens, temperature, seeds)

    counting = Counting(baseline.model, baseline.tokenizer, name="counting")
    params = DecodeParams(method="tq-direct", k=4, alpha=2.0, rollout_len=10, max_new_tokens=4, prune=False,
                          reuse_rollouts=False)
    (r,) = Engine(sft, counting, reward).generate(PROMPTS[:1], params, progress=False)
    flat = [b for call in budgets for b in ([call] * 1 if isinstance(call, int) else call)]
    assert flat and max(flat) <= params.max_new_tokens - 1  # the first step's rollouts: 4 - 0 - 1 = 3 tokens
    assert len(budgets) == len(r.token_ids) - 1  # the last step's candidates end the response: no rollout


class ByteLM(TabularLM):
    """A tabular model whose tokens are UTF-8 bytes: 1 and 2 are the two bytes of 'é', 3 is 'a', 4 is 'b'."""

    BYTES = {1: b"\xc3", 2: b"\xa9", 3: b"a", 4: b"b"}

    def decode(self, ids):
        return b"".join(self.BYTES[i] for i in ids if i != 0).decode("utf-8", errors="replace")


@pytest.mark.parametrize("method", ["args", "tq-direct", "cd"])
def test_partial_multibyte_characters_never_reach_the_reward(method):
    base = TabularLM.random(5, 4, seed=3)
    lm = ByteLM(base.table, base.vocab, base.horizon, name="bytes")
    reward = Recording()
    params = DecodeParams(method=method, k=5, alpha=1.0, rollout_len=2, max_new_tokens=4, prune=False)
    Engine(lm, lm, reward).generate(["x", "y"], params, progress=False)
    assert reward.texts and not any(t.endswith("\ufffd") for t in reward.texts)
    assert response_text(lm, [3, 1]) == "a" and response_text(lm, [3, 1, 2]) == "aé"


# ---- the decoder's choice, pruning and KL bound --------------------------------------------------------------
class FixedValue(ValueEstimator):
    """Q̂ = R_max for every candidate; the *second* candidate's value is already known (as if reused)."""

    def known(self, states, candidates):
        q = nan_values(candidates)
        q[:, 1] = 1.0
        return q, torch.zeros(q.shape, dtype=torch.bool)

    def estimate(self, states, candidates, needed=None):
        return torch.ones_like(nan_values(candidates))


def test_pruning_keeps_an_earlier_candidate_that_ties_the_best():
    """Two candidates with equal log π_sft and Q̂ = R_max tie; argmax keeps the first, so pruning must value it."""
    half = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    lm = TabularLM({(): half}, ["<eos>", "a", "b"], horizon=1)
    engine = Engine(lm, lm, CallableReward(lambda p, r: [1.0] * len(r), name="one", range=(0.0, 1.0)))
    params = DecodeParams(method="tq-direct", k=2, alpha=1.0, max_new_tokens=1, trace=True)
    decoder = Decoder(engine.models, params)
    decoder.estimator = FixedValue(engine.models, params)
    (row,) = decoder.run([engine.new_state("x", params)])
    trace = row.trace[0]
    assert trace["q"] == [1.0, 1.0] and trace["pruned"] == [False, False]
    assert row.response == [trace["candidates"][0]]


@pytest.mark.parametrize(("alpha", "k"), [(0.0, 4), (2.0, 1)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_no_rollouts_when_they_cannot_change_the_choice(engine, alpha, k, temperature):
    params = DecodeParams(method="tq-direct", **{**SHORT, "alpha": alpha, "k": k, "temperature": temperature})
    skipped = engine.generate(PROMPTS, params, progress=False)
    plain = engine.generate(PROMPTS, params.replace(method="none"), progress=False)
    assert [r.token_ids for r in skipped] == [r.token_ids for r in plain]
    for r in skipped:
        assert r.accounting.rollouts == 0 and r.accounting.reward_calls == 0 and r.accounting.baseline_forward_tokens == 0
        assert r.accounting.pruned == k * len(r.token_ids)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.1, 3.0])
def test_kl_bound_holds_for_the_policy_run(engine, temperature, alpha):
    params = DecodeParams(method="tq-direct", **{**SHORT, "alpha": alpha, "temperature": temperature, "k": 6})
    decoder = engine.decoder(params)
    rows = decoder.run([engine.new_state(p, params) for p in PROMPTS])
    for row in rows:
        assert len(row.kl) == len(row.kl_bound) == len(row.response)
        for kl, bound in zip(row.kl, row.kl_bound):
            assert kl <= bound + 1e-5


def test_kl_bound_at_temperature_one_is_the_smaller_bound(engine):
    params = DecodeParams(method="none", **{**SHORT, "alpha": 0.0, "temperature": 1.0, "k": 6}, trace=True,
                          tail="off")
    (row,) = engine.decoder(params).run([engine.new_state(PROMPTS[0], params)])
    for t, step in enumerate(row.trace):
        top = torch.tensor(step["logp_sft"])
        want = min(-float(top.min()), -float(torch.logsumexp(top, 0)))  # α = 0: the softmax bound is log 1/π(top-k)
        assert row.kl_bound[t] == pytest.approx(want, abs=1e-5)


def test_eos_sets_must_agree(sft, baseline):
    other = TransformersLM(baseline.model, baseline.tokenizer, name="other-eos")
    other.eos_token_ids = frozenset({2, 5})
    with pytest.raises(ConfigError, match=r"^SFT model tiny-sft ends responses at EOS ids \[2\] but baseline other-eos"
                                          r" at \[2, 5\]; give both the same eos_token_id"):
        Engine(sft, other)


# ---- plain decoding stops as it generates; the trace; progress; wall time ------------------------------------
@pytest.mark.parametrize("method", ["sft", "baseline", "bon"])
def test_plain_methods_stop_at_stop_strings_while_generating(engine, method):
    # (bon with one sample: with more, a stop may cut the sample that won, and another one without the stop wins)
    params = DecodeParams(method=method, max_new_tokens=12,
                          **({"temperature": 1.0, "bon_n": 1} if method == "bon" else {}))
    full = engine.generate(PROMPTS, params, progress=False)
    word = next(w for r in full for w in r.text.split()[1:3])
    lm = engine.models.lm(params.bon_policy if method == "bon" else method)
    lm.reset_cache()  # so that every prompt token is counted once below
    cut = engine.generate(PROMPTS, params.replace(stop=(word,)), progress=False)
    stopped = [r for r in cut if r.finish_reason == "stop"]
    assert stopped
    for r in stopped:
        assert word in lm.decode(r.token_ids) and word not in lm.decode(r.token_ids[:-1])  # ends at the stop
        assert word not in r.text and r.accounting.steps == len(r.token_ids)
    if method == "bon":  # every sample stops as it generates: fewer sampled tokens than without the stop
        assert sum(r.accounting.rollout_tokens for r in cut) < sum(f.accounting.rollout_tokens for f in full)
        assert all(r.accounting.rollouts == 1 for r in cut)
    else:  # one forward token per generated token: nothing is computed past the stop
        for r, f in zip(cut, full):
            if r.finish_reason == "stop":
                assert len(r.token_ids) < len(f.token_ids)
                # the decoded model's own work (decoding the baseline also runs the SFT model, for its KL)
                forward = getattr(r.accounting, f"{method}_forward_tokens")
                assert forward == len(lm.encode_prompt(r.prompt)) + len(r.token_ids) - 1


def test_trace_rows_mark_reused_and_pruned_candidates(sft, reward):
    engine = Engine(sft, sft, reward)
    params = DecodeParams(method="tq-direct", k=6, alpha=0.3, rollout_len=4, max_new_tokens=6, trace=True)
    responses = engine.generate(PROMPTS, params, progress=False)
    rows = [row for r in responses for row in r.trace]
    assert any(any(row["reused"]) for row in rows) and any(any(row["pruned"]) for row in rows)
    for row in rows:
        assert row["pruned"] == [q is None for q in row["q"]]
        assert not any(a and b for a, b in zip(row["reused"], row["pruned"]))
    table = format_trace(responses[0].trace)
    assert "pruned" in table and table.count("*") == len(responses[0].token_ids)


def test_progress_moves_per_token_and_ends_at_its_total(engine):
    class Bar:
        n = 0
        updates: list[int] = []

        def update(self, delta):
            self.n += delta
            self.updates.append(delta)

    bar = Bar()
    params = DecodeParams(method="none", **{**SHORT, "max_new_tokens": 8}, stop=("the",))
    done = list(engine.stream([PROMPTS[:2], PROMPTS[2:]], params, on_step=TokenProgress(bar)))
    assert bar.n == len(PROMPTS) * params.max_new_tokens
    steps = max(len(r.token_ids) for r in done[0][1]) + max(len(r.token_ids) for r in done[1][1])
    assert len(bar.updates) == steps  # one update per step, not per batch


def test_wall_time_starts_at_each_rows_first_step(engine, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("tqstar.state.time.perf_counter", lambda: clock[0])

    def tick(stepped, finished):
        clock[0] += 1.0  # one "second" per step

    params = DecodeParams(method="none", **SHORT)
    batches = [[p] for p in PROMPTS]
    responses = [r for _, batch in engine.stream(batches, params, on_step=tick) for r in batch]
    for r in responses:  # batch i's time excludes batches 0..i-1
        assert r.accounting.wall_time_s == len(r.token_ids) - 1


def test_rollout_seed_is_separate_from_the_choice_seed(engine):
    params = DecodeParams(method="tq-direct", n_rollouts=2, rollout_temperature=1.0, trace=True, **SHORT)
    a = engine.generate(PROMPTS[:1], params.replace(rollout_seed=7), progress=False)[0]
    b = engine.generate(PROMPTS[:1], params.replace(rollout_seed=7, seed=9), progress=False)[0]
    c = engine.generate(PROMPTS[:1], params.replace(rollout_seed=8), progress=False)[0]
    assert a.trace[0]["q"] == b.trace[0]["q"]  # greedy choice: only the rollout seed matters
    assert a.trace[0]["q"] != c.trace[0]["q"]
