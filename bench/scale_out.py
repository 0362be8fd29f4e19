"""Time per decoded token of greedy TQ* direct: the local ``transformers`` backend against the same model served by
vLLM (CPU build) and by llama.cpp's llama-server, on the same machine, in one run.

Settings as ``bench/speed.py``: SmolLM2-135M-Instruct fp32 (llama-server: an F32 GGUF of the same weights), the
SFT weights with an aligning system prompt as the baseline, VADER sentiment, k = 10, L = 20, α = 1, greedy.
The local backend runs with ``--threads`` torch threads (``OMP_WAIT_POLICY=PASSIVE``); each server runs alone
while it is measured and uses the machine's cores its own way (vLLM: all of them; llama-server: ``-t`` threads).
The chosen tokens of every remote run are compared with the local run's.

    python bench/scale_out.py --tokens 32 --prompts 3 --json docs/bench/scale-out-cpu.json

Needs ``scripts/servers.sh`` (``make servers``) and ``make models``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from tqstar import DecodeParams, Engine, TransformersLM, load_reward  # noqa: E402
from tqstar.builtin.models import smollm2_dir  # noqa: E402
from tqstar.lm.remote import RemoteLM  # noqa: E402
from tqstar.testing.servers import EngineUnavailable, start_llama, start_vllm  # noqa: E402

PROMPTS = ["How do I make a cup of tea?", "Tell me about your day.", "What should I cook for dinner tonight?",
           "Describe the city you live in.", "Give me advice for a job interview.", "Write a short note to a neighbour."]
SYSTEM = "You are a cheerful, kind and positive assistant."


def run(engine: Engine, prompts: list[str], params: DecodeParams, batch_size: int, concurrency: int = 1) -> dict:
    start = time.perf_counter()
    responses = engine.generate(prompts, params, batch_size=batch_size, concurrency=concurrency, progress=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(r.token_ids) for r in responses)
    return {"seconds": seconds, "tokens": tokens, "s_per_token": seconds / tokens,
            "token_ids": [r.token_ids for r in responses],
            "rollouts_per_token": sum(r.accounting.rollouts for r in responses) / tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the local backend")
    parser.add_argument("--engines", nargs="*", default=["vllm", "llama.cpp"], help="none: the local backend only")
    parser.add_argument("--json", help="write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf = smollm2_dir()
    prompts = PROMPTS[: args.prompts]
    params = DecodeParams(method="tq-direct", k=10, alpha=1.0, rollout_len=20, max_new_tokens=args.tokens)
    reward = load_reward("sentiment")
    local_lm = TransformersLM.from_pretrained(hf, name="local")
    local = Engine(local_lm, local_lm.with_prompt_format(system_prompt=SYSTEM, name="local baseline"), reward)
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                     "settings": {"k": 10, "rollout_len": 20, "alpha": 1.0, "max_new_tokens": args.tokens,
                                  "prompts": len(prompts), "local_torch_threads": args.threads}, "runs": {}}
    print(f"# greedy tq-direct, SmolLM2-135M fp32, k 10, L 20, α 1, {len(prompts)} prompts × {args.tokens} tokens;"
          f" local backend: {args.threads} torch thread(s)")
    results["runs"]["local, batch 1"] = base = run(local, prompts, params, batch_size=1)
    results["runs"][f"local, batch {len(prompts)}"] = run(local, prompts, params, batch_size=len(prompts))
    logs = Path(tempfile.mkdtemp(prefix="tqstar-scale-out-"))
    for engine in args.engines:
        try:
            server = (start_vllm if engine == "vllm" else start_llama)(hf, logs / f"{engine}.log")
        except EngineUnavailable as exc:
            print(f"# {engine}: skipped ({exc})", file=sys.stderr)
            continue
        try:
            sft = RemoteLM(server.url, "smollm2", tokenizer=hf, name=f"{engine} sft")
            baseline = RemoteLM(server.url, "smollm2", tokenizer=hf, system_prompt=SYSTEM, name=f"{engine} baseline")
            remote = Engine(sft, baseline, reward)
            run(remote, prompts[:1], DecodeParams(method="tq-direct", k=10, max_new_tokens=2), 1)  # warm-up
            results["runs"][f"{engine}, batch 1"] = run(remote, prompts, params, batch_size=1)
            results["runs"][f"{engine}, batch {len(prompts)}"] = run(remote, prompts, params, batch_size=len(prompts))
            results["runs"][f"{engine}, batch 1 × concurrency {len(prompts)}"] = run(
                remote, prompts, params, batch_size=1, concurrency=len(prompts))
            results[f"{engine} stats"] = {"sft": sft.stats(), "baseline": baseline.stats()}
        finally:
            server.stop()
    print(f"{'run':<34}{'s/token':>9}{'vs local b1':>13}{'rollouts/tok':>14}  same tokens as local")
    for name, r in results["runs"].items():
        same = r["token_ids"] == base["token_ids"]
        r["same_tokens_as_local"] = same
        print(f"{name:<34}{r['s_per_token']:>9.3f}{r['s_per_token'] / base['s_per_token']:>13.2f}"
              f"{r['rollouts_per_token']:>14.2f}  {same}")
    for engine in args.engines:
        if f"{engine} stats" in results:
            print(f"# {engine}: {results[f'{engine} stats']}")
    if args.json:
        for r in results["runs"].values():
            r.pop("token_ids")
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
