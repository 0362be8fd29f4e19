"""A prompt's output depends only on the prompt, its seed and the decoding parameters.

Not on its batch mates, the batch size, its position, rows joining or leaving mid-decode (a server's scheduler),
a resume, pruning or rollout reuse. The checks are plain functions over an engine and parameters, parametrised over
every method with sampled choice and sampled rollouts, and over the blockwise decisions (``block_len``, sampled and
greedy choice; ``bon`` and ``soft-bon`` are blockwise too), on the tabular model (fast, many cases, EOS at different
steps) and the tiny transformers models (stop strings); served requests are checked in
``serving/test_serve.py``; the checks themselves (``assert_batch_invariant``, ``assert_join_invariant``, ``assert_speedups_exact``) live
in ``tests/invariance.py``, to be reused.
"""

from __future__ import annotations

import pytest
import torch
from conftest import vowel_share
from invariance import (
    CASES,
    SAMPLED,
    TAILED,
    assert_batch_invariant,
    assert_join_invariant,
    assert_speedups_exact,
)

from tqstar.engine import Engine
from tqstar.eval.results import MethodRun, read_rows
from tqstar.eval.run import Evaluation
from tqstar.eval.testbed import TabularReward, optimal_policy, random_reward
from tqstar.lm.tabular import TabularLM
from tqstar.params import DecodeParams
from tqstar.randomness import USES, block_seeds, prompt_key, stream_at, stream_seed, uniforms
from tqstar.reward import CallableReward

PROMPTS = ["How do I make tea?", "The food was", "Tell me about the park and the lake.", "thank you"]


# ---- engines ------------------------------------------------------------------------------------------------
def tabular_engine(seed: int = 0) -> Engine:
    """A tabular SFT model, its reward-optimal policy as the baseline, and two tabular rewards."""
    sft = TabularLM.random(5, 4, seed=seed)
    r, r_bl = random_reward(5, 4, seed=seed), random_reward(5, 4, seed=seed + 100)
    return Engine(sft, optimal_policy(sft, r, beta=0.5), TabularReward(r, sft), TabularReward(r_bl, sft))


def eos_likely_engine(sft, baseline) -> Engine:
    """The tiny models with EOS made a likely candidate (not a certain one) for both, and the vowel reward."""
    eos = min(sft.eos_token_ids)
    with torch.no_grad():
        for lm in (sft, baseline):
            bias = torch.zeros(lm.vocab_size)
            bias[eos] = 3.0
            lm.model.lm_head.bias = torch.nn.Parameter(bias.to(lm.device))
    return Engine(sft, baseline, CallableReward(vowel_share))


@pytest.fixture()
def tiny_engine(sft, baseline):
    return Engine(sft, baseline, CallableReward(vowel_share),
                  CallableReward(lambda p, r: [len(t) / 100 for t in r], name="length", range=(0.0, 10.0)))


# ---- the suite ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", [0, 3])
def test_tabular_output_is_batch_invariant(case, seed):
    params = DecodeParams(**{**dict(k=3, alpha=2.0, rollout_len=5, max_new_tokens=5, seed=seed), **CASES[case]})
    assert_batch_invariant(tabular_engine(seed), PROMPTS, params)


@pytest.mark.parametrize("case", list(CASES))
def test_tiny_output_is_batch_invariant(tiny_engine, case):
    params = DecodeParams(**{**dict(k=4, alpha=2.0, rollout_len=4, max_new_tokens=5, stop=("lake",)), **CASES[case]})
    assert_batch_invariant(tiny_engine, PROMPTS, params)


@pytest.mark.parametrize("case", list(CASES))
def test_rows_joining_mid_decode_decode_as_alone(tiny_engine, case):
    params = DecodeParams(**{**dict(k=4, alpha=2.0, rollout_len=4, max_new_tokens=5), **CASES[case]})
    assert_join_invariant(tiny_engine, PROMPTS, params, seeds=[0, 7, 7, 123])


@pytest.mark.parametrize("case", ["tq-direct[m=2]", "tq-direct[m=3,argmax]", "cd[m=1]", "args[m=2]", "soft-bon"])
def test_a_block_that_straddles_a_stop_string_ends_the_row_alone_and_batched(tiny_engine, case):
    """Stop strings made of the words the responses use, so blocks complete them (across the committed text and the
    block); EOS made likely. Batched, alone and with rows joining, the rows end where they end alone."""
    params = DecodeParams(**{**dict(k=4, alpha=2.0, rollout_len=3, max_new_tokens=9), **CASES[case]})
    free = tiny_engine.generate(PROMPTS, params, progress=False)
    words = sorted({w for r in free for w in r.text.split()[1:3]})[:3]
    stops = tuple(words) + (" t",)  # " t" can straddle a token boundary
    stopped = params.replace(stop=stops)
    assert_batch_invariant(tiny_engine, PROMPTS, stopped)
    assert_join_invariant(tiny_engine, PROMPTS, stopped, seeds=[1, 2, 3, 4])
    responses = tiny_engine.generate(PROMPTS, stopped, progress=False)
    assert {r.finish_reason for r in responses} & {"stop"}, "no stop string was reached"
    for r in responses:
        assert not any(s in r.text for s in stops)


