"""A local OpenAI-compatible completions server backed by a tqstar model, for the remote backend's unit tests.

It speaks either dialect the remote backend must read — ``vllm`` (legacy ``top_logprobs`` dictionaries keyed
``token_id:N``, the EOS token kept in the generated tokens, ``/tokenize`` with ``messages``) or ``llama.cpp``
(chat-style ``logprobs.content[]`` with ``id``, the EOS token left out, ``/apply-template``, ``/props``) — and
injects the faults a real server cannot be made to produce on demand (``faults``: 429s, 500s, a slow answer,
missing log-probs, a different vocabulary, a low log-probs limit, a server that dies after N requests).
Real vLLM and llama-server runs are in ``test_servers.py``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch


@dataclass
class Faults:
    status: list[int] = field(default_factory=list)  # answer the next completions requests with these codes
    delay_s: float = 0.0  # sleep before answering completions
    drop_logprobs: bool = False
    shift_vocab: int = 0  # the server's tokenizer numbers tokens differently
    detokenize_suffix: str = ""  # the server's tokens spell differently
    retry_after: str | None = None  # Retry-After header sent with injected 429/5xx answers
    max_logprobs: int = 20
    die_after: int | None = None  # close the listening socket after this many completions requests


class FakeServer:
    """``FakeServer(lm, flavor)`` serves ``lm`` (a tqstar :class:`FullVocabLM` with a ``tokenizer``) on 127.0.0.1."""

    def __init__(self, lm, flavor: str = "vllm", name: str = "tiny", port: int = 0) -> None:
        assert flavor in ("vllm", "llama.cpp")
        self.lm, self.flavor, self.name = lm, flavor, name
        self.faults = Faults()
        self.requests: list[dict] = []
        self.completions = 0
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- the API ----------------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, Any]:
        if path == "/v1/models":
            owner = "vllm" if self.flavor == "vllm" else "llamacpp"
            return 200, {"object": "list", "data": [{"id": self.name, "owned_by": owner, "max_model_len": 512}]}
        if path == "/health":
            return 200, {}
        if path == "/props" and self.flavor == "llama.cpp":
            eos = self.lm.tokenizer.convert_ids_to_tokens(min(self.lm.eos_token_ids))
            return 200, {"eos_token": eos, "default_generation_settings": {"n_ctx": 512}, "total_slots": 4}
        if path == "/metrics" and self.flavor == "vllm":
            return 200, "# HELP x\nvllm:prefix_cache_queries_total{model_name=\"tiny\"} 100.0\n" \
                        "vllm:prefix_cache_hits_total{model_name=\"tiny\"} 75.0\n"
        return 404, {"error": {"message": f"no route {path}"}}

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        tok, shift = self.lm.tokenizer, self.faults.shift_vocab
        if path == "/tokenize":
            if "messages" in body:
                ids = tok.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=True,
                                              return_dict=False)
            else:
                text = body.get("prompt", body.get("content"))
                add = body.get("add_special_tokens", body.get("add_special", False))
                split = self.flavor == "llama.cpp" and not body.get("parse_special", True)  # vLLM always parses
                ids = tok(text, add_special_tokens=bool(add), split_special_tokens=split)["input_ids"]
            return 200, {"tokens": [(int(i) + shift) % len(tok) for i in ids]}
        if path == "/detokenize":
            text = tok.decode([(int(i) - shift) % len(tok) for i in body["tokens"]], skip_special_tokens=False)
            text += self.faults.detokenize_suffix
            return 200, {"prompt": text} if self.flavor == "vllm" else {"content": text}
        if path == "/apply-template" and self.flavor == "llama.cpp":
            return 200, {"prompt": tok.apply_chat_template(body["messages"], add_generation_prompt=True,
                                                           tokenize=False)}
        if path == "/v1/completions":
            return self.complete(body)
        return 404, {"error": {"message": f"no route {path}"}}

    def complete(self, body: dict) -> tuple[int, Any]:
        with self._lock:
            self.completions += 1
            self.requests.append(body)
            count = self.completions
            status = self.faults.status.pop(0) if self.faults.status else 200
        if self.faults.die_after is not None and count > self.faults.die_after:
            threading.Thread(target=self.close, daemon=True).start()
            return -1, None  # drop the connection
        if status != 200:
            return status, {"error": {"message": f"injected HTTP {status}"}}
        if self.faults.delay_s:
            time.sleep(self.faults.delay_s)
        k = int(body.get("logprobs") or 0)
        if k > self.faults.max_logprobs:
            return 400, {"error": {"message": f"Requested sample logprobs of {k}, which is greater than max allowed:"
                                              f" {self.faults.max_logprobs}"}}
        prompts = body["prompt"]
        budget, temperature, seed = int(body["max_tokens"]), float(body.get("temperature", 1.0)), body.get("seed")
        n = int(body.get("n", 1))
        if self.flavor == "llama.cpp" and n > 4:
            return 500, {"error": {"message": "n_cmpl cannot be greater than the number of slots, please increase -np"}}
        choices = []
        bias = body.get("logit_bias")
        with self._model_lock:  # one engine, as a real server
            for index, (prompt, child) in enumerate((p, c) for p in prompts for c in range(n)):
                if bias:  # one biased token (what tqstar asks: its tail draws)
                    assert budget == 1 and n == 1, "the fake applies logit_bias to one-token, one-sample requests only"
                    tokens = self._biased_token(prompt, bias, temperature, seed)
                else:
                    # every prompt alike (vLLM), the n samples of one seeded with seed + i (vLLM, llama-server)
                    out = self.lm.rollout([prompt], budget, temperature, None if seed is None else [seed + child])
                    tokens = out.tokens[0]
                stopped = bool(tokens) and tokens[-1] in self.lm.eos_token_ids
                dist = self.lm.next_logprobs([list(prompt) + tokens[:i] for i in range(len(tokens))]).logprobs
                choices.append(self._choice(index, tokens, dist, k, stopped))
                if body.get("prompt_logprobs") is not None and self.flavor == "vllm":  # vLLM's extension
                    seen = self.lm.next_logprobs([list(prompt[:i]) for i in range(1, len(prompt))]).logprobs
                    choices[-1]["prompt_logprobs"] = [None] + [
                        {str(t): {"logprob": float(seen[i, t]), "rank": 1}} for i, t in enumerate(prompt[1:])]
        return 200, {"id": "cmpl-fake", "object": "text_completion", "model": self.name, "choices": choices}

    def _biased_token(self, prompt: list[int], bias: dict[str, float], temperature: float, seed) -> list[int]:
        """One token from softmax((log π + bias)/T), seeded like the fake's rollouts."""
        from tqstar.randomness import sample_tokens, uniforms

        logits = self.lm.next_logprobs([list(prompt)]).logprobs[0].clone()
        for token, value in bias.items():
            logits[int(token)] += float(value)
        u = None if seed is None else torch.from_numpy(uniforms([int(seed)], 1)[:, 0])
        return [int(sample_tokens(logits[None], temperature, u)[0])]

    def _choice(self, index: int, tokens: list[int], dist: torch.Tensor, k: int, stopped: bool) -> dict:
        tok = self.lm.tokenizer
        if self.flavor == "llama.cpp" and stopped:
            tokens, dist = tokens[:-1], dist[:-1]  # llama-server leaves the EOS token out
        tops = [row.topk(max(k, 1)) for row in dist]
        if self.faults.drop_logprobs:
            logprobs = None
        elif self.flavor == "vllm":
            logprobs = {
                "tokens": [f"token_id:{t}" for t in tokens],
                "token_logprobs": [float(dist[i, t]) for i, t in enumerate(tokens)],
                "top_logprobs": [{f"token_id:{int(j)}": float(v) for v, j in zip(top.values[:k], top.indices[:k])}
                                 | {f"token_id:{t}": float(dist[i, t])} for i, (t, top) in enumerate(zip(tokens, tops))],
                "text_offset": [0] * len(tokens),
            }
        else:
            logprobs = {"content": [
                {"id": t, "token": tok.decode([t]), "logprob": float(dist[i, t]), "bytes": None,
                 "top_logprobs": [{"id": int(j), "token": tok.decode([int(j)]), "logprob": float(v), "bytes": None}
                                  for v, j in zip(top.values[:k], top.indices[:k])]}
                for i, (t, top) in enumerate(zip(tokens, tops))]}
        return {"index": index, "text": tok.decode(tokens, skip_special_tokens=True), "logprobs": logprobs,
                "finish_reason": "stop" if stopped else "length"}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: Any) -> None:
                if status < 0:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status != 200 and server.faults.retry_after is not None:
                    self.send_header("Retry-After", server.faults.retry_after)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(*server.get(self.path))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._send(*server.post(self.path, body))

        return Handler
