"""Serving: fairness between groups, throughput against ``tqstar generate``, and the idle time to first token.

One run starts ``tqstar serve`` on the chosen models and measures three things, printing each as a ratio:

1. **Heavy beside light.** A light request (plain ``sft``, a few tokens, not streamed) alone, then while one heavy
   TQ* request within the server's caps runs (``k × n_rollouts × rollout_len`` = ``limits.max_step_tokens``, sampled
   rollouts): the light request's time beside the heavy one over its time alone. Goal: at most 3×.
2. **16 clients against one batch.** The same 16 prompts through 16 concurrent streaming clients, and through
   ``Engine.generate`` with ``batch_size=16`` in a process of its own (what ``tqstar generate --batch-size 16`` runs,
   timed without the model loading): output tokens per second, server / generate. Goal: at least 0.9. Every answer
   must be the same text both ways.
3. **Idle time to first token, in steps.** One client alone, requests one after another: time to the first streamed
   token over the median gap between its later tokens (one decoder step each). Goal: under 2.

    python bench/serve.py --model tiny                     # the tiny random models (a minute)
    python bench/serve.py --json docs/bench/serve-smollm2-cpu.json   # SmolLM2 + its DPO adapter (make models)

Every process uses one torch thread (``OMP_NUM_THREADS=1``), like the other benchmarks; the machine it ran on and its
load average are written beside the numbers. Timings on a shared machine are indications only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
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
    "What is a good book to read?", "How can I learn to play the guitar?", "What makes a good friend?",
    "Plan a picnic in the park.", "Why do people like music?", "Describe a rainy afternoon.",
    "How do I keep a plant alive?", "What is your favourite season?", "Tell me about the sea.",
    "How should I spend a free Saturday?",
]
ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def serve_config(model: str, k: int, rollout_len: int, max_step_tokens: int, max_step_rows: int) -> dict:
    decode = {"k": k, "rollout_len": rollout_len, "alpha": 2.0}
    limits = {"max_batch": 16, "max_queue": 256, "max_tokens": 1024, "max_step_tokens": max_step_tokens,
              "max_step_rows": max_step_rows}
    if model == "tiny":
        from tqstar.builtin.tiny import build_tiny_models, default_tiny_dir

        paths = build_tiny_models(default_tiny_dir())
        models = {"sft": str(paths["sft"]), "baseline": str(paths["baseline"]), "reward": "sentiment"}
    else:
        models = {"sft": "smollm2", "baseline": {"path": "smollm2", "adapter": "builtin:smollm2-sentiment-dpo"},
                  "reward": "sentiment"}
    return {**models, "decode": decode, "limits": limits,
            "presets": {"tq": {"method": "tq-direct"}, "sft": {"method": "sft"}}}


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# ---- clients -------------------------------------------------------------------------------------------------
async def stream_one(client: httpx.AsyncClient, url: str, body: dict) -> dict:
    """Stream one chat completion; its text, token count (from the usage chunk), TTFT and gaps between steps."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start, stamps, text, tokens = time.perf_counter(), [], [], 0
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if not chunk["choices"]:
                tokens = chunk["usage"]["completion_tokens"]
                continue
            choice = chunk["choices"][0]
            if choice["finish_reason"] is None and "role" not in choice["delta"]:
                stamps.append(time.perf_counter())  # one chunk per decoder step
            text.append(choice["delta"].get("content") or "")
    step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")  # mean gap
    return {"text": "".join(text), "tokens": tokens, "ttft": stamps[0] - start if stamps else float("nan"),
            "step": step, "done": time.perf_counter()}


async def concurrent(url: str, bodies: list[dict]) -> tuple[list[dict], float]:
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=len(bodies) + 4)) as client:
        start = time.perf_counter()
        results = await asyncio.gather(*(stream_one(client, url, body) for body in bodies))
    return results, time.perf_counter() - start


def timed_post(url: str, body: dict) -> tuple[float, dict]:
    start = time.perf_counter()
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=None)
    r.raise_for_status()
    return time.perf_counter() - start, r.json()


# ---- the three measurements ------------------------------------------------------------------------------------
def heavy_and_light(url: str, args: argparse.Namespace) -> dict:
    light = {"model": "sft", "messages": chat(PROMPTS[1]), "max_tokens": args.light_tokens, "temperature": 0}
    n_rollouts = 2  # the heaviest request the caps allow: max_step_rows rollouts of max_step_tokens in all
    heavy_k = args.max_step_rows // n_rollouts
    rollout_len = args.max_step_tokens // (heavy_k * n_rollouts)
    heavy = {"model": "tq", "messages": chat(PROMPTS[0]), "max_tokens": rollout_len,
             "tqstar": {"k": heavy_k, "n_rollouts": n_rollouts, "rollout_len": rollout_len,
                        "rollout_temperature": 1.0, "prune": False}}
    alone = [timed_post(url, light)[0] for _ in range(args.repeats)]
    client = httpx.Client(timeout=None)
    stream = client.send(client.build_request("POST", url + "/v1/chat/completions", json={**heavy, "stream": True}),
                         stream=True)
    try:
        time.sleep(args.heavy_head_start)  # the heavy request is in its first step
        beside = [timed_post(url, light)[0] for _ in range(args.repeats)]
    finally:
        stream.close()
        client.close()
    a, b = statistics.median(alone), statistics.median(beside)
    return {"light": {"method": "sft", "max_tokens": args.light_tokens},
            "heavy": {"method": "tq-direct", "k": heavy_k, "n_rollouts": n_rollouts, "rollout_len": rollout_len,
                      "step_tokens": heavy_k * n_rollouts * rollout_len, "rows": heavy_k * n_rollouts},
            "light_alone_s": alone, "light_beside_heavy_s": beside, "ratio": b / a, "goal": "<= 3"}


