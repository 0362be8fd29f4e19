"""A prompt's output depends only on the prompt, its seed and the decoding parameters.

Not on its batch mates, the batch size, its position, rows joining or leaving mid-decode (a server's scheduler),
pruning or rollout reuse. The checks are plain functions over an engine and parameters, parametrised over every
method with sampled choice and sampled rollouts, on the tabular model (fast, many cases) and the tiny transformers
models; reuse them (``assert_batch_invariant``, ``assert_join_invariant``, ``assert_speedups_exact``) to extend
the suite.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from conftest import vowel_share

from tqstar.engine import Engine
from tqstar.eval.run import Evaluation, MethodRun, read_rows
from tqstar.eval.testbed import TabularReward, optimal_policy, random_reward
from tqstar.lm.tabular import TabularLM
from tqstar.params import DecodeParams
from tqstar.randomness import USES, prompt_key, stream_seed, uniforms
from tqstar.reward import CallableReward

PROMPTS = ["How do I make tea?", "The food was", "Tell me about the park and the lake.", "thank you"]
SAMPLED = {  # every method, sampling everything it samples
    "tq-direct": dict(temperature=1.0, n_rollouts=2, rollout_temperature=1.0),
    "tq-indirect": dict(temperature=1.0, n_rollouts=2, rollout_temperature=1.0),
    "tq-soft": dict(temperature=1.0, n_rollouts=2, rollout_temperature=1.0),
    "cd": dict(temperature=1.0, n_rollouts=2, rollout_temperature=1.0),
    "soft-cd": dict(temperature=1.0, n_rollouts=2, rollout_temperature=1.0),
    "args": dict(temperature=1.0),
    "eft": dict(temperature=1.0, beta=0.5),
    "none": dict(temperature=1.0),
    "sft": dict(temperature=1.0),
    "baseline": dict(temperature=1.0),
    "bon": dict(temperature=1.0, bon_n=3),
}


# ---- reusable checks ----------------------------------------------------------------------------------------
def _outputs(responses) -> list[tuple[list[int], str, str]]:
    return [(r.token_ids, r.text, r.finish_reason) for r in responses]


def assert_batch_invariant(engine: Engine, prompts: Sequence[str], params: DecodeParams) -> None:
    """Each prompt decodes to the same tokens alone, in one batch, in batches of 2 and in reversed order."""
    alone = [_outputs(engine.generate([p], params, progress=False))[0] for p in prompts]
    assert _outputs(engine.generate(prompts, params, batch_size=len(prompts), progress=False)) == alone
    assert _outputs(engine.generate(prompts, params, batch_size=2, progress=False)) == alone
    backwards = _outputs(engine.generate(list(reversed(prompts)), params, batch_size=3, progress=False))
    assert list(reversed(backwards)) == alone


def assert_join_invariant(engine: Engine, prompts: Sequence[str], params: DecodeParams,
                          seeds: Sequence[int]) -> None:
    """Rows with their own seeds and budgets, joining a running decoder at different steps (as in a server),
    decode exactly as each does alone."""
    budgets = [params.max_new_tokens - i % 3 for i in range(len(prompts))]

    def row(i):
        return engine.new_state(prompts[i], params, seed=seeds[i], max_new_tokens=budgets[i])

    alone = []
    for i in range(len(prompts)):
        (state,) = engine.decoder(params).run([row(i)])
        alone.append((state.response, state.text))
    decoder = engine.decoder(params)
    rows, waiting = [], list(range(len(prompts)))
    while waiting or any(not r.done for r in rows):
        if waiting:  # one new row joins before every step
            rows.append(row(waiting.pop(0)))
        decoder.step(rows)
    assert [(r.response, r.text) for r in rows] == alone


def assert_speedups_exact(engine: Engine, prompts: Sequence[str], params: DecodeParams) -> None:
    """Pruning, probing and rollout reuse change the work, never the tokens (ragged batches included)."""
    def shortcuts(responses) -> int:  # candidates valued without their own estimate
        return sum(r.accounting.pruned + r.accounting.reused_rollouts for r in responses)

    slow = params.replace(prune=False, reuse_rollouts=False, prune_probe=0)
    responses = engine.generate(prompts, slow, batch_size=3, progress=False)
    want, taken = _outputs(responses), []
    for fast in (params.replace(prune=True, reuse_rollouts=True, prune_probe=0),
                 params.replace(prune=True, reuse_rollouts=True, prune_probe=1),
                 params.replace(prune=True, reuse_rollouts=False),
                 params.replace(prune=False, reuse_rollouts=True)):
        responses = engine.generate(prompts, fast, batch_size=3, progress=False)
        assert _outputs(responses) == want, fast
        taken.append(shortcuts(responses))
    assert max(taken) > shortcuts(engine.generate(prompts, slow, batch_size=3, progress=False)), "no shortcut taken"


# ---- engines ------------------------------------------------------------------------------------------------
def tabular_engine(seed: int = 0) -> Engine:
    """A tabular SFT model, its reward-optimal policy as the baseline, and two tabular rewards."""
    sft = TabularLM.random(5, 4, seed=seed)
    r, r_bl = random_reward(5, 4, seed=seed), random_reward(5, 4, seed=seed + 100)
    return Engine(sft, optimal_policy(sft, r, beta=0.5), TabularReward(r, sft), TabularReward(r_bl, sft))


@pytest.fixture()
def tiny_engine(sft, baseline):
    return Engine(sft, baseline, CallableReward(vowel_share),
                  CallableReward(lambda p, r: [len(t) / 100 for t in r], name="length", range=(0.0, 10.0)))


# ---- the suite ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(SAMPLED))
@pytest.mark.parametrize("seed", [0, 3])
def test_tabular_output_is_batch_invariant(method, seed):
    params = DecodeParams(method=method, k=3, alpha=2.0, rollout_len=5, max_new_tokens=5, seed=seed,
                          **SAMPLED[method])
    assert_batch_invariant(tabular_engine(seed), PROMPTS, params)


@pytest.mark.parametrize("method", list(SAMPLED))
def test_tiny_output_is_batch_invariant(tiny_engine, method):
    params = DecodeParams(method=method, k=4, alpha=2.0, rollout_len=4, max_new_tokens=5, stop=("lake",),
                          **SAMPLED[method])
    assert_batch_invariant(tiny_engine, PROMPTS, params)


@pytest.mark.parametrize("method", list(SAMPLED))
def test_rows_joining_mid_decode_decode_as_alone(tiny_engine, method):
    params = DecodeParams(method=method, k=4, alpha=2.0, rollout_len=4, max_new_tokens=5, **SAMPLED[method])
    assert_join_invariant(tiny_engine, PROMPTS, params, seeds=[0, 7, 7, 123])


def test_seeds_change_sampled_output():
    engine = tabular_engine(1)
    params = DecodeParams(method="tq-direct", k=4, alpha=2.0, rollout_len=5, max_new_tokens=5, **SAMPLED["tq-direct"])
    runs = {tuple(tuple(r.token_ids) for r in engine.generate(PROMPTS, params.replace(seed=s), progress=False))
            for s in range(4)}
    assert len(runs) > 1


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
    eos = min(sft.eos_token_ids)
    with torch.no_grad():  # EOS becomes a likely candidate (not a certain one) for both models
        for lm in (sft, baseline):
            bias = torch.zeros(lm.vocab_size)
            bias[eos] = 3.0
            lm.model.lm_head.bias = torch.nn.Parameter(bias.to(lm.device))
    engine = Engine(sft, baseline, CallableReward(vowel_share))
    params = DecodeParams(method=method, k=5, alpha=0.5, rollout_len=4, max_new_tokens=7, stop=("the",), **rollouts)
    assert_speedups_exact(engine, PROMPTS, params)
    responses = engine.generate(PROMPTS, params, progress=False)
    assert {r.finish_reason for r in responses} - {"length"}, "neither EOS nor a stop string was reached"


def test_an_eval_resume_writes_the_rows_an_uninterrupted_run_writes(tiny_engine, tmp_path):
    """Rows lost from the middle of a results file are re-decoded in other batches, to the same text."""
    methods = [MethodRun(m, DecodeParams(method=m, k=4, alpha=2.0, rollout_len=3, max_new_tokens=4, **SAMPLED[m]))
               for m in ("tq-direct", "sft", "bon")]
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
