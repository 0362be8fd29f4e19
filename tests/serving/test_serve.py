"""``tqstar serve`` as a real process on a free localhost port, driven by the official openai client and httpx.

The server runs the tiny models; every answer is checked against ``Engine.generate`` (what ``tqstar generate``
runs) on the same models, prompt and preset. Faults (queue full, disconnects, SIGTERM, bad requests) are
provoked for real. A second, one-row server has a slow preset for the tests that need a request to still be
running.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import httpx
import openai
import pytest
import yaml

from tqstar.errors import ConfigError
from tqstar.serving.config import ServeConfig
from tqstar.testing.servers import ServerProcess, free_port

API_KEY = "test-key-1"
WORDS = ["cat", "dog", "sun", "tea", "park", "lake", "book", "friend"]
PROMPTS = [f"the {a} and the {b}" for a in WORDS[:4] for b in WORDS]  # 32 prompts


def _config(tiny_paths, **extra) -> dict:
    config = {
        "sft": str(tiny_paths["sft"]),
        "baseline": str(tiny_paths["baseline"]),
        "reward": "sentiment",
        "decode": {"k": 4, "rollout_len": 4, "max_new_tokens": 16},
        "presets": {"tiny-tq": {"method": "tq-direct", "alpha": 2.0}, "tiny-cd": {"method": "cd"},
                    "tiny-sft": {"method": "sft"}, "tiny-sample": {"method": "tq-direct", "temperature": 1.0}},
        "limits": {"max_batch": 16, "max_queue": 64, "max_tokens": 64, "max_prompt_tokens": 48,
                   "max_body_bytes": 20_000, "max_k": 8},
    }
    config.update(extra)
    return config


def _start(tmp_path, config: dict, env: dict[str, str] | None = None) -> ServerProcess:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    return ServerProcess("tqstar", [sys.executable, "-m", "tqstar.cli", "serve", "--config", str(path), "--port",
                                    str(port)], port, tmp_path / "serve.log", env=env, ready_timeout_s=180)


@pytest.fixture(scope="module")
def config(tiny_paths) -> dict:
    return _config(tiny_paths)


@pytest.fixture(scope="module")
def server(tmp_path_factory, config):
    with _start(tmp_path_factory.mktemp("serve"), config, env={"TQSTAR_API_KEYS": f"other-key,{API_KEY}"}) as s:
        yield s


@pytest.fixture(scope="module")
def engine(config):
    """The same models in this process: the reference answers come from ``Engine.generate``."""
    return ServeConfig.from_dict(config).run.build(check=False)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)


def _params(config: dict, preset: str, **changes):
    params = dict(ServeConfig.from_dict(config).presets)[preset]
    return params.replace(**changes)


def _expected(engine, config, preset: str, prompts: list[str], max_tokens: int, **changes) -> list:
    return engine.generate(prompts, _params(config, preset, max_new_tokens=max_tokens, **changes),
                           batch_size=len(prompts), progress=False)


def _metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(url + "/metrics").text
    for line in text.splitlines():
        if line.startswith(name + (f"{{{labels}}}" if labels else "")) and not line.startswith("#"):
            if labels or line.split(" ")[0] == name:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


# ---- shapes and answers ------------------------------------------------------------------------------------
def test_models_and_limits_list_the_presets(client, server, config):
    ids = [m.id for m in client.models.list().data]
    assert ids == list(config["presets"])
    first = client.models.list().data[0]
    assert first.model_extra["tqstar"]["params"]["alpha"] == 2.0
    limits = httpx.get(server.url + "/v1/tqstar/limits", headers=_headers()).json()
    assert limits["limits"]["max_k"] == 8 and "alpha" in limits["overridable"]
    assert set(limits["presets"]) == set(config["presets"])
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize("preset", ["tiny-tq", "tiny-cd", "tiny-sft"])
def test_chat_and_completion_equal_generate(client, engine, config, preset):
    prompt = PROMPTS[3]
    want = _expected(engine, config, preset, [_chat(prompt)], 12)[0]
    chat = client.chat.completions.create(model=preset, messages=_chat(prompt), max_tokens=12)
    assert chat.object == "chat.completion" and chat.model == preset
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == want.text
    assert chat.choices[0].finish_reason == {"eos": "stop", "stop": "stop", "length": "length"}[want.finish_reason]
    assert chat.usage.completion_tokens == len(want.token_ids)
    assert chat.usage.prompt_tokens == len(engine.models.sft.encode_prompt(_chat(prompt))) > 0
    ext = chat.model_extra["tqstar"]
    assert ext["method"] == want.method and ext["reward"] == pytest.approx(want.reward)
    assert ext["accounting"]["rollouts"] == want.accounting.rollouts
    assert (ext["kl"] is None) == (want.kl is None)
    want = _expected(engine, config, preset, [prompt], 12)[0]
    text = client.completions.create(model=preset, prompt=prompt, max_tokens=12)
    assert text.object == "text_completion" and text.choices[0].text == want.text
    assert text.usage.total_tokens == text.usage.prompt_tokens + len(want.token_ids)
    assert text.choices[0].text == chat.choices[0].message.content  # one user message encodes as the prompt str


def test_streamed_text_equals_non_streamed_and_generate(client, engine, config):
    prompt = PROMPTS[5]
    want = _expected(engine, config, "tiny-tq", [_chat(prompt)], 14)[0]
    whole = client.chat.completions.create(model="tiny-tq", messages=_chat(prompt),
                                           max_completion_tokens=14)
    chunks = list(client.chat.completions.create(model="tiny-tq", messages=_chat(prompt),
                                                 max_completion_tokens=14, stream=True,
                                                 stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content == want.text
    token_chunks = [c for c in chunks[1:] if c.choices[0].finish_reason is None]
    assert len(token_chunks) == len(want.token_ids)  # one chunk per committed token
    last = chunks[-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.usage.completion_tokens == len(want.token_ids)
    assert last.model_extra["tqstar"]["reward"] == pytest.approx(want.reward)
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_with_raw_http_ends_with_done(server, engine, config):
    prompt = PROMPTS[7]
    want = _expected(engine, config, "tiny-sft", [prompt], 10)[0]
    with httpx.stream("POST", server.url + "/v1/completions", headers=_headers(),
                      json={"model": "tiny-sft", "prompt": prompt, "max_tokens": 10, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == want.text
    assert chunks[-1]["choices"][0]["finish_reason"] is not None and "usage" not in chunks[-1]


def test_trace_in_body_and_chunks(client, engine, config):
    prompt = PROMPTS[9]
    want = _expected(engine, config, "tiny-tq", [_chat(prompt)], 6, trace=True)[0]
    body = client.chat.completions.create(model="tiny-tq", messages=_chat(prompt),
                                          max_tokens=6, extra_body={"tqstar": {"trace": True}})
    trace = body.model_extra["tqstar"]["trace"]
    assert [row["chosen"] for row in trace] == want.token_ids == [row["chosen"] for row in want.trace]
    assert len(trace[0]["candidates"]) == 4
    chunks = list(client.chat.completions.create(model="tiny-tq", messages=_chat(prompt),
                                                 max_tokens=6, stream=True, extra_body={"tqstar": {"trace": True}}))
    rows = [c.model_extra["tqstar"]["trace"] for c in chunks if c.model_extra.get("tqstar", {}).get("trace")]
    assert [row["chosen"] for row in rows] == want.token_ids


def test_overrides_change_the_answer_like_the_cli(client, engine, config):
    prompt = PROMPTS[11]
    want = _expected(engine, config, "tiny-tq", [prompt], 10, alpha=0.0, k=2)[0]
    got = client.completions.create(model="tiny-tq", prompt=prompt, max_tokens=10,
                                    extra_body={"tqstar": {"alpha": 0, "k": 2}})
    assert got.choices[0].text == want.text
    assert got.model_extra["tqstar"]["params"]["k"] == 2


def test_stop_strings_never_leak(client, engine, config):
    prompt = PROMPTS[13]
    full = _expected(engine, config, "tiny-sft", [prompt], 16)[0].text
    words = full.split(" ")
    assert len(words) > 6, full
    stop = " ".join(words[4:6])  # spans a token boundary: its first word is held back until it can be ruled out
    want = _expected(engine, config, "tiny-sft", [prompt], 16, stop=(stop,))[0]
    assert want.finish_reason == "stop" and stop not in want.text
    chunks = list(client.completions.create(model="tiny-sft", prompt=prompt, max_tokens=16, stop=[stop, "zzz"],
                                            stream=True))
    pieces = [c.choices[0].text for c in chunks]
    assert "".join(pieces) == want.text  # text only grows, so nothing later cut was ever sent
    assert chunks[-1].choices[0].finish_reason == "stop"
    whole = client.completions.create(model="tiny-sft", prompt=prompt, max_tokens=16, stop=stop)
    assert whole.choices[0].text == want.text


def test_sampled_preset_repeats_with_a_seed(client):
    def ask(seed):
        return client.completions.create(model="tiny-sample", prompt=PROMPTS[2], max_tokens=12, seed=seed,
                                         temperature=1.0).choices[0].text

    assert ask(7) == ask(7)


@pytest.mark.parametrize("tail", ["off", "mean", "rollout", "rolling"])
def test_sampled_requests_with_every_tail_equal_generate_alone_and_concurrently(server, engine, config, tail):
    """A sampled request's text with a ``tqstar.tail`` override is what ``generate`` decodes for it alone, whether the
    server steps it alone or beside other requests (keyed streams: the tail draws included)."""
    prompts = PROMPTS[16:20]
    want = [r.text for r in _expected(engine, config, "tiny-sample", prompts, 10, seed=5, tail=tail)]
    assert [_expected(engine, config, "tiny-sample", [p], 10, seed=5, tail=tail)[0].text for p in prompts] == want

    async def ask_all():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as aclient:
            answers = await asyncio.gather(*(aclient.completions.create(
                model="tiny-sample", prompt=p, max_tokens=10, seed=5, temperature=1.0,
                extra_body={"tqstar": {"tail": tail}}) for p in prompts))
        return [a.choices[0].text for a in answers]

    assert asyncio.run(ask_all()) == want


# ---- continuous batching -------------------------------------------------------------------------------------
def test_32_concurrent_streams_share_steps_and_each_gets_its_answer(server, engine, config):
    want = [r.text for r in _expected(engine, config, "tiny-tq", [_chat(p) for p in PROMPTS], 12)]
    steps_before = _metric(server.url, "tqstar_step_rows_count")
    single_before = _metric(server.url, "tqstar_step_rows_bucket", 'le="1.0"')

    async def one(client: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await client.chat.completions.create(
            model="tiny-tq", messages=_chat(prompt), max_tokens=12, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as client:
            return await asyncio.gather(*(one(client, p) for p in PROMPTS))

    assert asyncio.run(run()) == want
    steps = _metric(server.url, "tqstar_step_rows_count") - steps_before
    single = _metric(server.url, "tqstar_step_rows_bucket", 'le="1.0"') - single_before
    assert single < steps, "no step advanced more than one row"
    assert steps < 32 * 12, "the requests did not share steps"
    over_cap = _metric(server.url, "tqstar_step_rows_count") - _metric(server.url, "tqstar_step_rows_bucket",
                                                                        'le="16.0"')
    assert over_cap == 0, "a step ran more rows than max_batch"
    assert _metric(server.url, "tqstar_active_rows") == 0 and _metric(server.url, "tqstar_queue_depth") == 0


def test_requests_on_different_presets_run_in_their_own_groups_at_once(server, engine, config):
    """tq, cd, sft and a sampled preset at once: each group steps in turn and each answer is its own."""
    jobs = [(preset, PROMPTS[20 + i]) for i, preset in enumerate(["tiny-tq", "tiny-cd", "tiny-sft", "tiny-sample"] * 2)]
    want = [_expected(engine, config, preset, [_chat(prompt)], 10, seed=3)[0].text for preset, prompt in jobs]

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0) as client:
            answers = await asyncio.gather(*(client.chat.completions.create(
                model=preset, messages=_chat(prompt), max_tokens=10, seed=3) for preset, prompt in jobs))
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(run()) == want


# ---- bad requests --------------------------------------------------------------------------------------------
BAD = [
    # (body or raw bytes, status, param, code)
    ({"model": "nope", "prompt": "x"}, 404, "model", "model_not_found"),
    (b"{not json", 400, None, "invalid_json"),
    ({"model": "tiny-tq"}, 400, "prompt", None),
    ({"model": "tiny-tq", "prompt": "x", "n": 2}, 400, "n", "unsupported_parameter"),
    ({"model": "tiny-tq", "prompt": "x", "logprobs": 3}, 400, "logprobs", "unsupported_parameter"),
    ({"model": "tiny-tq", "prompt": "x", "tqstar": {"alpha": -1}}, 400, "tqstar.alpha", None),
    ({"model": "tiny-tq", "prompt": "x", "tqstar": {"k": 9}}, 400, "tqstar.k", None),
    ({"model": "tiny-tq", "prompt": "x", "tqstar": {"n_rollouts": 2}}, 400, "tqstar.n_rollouts", None),
    ({"model": "tiny-tq", "prompt": "x", "tqstar": {"sft": "/etc/passwd"}}, 400, "tqstar.sft", None),
    ({"model": "tiny-tq", "prompt": "x", "temperature": -0.5}, 400, "temperature", None),
    ({"model": "tiny-tq", "prompt": "x", "max_tokens": 65}, 400, "max_tokens", None),
    ({"model": "tiny-tq", "prompt": "x", "max_tokens": 0}, 400, "max_tokens", None),
    ({"model": "tiny-tq", "prompt": " ".join(["cat"] * 60)}, 400, "prompt", "context_length_exceeded"),
    ({"model": "tiny-tq", "prompt": ["a", "b"]}, 400, "prompt", None),
    ({"model": "tiny-tq", "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role", None),
    ({"model": "tiny-tq", "prompt": "x" * 30_000}, 413, None, "request_too_large"),
]


@pytest.mark.parametrize("body,status,param,code", BAD)
def test_bad_requests_get_openai_errors(server, body, status, param, code):
    path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/v1/completions"
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + path, headers=_headers(), **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code
    assert error["message"] and "\n" not in error["message"]


def test_api_key_and_unknown_route(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(server.url + "/v1/completions", headers=headers, json={"model": "tiny-sft", "prompt": "x"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    r = httpx.get(server.url + "/v2/nothing", headers=_headers())
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_metrics_are_prometheus_text(server, client):
    client.completions.create(model="tiny-sft", prompt=PROMPTS[0], max_tokens=4)
    text = httpx.get(server.url + "/metrics").text
    for name in ("tqstar_requests_total", "tqstar_queue_depth", "tqstar_active_rows", "tqstar_tokens_total",
                 "tqstar_rollouts_total", "tqstar_reward_calls_total", "tqstar_step_seconds_bucket",
                 "tqstar_time_to_first_token_seconds_count"):
        assert name in text
    assert _metric(server.url, "tqstar_requests_total", 'endpoint="/v1/completions",status="200"') >= 1
    assert _metric(server.url, "tqstar_tokens_total", 'kind="completion"') >= 4


# ---- one row, one waiting request: faults that need a request to keep running ----------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory, tiny_paths):
    config = _config(tiny_paths, limits={"max_batch": 1, "max_queue": 1, "max_tokens": 400},
                     presets={"slow": {"method": "tq-direct", "k": 10, "rollout_len": 20, "prune": False,
                                       "reuse_rollouts": False}, "tiny-sft": {"method": "sft"}})
    with _start(tmp_path_factory.mktemp("small"), config) as s:
        yield s


def _open_stream(client: httpx.Client, url: str, max_tokens: int = 400):
    request = client.build_request("POST", url + "/v1/completions",
                                   json={"model": "slow", "prompt": PROMPTS[1], "max_tokens": max_tokens,
                                         "stream": True})
    return client.send(request, stream=True)


def test_queue_full_is_429_with_retry_after(small):
    with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
        first = _open_stream(a, small.url)  # takes the one row
        try:
            assert first.status_code == 200
            lines = first.iter_lines()  # kept: dropping the iterator would close the stream
            assert next(lines).startswith("data: ")  # it is decoding
            second = _open_stream(b, small.url)  # waits in the one queue place
            assert second.status_code == 200
            r = httpx.post(small.url + "/v1/completions", json={"model": "tiny-sft", "prompt": "x", "max_tokens": 2})
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
            with pytest.raises(openai.RateLimitError):
                openai.OpenAI(base_url=small.url + "/v1", api_key="x", max_retries=0).completions.create(
                    model="tiny-sft", prompt="x", max_tokens=2)
            second.close()
        finally:
            first.close()


def test_disconnect_mid_stream_frees_the_row(small):
    finished_before = _metric(small.url, "tqstar_tokens_total", 'kind="completion"')
    steps_before = _metric(small.url, "tqstar_step_rows_count")
    with httpx.Client(timeout=60) as c:
        stream = _open_stream(c, small.url)
        lines = stream.iter_lines()
        got = [line for line, _ in zip((x for x in lines if x), range(3))]
        assert len(got) == 3
        stream.close()
    # the row is freed: the next request runs (max_batch is 1) and finishes while the cancelled one never does
    r = httpx.post(small.url + "/v1/completions", json={"model": "tiny-sft", "prompt": PROMPTS[0], "max_tokens": 3},
                   timeout=120)
    assert r.status_code == 200
    steps = _metric(small.url, "tqstar_step_rows_count") - steps_before
    assert steps < 400, "the disconnected request ran to its end"
    finished = _metric(small.url, "tqstar_tokens_total", 'kind="completion"') - finished_before
    assert finished == r.json()["usage"]["completion_tokens"]  # only the second request finished
    assert _metric(small.url, "tqstar_active_rows") == 0


def test_sigterm_during_a_stream_finishes_it_and_exits_0(tmp_path, tiny_paths):
    config = _config(tiny_paths, presets={"slow": {"method": "tq-direct", "k": 8, "rollout_len": 20}})
    server = _start(tmp_path, config)
    try:
        with httpx.Client(timeout=120) as c:
            stream = _open_stream(c, server.url, max_tokens=40)
            assert stream.status_code == 200
            lines = (line for line in stream.iter_lines() if line)
            first = next(lines)
            os.kill(server.proc.pid, signal.SIGTERM)
            rest = list(lines)
            stream.close()
        assert server.proc.wait(timeout=120) == 0
        assert rest[-1] == "data: [DONE]"
        chunks = [json.loads(line[len("data: "):]) for line in [first, *rest[:-1]]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert len([c for c in chunks if c["choices"][0]["finish_reason"] is None]) == 40
        with pytest.raises(httpx.ConnectError):
            httpx.get(server.url + "/health")
    finally:
        server.stop()


# ---- an aligned proxy in front of an OpenAI-compatible server ----------------------------------------------------
def test_openai_models_behind_the_server(tmp_path, tiny_paths, sft):
    from fake_openai import FakeServer

    fake = FakeServer(sft, "vllm")
    try:
        config = {"sft": {"path": f"openai:{fake.url}#tiny", "tokenizer": str(tiny_paths["sft"])},
                  "reward": "sentiment", "decode": {"k": 4, "rollout_len": 4},
                  "presets": {"remote-cd": {"method": "cd"}, "remote-sft": {"method": "sft"}}}
        engine = ServeConfig.from_dict(config).run.build(check=False)
        with _start(tmp_path, config) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            for preset in ("remote-cd", "remote-sft"):
                want = _expected(engine, config, preset, [_chat(PROMPTS[4])], 8)[0]
                chunks = client.chat.completions.create(model=preset, max_tokens=8, stream=True,
                                                        messages=_chat(PROMPTS[4]))
                assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    finally:
        fake.close()


# ---- the real model ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_with_the_dpo_baseline(tmp_path):
    from tqstar.builtin.models import smollm2_dir

    smollm2_dir()  # installed (make models)?
    config = {"sft": "smollm2", "baseline": {"path": "smollm2", "adapter": "builtin:smollm2-sentiment-dpo"},
              "reward": "sentiment", "decode": {"k": 5, "rollout_len": 8, "alpha": 2.0},
              "presets": {"smollm2-tq": {"method": "tq-direct"}}}
    engine = ServeConfig.from_dict(config).run.build(check=False)
    prompt = "How do I make a cup of tea?"
    want = _expected(engine, config, "smollm2-tq", [_chat(prompt)], 8)[0]
    with _start(tmp_path, config) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        chunks = client.chat.completions.create(model="smollm2-tq", max_tokens=8, stream=True,
                                                messages=_chat(prompt))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text


# ---- in this process: the deadline and the end of the shutdown grace ---------------------------------------------
SLOW = {"k": 8, "rollout_len": 60, "prune": False, "reuse_rollouts": False}  # 64 steps of 8 x 60-token rollouts


def _app_client(engine, config: dict, **limits):
    from fastapi.testclient import TestClient

    from tqstar.serving.app import create_app

    config = {**config, "limits": {**config["limits"], **limits}}
    return TestClient(create_app(engine, ServeConfig.from_dict(config)))


def test_a_request_past_its_deadline_ends_with_504(engine, config):
    with _app_client(engine, config, request_timeout_s=0.05) as c:
        r = c.post("/v1/completions", json={"model": "tiny-tq", "prompt": PROMPTS[0], "max_tokens": 64,
                                            "tqstar": SLOW})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert c.get("/health").status_code == 200  # the engine thread goes on


def test_streams_still_open_when_the_shutdown_grace_ends_get_an_error_then_done(engine, config):
    with _app_client(engine, config, max_batch=1) as c:
        with c.stream("POST", "/v1/completions", json={"model": "tiny-tq", "prompt": PROMPTS[0], "max_tokens": 64,
                                                       "stream": True, "tqstar": SLOW}) as r:
            lines = (line for line in r.iter_lines() if line)
            assert json.loads(next(lines)[len("data: "):])["choices"][0]["finish_reason"] is None
            c.app.state.scheduler.shutdown(0.0)
            rest = list(lines)
        assert rest[-1] == "data: [DONE]"
        assert json.loads(rest[-2][len("data: "):])["error"]["code"] == "shutting_down"
        r = c.post("/v1/completions", json={"model": "tiny-sft", "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert c.get("/health").status_code == 503


def test_cors_origins_let_a_browser_page_call_the_api(engine, config):
    with _app_client(engine, {**config, "cors_origins": ["http://localhost:5173"]}) as c:
        r = c.options("/v1/chat/completions", headers={"Origin": "http://localhost:5173",
                                                        "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
        r = c.get("/v1/models", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers


def test_an_unexpected_failure_is_an_openai_shaped_500(engine, config, monkeypatch):
    from fastapi.testclient import TestClient

    from tqstar.serving.app import create_app

    app = create_app(engine, ServeConfig.from_dict(config))

    def broken(prompt):
        raise KeyError("a bug")

    monkeypatch.setattr(engine.models.sft, "encode_prompt", broken)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/completions", json={"model": "tiny-sft", "prompt": "x"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"


def test_presets_with_named_baselines_decode_with_them(tiny_paths, config):
    """A prompted baseline on the SFT weights (shared, not loaded twice) beside the top-level baseline."""
    from fastapi.testclient import TestClient

    from tqstar import Engine
    from tqstar.serving.app import create_app
    from tqstar.serving.server import build_engines

    named = {**config, "baselines": {"kind": {"path": str(tiny_paths["sft"]), "system_prompt": "be kind"}},
             "presets": {"kind-tq": {"method": "tq-direct", "baseline": "kind"}, "tiny-tq": {"method": "tq-direct"}}}
    serve_config = ServeConfig.from_dict(named)
    engines = build_engines(serve_config)
    kind = engines["kind"].models
    assert kind.baseline.model is kind.sft.model is engines[None].models.sft.model
    assert kind.reward is engines[None].models.reward
    assert kind.baseline.encode_prompt("x") != kind.sft.encode_prompt("x")
    want = Engine(kind.sft, kind.baseline, kind.reward).generate([PROMPTS[6]], _params(named, "kind-tq",
                                                                 max_new_tokens=8), progress=False)[0]
    with TestClient(create_app(engines, serve_config)) as c:
        models = c.get("/v1/models").json()["data"]
        assert [m["tqstar"]["baseline"] for m in models] == ["kind", None]
        r = c.post("/v1/completions", json={"model": "kind-tq", "prompt": PROMPTS[6], "max_tokens": 8}).json()
        assert r["choices"][0]["text"] == want.text
    with pytest.raises(ConfigError, match="preset 'x' names baseline 'nope', which `baselines` does not define"):
        ServeConfig.from_dict({**named, "presets": {"x": {"baseline": "nope"}}})
