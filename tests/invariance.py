"""The invariance checks, shared by the suite in ``core/test_invariance.py`` and the bridged pairs in
``lm/test_bridge.py``: plain functions over an engine and parameters (a prompt's output depends only on the prompt,
its seed and the decoding parameters); reuse them to extend the suite to a new method or backend."""

from __future__ import annotations

from collections.abc import Sequence

from tqstar import methods
from tqstar.engine import Engine
from tqstar.params import DecodeParams

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
    "soft-bon": dict(temperature=1.0, bon_n=3, bon_beta=0.2),
}

ROLLED = dict(n_rollouts=2, rollout_temperature=1.0)
#: Blockwise decisions (``block_len``): every method that takes it, with sampled choice (blocks at T = 1, chosen
#: ∝ exp(α·Q̂)) and greedy choice (the best of the sampled blocks), sampled rollouts where the estimator needs them.
BLOCKWISE = {
    "tq-direct[m=2]": dict(method="tq-direct", block_len=2, temperature=1.0, **ROLLED),
    "tq-direct[m=3,argmax]": dict(method="tq-direct", block_len=3),
    "tq-indirect[m=2]": dict(method="tq-indirect", block_len=2, temperature=1.0, **ROLLED),
    "tq-soft[m=2]": dict(method="tq-soft", block_len=2, temperature=1.0, **ROLLED),
    "cd[m=1]": dict(method="cd", block_len=1, temperature=1.0, **ROLLED),
    "cd[m=2,argmax]": dict(method="cd", block_len=2),
    "soft-cd[m=3,argmax]": dict(method="soft-cd", block_len=3, **ROLLED),
    "args[m=2]": dict(method="args", block_len=2, temperature=1.0),
    "args[m=2,argmax]": dict(method="args", block_len=2),
    "none[m=2]": dict(method="none", block_len=2, temperature=1.0),
}
#: Every condition the suite covers, by label: each method sampling everything it samples, and the block modes.
CASES = {**{method: dict(method=method, **values) for method, values in SAMPLED.items()}, **BLOCKWISE}


#: Every token-level method with every tail it takes (``rolling`` needs a model that rolls out), for the suite's
#: no-truncation cases: ``(method, tail)``.
TAILED = [(method, tail) for method in SAMPLED if methods.method(method).kind == "token"
          for tail in ("off", "mean", "rollout", "rolling")
          if not (tail == "rolling" and method in ("args", "eft", "none"))]


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
