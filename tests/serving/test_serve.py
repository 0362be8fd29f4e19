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
import re
import signal
import sys
import time

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
                    "tiny-sft": {"method": "sft"}, "tiny-sample": {"method": "tq-direct", "temperature": 1.0},
                    "tiny-block": {"method": "tq-direct", "alpha": 2.0, "block_len": 3, "temperature": 1.0},
                    "tiny-soft-bon": {"method": "soft-bon", "bon_n": 3, "temperature": 1.0}},
        "limits": {"max_batch": 16, "max_queue": 64, "max_tokens": 64, "max_prompt_tokens": 48,
                   "max_body_bytes": 20_000, "max_k": 8, "max_step_tokens": 500},
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


@pytest.mark.parametrize("preset", ["tiny-tq", "tiny-cd", "tiny-sft", "tiny-block", "tiny-soft-bon"])
def test_chat_and_completion_equal_generate(client, engine, config, preset):
    prompt = PROMPTS[3]  # a seed: a request without one samples afresh (tiny-block and tiny-soft-bon sample)
    want = _expected(engine, config, preset, [_chat(prompt)], 12, seed=11)[0]
    chat = client.chat.completions.create(model=preset, messages=_chat(prompt), max_tokens=12, seed=11)
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
    want = _expected(engine, config, preset, [prompt], 12, seed=11)[0]
    text = client.completions.create(model=preset, prompt=prompt, max_tokens=12, seed=11)
    assert text.object == "text_completion" and text.choices[0].text == want.text
    assert text.usage.total_tokens == text.usage.prompt_tokens + len(want.token_ids)
    if not _params(config, preset).temperature:  # sampled: a message list and a str are two prompts' streams
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
    *chunks, usage_chunk = chunks  # OpenAI's usage chunk: choices [], after every other chunk
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == len(want.token_ids)
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + len(want.token_ids)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == whole.choices[0].message.content == want.text
    token_chunks = [c for c in chunks[1:] if c.choices[0].finish_reason is None]
    assert len(token_chunks) == len(want.token_ids)  # one chunk per step, here one token each
    last = chunks[-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.model_extra["tqstar"]["reward"] == pytest.approx(want.reward)
    assert all(c.usage is None and "usage" in c.model_fields_set for c in chunks)  # null, as OpenAI sends


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


def test_blocks_stream_block_by_block_with_their_sampled_candidates(client, engine, config):
    """A blockwise preset streams each block as it is chosen, the decision's trace row (its k sampled blocks, their
    values and the choice) with the block's first token; the text, the trace and an override of ``block_len`` are
    what ``generate`` gives."""
    prompt = PROMPTS[11]
    want = _expected(engine, config, "tiny-block", [_chat(prompt)], 10, trace=True, seed=5)[0]
    chunks = list(client.chat.completions.create(model="tiny-block", messages=_chat(prompt), max_tokens=10, seed=5,
                                                 stream=True, extra_body={"tqstar": {"trace": True}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    rows = [c.model_extra["tqstar"]["trace"] for c in chunks if c.model_extra.get("tqstar", {}).get("trace")]
    assert [(row["step"], row["blocks"], row["chosen"]) for row in rows] == [
        (row["step"], row["blocks"], row["chosen"]) for row in want.trace]
    assert [t for row in rows for t in row["blocks"][row["chosen"]]] == want.token_ids
    assert all(len(row["blocks"]) == 4 and len(row["q"]) == 4 for row in rows)
    body = client.chat.completions.create(model="tiny-tq", messages=_chat(prompt), max_tokens=8, temperature=1.0,
                                          seed=5, extra_body={"tqstar": {"block_len": 2}})
    override = _expected(engine, config, "tiny-tq", [_chat(prompt)], 8, block_len=2, temperature=1.0, seed=5)[0]
    assert body.choices[0].message.content == override.text
    assert body.model_extra["tqstar"]["kl_kind"] == "estimate" and body.model_extra["tqstar"]["params"]["block_len"] == 2


def test_overrides_change_the_answer_like_the_cli(client, engine, config):
    prompt = PROMPTS[11]
    want = _expected(engine, config, "tiny-tq", [prompt], 10, alpha=0.0, k=2)[0]
    got = client.completions.create(model="tiny-tq", prompt=prompt, max_tokens=10,
                                    extra_body={"tqstar": {"alpha": 0, "k": 2}})
    assert got.choices[0].text == want.text
    assert got.model_extra["tqstar"]["params"]["k"] == 2


def test_an_override_the_method_ignores_is_a_400_naming_the_field(client):
    """No flag without an effect, over HTTP too: k sent to a plain-decoding preset, or soft-bon's β to a TQ* one,
    would change nothing."""
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-sft", prompt="hello", max_tokens=2, extra_body={"tqstar": {"k": 3}})
    assert "`tqstar.k` has no effect on method 'sft'" in str(err.value) and "drop it" in str(err.value)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="tiny-tq", prompt="hello", max_tokens=2,
                                  extra_body={"tqstar": {"bon_beta": 0.5}})
    assert "`tqstar.bon_beta` has no effect" in str(err.value)


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


def test_without_a_seed_each_answer_is_fresh_and_reports_the_seed_that_repeats_it(client):
    """As OpenAI and vLLM: no seed is fresh randomness (a chat UI's "regenerate" gives another answer); the seed
    used comes back in tqstar.params, and sending it repeats the answer."""
    answers = [client.completions.create(model="tiny-sample", prompt=PROMPTS[2], max_tokens=12) for _ in range(4)]
    texts = {a.choices[0].text for a in answers}
    seeds = [a.model_extra["tqstar"]["params"]["seed"] for a in answers]
    assert len(set(seeds)) == 4 and len(texts) > 1, texts
    again = client.completions.create(model="tiny-sample", prompt=PROMPTS[2], max_tokens=12, seed=seeds[0])
    assert again.choices[0].text == answers[0].choices[0].text
    assert again.model_extra["tqstar"]["params"]["seed"] == seeds[0]


def test_params_report_what_ran(client, config):
    """tqstar.params is this request's: its seed, budget, stop strings, temperature and every override."""
    body = client.completions.create(model="tiny-tq", prompt=PROMPTS[8], max_tokens=7, seed=5, stop=["zzz", "qq"],
                                     temperature=0.5, extra_body={"tqstar": {"k": 3, "alpha": 1.5, "trace": True}})
    params = body.model_extra["tqstar"]["params"]
    assert params | {} == params and {k: params[k] for k in ("seed", "max_new_tokens", "stop", "temperature", "k",
                                                             "alpha", "trace", "method")} == \
        {"seed": 5, "max_new_tokens": 7, "stop": ["zzz", "qq"], "temperature": 0.5, "k": 3, "alpha": 1.5,
         "trace": True, "method": "tq-direct"}
    assert params["rollout_len"] == config["decode"]["rollout_len"]  # the preset's, not overridden
    chunks = list(client.completions.create(model="tiny-tq", prompt=PROMPTS[8], max_tokens=5, seed=9, stream=True))
    assert chunks[-1].model_extra["tqstar"]["params"]["seed"] == 9
    assert chunks[-1].model_extra["tqstar"]["params"]["max_new_tokens"] == 5


def test_max_tokens_defaults_to_the_rest_of_the_context_capped_by_the_server(client, engine, config):
    """As vLLM: no max_tokens is the model's context minus the prompt, capped by the server's limit (here 64, which
    is below the tiny model's context); the preset's max_new_tokens (16) is not the default any more."""
    body = client.completions.create(model="tiny-sft", prompt=PROMPTS[0])
    params = body.model_extra["tqstar"]["params"]
    context = engine.models.sft.max_context
    prompt = body.usage.prompt_tokens
    assert params["max_new_tokens"] == min(config["limits"]["max_tokens"], context - prompt) == 64
    assert body.usage.completion_tokens <= 64
    want = _expected(engine, config, "tiny-sft", [PROMPTS[0]], 64)[0]
    assert body.choices[0].text == want.text


def _turn_answer(engine, config, messages, ending, max_tokens=8):
    """What the decoder gives for ``messages`` ended as ``ending`` (the library's Engine calls, no server)."""
    params = _params(config, "tiny-sft", max_new_tokens=max_tokens)
    state = engine.new_state(messages, params, ending=ending)
    return engine.finish(engine.decoder(params).run([state]), params)[0].text


def test_a_final_assistant_message_gets_a_new_turn_unless_continuation_is_asked(client, engine, config):
    """OpenAI starts a new assistant turn after a final assistant message; vLLM's continue_final_message (and
    add_generation_prompt: false) are the opt-ins, and tqstar takes the same names."""
    messages = [*_chat(PROMPTS[10]), {"role": "assistant", "content": "The cat"}]
    new_turn = client.chat.completions.create(model="tiny-sft", messages=messages, max_tokens=8)
    assert new_turn.choices[0].message.content == _turn_answer(engine, config, messages, "assistant")
    cont = client.chat.completions.create(model="tiny-sft", messages=messages, max_tokens=8,
                                          extra_body={"continue_final_message": True,
                                                      "add_generation_prompt": False})
    assert cont.choices[0].message.content == _turn_answer(engine, config, messages, "continue")
    assert cont.choices[0].message.content == _expected(engine, config, "tiny-sft", [messages], 8)[0].text  # generate
    assert new_turn.usage.prompt_tokens > cont.usage.prompt_tokens  # the new turn's header
    bare = client.chat.completions.create(model="tiny-sft", messages=messages, max_tokens=8,
                                          extra_body={"add_generation_prompt": False})
    assert bare.choices[0].message.content == _turn_answer(engine, config, messages, "none")


def test_a_system_only_conversation_is_answered(client, engine, config):
    messages = [{"role": "system", "content": "Say something about the park."}]
    body = client.chat.completions.create(model="tiny-tq", messages=messages, max_tokens=6)
    assert body.choices[0].message.content == _expected(engine, config, "tiny-tq", [messages], 6)[0].text


def test_one_model_by_id(server, client, config):
    card = client.models.retrieve("tiny-cd")
    assert card.id == "tiny-cd" and card.object == "model"
    method = card.model_extra["tqstar"]["method"]
    assert method["name"] == "cd" and method["rolls"] == "sft" and "rollout_len" in method["uses"]
    assert "tail" in method["uses"]  # a token-level method: its top k's rest of the vocabulary
    sft = client.models.retrieve("tiny-sft").model_extra["tqstar"]["method"]
    assert "alpha" not in sft["uses"] and "temperature" in sft["uses"] and "tail" not in sft["uses"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


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
    (b'{"model": "tiny-tq", "prompt": "\\ud800"}', 400, "prompt", "invalid_text"),  # a lone surrogate is valid JSON
    (b'{"model": "tiny-tq", "messages": [{"role": "user", "content": "a\\udfffb"}]}', 400, "messages.0.content",
     "invalid_text"),
    (b"[" * 5000 + b"]" * 5000, 400, None, "invalid_json"),
    (b'{"model": "tiny-tq", "prompt": "x", "user": ' + b"[" * 40 + b"]" * 40 + b"}", 400, "user" + ".0" * 31,
     "invalid_json"),
    (b'{"model": "tiny-tq", "prompt": "x", "temperature": NaN}', 400, None, "invalid_json"),
    (b'{"model": "tiny-tq", "prompt": "x", "seed": 1' + b"0" * 5000 + b"}", 400, None, "invalid_json"),
    (b'["model", "tiny-tq"]', 400, None, "invalid_json"),
    (b"\xff\xfe{}", 400, None, "invalid_json"),
    ({"model": "tiny-tq", "prompt": "x", "seed": 2**64}, 400, "seed", None),
    ({"model": "tiny-tq", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", None),
    ({"model": "tiny-tq", "prompt": "x", "stream_options": {"include_usage": True}}, 400, "stream_options",
     "unsupported_parameter"),
    ({"model": "tiny-tq", "messages": [{"role": "user", "content": "x"}], "continue_final_message": True}, 400,
     "continue_final_message", None),
    ({"model": "tiny-tq", "messages": [{"role": "assistant", "content": "x"}], "continue_final_message": True,
      "add_generation_prompt": True}, 400, "continue_final_message", None),
    ({"model": "tiny-tq", "prompt": "x", "tqstar": {"k": 8, "rollout_len": 64}, "max_tokens": 64}, 400,
     "tqstar.k", "request_too_costly"),
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
def test_bad_requests_get_openai_errors(server, body, status, param, code, tiny_paths):
    chat = (b'"messages"' in body) if isinstance(body, bytes) else "messages" in body
    path = "/v1/chat/completions" if chat else "/v1/completions"
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server.url + path, headers={**_headers(), "Content-Type": "application/json"}, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code
    assert_api_facing(error["message"], tiny_paths)
    assert r.headers["x-should-retry"] == "false"  # the same request fails the same way


def assert_api_facing(message: str, tiny_paths) -> None:
    """One line of advice for an API client: no command-line flag, no path on the server."""
    assert message and "\n" not in message
    assert not re.search(r"(^|\s)--[a-z]", message), message
    assert not any(str(path) in message for path in tiny_paths.values()), message
    assert "tmp/" not in message and "site-packages" not in message, message


def test_only_json_bodies_are_read(server):
    """A page in the user's browser may POST text/plain (or a form) to a server on localhost without a CORS
    preflight; the server reads only application/json, so such a request cannot drive it."""
    body = json.dumps({"model": "tiny-sft", "prompt": "x", "max_tokens": 2})
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {**_headers(), **({"Content-Type": content_type} if content_type else {})}
        r = httpx.post(server.url + "/v1/completions", content=body.encode(), headers=headers)
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
    ok = httpx.post(server.url + "/v1/completions", content=body.encode(),
                    headers={**_headers(), "Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


def test_a_prompt_over_the_context_gets_api_advice(engine, config, tiny_paths):
    """The advice names request fields (messages, max_tokens), never --truncate-prompt or a server path."""
    context = engine.models.sft.max_context
    prompt = " ".join(["cat"] * (context - 20))
    with _app_client(engine, config, max_tokens=4 * context, max_prompt_tokens=4 * context) as c:
        r = c.post("/v1/completions", json={"model": "tiny-sft", "prompt": prompt, "max_tokens": 100})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"
        assert f"{context}-token context" in error["message"] and "lower `max_tokens`" in error["message"]
        assert_api_facing(error["message"], tiny_paths)
        r = c.post("/v1/completions", json={"model": "tiny-sft", "prompt": " ".join(["cat"] * (2 * context))})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert_api_facing(r.json()["error"]["message"], tiny_paths)
        r = c.post("/v1/completions", json={"model": "tiny-sft", "prompt": prompt})  # no max_tokens: what is left
        assert r.status_code == 200 and r.json()["tqstar"]["params"]["max_new_tokens"] == \
            context - r.json()["usage"]["prompt_tokens"]


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
                 "tqstar_time_to_first_token_seconds_count", "tqstar_inter_token_latency_seconds_count",
                 "tqstar_e2e_request_latency_seconds_count", "tqstar_queue_time_seconds_count"):
        assert name in text
    assert _metric(server.url, "tqstar_requests_total", 'endpoint="/v1/completions",status="200"') >= 1
    assert _metric(server.url, "tqstar_tokens_total", 'kind="completion"') >= 4
    assert _metric(server.url, "tqstar_inter_token_latency_seconds_count") >= 3  # one per step after the first
    finished = {reason: _metric(server.url, "tqstar_finished_total", f'reason="{reason}"')
                for reason in ("eos", "stop", "length")}
    assert sum(finished.values()) >= _metric(server.url, "tqstar_e2e_request_latency_seconds_count") - \
        _metric(server.url, "tqstar_finished_total", 'reason="error"') - 1 and finished["length"] >= 1


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
            assert "x-should-retry" not in r.headers  # a later retry may find room
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
            time.sleep(0.5)
            draining = httpx.get(server.url + "/health")  # still listening while the stream drains
            refused = httpx.post(server.url + "/v1/completions", json={"model": "slow", "prompt": "x"})
            rest = list(lines)
            stream.close()
        assert draining.status_code == 503 and draining.json() == {"status": "unavailable"}
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
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


#: The request headers of the OpenAI JS SDK's chat.completions.create(..., {stream: true}) in a browser, as its
#: preflight lists them (openai-node: buildHeaders in src/client.ts and getPlatformHeaders in
#: src/internal/detect-platform.ts; the organization and project headers when the client is given them).
OPENAI_JS_HEADERS = ("authorization", "content-type", "openai-organization", "openai-project", "x-stainless-arch",
                     "x-stainless-helper-method", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
                     "x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version",
                     "x-stainless-timeout")


def test_cors_origins_let_a_browser_page_call_the_api(engine, config):
    with _app_client(engine, {**config, "cors_origins": ["http://localhost:5173"]}) as c:
        r = c.options("/v1/chat/completions", headers={"Origin": "http://localhost:5173",
                                                        "Access-Control-Request-Method": "POST"})
        assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
        preflight = c.options("/v1/chat/completions", headers={
            "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ",".join(OPENAI_JS_HEADERS)})
        assert preflight.status_code == 200, preflight.text
        allowed = {h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert set(OPENAI_JS_HEADERS) <= allowed
        r = c.get("/v1/models", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in r.headers
        r = c.options("/v1/chat/completions", headers={"Origin": "http://elsewhere.example",
                                                        "Access-Control-Request-Method": "POST"})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


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


# ---- fair shares ----------------------------------------------------------------------------------------------
HEAVY = {"k": 8, "rollout_len": 60, "prune": False, "reuse_rollouts": False}  # a step: 60 forwards of 8 rollouts


def test_a_light_request_is_not_paced_by_a_heavy_one(engine, config):
    """A plain sft request beside a heavy TQ* request (another group) finishes while the heavy one is still in its
    first steps: the heavy step hands the machine over between its model forwards, so the light rows advance at
    their own pace. Counted in the heavy request's committed tokens, not timed. Stepping groups in turn (one step
    each per round) would let the heavy request commit one token per light token."""
    import threading

    with _app_client(engine, config) as c:
        scheduler = c.app.state.scheduler
        heavy_done = threading.Event()

        def heavy():
            c.post("/v1/completions", json={"model": "tiny-tq", "prompt": PROMPTS[1], "max_tokens": 12,
                                            "tqstar": HEAVY})
            heavy_done.set()

        thread = threading.Thread(target=heavy)
        thread.start()
        deadline = time.monotonic() + 60
        while scheduler.running < 1 and time.monotonic() < deadline:  # the heavy request holds a row
            time.sleep(0.01)
        light = c.post("/v1/completions", json={"model": "tiny-sft", "prompt": PROMPTS[2], "max_tokens": 10})
        committed = [len(t.state.response) for g in list(scheduler._groups.values()) for t in g.tickets]
        assert light.status_code == 200 and light.json()["usage"]["completion_tokens"] == 10
        assert not heavy_done.is_set() and committed and max(committed) <= 3, committed
        thread.join(120)


def test_fair_share_hands_over_to_the_group_that_used_least(engine):
    """FairShare alone: a holder that has used more virtual time than a waiting group hands over at its next
    checkpoint; one that has used less keeps the machine."""
    import threading

    from tqstar.serving.scheduler import FairShare, Group

    share = FairShare(quantum_s=0.0)
    heavy, light = (Group(name, engine, None, None) for name in ("heavy", "light"))
    share.acquire(heavy)
    heavy.vtime = 5.0  # it has computed a lot
    order = []

    def run_light():
        share.acquire(light)
        order.append("light")
        share.release(light)

    thread = threading.Thread(target=run_light)
    thread.start()
    while light not in share._waiting:
        time.sleep(0.001)
    share.checkpoint(heavy)  # light (vtime 0) is due: heavy waits until light has run
    order.append("heavy")
    thread.join()
    assert order == ["light", "heavy"]
    light.vtime = 100.0
    share.checkpoint(heavy)  # nobody waiting: heavy keeps it
    share.release(heavy)


def test_a_port_in_use_is_found_before_the_models_load(tiny_paths, monkeypatch):
    import socket
    import subprocess

    from tqstar.serving import server as server_module

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "tqstar.cli", "serve", "--port", str(port), "--sft",
                               str(tiny_paths["sft"])], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"tqstar: error: port {port} on 127.0.0.1 is already in use")
        # in this process: the port is taken before anything loads
        monkeypatch.setattr(server_module, "build_engines", lambda config: pytest.fail("models loaded first"))
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            server_module.serve(ServeConfig.from_dict({"sft": str(tiny_paths["sft"]), "port": port}))


def test_the_kv_cap_is_checked_at_admission_and_shapes_the_default_budget(engine, config):
    """A request asking for more KV cache than the server allows is a 400 naming max_tokens and what would fit;
    without max_tokens it gets the largest budget under the cap instead of failing."""
    from tqstar.serving.budget import kv_bytes, largest_budget

    params = _params(config, "tiny-tq")
    prompt = {role: len(engine.models.lm(role).encode_prompt(PROMPTS[0])) for role in ("sft", "baseline")}
    cap_mb = kv_bytes(engine, params, prompt, 20) / 2**20
    fits = largest_budget(engine, params, prompt, 10**9, cap_mb * 2**20)
    assert 20 <= fits < 64
    with _app_client(engine, config, max_request_kv_mb=cap_mb) as c:
        r = c.post("/v1/completions", json={"model": "tiny-tq", "prompt": PROMPTS[0], "max_tokens": 64})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
        assert r.json()["error"]["code"] == "request_too_costly" and f"at most {fits} here" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"model": "tiny-tq", "prompt": PROMPTS[0]})
        assert r.status_code == 200 and r.json()["tqstar"]["params"]["max_new_tokens"] == fits
        r = c.post("/v1/completions", json={"model": "tiny-tq", "prompt": PROMPTS[0],
                                            "tqstar": {"k": 8, "n_rollouts": 8, "rollout_temperature": 1.0}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tqstar.n_rollouts"  # 64 rows > 32
