"""Real OpenAI clients beyond ``openai`` against a real ``tqstar serve`` (the tiny models): LangChain's
``ChatOpenAI`` (streaming and not) and the lm-evaluation-harness with its ``local-chat-completions`` model on the
repo's ``tqstar_oneword`` task (setups/lm-eval, local data, nothing downloaded). Each client's answers must be the
server's own answers to the same requests. Needs the ``clients`` extra (``pip install -e '.[clients]'``; make test
installs it); without it these tests skip with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tqstar.testing.servers import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
TASKS = ROOT / "setups" / "lm-eval"
PROMPT = "the cat and the park"


@pytest.fixture(scope="module")
def server(tiny_paths, tmp_path_factory):
    work = tmp_path_factory.mktemp("clients")
    config = {"sft": str(tiny_paths["sft"]), "baseline": str(tiny_paths["baseline"]), "reward": "sentiment",
              "decode": {"k": 3, "rollout_len": 3, "alpha": 2.0},
              "presets": {"tiny-tq": {"method": "tq-direct"}, "tiny-sft": {"method": "sft"}},
              "limits": {"max_tokens": 16}}
    (work / "serve.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    argv = [sys.executable, "-m", "tqstar.cli", "serve", "--config", str(work / "serve.yaml"), "--port", str(port)]
    with ServerProcess("tqstar", argv, port, work / "serve.log", ready_timeout_s=180) as process:
        yield process.url


def ask(url: str, body: dict) -> dict:
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_langchain_chat_openai_invoke_and_stream(server):
    chat_openai = pytest.importorskip("langchain_openai", reason="pip install -e '.[clients]'").ChatOpenAI
    messages = [("system", "You are kind."), ("human", PROMPT)]
    llm = chat_openai(model="tiny-tq", base_url=server + "/v1", api_key="unused", max_tokens=8, temperature=0,
                      max_retries=0, extra_body={"tqstar": {"alpha": 1.0}})
    want = ask(server, {"model": "tiny-tq", "max_tokens": 8, "temperature": 0, "tqstar": {"alpha": 1.0},
                        "messages": [{"role": "system", "content": "You are kind."},
                                     {"role": "user", "content": PROMPT}]})
    text = want["choices"][0]["message"]["content"]
    assert text.strip(), "an empty answer compares nothing"
    reply = llm.invoke(messages)
    assert reply.content == text
    assert reply.usage_metadata["output_tokens"] == want["usage"]["completion_tokens"]
    assert reply.response_metadata["finish_reason"] == want["choices"][0]["finish_reason"]
    chunks = list(llm.bind(stream_options={"include_usage": True}).stream(messages))
    assert "".join(c.content for c in chunks) == text
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.usage_metadata["output_tokens"] == want["usage"]["completion_tokens"]  # from the usage chunk


def test_lm_eval_local_chat_completions_scores_a_served_preset(server, tmp_path, monkeypatch):
    """lm-eval's own API model scores the served SFT preset on a generation task from local data; every sample it
    recorded is the server's answer to that prompt (greedy, the same request)."""
    lm_eval = pytest.importorskip("lm_eval", reason="pip install -e '.[clients]'")
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args=f"model=tiny-sft,base_url={server}/v1/chat/completions,tokenizer_backend=none,max_retries=1,"
                   "num_concurrent=2",
        tasks=["tqstar_oneword"], task_manager=TaskManager(include_path=str(TASKS)), apply_chat_template=True,
        limit=4, log_samples=True)
    scores = results["results"]["tqstar_oneword"]
    assert 0.0 <= scores["exact_match,first-word"] <= 1.0
    samples = results["samples"]["tqstar_oneword"]
    assert len(samples) == 4
    for sample in samples:
        question = sample["doc"]["question"] + " Answer with one word."
        want = ask(server, {"model": "tiny-sft", "messages": [{"role": "user", "content": question}],
                            "max_tokens": 8, "temperature": 0, "stop": ["\n", "."]})
        assert sample["resps"][0][0] == want["choices"][0]["message"]["content"]
