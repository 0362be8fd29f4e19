"""No input is a 500: a few thousand generated request bodies against the app, then the engine still answers.

The bodies come from a seeded generator (reproducible: a failure names its body's index): valid requests with
every field set to values of every JSON type, OpenAI's and vLLM's fields and tqstar's overrides, message lists
with odd roles and contents, strings with lone surrogates, NUL and astral characters, deep nesting, huge and
non-finite numbers, duplicate keys, broken UTF-8 and JSON cut anywhere, with each content type. Every answer must be
a 2xx or a 4xx/503 in OpenAI's error shape whose message is one line of API-facing advice (no command-line flag, no
server path); a stream must end with ``[DONE]`` and never carry a server error. The run is bounded by count and by
time (``FUZZ_BUDGET_S``), so it fits ``make test``.
"""

from __future__ import annotations

import json
import random
import re
import time

import pytest

from tqstar.serving.config import ServeConfig

N_BODIES = 3000
FUZZ_BUDGET_S = 60.0
SEED = 20241119

FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
          "stop", "stream", "stream_options", "user", "logprobs", "top_logprobs", "echo", "best_of", "suffix",
          "tools", "tool_choice", "response_format", "logit_bias", "presence_penalty", "frequency_penalty",
          "continue_final_message", "add_generation_prompt", "tqstar", "chat_template_kwargs", "stop_token_ids"]
TQSTAR = ["alpha", "k", "n_rollouts", "rollout_len", "rollout_temperature", "beta", "bon_n", "prune", "prune_probe",
          "reuse_rollouts", "trace", "method", "sft", "soft_beta", "seed", "max_new_tokens"]
ODD_TEXT = ["\ud800", "a\udfffb", "\x00", "😀" * 3, "\u202e", "<|im_end|>", "</s>", " ", "", "\n\n", "x" * 300,
            "\\", '"', "\ufeff", "\U0010ffff"]


def _config(tiny_paths) -> dict:
    return {
        "sft": str(tiny_paths["sft"]), "baseline": str(tiny_paths["baseline"]), "reward": "sentiment",
        "decode": {"k": 2, "rollout_len": 2, "max_new_tokens": 3, "bon_n": 2},
        "presets": {"sft": {"method": "sft"}, "tq": {"method": "tq-direct"},
                    "sample": {"method": "cd", "temperature": 1.0}, "bon": {"method": "bon", "temperature": 1.0,
                                                                            "bon_n": 2}},
        "limits": {"max_tokens": 4, "max_k": 3, "max_rollout_len": 3, "max_n_rollouts": 2, "max_bon_n": 2,
                   "max_prompt_tokens": 64, "max_body_bytes": 20_000, "max_queue": 8, "max_step_tokens": 16},
    }


