"""Where each millisecond of a decoding step goes, for one source tree or two (before / after a change), timed
alternately in fresh processes so that both meet the same machine load; medians over repetitions.

    python bench/step_profile.py                                # this tree: greedy sft and tq-direct steps
    python bench/step_profile.py --before /tmp/main/src         # and another tree (e.g. `git archive main src`)

Each worker loads SmolLM2-135M-Instruct (fp32, CPU, one thread), warms up, then decodes one prompt with the step
instrumented: an exclusive clock (time inside a nested call counts for the nested category only) around the
model's forward calls, the KV-cache bookkeeping of the prefix cache, the rollout loop, the per-step KL of plain
decoding, detokenisation (every ``decode`` call), stop checks and commits, rewards and value bookkeeping; the rest
is the decoder and engine. ``model.generate`` (greedy, KV cache on, the same prompt tokens and as many new tokens)
is timed in the same worker as the anchor of plain decoding, and its tokens are compared with tqstar's. The clock
adds ~1 µs per wrapped call to the categories it wraps, the same in both trees.

``--methods text`` times the text work of a token-level step alone, at several response lengths (SmolLM2's
tokenizer, no model): the commit's stop check, then for each of k candidates its stop check and the reward text of
the candidate and an L-token rollout — what ``commit_tokens``, ``_ends_response`` and the rollout values do. A tree
with :class:`~tqstar.text.ResponseText` does it incrementally, one without decodes whole texts.

Times are CPU time of the decoding thread (``time.thread_time``; everything runs on one torch thread), which a
busy machine disturbs far less than wall time: a process waiting for a core is not charged. The totals are also
given in wall time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

if "--worker" in sys.argv:  # the tree a worker measures is the tqstar that every import below finds
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--src") + 1]).resolve()))

from benchargs import Parser, one_line_errors  # noqa: E402

from tqstar._files import check_output  # noqa: E402
from tqstar.errors import ConfigError  # noqa: E402

PROMPT = "Write a long story about a cat who learns to play the piano, with a happy ending."
CATEGORIES = {  # category: (module, class or None, attribute) it wraps
    "model forward": [],  # forward hooks on the model itself
    "KV-cache bookkeeping": [("tqstar.lm.kvcache", "Rows", "select"), ("tqstar.lm.kvcache", "Rows", "keep_first"),
                             ("tqstar.lm.kvcache", "Rows", "token_array"),
                             ("tqstar.lm.kvcache", None, "longest_common_prefixes"),
                             ("tqstar.lm.kvcache", "PrefixKV", "_encode"), ("tqstar.lm.hf", "TransformersLM", "_forward"),
                             ("tqstar.lm.hf", "TransformersLM", "_last_logits")],
    "rollout loop (sampling, EOS, host copies)": [("tqstar.lm.hf", "TransformersLM", "rollout")],
    "per-step KL (plain decoding)": [("tqstar.decoder", "Decoder", "_record_plain_kl"),
                                     ("tqstar.lm.hf", "TransformersLM", "next_logprobs")],
    "detokenisation (decode calls)": [("tqstar.lm.hf", "TransformersLM", "decode")],
    "stop checks and commits": [("tqstar.decoder", None, "commit_tokens"), ("tqstar.trajectory", None, "commit_tokens")],
    "reward": [("tqstar.reward.base", "Reward", "score")],
    "value estimates (bookkeeping)": [("tqstar.value.base", "RolloutEstimator", "known"),
                                      ("tqstar.value.base", "RolloutEstimator", "estimate"),
                                      ("tqstar.value.base", "RolloutEstimator", "_values")],
    "decoder and engine (the rest)": [("tqstar.engine", "Engine", "generate")],
}


class Clock:
    """Exclusive time per category: entering a category pauses the one it was called from."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []

    def push(self, category: str) -> None:
        now = time.thread_time()
        if self.stack:
            self.spent[self.stack[-1][0]] += now - self.stack[-1][1]
        self.stack.append([category, now])

    def pop(self) -> None:
        now = time.thread_time()
        category, start = self.stack.pop()
        self.spent[category] += now - start
        if self.stack:
            self.stack[-1][1] = now

    def wrap(self, category: str, fn):
        def timed(*args, **kwargs):
            self.push(category)
            try:
                return fn(*args, **kwargs)
            finally:
                self.pop()

        return timed


def instrument(clock: Clock, model) -> None:
    import importlib

    for category, targets in CATEGORIES.items():
        for module_name, cls_name, attr in targets:
            module = importlib.import_module(module_name)
            owner = getattr(module, cls_name) if cls_name else module
            if attr in vars(owner):  # defined there (a tree without it: nothing to time)
                setattr(owner, attr, clock.wrap(category, vars(owner)[attr]))
    model.register_forward_pre_hook(lambda *_: clock.push("model forward"))
    model.register_forward_hook(lambda *_: clock.pop())