# ---- no truncation: every token-level method with every tail -------------------------------------------------
@pytest.mark.parametrize(("method", "tail"), TAILED)
def test_tabular_output_with_the_tail_is_batch_invariant(method, tail):
    params = DecodeParams(method=method, k=2, alpha=2.0, rollout_len=5, max_new_tokens=5, seed=1, tail=tail,
                          **SAMPLED[method])
    assert_batch_invariant(tabular_engine(1), PROMPTS, params)


@pytest.mark.parametrize(("method", "tail"), [(m, t) for m, t in TAILED if t != "mean"])  # mean: the suite above
def test_tiny_output_with_the_tail_is_batch_invariant_with_stop_strings(tiny_engine, method, tail):
    params = DecodeParams(method=method, k=3, alpha=2.0, rollout_len=3, max_new_tokens=5, stop=("lake", "e"),
                          tail=tail, **SAMPLED[method])
    assert_batch_invariant(tiny_engine, PROMPTS, params)


@pytest.mark.parametrize(("method", "tail"), [(m, t) for m, t in TAILED if t != "mean"])
def test_rows_joining_mid_decode_with_the_tail_decode_as_alone(tiny_engine, method, tail):
    params = DecodeParams(method=method, k=3, alpha=2.0, rollout_len=3, max_new_tokens=5, tail=tail,
                          **SAMPLED[method])
    assert_join_invariant(tiny_engine, PROMPTS, params, seeds=[0, 7, 7, 123])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize(("method", "tail"), [(m, t) for m, t in TAILED if m in ("tq-direct", "cd", "args") and t != "off"])
def test_tabular_pruning_and_reuse_are_exact_with_the_tail(method, tail, temperature):
    """Greedy choice: the tail is inert and pruning and reuse work as without it. Sampled choice with greedy
    rollouts: no pruning, and reuse (z′'s rollout included) changes no token."""
    for seed in range(3):
        params = DecodeParams(method=method, k=3, alpha=1.5, rollout_len=3, max_new_tokens=4, seed=seed, tail=tail,
                              temperature=temperature)
        assert_speedups_exact(tabular_engine(seed), PROMPTS, params) if method != "args" or temperature == 0 else \
            assert_batch_invariant(tabular_engine(seed), PROMPTS, params)  # args: nothing to reuse when sampling


@pytest.mark.parametrize("tail", ["mean", "rollout", "rolling"])
def test_tiny_sampling_with_the_tail_is_exact_with_stop_strings_and_eos(sft, baseline, tail):
    engine = eos_likely_engine(sft, baseline)
    params = DecodeParams(method="tq-direct", k=3, alpha=0.5, rollout_len=4, max_new_tokens=7, stop=("the",),
                          temperature=1.0, tail=tail)
    assert_batch_invariant(engine, PROMPTS, params)
    responses = engine.generate(PROMPTS, params, progress=False)
    for changed in (params.replace(reuse_rollouts=False), params.replace(prune=False)):  # (the tabular cases take them)
        assert [r.token_ids for r in engine.generate(PROMPTS, changed, progress=False)] == [r.token_ids for r in responses]
    assert {r.finish_reason for r in responses} - {"length"}, "neither EOS nor a stop string was reached"


def test_seeds_change_sampled_output():
    engine = tabular_engine(1)
    params = DecodeParams(method="tq-direct", k=4, alpha=2.0, rollout_len=5, max_new_tokens=5, **SAMPLED["tq-direct"])
    runs = {tuple(tuple(r.token_ids) for r in engine.generate(PROMPTS, params.replace(seed=s), progress=False))
            for s in range(4)}
    assert len(runs) > 1


@pytest.mark.parametrize("case", ["tq-direct", "cd"])
def test_blockwise_reuse_of_the_chosen_blocks_rollout_is_exact(case):
    """m = 1, greedy rollouts: a sampled token equal to the first token of the chosen one's rollout is valued from
    it; the tokens are the same with reuse on and off (ragged batches; pruning never applies to blocks)."""
    for seed in range(3):
        params = DecodeParams(method=case, block_len=1, k=5, alpha=1.5, rollout_len=3, max_new_tokens=4, seed=seed)
        assert_speedups_exact(tabular_engine(seed), PROMPTS, params)


