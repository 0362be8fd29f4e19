"""Serving throughput and latency: continuous batching against one request at a time, in one run.

Starts ``tqstar serve`` twice on the same models and preset — once with ``max_batch`` rows stepped together
(continuous batching), once with ``max_batch: 1`` (requests decoded one at a time) — and drives each with 1, 4
and 16 concurrent streaming clients (httpx, Server-Sent Events). Per setting it reports output tokens per second
over the whole run, time to first token (TTFT) and inter-token latency (ITL, mean gap between a request's token
chunks), medians over requests, and the ratios batched / one-at-a-time. Every answer is also checked to be the
same text in both modes (the decoder's output does not depend on batching).

    python bench/serve.py                          # the tiny models, then SmolLM2 + its DPO adapter (make models)
    python bench/serve.py --model tiny             # the tiny random models only (seconds)
    python bench/serve.py --model tiny --clients 1 4 --requests 1 --max-tokens 8   # a smoke run

On SmolLM2 the baseline is the shipped DPO(sentiment) adapter and the target reward VADER sentiment.

The server processes use one torch thread each (``OMP_NUM_THREADS=1``), like the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from tqstar.testing.servers import ServerProcess, free_port

PROMPTS = [
    "How do I make a cup of tea?", "Tell me about your day.", "What should I cook for dinner tonight?",
    "Describe the city you live in.", "Give me advice for a job interview.", "Write a short note to a neighbour.",
    "What is a good book to read?", "How can I learn to play the guitar?",
]


def config(model: str, max_batch: int, k: int, rollout_len: int) -> dict:
    decode = {"k": k, "rollout_len": rollout_len, "alpha": 2.0}
    limits = {"max_batch": max_batch, "max_queue": 256, "max_tokens": 1024}
    if model == "tiny":
        from tqstar.builtin.tiny import build_tiny_models, default_tiny_dir

        paths = build_tiny_models(default_tiny_dir())
        models = {"sft": str(paths["sft"]), "baseline": str(paths["baseline"]), "reward": "sentiment"}
    else:
        models = {"sft": "smollm2", "baseline": {"path": "smollm2", "adapter": "builtin:smollm2-sentiment-dpo"},
                  "reward": "sentiment"}
    return {**models, "decode": decode, "limits": limits, "presets": {"tq": {"method": "tq-direct"}}}


async def one_request(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> dict:
    """Stream one chat completion; returns its text, token count, TTFT and inter-token gaps."""
    body = {"model": "tq", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "stream": True}
    start, stamps, text = time.perf_counter(), [], []
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = json.loads(line[len("data: "):])["choices"][0]
            if choice["finish_reason"] is None and "role" not in choice["delta"]:
                stamps.append(time.perf_counter())  # one chunk per committed token
            text.append(choice["delta"].get("content") or "")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"text": "".join(text), "tokens": len(stamps), "ttft": stamps[0] - start if stamps else float("nan"),
            "itl": statistics.fmean(gaps) if gaps else float("nan")}


async def drive(url: str, clients: int, requests: int, max_tokens: int) -> dict:
    """``clients`` concurrent clients, each sending ``requests`` requests one after another."""
    async def client_loop(c: int, client: httpx.AsyncClient) -> list[dict]:
        return [await one_request(client, url, PROMPTS[(c * requests + r) % len(PROMPTS)] + f" ({c}.{r})",
                                  max_tokens) for r in range(requests)]

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=clients + 4)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(client_loop(c, client) for c in range(clients)))
        wall = time.perf_counter() - start
    flat = [r for per_client in results for r in per_client]
    return {"tokens_per_s": sum(r["tokens"] for r in flat) / wall, "ttft": statistics.median(r["ttft"] for r in flat),
            "itl": statistics.median(r["itl"] for r in flat), "texts": [r["text"] for r in flat]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16, help="rows stepped together in the batched server")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rollout-len", type=int, default=20)
    args = parser.parse_args()
    for model in args.model:
        bench(model, args)
    return 0


def bench(model: str, args: argparse.Namespace) -> None:
    """Both servers on ``model`` at every client count; prints the table."""
    rows: dict[tuple[str, int], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode, max_batch in (("batched", args.max_batch), ("one-at-a-time", 1)):
            path = Path(tmp) / f"{mode}.yaml"
            path.write_text(yaml.safe_dump(config(model, max_batch, args.k, args.rollout_len)))
            port = free_port()
            argv = [sys.executable, "-m", "tqstar.cli", "serve", "--config", str(path), "--port", str(port)]
            env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
            with ServerProcess(mode, argv, port, Path(tmp) / f"{mode}.log", env=env, ready_timeout_s=600) as server:
                asyncio.run(drive(server.url, 1, 1, 4))  # warm-up: first-call costs are not the server's steady state
                for clients in args.clients:
                    rows[mode, clients] = asyncio.run(drive(server.url, clients, args.requests, args.max_tokens))
                    r = rows[mode, clients]
                    print(f"{mode:>14} clients={clients:<3} {r['tokens_per_s']:8.1f} tok/s  TTFT {r['ttft']:.3f} s"
                          f"  ITL {r['itl'] * 1000:.1f} ms", file=sys.stderr, flush=True)

    print(f"\n{model}, greedy tq-direct, k={args.k}, L={args.rollout_len}, max_tokens={args.max_tokens},"
          f" {args.requests} request(s) per client, batched max_batch={args.max_batch}; CPU threads per server: 1\n")
    print("| clients | tok/s batched | tok/s one-at-a-time | ratio | TTFT batched | TTFT one-at-a-time |"
          " ITL batched | ITL one-at-a-time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for clients in args.clients:
        b, s = rows["batched", clients], rows["one-at-a-time", clients]
        print(f"| {clients} | {b['tokens_per_s']:.1f} | {s['tokens_per_s']:.1f} | {b['tokens_per_s'] / s['tokens_per_s']:.2f}x"
              f" | {b['ttft']:.3f} s | {s['ttft']:.3f} s | {b['itl'] * 1000:.1f} ms | {s['itl'] * 1000:.1f} ms |")
        if b["texts"] != s["texts"]:
            print(f"WARNING: {clients} clients: batched and one-at-a-time answers differ", file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