TEXT = ("The café on the corner serves naïve little pastries — 10 € each — and the owner's dog sleeps by the door."
        " She told me, \"It's the best in town!\" and I believe her. 日本語も少し。 ") * 200


def text_worker(args) -> dict:
    """Per step, the text work of a token-level step after a response of each length in ``args.lengths``."""
    from transformers import AutoTokenizer

    import tqstar.text as text
    from tqstar.builtin.models import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir()))

    class Model:  # what the text functions need of a model
        local_decoding = text.local_decoding(tokenizer) if hasattr(text, "local_decoding") else None

        def decode(self, ids):
            return tokenizer.decode(list(ids), skip_special_tokens=True)

    lm, stop, k, L = Model(), tuple(args.stop), args.k, args.rollout_len
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    out = {}
    for length in args.lengths:
        steps = range(length, length + 8)
        if hasattr(text, "ResponseText"):  # incremental: built up token by token, as decoding does
            response = text.ResponseText(lm, stop)
            response.extend(ids[:length])
            response.text()
            start = time.thread_time()
            for t in steps:
                response.extend([ids[t]])
                response.hits_stop()
                for j in range(k):
                    response.hits_stop([ids[t + 1 + j]])
                    response.text([ids[t + 1 + j], *ids[t + 2:t + 1 + L]])
        else:  # whole texts
            start = time.thread_time()
            for t in steps:
                text.hits_stop(lm, ids[:t + 1], stop)
                for j in range(k):
                    text.hits_stop(lm, ids[:t + 1] + [ids[t + 1 + j]], stop)
                    text.response_text(lm, ids[:t + 1] + [ids[t + 1 + j], *ids[t + 2:t + 1 + L]], stop)
        out[str(length)] = 1000 * (time.thread_time() - start) / len(steps)
    return {"text_ms": out}


def worker(args) -> dict:
    if args.method == "text":
        return text_worker(args)
    import torch

    torch.set_num_threads(1)
    import tqstar
    from tqstar import DecodeParams, Engine, TransformersLM, load_reward
    from tqstar.builtin.models import smollm2_dir

    assert Path(tqstar.__file__).resolve().is_relative_to(Path(args.src).resolve()), tqstar.__file__

    sft = TransformersLM.from_pretrained(smollm2_dir(), name="smollm2")
    baseline = sft.with_prompt_format(system_prompt="You are a cheerful, kind and positive assistant.")
    engine = Engine(sft, baseline, load_reward("sentiment"))
    stop = tuple(args.stop)
    if args.method == "sft":
        params = DecodeParams(method="sft", max_new_tokens=args.tokens, stop=stop)
    else:
        params = DecodeParams(method=args.method, k=args.k, rollout_len=args.rollout_len, max_new_tokens=args.tokens,
                              stop=stop)

    def decode():
        for lm in (sft, baseline):
            lm.reset_cache()
        engine.models.reward.reset_cache()
        return engine.generate([PROMPT], params, progress=False)[0]

    ids = sft.encode_prompt(PROMPT)

    @torch.inference_mode()
    def generate(n: int) -> list[int]:
        x = torch.tensor([ids])
        out = sft.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                                 num_beams=1, use_cache=True, eos_token_id=sorted(sft.eos_token_ids),
                                 pad_token_id=sft.tokenizer.pad_token_id or 0)
        return out[0, len(ids):].tolist()

    decode()  # warm-up
    generate(4)
    clock = Clock()
    instrument(clock, sft.model)
    (response, wall, cpu) = timed(decode)
    tokens = len(response.token_ids)
    out = {"tokens": tokens, "total_ms": 1000 * cpu / tokens, "total_wall_ms": 1000 * wall / tokens,
           "categories": {c: 1000 * clock.spent.get(c, 0.0) / tokens for c in CATEGORIES}}
    if args.method == "sft":
        anchor, wall, cpu = timed(lambda: generate(tokens))
        out["generate_ms"], out["generate_wall_ms"] = 1000 * cpu / len(anchor), 1000 * wall / len(anchor)
        out["same_tokens_as_generate"] = anchor == response.token_ids
    return out