@pytest.mark.parametrize("rollouts", [dict(), dict(n_rollouts=2, rollout_temperature=1.0)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("method", ["tq-direct", "tq-indirect", "cd", "args"])
def test_tabular_pruning_and_reuse_are_exact(method, rollouts):
    # k = V: EOS is always among the candidates; responses end at different steps (ragged batches)
    for seed in range(3):
        params = DecodeParams(method=method, k=5, alpha=1.5, rollout_len=3, max_new_tokens=4, seed=seed, **rollouts)
        assert_speedups_exact(tabular_engine(seed), PROMPTS, params)


@pytest.mark.parametrize("rollouts", [dict(), dict(n_rollouts=2, rollout_temperature=1.0)], ids=["greedy", "sampled"])
@pytest.mark.parametrize("method", ["tq-direct", "cd"])
def test_tiny_pruning_and_reuse_are_exact_with_stop_strings_and_eos(sft, baseline, method, rollouts):
    engine = eos_likely_engine(sft, baseline)
    params = DecodeParams(method=method, k=5, alpha=0.5, rollout_len=4, max_new_tokens=7, stop=("the",), **rollouts)
    assert_speedups_exact(engine, PROMPTS, params)
    responses = engine.generate(PROMPTS, params, progress=False)
    assert {r.finish_reason for r in responses} - {"length"}, "neither EOS nor a stop string was reached"


def test_an_eval_resume_writes_the_rows_an_uninterrupted_run_writes(tiny_engine, tmp_path):
    """Rows lost from the middle of a results file are re-decoded in other batches, to the same text."""
    methods = [MethodRun(m, DecodeParams(**{**dict(k=4, alpha=2.0, rollout_len=3, max_new_tokens=4), **CASES[m]}))
               for m in ("tq-direct", "sft", "bon", "soft-bon", "tq-direct[m=2]", "cd[m=2,argmax]")]
    methods += [MethodRun(f"cd tail={tail}", DecodeParams(method="cd", k=3, alpha=2.0, rollout_len=3, max_new_tokens=4,
                                                          tail=tail, **SAMPLED["cd"])) for tail in ("rollout", "rolling")]
    path = tmp_path / "out.jsonl"

    def evaluate():
        Evaluation(tiny_engine, PROMPTS, methods, path, fingerprint={}, batch_size=2, progress=False).run()
        _, rows = read_rows(path)
        return {(r["method"], r["prompt_index"]): (r["token_ids"], r["text"]) for r in rows}

    complete = evaluate()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for i, line in enumerate(lines) if i == 0 or i % 2))  # lose every other row
    assert len(read_rows(path)[1]) < len(complete)
    assert evaluate() == complete


# ---- the streams themselves ---------------------------------------------------------------------------------
def test_block_streams_are_consecutive_and_keyed_by_position_and_content():
    """The k blocks of a decision are s, s + 1, ... (a served proposer draws them in one request); a block's rollout
    stream is keyed by its tokens, and a one-token block by that token, as at token level."""
    key = prompt_key("hello")
    seeds = block_seeds(0, key, 5, 4)
    assert seeds == [seeds[0] + i for i in range(4)] and seeds[0] == stream_seed(0, key, "block", 5)
    assert block_seeds(0, key, 6, 4)[0] != seeds[0] and block_seeds(1, key, 5, 4)[0] != seeds[0]
    assert stream_seed(0, key, "rollout", 5, (7,), 1) == stream_seed(0, key, "rollout", 5, 7, 1)
    assert stream_seed(0, key, "rollout", 5, (7, 8), 1) != stream_seed(0, key, "rollout", 5, (8, 7), 1)
    assert len(set(uniforms(seeds, 8)[:, 0])) == 4
    continued = uniforms([stream_at(seeds[0], 3)], 5)[0]
    assert (continued == uniforms([seeds[0]], 8)[0, 3:]).all()  # a block continued after 3 tokens draws the same


def test_streams_are_distinct_per_use_step_candidate_and_index():
    key = prompt_key("hello")
    seeds = {stream_seed(0, key, use, step, z, i) for use in USES for step in range(3) for z in (-1, 4, 5)
             for i in range(2)}
    assert len(seeds) == len(USES) * 3 * 3 * 2  # in particular the default seed's step-0 choice and rollouts
    assert stream_seed(0, key, "choice", 0) != stream_seed(0, key, "rollout", 0, 4, 0)
    assert stream_seed(0, prompt_key("hello!"), "choice", 0) != stream_seed(0, key, "choice", 0)
    assert prompt_key([{"role": "user", "content": "hi"}]) == prompt_key([{"content": "hi", "role": "user"}])


def test_uniforms_are_uniform_and_per_stream():
    u = uniforms([1, 2, 3], 4000)
    assert u.shape == (3, 4000) and ((u > 0) & (u < 1)).all()
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.var() - 1 / 12) < 0.01
    assert (uniforms([2], 4000)[0] == u[1]).all()  # a stream does not depend on the others