def generate_batch(config_path: Path, prompts: list[str], max_tokens: int) -> dict:
    """``Engine.generate`` on ``prompts`` in one batch, in a fresh process with one thread (model loading untimed)."""
    code = f"""
import json, sys, time, torch, yaml
torch.set_num_threads(1)
from tqstar.serving.config import ServeConfig
config = ServeConfig.from_dict(yaml.safe_load(open({str(config_path)!r})))
engine = config.run.build(check=False)
params = dict(config.presets)["tq"].replace(max_new_tokens={max_tokens})
prompts = [[{{"role": "user", "content": p}}] for p in json.loads(sys.argv[1])]
engine.generate(prompts[:1], params.replace(max_new_tokens=2), progress=False)  # warm-up, as the server's
start = time.perf_counter()
out = engine.generate(prompts, params, batch_size=len(prompts), progress=False)
wall = time.perf_counter() - start
print(json.dumps({{"wall_s": wall, "tokens": sum(len(r.token_ids) for r in out), "texts": [r.text for r in out]}}))
"""
    done = subprocess.run([sys.executable, "-c", code, json.dumps(prompts)], capture_output=True, text=True,
                          env={**os.environ, **ENV}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def clients_vs_generate(url: str, config_path: Path, args: argparse.Namespace) -> dict:
    prompts = PROMPTS[: args.clients]
    bodies = [{"model": "tq", "messages": chat(p), "max_tokens": args.max_tokens} for p in prompts]
    results, wall = asyncio.run(concurrent(url, bodies))
    served_tokens = sum(r["tokens"] for r in results)
    batch = generate_batch(config_path, prompts, args.max_tokens)
    same = [r["text"] for r in results] == batch["texts"]
    server_tps, batch_tps = served_tokens / wall, batch["tokens"] / batch["wall_s"]
    return {"clients": args.clients, "max_tokens": args.max_tokens, "server_tokens_per_s": server_tps,
            "generate_tokens_per_s": batch_tps, "server_wall_s": wall, "generate_wall_s": batch["wall_s"],
            "tokens": served_tokens, "ratio": server_tps / batch_tps, "same_texts": same, "goal": ">= 0.9"}


def idle_ttft(url: str, args: argparse.Namespace, preset: str) -> dict:
    runs = []
    for i in range(args.repeats):
        body = {"model": preset, "messages": chat(PROMPTS[(i + 5) % len(PROMPTS)]), "max_tokens": args.max_tokens}
        runs.append(asyncio.run(concurrent(url, [body]))[0][0])
    ttft = statistics.median(r["ttft"] for r in runs)
    step = statistics.median(r["step"] for r in runs)
    return {"preset": preset, "ttft_s": ttft, "step_s": step, "ttft_steps": ttft / step, "runs": len(runs),
            "goal": "< 2"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per request (throughput, TTFT)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rollout-len", type=int, default=20)
    parser.add_argument("--max-step-tokens", type=int, default=4096, help="the server's cap; the heavy request's step")
    parser.add_argument("--max-step-rows", type=int, default=32, help="the server's cap; the heavy request's rows")
    parser.add_argument("--heavy-head-start", type=float, default=2.0, help="seconds the heavy request runs first")
    parser.add_argument("--light-tokens", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=["fairness", "throughput", "ttft"],
                        default=["fairness", "throughput", "ttft"])
    parser.add_argument("--json", type=Path, help="also write the numbers here (e.g. docs/bench/serve-smollm2-cpu.json)")
    args = parser.parse_args()
    if args.clients > len(PROMPTS):
        parser.error(f"--clients must be at most {len(PROMPTS)}")

    out = {"model": args.model, "setting": {"method": "tq-direct", "k": args.k, "rollout_len": args.rollout_len,
                                            "alpha": 2.0, "temperature": 0},
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads_per_process": 1,
                       "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "serve.yaml"
        config_path.write_text(yaml.safe_dump(serve_config(args.model, args.k, args.rollout_len, args.max_step_tokens,
                                                           args.max_step_rows)))
        port = free_port()
        argv = [sys.executable, "-m", "tqstar.cli", "serve", "--config", str(config_path), "--port", str(port)]
        with ServerProcess("tqstar", argv, port, Path(tmp) / "serve.log", env=ENV, ready_timeout_s=600) as server:
            asyncio.run(concurrent(server.url, [{"model": "tq", "messages": chat("warm up"), "max_tokens": 2}]))
            if "ttft" in args.only:
                out["idle_ttft"] = [idle_ttft(server.url, args, preset) for preset in ("tq", "sft")]
                for r in out["idle_ttft"]:
                    print(f"idle time to first token, {r['preset']}: {r['ttft_s']:.3f} s = {r['ttft_steps']:.2f} steps"
                          f" of {r['step_s'] * 1000:.1f} ms (goal < 2)", flush=True)
            if "fairness" in args.only:
                out["heavy_and_light"] = r = heavy_and_light(server.url, args)
                print(f"light sft request beside a heavy one ({r['heavy']}): {statistics.median(r['light_beside_heavy_s']):.2f} s"
                      f" vs {statistics.median(r['light_alone_s']):.2f} s alone = {r['ratio']:.2f}x (goal <= 3)",
                      flush=True)
            if "throughput" in args.only:
                out["clients_vs_generate"] = r = clients_vs_generate(server.url, config_path, args)
                print(f"{r['clients']} clients: {r['server_tokens_per_s']:.2f} tok/s served vs"
                      f" {r['generate_tokens_per_s']:.2f} tok/s generate (one batch) = {r['ratio']:.2f} (goal >= 0.9);"
                      f" same texts: {r['same_texts']}", flush=True)
    out["machine"]["load_average_at_end"] = os.getloadavg()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.exit(main())