def timed(fn):
    """``fn()``, its wall time and the CPU time of this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="step_profile.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--after", default=str(Path(__file__).resolve().parents[1] / "src"),
                        help="the source tree (the folder holding tqstar/) measured as 'after' (default: this one)")
    parser.add_argument("--before", help="a second source tree, measured alternately as 'before'")
    parser.add_argument("--methods", nargs="+", default=["sft", "tq-direct", "text"],
                        choices=["sft", "tq-direct", "cd", "text"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024, 4096],
                        help="response lengths at which --methods text times a step")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens of the sft run (tq-direct: a quarter)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rollout-len", type=int, default=20)
    parser.add_argument("--stop", nargs="*", default=["<never>"], help="stop strings (checked every step)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per tree and method (medians)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # imported here, not at the top: a worker may import an older tqstar (--before)
    from tqstar._checks import check_int

    check_int(args.reps, "--reps")
    check_int(args.tokens, "--tokens", low=4)
    check_int(args.k, "--k")
    check_int(args.rollout_len, "--rollout-len")
    for n in args.lengths:
        check_int(n, "--lengths", high=8000)
    for flag in ("--after", "--before"):
        tree = getattr(args, flag[2:])
        if tree is not None and not (Path(tree) / "tqstar" / "__init__.py").is_file():
            raise ConfigError(f"{flag} {tree!r} holds no tqstar package; give the folder that holds tqstar/ (e.g. the"
                              " src of a checkout)")
    if args.json:
        check_output(args.json, "--json file")
    return args


def main(argv: list[str] | None = None) -> int:
    args = one_line_errors("step_profile.py", lambda: parse_args(argv))
    if isinstance(args, int):
        return args
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    trees = {"after": args.after, **({"before": args.before} if args.before else {})}
    results: dict = {}
    for method in args.methods:
        tokens = args.tokens if method == "sft" else max(4, args.tokens // 4)
        runs = defaultdict(list)
        for rep in range(args.reps):
            order = list(trees) if rep % 2 == 0 else list(reversed(trees))
            for label in order:
                cmd = [sys.executable, __file__, "--worker", "--src", trees[label], "--method", method, "--tokens",
                       str(tokens), "--k", str(args.k), "--rollout-len", str(args.rollout_len), "--lengths",
                       *map(str, args.lengths), "--stop", *args.stop]
                line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
                runs[label].append(json.loads(line))
        if method == "text":
            results[method] = {label: {n: statistics.median(r["text_ms"][str(n)] for r in rs) for n in args.lengths}
                               for label, rs in runs.items()}
            print_text_table(args, results[method], args.reps)
            continue
        results[method] = {label: summarise(r) for label, r in runs.items()}
        print_table(method, tokens, results[method])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def summarise(runs: list[dict]) -> dict:
    out = {"total_ms": statistics.median(r["total_ms"] for r in runs), "reps": len(runs),
           "total_wall_ms": statistics.median(r["total_wall_ms"] for r in runs),
           "categories": {c: statistics.median(r["categories"][c] for r in runs) for c in CATEGORIES}}
    if "generate_ms" in runs[0]:
        out["generate_ms"] = statistics.median(r["generate_ms"] for r in runs)
        out["generate_wall_ms"] = statistics.median(r["generate_wall_ms"] for r in runs)
        out["tqstar_over_generate"] = statistics.median(r["total_ms"] / r["generate_ms"] for r in runs)
        out["same_tokens_as_generate"] = all(r["same_tokens_as_generate"] for r in runs)
    return out


def print_table(method: str, tokens: int, result: dict) -> None:
    labels = list(result)
    print(f"\n## {method}: CPU ms per generated token ({tokens} tokens, median of {result[labels[0]]['reps']} runs)")
    print("| | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for c in CATEGORIES:
        print(f"| {c} | " + " | ".join(f"{result[x]['categories'][c]:.2f}" for x in labels) + " |")
    print("| **step** | " + " | ".join(f"**{result[x]['total_ms']:.2f}**" for x in labels) + " |")
    print("| step, wall time | " + " | ".join(f"{result[x]['total_wall_ms']:.2f}" for x in labels) + " |")
    if "generate_ms" in result[labels[0]]:
        print("| model.generate | " + " | ".join(f"{result[x]['generate_ms']:.2f}" for x in labels) + " |")
        print("| model.generate, wall time | " + " | ".join(f"{result[x]['generate_wall_ms']:.2f}" for x in labels)
              + " |")
        print("| tqstar / generate | " + " | ".join(f"{result[x]['tqstar_over_generate']:.3f}" for x in labels) + " |")
        print("| same tokens as generate | " + " | ".join(str(result[x]["same_tokens_as_generate"]) for x in labels)
              + " |")


def print_text_table(args, result: dict, reps: int) -> None:
    labels = list(result)
    print(f"\n## text work of a token-level step (k = {args.k}, L = {args.rollout_len}, stop strings {args.stop}):"
          f" CPU ms per step by response length, median of {reps} runs")
    print("| response tokens | " + " | ".join(labels) + " |\n|---|" + "---|" * len(labels))
    for n in args.lengths:
        print(f"| {n} | " + " | ".join(f"{result[x][n]:.3f}" for x in labels) + " |")


if __name__ == "__main__":
    sys.exit(main())