class Bodies:
    """The generator: ``body(i)`` is (path, content type, raw bytes) of the i-th body."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def value(self, depth: int = 0):
        r = self.rng
        kind = r.randrange(12 if depth < 3 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, 1, -1, 2, 3, 7, 2**31, 2**63, -(2**63) - 1, 10**30])
        if kind == 3:
            return r.choice([0.0, 0.5, -0.5, 1.5, 1e-300, 1e300, 2.0, 3.7])
        if kind in (4, 5):
            return r.choice(ODD_TEXT + ["sft", "tq", "hello", "user", "assistant", "system", "tq-direct"])
        if kind == 6:
            return "".join(r.choice(ODD_TEXT) for _ in range(r.randrange(1, 4)))
        if kind == 7:
            return r.choice(["", "0", "1e9", "NaN", "true"])
        if kind in (8, 9):
            return [self.value(depth + 1) for _ in range(r.randrange(0, 4))]
        return {r.choice(FIELDS + TQSTAR + ODD_TEXT): self.value(depth + 1) for _ in range(r.randrange(0, 4))}

    def message(self) -> object:
        r = self.rng
        if r.random() < 0.15:
            return self.value(1)
        message = {"role": r.choice(["user", "user", "system", "assistant", "developer", "tool", "robot", None]),
                   "content": r.choice([r.choice(ODD_TEXT + ["the cat and the dog", "hi"]), self.value(2),
                                        [{"type": "text", "text": r.choice(ODD_TEXT)}],
                                        [{"type": "image_url", "image_url": {"url": "x"}}]])}
        if r.random() < 0.2:
            message.pop(r.choice(["role", "content"]))
        return message

    def request(self) -> tuple[str, dict]:
        r = self.rng
        chat = r.random() < 0.6
        body: dict = {"model": r.choice(["sft", "tq", "sample", "bon", "nope", ""])}
        if chat:
            body["messages"] = [self.message() for _ in range(r.randrange(0, 4))]
        else:
            body["prompt"] = r.choice([r.choice(ODD_TEXT + ["the park"]), [r.choice(ODD_TEXT)], ["a", "b"], []])
        body["max_tokens"] = r.choice([1, 2, 3, 4])
        if r.random() < 0.3:  # a request as a client would send it, with a few good fields
            body["model"] = r.choice(["sft", "tq", "sample", "bon"])
            if chat:
                body["messages"] = [{"role": "user", "content": r.choice(ODD_TEXT[2:] + ["the park"])}]
            else:
                body["prompt"] = "the park " + r.choice(ODD_TEXT[2:])
            for name, values in (("stream", [True, False]), ("seed", [None, 3]), ("temperature", [None, 0, 0.8]),
                                 ("stop", [None, ["e"], "a"]), ("tqstar", [{}, {"trace": True}, {"k": 3}])):
                if r.random() < 0.5 and (value := r.choice(values)) is not None:
                    body[name] = value
            return ("/v1/chat/completions" if chat else "/v1/completions"), body
        for _ in range(r.randrange(0, 5)):
            name = r.choice(FIELDS)
            if name == "tqstar":
                body[name] = {r.choice(TQSTAR): self.value(1) for _ in range(r.randrange(0, 3))}
            elif r.random() < 0.5 and name in ("max_tokens", "temperature", "seed", "n", "stream", "stop"):
                body[name] = r.choice({"max_tokens": [0, 1, 3, 5, -1], "temperature": [0, 0.7, 2, -1],
                                       "seed": [0, 7, -5, 2**63], "n": [1, 2], "stream": [True, False],
                                       "stop": ["a", ["x", "y"], [""], ["a"] * 5]}[name])
            else:
                body[name] = self.value(1)
        for name in list(body):
            if r.random() < 0.05:
                del body[name]
        return ("/v1/chat/completions" if chat else "/v1/completions"), body

    def raw(self, body: dict) -> bytes:
        """The body as bytes, sometimes damaged."""
        r = self.rng
        text = json.dumps(body, ensure_ascii=r.random() < 0.5, allow_nan=True) if _encodable(body) else json.dumps(
            body, ensure_ascii=True, allow_nan=True)
        roll = r.random()
        if roll < 0.03:
            return text[: r.randrange(len(text) + 1)].encode("utf-8", "surrogatepass")
        if roll < 0.05:
            return b"[" * r.choice([50, 2000, 100_000]) + b"]" * 10
        if roll < 0.07:
            return text.encode("utf-8", "surrogatepass").replace(b'"', b"\xff", 1)
        if roll < 0.09:
            return text.replace("{", '{"model": 1, ', 1).encode("utf-8", "surrogatepass")  # a duplicate key
        if roll < 0.11:
            return r.choice([b"", b"null", b"1", b'"x"', b"NaN", b"\xef\xbb\xbf{}", b'{"model": Infinity}',
                             b'{"model": "sft", "prompt": "x", "seed": ' + b"9" * 5000 + b"}"])
        if roll < 0.12:
            return json.dumps({"model": "sft", "prompt": "x", "user": _nested(r.choice([31, 33, 500]))}).encode()
        return text.encode("utf-8", "surrogatepass")

    def body(self) -> tuple[str, str | None, bytes, dict]:
        path, body = self.request()
        ctype = "application/json" if self.rng.random() < 0.95 else self.rng.choice(
            [None, "text/plain", "application/json; charset=utf-8", "application/x-www-form-urlencoded"])
        return path, ctype, self.raw(body), body


def _encodable(value) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode()
        return True
    except UnicodeEncodeError:
        return False


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _api_facing(message: str, tiny_paths) -> bool:
    return ("\n" not in message and not re.search(r"(^|\s)--[a-z]", message)
            and not any(str(p) in message for p in tiny_paths.values()) and "site-packages" not in message)


def test_generated_bodies_never_get_a_500_and_the_engine_lives(tiny_paths):
    from fastapi.testclient import TestClient

    from tqstar.serving.app import create_app

    config = ServeConfig.from_dict(_config(tiny_paths))
    engine = config.run.build(check=False)
    bodies = Bodies(SEED)
    seen: dict[int, int] = {}
    started = time.monotonic()
    with TestClient(create_app(engine, config), raise_server_exceptions=False) as client:
        for i in range(N_BODIES):
            if time.monotonic() - started > FUZZ_BUDGET_S:
                break
            path, ctype, raw, body = bodies.body()
            headers = {"Content-Type": ctype} if ctype else {}
            r = client.post(path, content=raw, headers=headers)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            where = f"body {i}: {raw[:300]!r} -> {r.status_code} {r.text[:400]}"
            assert r.status_code < 500 or r.status_code == 503, where
            if r.status_code >= 400:
                error = r.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}, where
                assert _api_facing(error["message"], tiny_paths), where
            elif r.headers["content-type"].startswith("text/event-stream"):
                lines = [line for line in r.text.splitlines() if line.startswith("data: ")]
                assert lines[-1] == "data: [DONE]", where
                events = [json.loads(line[6:]) for line in lines[:-1]]
                assert not any(e.get("error", {}).get("type") == "server_error" for e in events), where
        sent = sum(seen.values())
        assert client.get("/health").json() == {"status": "ok"}
        alive = client.post("/v1/completions", json={"model": "tq", "prompt": "the park", "max_tokens": 3})
        assert alive.status_code == 200 and alive.json()["usage"]["completion_tokens"] >= 1
    assert sent >= min(N_BODIES, 1000), f"only {sent} bodies in {FUZZ_BUDGET_S} s"
    assert seen.get(200, 0) >= sent // 10 and sum(v for k, v in seen.items() if 400 <= k < 500) >= sent // 4, seen


@pytest.mark.parametrize("raw", [b'{"model": "sft", "prompt": "\\ud800"}', b"[" * 10_000, b'{"a": NaN}'])
def test_the_named_oddities(tiny_paths, raw):
    from fastapi.testclient import TestClient

    from tqstar.serving.app import create_app

    config = ServeConfig.from_dict(_config(tiny_paths))
    with TestClient(create_app(config.run.build(check=False), config)) as client:
        r = client.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] in ("invalid_json", "invalid_text"), r.text
