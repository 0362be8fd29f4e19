"""The pairwise LLM judge against a local fake OpenAI-compatible server (127.0.0.1 only)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tqstar.errors import ConfigError, TQStarError
from tqstar.eval.judge import LLMJudge, parse_verdict


class _Judge(BaseHTTPRequestHandler):
    """Prefers the response containing 'good'; answers nonsense when the prompt says 'confuse'."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][0]["content"]
        a = text.split("[Response A]")[1].split("[Response B]")[0]
        answer = "maybe?" if "confuse" in text else ("A" if "good" in a else "B" if "good" in text else "TIE")
        payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_pairwise_verdicts_map_back_through_random_order(server):
    judge = LLMJudge(server, "fake")
    prompts = [f"p{i}" for i in range(20)]
    wins = judge.compare(prompts, ["a good answer"] * 20, ["meh"] * 20)
    assert wins == {"win": 1.0, "tie": 0.0, "lose": 0.0, "unparsable": 0.0}
    losses = judge.compare(prompts, ["meh"] * 20, ["a good answer"] * 20)
    assert losses["lose"] == 1.0
    ties = judge.compare(prompts, ["meh"] * 20, ["also meh"] * 20)
    assert ties["tie"] == 1.0


def test_unparsable_answers_are_counted_not_tied(server):
    result = LLMJudge(server, "fake").compare(["confuse me", "fine"], ["good", "good"], ["bad", "bad"])
    assert result == {"win": 0.5, "tie": 0.0, "lose": 0.0, "unparsable": 0.5}


@pytest.mark.parametrize(("answer", "verdict"), [("A", "A"), (" b.", "B"), ("Tie", "TIE"), ("A or B", None), ("", None)])
def test_parse_verdict(answer, verdict):
    assert parse_verdict(answer) == verdict


def test_judge_not_configured_and_unreachable():
    with pytest.raises(ConfigError, match="needs both a base URL and a served model name"):
        LLMJudge("", "model")
    with pytest.raises(TQStarError, match=r"LLM judge at http://127.0.0.1:9 failed"):
        LLMJudge("http://127.0.0.1:9", "m", timeout=2).compare(["p"], ["a"], ["b"])
