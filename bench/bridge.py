"""What the text bridge costs, and one weak-to-strong run across model families (docs/weak-to-strong.md).

One process, one torch thread. Two parts:

* **same pair, direct vs bridged**: SmolLM2-135M-Instruct as the SFT model and the same weights with a cheerful
  system prompt as the baseline — a pair that shares its tokenizer, so TQ* direct runs both directly (token ids)
  and through the text bridge (``Engine(..., bridge=True)``), and once more through the bridge without the
  baseline's prefix cache. Prints the baseline's forward tokens per generated token, rollouts, reused rollouts,
  seconds per token, and whether the tokens are the same.
* **across families**: SmolLM2-135M-Instruct (SFT) guided by Qwen2.5-Coder-0.5B-Instruct (baseline, another
  tokenizer, with the same system prompt; ``make models-qwen``), TQ* direct against decoding either model
  alone, scored by VADER sentiment (``--cross-uncached``: TQ* direct once more with Qwen's prefix cache off).
  Skipped with a note when the Qwen packages are missing.

    python bench/bridge.py                          # defaults: k = 5, L = 10, 24 new tokens, 3 prompts
    python bench/bridge.py --json docs/bench/bridge-cpu.json
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

from tqstar import DecodeParams, Engine, TransformersLM, load_reward  # noqa: E402
from tqstar.builtin.models import qwen_coder_dir, smollm2_dir  # noqa: E402
from tqstar.errors import ModelLoadError  # noqa: E402

PROMPTS = ["How do I make a cup of tea?", "Tell me about your day.", "What should I cook for dinner tonight?"]
SYSTEM = "You are a cheerful, kind and positive assistant."


def run(engine: Engine, prompts: list[str], params: DecodeParams) -> dict:
    """Decode ``prompts`` as one batch from empty prefix caches; totals over the batch (per generated token where it
    says so)."""
    for lm in (engine.models.sft, engine.models.baseline):
        lm.reset_cache()
    start = time.perf_counter()
    responses = engine.generate(prompts, params, batch_size=len(prompts), progress=False)
    seconds = time.perf_counter() - start
    steps = sum(r.accounting.steps for r in responses)
    return {
        "method": params.method,
        "tokens": steps,
        "baseline_forward_per_token": sum(r.accounting.baseline_forward_tokens for r in responses) / steps,
        "sft_forward_per_token": sum(r.accounting.sft_forward_tokens for r in responses) / steps,
        "rollouts": sum(r.accounting.rollouts for r in responses),
        # what the baseline ran besides generating rollout tokens: prompts and (re-encoded) response tails
        "baseline_prefix_per_token": sum(r.accounting.baseline_forward_tokens - r.accounting.rollout_tokens
                                         for r in responses) / steps,
        "reused_rollouts": sum(r.accounting.reused_rollouts for r in responses),
        "pruned": sum(r.accounting.pruned for r in responses),
        "seconds_per_token": seconds / steps,
        "mean_reward": sum(r.reward for r in responses) / len(responses),
        "token_ids": [r.token_ids for r in responses],
        "texts": [r.text for r in responses],
    }


def show(title: str, rows: dict[str, dict]) -> None:
    print(f"\n## {title}\n")
    print("| run | baseline fwd tokens / token | of which prefix | rollouts | reused | s / token | mean reward |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['baseline_forward_per_token']:.1f} | {row['baseline_prefix_per_token']:.1f} |"
              f" {row['rollouts']} | {row['reused_rollouts']} | {row['seconds_per_token']:.3f} |"
              f" {row['mean_reward']:+.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--rollout-len", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--skip-same", action="store_true", help="only the cross-family part")
    parser.add_argument("--cross-uncached", action="store_true",
                        help="also run the cross-family TQ* direct with the baseline's prefix cache off")
    parser.add_argument("--json", help="write every number (and the texts) here")
    args = parser.parse_args()
    prompts = PROMPTS[:args.prompts]
    params = DecodeParams(method="tq-direct", k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
                          max_new_tokens=args.tokens)
    reward = load_reward("sentiment")
    sft = TransformersLM.from_pretrained(smollm2_dir(), name="SmolLM2-135M-Instruct")
    out: dict = {"settings": vars(args), "prompts": prompts, "system_prompt": SYSTEM}
    Engine(sft).generate(prompts[:1], params.replace(method="sft", max_new_tokens=2), progress=False)  # warm-up

    if not args.skip_same:
        same = {}
        for name, bridge, cache in (("direct (token ids)", False, True), ("bridged (text)", True, True),
                                    ("bridged, no baseline prefix cache", True, False)):
            baseline = sft.with_prompt_format(system_prompt=SYSTEM, name="SmolLM2 + system prompt",
                                              prefix_cache=cache)
            same[name] = run(Engine(sft, baseline, reward, bridge=bridge), prompts, params)
        show("Same pair (SmolLM2 SFT, SmolLM2 + system prompt baseline): TQ* direct, directly vs through the bridge",
             same)
        first = same["direct (token ids)"]["token_ids"]
        print(f"\nsame tokens through the bridge: {same['bridged (text)']['token_ids'] == first}")
        out["same_pair"] = same

    try:
        qwen_dir = qwen_coder_dir()
    except ModelLoadError as exc:
        print(f"\ncross-family part skipped: {exc}", file=sys.stderr)
    else:
        qwen = TransformersLM.from_pretrained(qwen_dir, name="Qwen2.5-Coder-0.5B-Instruct", system_prompt=SYSTEM)
        engine = Engine(sft, qwen, reward)
        cross = {
            "SmolLM2 alone (sft)": run(engine, prompts, params.replace(method="sft")),
            "Qwen2.5-Coder alone (baseline)": run(engine, prompts, params.replace(method="baseline")),
            "TQ* direct, Qwen guiding SmolLM2": run(engine, prompts, params),
        }
        if args.cross_uncached:
            uncached = Engine(sft, qwen.with_prompt_format(prefix_cache=False), reward)
            cross["TQ* direct, Qwen's prefix cache off"] = run(uncached, prompts, params)
        show("Across families (SmolLM2-135M SFT, Qwen2.5-Coder-0.5B baseline through the bridge)", cross)
        for name, row in cross.items():
            print(f"\n{name}:")
            for prompt, text in zip(prompts, row["texts"]):
                print(f"  {prompt!r} -> {text!r}")
        out["cross_family"] = cross

    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
