"""Weak-to-strong across model families on real models: SmolLM2-135M-Instruct (SFT) guided by
Qwen2.5-Coder-0.5B-Instruct (baseline, another tokenizer) through the text bridge. Slow; run with -m slow after
``make models models-qwen``."""

from __future__ import annotations

import pytest

from tqstar import DecodeParams, Engine, load_reward
from tqstar.testing.reference import naive_bridged_q

pytestmark = pytest.mark.slow
PROMPT = "How do I make a cup of tea?"


@pytest.fixture(scope="module")
def pair():
    pytest.importorskip("gguf")
    from tqstar.builtin.models import qwen_coder_dir, smollm2_dir
    from tqstar.errors import ModelLoadError
    from tqstar.lm.hf import TransformersLM

    try:
        smol = TransformersLM.from_pretrained(smollm2_dir(), name="smollm2")
        qwen = TransformersLM.from_pretrained(qwen_coder_dir(), name="qwen2.5-coder",
                                              system_prompt="You are a cheerful, kind and positive assistant.")
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    return smol, qwen


def test_qwen_guides_smollm2_through_the_text_bridge(pair, caplog):
    smol, qwen = pair
    reward = load_reward("sentiment")
    engine = Engine(smol, qwen, reward)
    assert engine.models.bridge is not None and "different tokenizers" in caplog.text
    params = DecodeParams(k=3, alpha=1.0, rollout_len=6, max_new_tokens=8, trace=True, prune=False,
                          reuse_rollouts=False)
    (r,) = engine.generate([PROMPT], params, progress=False)
    assert r.text and r.accounting.rollouts > 0 and r.accounting.baseline_forward_tokens > 0
    for row in r.trace[:2]:  # the values are the text-level definition's, with generate on the real models
        before = r.token_ids[:row["step"]]
        want = [naive_bridged_q(smol, qwen, PROMPT, before, z, params, reward.score) for z in row["candidates"]]
        assert row["q"] == pytest.approx(want, abs=1e-4)
    fast = engine.generate([PROMPT], params.replace(prune=True, reuse_rollouts=True), progress=False)[0]
    assert fast.token_ids == r.token_ids


@pytest.mark.parametrize("method", ["baseline", "bon"])
def test_the_other_family_decodes_alone(pair, method):
    smol, qwen = pair
    params = DecodeParams(method=method, max_new_tokens=6, bon_policy="baseline",
                          **({"temperature": 1.0, "bon_n": 2} if method == "bon" else {}))
    (r,) = Engine(smol, qwen, load_reward("sentiment")).generate([PROMPT], params, progress=False)
    assert r.text == qwen.decode(r.token_ids).rstrip("\ufffd") and len(r.token_ids) <= 6
