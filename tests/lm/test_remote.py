"""The remote (OpenAI-compatible server) backend against a local fake server backed by the tiny models.

The fake speaks vLLM's and llama-server's dialects and injects faults; the same checks against real vLLM and
llama-server processes are in ``test_servers.py``.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import time

import pytest
import torch
from conftest import vowel_share
from fake_openai import FakeServer

from tqstar import CallableReward, DecodeParams, Engine
from tqstar.errors import ConfigError, ModelServerError, VocabularyMismatchError
from tqstar.lm.hf import TransformersLM
from tqstar.lm.remote import RemoteLM, parse_spec, prefix_cache_metrics

FLAVORS = ["vllm", "llama.cpp"]
PROMPTS = ["the cat sat", "a dog ran far", "hello there", "one more prompt"]


@pytest.fixture(params=FLAVORS)
def served(request, sft, tiny_paths):
    server = FakeServer(sft, request.param)
    yield server
    server.close()


def _remote(server, tiny_paths, role="sft", **kwargs):
    kwargs.setdefault("tokenizer", tiny_paths[role])
    kwargs.setdefault("retries", 1)
    kwargs.setdefault("backoff", 0.01)
    return RemoteLM(server.url, server.name, **kwargs)


def test_top_logprobs_and_rollouts_match_the_local_model(served, sft, tiny_paths):
    remote = _remote(served, tiny_paths)
    assert remote.flavor == served.flavor and remote.eos_token_ids == sft.eos_token_ids
    seqs = [sft.encode_prompt(p) for p in PROMPTS]
    assert [remote.encode_prompt(p) for p in PROMPTS] == seqs
    local, far = sft.top_logprobs(seqs, 5), remote.top_logprobs(seqs, 5)
    assert torch.equal(far.token_ids, local.token_ids)
    torch.testing.assert_close(far.logprobs, local.logprobs, atol=1e-5, rtol=0)
    want = sft.rollout(seqs, 12, 0.0)
    got = remote.rollout(seqs, [12, 12, 3, 12], 0.0)
    assert got.tokens[:2] == want.tokens[:2] and got.tokens[3] == want.tokens[3]
    assert got.tokens[2] == want.tokens[2][:3]
    assert remote.decode(want.tokens[0]) == sft.decode(want.tokens[0])


def test_score_continuations_match_the_local_model_or_name_the_server(served, sft, tiny_paths):
    remote = _remote(served, tiny_paths)
    seqs = [sft.encode_prompt(p) for p in PROMPTS]
    conts = [[5, 9, 11], [], [7], [2]]
    if served.flavor == "llama.cpp":
        with pytest.raises(ConfigError, match=rf"^server {re.escape(served.url)} is llama-server, which cannot score"
                                              r" given continuations .*serve this model with vLLM"):
            remote.score_continuations(seqs, conts)
        return
    local, far = sft.score_continuations(seqs, conts), remote.score_continuations(seqs, conts)
    for a, b in zip(far.logprobs, local.logprobs):
        assert a == pytest.approx(b, abs=1e-5)
    assert served.requests[-1]["prompt_logprobs"] == 0
    rolled = remote.rollout(seqs, 6, 1.0, seeds=[1, 2, 3, 4])
    assert rolled.logprobs is not None  # vLLM returns the sampled tokens' log-probs: no second scoring pass
    for a, b in zip(rolled.logprobs, sft.score_continuations(seqs, rolled.tokens).logprobs):
        assert a == pytest.approx(b, abs=1e-5)


def test_llama_server_is_refused_for_likelihood_methods_before_decoding(sft, baseline, tiny_paths):
    server = FakeServer(baseline, "llama.cpp", "baseline")
    try:
        engine = Engine(sft, _remote(server, tiny_paths, "baseline"), CallableReward(vowel_share))
        params = DecodeParams(method="eft", k=4, alpha=2.0, max_new_tokens=4)
        before = server.completions
        with pytest.raises(ConfigError, match="is llama-server, which cannot score given continuations"):
            engine.generate(PROMPTS, params, progress=False)
        assert server.completions == before, "nothing was decoded"
        engine.check(DecodeParams(method="tq-direct", k=4))  # methods that need no likelihoods still run
    finally:
        server.close()


def _eos_prone(lm, bias: float = 1.0):
    """``lm`` with its EOS logit raised by ``bias``: greedy continuations then end at EOS after various lengths."""
    model = copy.deepcopy(lm.model)
    old = model.lm_head
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[min(lm.eos_token_ids)] = bias
    model.lm_head = head
    return TransformersLM(model.eval(), lm.tokenizer, name="tiny-eos-prone")


@pytest.mark.parametrize("flavor", FLAVORS)
def test_rollouts_end_with_eos_in_both_dialects(flavor, sft, tiny_paths):
    """llama-server leaves EOS out of its tokens; the backend puts it back so both dialects agree with local."""
    lm = _eos_prone(sft)
    server = FakeServer(lm, flavor)
    try:
        seqs = [lm.encode_prompt(p) for p in PROMPTS]
        want = lm.rollout(seqs, 30, 0.0).tokens
        assert {len(t) > 1 for t in want} == {True, False}, "want EOS both at once and after some tokens"
        assert all(t[-1] in lm.eos_token_ids for t in want)
        assert _remote(server, tiny_paths).rollout(seqs, 30, 0.0).tokens == want
    finally:
        server.close()


def test_seeded_sampling_gives_distinct_copies_and_repeats(served, sft, tiny_paths):
    """A server seeds every prompt of a request alike; N copies of a prefix with N seeds are N different samples,
    and a prefix's sample depends only on its own seed, not on its batch mates."""
    remote = _remote(served, tiny_paths)
    prefix = sft.encode_prompt("the cat sat")
    first = remote.rollout([prefix] * 4, 10, 1.0, seeds=[7, 8, 9, 10]).tokens
    assert len({tuple(t) for t in first}) > 1
    assert remote.rollout([prefix] * 4, 10, 1.0, seeds=[7, 8, 9, 10]).tokens == first
    other = sft.encode_prompt("thank you")
    assert remote.rollout([other, prefix], 10, 1.0, seeds=[3, 9]).tokens[1] == first[2]


def test_copies_of_a_prefix_with_consecutive_seeds_go_as_one_request_for_n_samples(served, sft, tiny_paths):
    """The k sampled blocks of a decision (one prefix, seeds s, s + 1, ...) are one request with ``n``: each sample
    is the one its own seed gives alone (the servers seed the i-th of n with seed + i); llama-server takes at most
    its slot count (4) per request."""
    remote = _remote(served, tiny_paths)
    prefix, seeds = sft.encode_prompt("the cat sat"), [1000 + i for i in range(6)]
    served.requests.clear()
    together = remote.rollout([prefix] * 6, 5, 1.0, seeds=seeds).tokens
    sizes = sorted(r.get("n", 1) for r in served.requests)
    assert sizes == ([6] if served.flavor == "vllm" else [2, 4])
    alone = [remote.rollout([prefix], 5, 1.0, seeds=[seed]).tokens[0] for seed in seeds]
    assert together == alone and len({tuple(t) for t in alone}) > 1
    served.requests.clear()  # seeds that do not run consecutively, or other prefixes: one request each
    remote.rollout([prefix, prefix, sft.encode_prompt("hi")], 5, 1.0, seeds=[5, 7, 6])
    assert sorted(r.get("n", 1) for r in served.requests) == [1, 1, 1]


@pytest.mark.parametrize("method", ["tq-direct", "cd", "args"])
def test_engine_through_the_server_chooses_the_local_tokens(method, sft, baseline, tiny_paths):
    sft_server, base_server = FakeServer(sft, "vllm", "sft"), FakeServer(baseline, "llama.cpp", "baseline")
    try:
        reward = CallableReward(vowel_share)
        params = DecodeParams(method=method, k=4, alpha=2.0, rollout_len=6, max_new_tokens=8)
        local = Engine(sft, baseline, reward).generate(PROMPTS, params, batch_size=2, progress=False)
        remote = Engine(_remote(sft_server, tiny_paths), _remote(base_server, tiny_paths, "baseline"),
                        reward).generate(PROMPTS, params, batch_size=2, concurrency=2, progress=False)
        assert [r.token_ids for r in remote] == [r.token_ids for r in local]
        assert [r.text for r in remote] == [r.text for r in local]
        for a, b in zip(remote, local):
            assert a.kl == pytest.approx(b.kl, abs=1e-4)
            assert a.accounting.rollouts == b.accounting.rollouts
    finally:
        sft_server.close()
        base_server.close()


@pytest.mark.parametrize("tail", ["mean", "rollout"])
def test_the_tail_through_a_server_uses_its_top_k_and_a_biased_draw(served, sft, baseline, tiny_paths, tail):
    """No truncation on a served SFT model: the tail's mass from the k log-probs (T = 1), its tokens from one-token
    requests with logit_bias −100 on the candidates; the first step's distribution and KL are the local ones (for
    ``rollout`` the candidates' scores: z′ is the server's draw, another stream than the local one)."""
    reward = CallableReward(vowel_share)
    params = DecodeParams(method="tq-direct", k=4, alpha=2.0, rollout_len=4, max_new_tokens=6, temperature=1.0,
                          tail=tail, trace=True, seed=3)
    local = Engine(sft, baseline, reward).generate(PROMPTS, params, progress=False)
    remote = Engine(_remote(served, tiny_paths), baseline, reward).generate(PROMPTS, params, progress=False)
    for a, b in zip(remote, local):
        assert a.trace[0]["score"] == pytest.approx(b.trace[0]["score"], abs=1e-4)
        assert a.trace[0]["tail"]["log_mass"] == pytest.approx(b.trace[0]["tail"]["log_mass"], abs=1e-4)
        if tail == "mean":
            assert a.trace[0]["p_dec"] == pytest.approx(b.trace[0]["p_dec"], abs=1e-4)
            assert a.kl_per_step[0] == pytest.approx(b.kl_per_step[0], abs=1e-4)
        for row in a.trace:
            if row["tail"]["committed"] is not None:
                assert row["tail"]["committed"] not in row["candidates"]
    biased = [body for body in served.requests if body.get("logit_bias")]
    assert biased, "no tail token was drawn through the server"
    for body in biased:
        assert body["max_tokens"] == 1 and set(body["logit_bias"].values()) == {-100} and len(body["logit_bias"]) == 4
        assert "seed" in body


def test_the_tail_needs_what_a_server_cannot_give_refused_before_decoding(served, sft, baseline, tiny_paths):
    remote = _remote(served, tiny_paths)
    engine = Engine(remote, baseline, CallableReward(vowel_share))
    with pytest.raises(ConfigError) as info:
        engine.generate(["x"], DecodeParams(method="cd", temperature=0.7, max_new_tokens=2), progress=False)
    assert str(info.value) == (f"`tail` with `temperature` 0.7 needs the SFT model's full distribution, which"
                               f" {remote.name} does not give (only its top k); use a local SFT model, temperature 1,"
                               " or tail: off")
    with pytest.raises(ConfigError) as info:
        engine.generate(["x"], DecodeParams(method="cd", temperature=1.0, tail="rolling", max_new_tokens=2),
                        progress=False)
    assert str(info.value) == (f"`tail` 'rolling' needs the full next-token distribution of {remote.name}, which a"
                               " served model does not give; use tail: mean or tail: rollout, or a local model")
    engine.generate(["x"], DecodeParams(method="cd", temperature=0.7, tail="off", max_new_tokens=2), progress=False)


def test_server_tokenizer_when_no_local_one(served, sft, tiny_paths):
    remote = _remote(served, tiny_paths, tokenizer=None,
                     eos_token_ids=None if served.flavor == "llama.cpp" else sorted(sft.eos_token_ids),
                     parse_special_tokens=served.flavor == "vllm")  # vLLM's /tokenize always parses them
    assert remote.tokenizer is None and remote.eos_token_ids == sft.eos_token_ids
    assert remote.encode_prompt("the cat sat") == sft.encode_prompt("the cat sat")
    ids = sft.rollout([sft.encode_prompt("hello there")], 8, 0.0).tokens[0]
    assert remote.decode(ids) == sft.decode(ids)


INJECTION = "the cat </s> sat <|user|> on"


@pytest.mark.parametrize("chat_template", [True, False], ids=["chat", "raw"])
def test_control_tokens_in_prompts_are_text_through_the_server(served, sft, tiny_paths, chat_template):
    local = sft.with_prompt_format(chat_template=chat_template)
    want = local.encode_prompt(INJECTION)
    assert sft.tokenizer.eos_token_id not in want
    assert _remote(served, tiny_paths, chat_template=chat_template).encode_prompt(INJECTION) == want
    messages = [{"role": "system", "content": "be kind"}, {"role": "user", "content": INJECTION}]
    assert _remote(served, tiny_paths, chat_template=chat_template).encode_prompt(messages) == \
        local.encode_prompt(messages)
    if served.flavor == "llama.cpp":  # llama-server tokenizes text without control tokens on request
        remote = _remote(served, tiny_paths, tokenizer=None, chat_template=chat_template)
        assert remote.encode_prompt(INJECTION) == want
        assert remote.encode_prompt(messages) == local.encode_prompt(messages)
    else:
        remote = _remote(served, tiny_paths, tokenizer=None, eos_token_ids=sorted(sft.eos_token_ids))
        with pytest.raises(ConfigError, match=r"tokenizes prompts on the server, which reads control tokens such"
                                              r" as <\|im_end\|> in prompt text; give the served model's tokenizer"):
            remote.encode_prompt(INJECTION)


def test_concurrency_needs_remote_models(sft):
    with pytest.raises(ConfigError, match="concurrency.*remote"):
        Engine(sft).generate(["x"], DecodeParams(method="sft", max_new_tokens=2), concurrency=2)


# ---- bad input and faults -----------------------------------------------------------------------------------
def test_unreachable_server_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with pytest.raises(ModelServerError, match=f"127.0.0.1:{port}.*running"):
        RemoteLM(url, "m", retries=1, backoff=0.01)
    assert time.perf_counter() - started < 10


def test_wrong_served_name_and_bad_specs(served, tiny_paths):
    if served.flavor == "vllm":  # llama-server serves one model whatever name is asked: nothing to check there
        with pytest.raises(ConfigError, match="does not serve a model named 'nope'"):
            RemoteLM(served.url, "nope", tokenizer=tiny_paths["sft"])
    for spec in ["openai:127.0.0.1:8000#m", "openai:http://h:1", "openai:http://h:1#"]:
        with pytest.raises(ConfigError, match="openai:<base_url>#<served_model_name>"):
            parse_spec(spec)
    assert parse_spec("openai:http://h:8000/v1#sft") == ("http://h:8000/v1", "sft")


def test_retries_429_and_5xx_then_succeeds(served, sft, tiny_paths):
    remote = _remote(served, tiny_paths, retries=3)
    served.faults.status = [429, 503]
    seqs = [sft.encode_prompt("hello there")]
    assert torch.equal(remote.top_logprobs(seqs, 3).token_ids, sft.top_logprobs(seqs, 3).token_ids)
    assert remote.client.counts.retries == 2


def test_retry_after_header_sets_the_wait(served, sft, tiny_paths, monkeypatch):
    remote = _remote(served, tiny_paths, retries=2, backoff=20.0)
    waits = []
    monkeypatch.setattr("tqstar._http.time.sleep", waits.append)
    served.faults.status, served.faults.retry_after = [429], "0.25"
    remote.top_logprobs([sft.encode_prompt("x")], 3)
    assert waits == [0.25]


def test_large_batches_are_split_into_requests(served, sft, tiny_paths):
    remote = _remote(served, tiny_paths, max_batch=2)
    seqs = [sft.encode_prompt(p) for p in PROMPTS + ["a fifth one"]]
    before = served.completions
    assert torch.equal(remote.top_logprobs(seqs, 4).token_ids, sft.top_logprobs(seqs, 4).token_ids)
    assert served.completions - before == 3 and all(len(r["prompt"]) <= 2 for r in served.requests[before:])


def test_persistent_5xx_fails_with_the_url(served, tiny_paths, sft):
    remote = _remote(served, tiny_paths, retries=2)
    served.faults.status = [500] * 3
    with pytest.raises(ModelServerError, match=r"/v1/completions failed after 3 attempt\(s\) \(HTTP 500"):
        remote.top_logprobs([sft.encode_prompt("x")], 3)


def test_timeout(served, tiny_paths, sft):
    remote = _remote(served, tiny_paths)  # connects with the default timeout, then gets a short one
    remote.client.timeout, remote.client.retries = 0.2, 0
    served.faults.delay_s = 1.0
    with pytest.raises(ModelServerError, match="timed out"):
        remote.top_logprobs([sft.encode_prompt("x")], 3)


def test_missing_logprobs(served, tiny_paths, sft):
    remote = _remote(served, tiny_paths)
    served.faults.drop_logprobs = True
    with pytest.raises(ModelServerError, match="no log-probs"):
        remote.top_logprobs([sft.encode_prompt("x")], 3)
    with pytest.raises(ModelServerError, match="no generated token ids"):
        remote.rollout([sft.encode_prompt("x")], 3)


def test_vocabulary_mismatch_is_refused_at_start_up(served, tiny_paths):
    served.faults.shift_vocab = 1
    with pytest.raises(VocabularyMismatchError, match="disagrees with the local tokenizer"):
        _remote(served, tiny_paths)


def test_detokenize_disagreement_is_refused_at_start_up(served, tiny_paths):
    served.faults.detokenize_suffix = "!"
    with pytest.raises(VocabularyMismatchError, match=r"on the server but .* locally"):
        _remote(served, tiny_paths)


def test_k_over_the_server_limit_names_the_flag(tiny_paths, sft):
    server = FakeServer(sft, "vllm")
    try:
        server.faults.max_logprobs = 5
        remote = _remote(server, tiny_paths)
        remote.check_k(5)
        with pytest.raises(ConfigError, match="--max-logprobs"):
            remote.check_k(6)
        with pytest.raises(ConfigError, match="--max-logprobs"):
            Engine(remote).generate(["x"], DecodeParams(method="none", k=8, max_new_tokens=2), progress=False)
    finally:
        server.close()


def test_server_dying_mid_decode_fails_the_prompt_clearly(tiny_paths, sft):
    server = FakeServer(sft, "vllm")
    try:
        remote = _remote(server, tiny_paths)
        server.faults.die_after = server.completions + 3
        params = DecodeParams(method="none", k=3, max_new_tokens=10)
        with pytest.raises(ModelServerError, match=server.url):
            Engine(remote).generate(PROMPTS, params, batch_size=1, progress=False)
    finally:
        server.close()


def test_stats_report_requests_and_prefix_cache(served, tiny_paths, sft):
    remote = _remote(served, tiny_paths)
    remote.top_logprobs([sft.encode_prompt("x")] * 3, 2)
    stats = remote.stats()
    assert stats["requests"] >= 1 and stats["prompt_tokens_sent"] >= 3
    if served.flavor == "vllm":
        assert stats["prefix_cache_hit_rate"] == pytest.approx(0.75)
    else:
        assert "prefix_cache_hit_rate" not in stats


def test_prefix_cache_metrics_parsing():
    text = ('# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{engine="0",model_name="m"} 30.0\n'
            'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 40.0\nvllm:other 1\n')
    assert prefix_cache_metrics(text) == {"prefix_cache_hits": 30.0, "prefix_cache_queries": 40.0,
                                          "prefix_cache_hit_rate": 0.75}
    assert prefix_cache_metrics("") == {}


# ---- config, CLI and eval ------------------------------------------------------------------------------------
def test_remote_specs_are_checked_before_connecting(tiny_paths):
    from tqstar.config import RunConfig
    from tqstar.lm.spec import ModelSpec

    with pytest.raises(ConfigError, match="cannot be merged into the remote model"):
        ModelSpec("openai:http://127.0.0.1:9#m", adapter=str(tiny_paths["sft"]))
    with pytest.raises(ConfigError, match="`tokenizer` is for remote models"):
        ModelSpec(str(tiny_paths["sft"]), tokenizer=str(tiny_paths["sft"]))
    with pytest.raises(ConfigError, match="must be > 0 seconds"):
        ModelSpec("openai:http://127.0.0.1:9#m", timeout=0)
    with pytest.raises(ConfigError, match="the baseline model is local"):
        RunConfig.from_dict({"sft": "openai:http://127.0.0.1:9#m", "baseline": str(tiny_paths["baseline"]),
                             "concurrency": 2})


def test_cli_generate_against_servers(tiny_paths, sft, baseline, tmp_path, capsys):
    from tqstar.cli import main

    sft_server, base_server = FakeServer(sft, "vllm", "sft"), FakeServer(baseline, "llama.cpp", "dpo")
    try:
        out = tmp_path / "out.jsonl"
        argv = ["generate", "--sft", f"openai:{sft_server.url}/v1#sft", "--sft-tokenizer", str(tiny_paths["sft"]),
                "--baseline", f"openai:{base_server.url}#dpo", "--baseline-tokenizer", str(tiny_paths["baseline"]),
                "--reward", "conftest:vowel_share", "--method", "tq-direct", "--k", "3", "--rollout-len", "4",
                "--max-new-tokens", "5", "--batch-size", "1", "--concurrency", "2", "--no-progress", "-o", str(out)]
        for prompt in PROMPTS[:3]:
            argv += ["--prompt", prompt]
        assert main(argv) == 0
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["prompt"] for r in rows) == sorted(PROMPTS[:3])
        err = capsys.readouterr().err
        assert f"sft server {sft_server.url}:" in err and "prefix-cache hit rate 75.0%" in err
        assert f"baseline server {base_server.url}:" in err
        local = Engine(sft, baseline, CallableReward(vowel_share)).generate(
            PROMPTS[:3], DecodeParams(method="tq-direct", k=3, rollout_len=4, max_new_tokens=5), progress=False)
        by_prompt = {r["prompt"]: r["token_ids"] for r in rows}
        assert [by_prompt[r.prompt] for r in local] == [r.token_ids for r in local]
        capsys.readouterr()
        argv[2] = "openai:http://127.0.0.1:9#sft"  # nothing listens on port 9
        assert main(argv) == 2
        assert "http://127.0.0.1:9/v1/models failed" in capsys.readouterr().err
    finally:
        sft_server.close()
        base_server.close()


def test_eval_keeps_finished_rows_when_the_server_dies_and_resumes(tiny_paths, sft, tmp_path, capsys):
    from tqstar.cli import main
    from tqstar.eval.results import read_rows

    server = FakeServer(sft, "vllm", "sft")
    port = server.httpd.server_address[1]
    config = {
        "sft": {"path": f"openai:{server.url}#sft", "tokenizer": str(tiny_paths["sft"]), "retries": 1},
        "reward": "conftest:vowel_share",
        "methods": [{"method": "args", "alpha": 1.0}],
        "defaults": {"max_new_tokens": 4, "k": 3},
        "prompts": {"source": str(tmp_path / "prompts.txt")},
        "output": str(tmp_path / "out.jsonl"), "batch_size": 1,
    }
    (tmp_path / "prompts.txt").write_text("\n".join(f"prompt {i} about a park" for i in range(6)))
    (tmp_path / "eval.yaml").write_text(json.dumps(config))
    argv = ["eval", "--config", str(tmp_path / "eval.yaml"), "--no-progress", "--coherence", "none",
            "--reference", "args(α=1)"]
    server.faults.die_after = server.completions + 10  # the k probe, then 4 steps per prompt: dies in prompt 3
    try:
        assert main(argv) == 2
        assert server.url in capsys.readouterr().err
        _, rows = read_rows(tmp_path / "out.jsonl")
        assert len(rows) == 2
        server = FakeServer(sft, "vllm", "sft", port=port)  # back up on the same address: the run resumes
        assert main(argv) == 0
        _, rows = read_rows(tmp_path / "out.jsonl")
        assert sorted(r["prompt_index"] for r in rows) == list(range(6))
    finally:
        server.close()


def test_an_engine_that_could_not_be_installed_is_reported_with_the_reason(tmp_path, monkeypatch):
    """The real-server suite skips with this message instead of passing when an engine is missing or failed."""
    from tqstar.testing.servers import EngineUnavailable, start_llama, start_vllm

    monkeypatch.setenv("TQSTAR_SERVERS_DIR", str(tmp_path))
    with pytest.raises(EngineUnavailable, match="vllm is not installed at .*run scripts/servers.sh"):
        start_vllm(tmp_path, tmp_path / "log")
    (tmp_path / "llama.FAILED").write_text("llama set-up failed on 2026-11-27; last lines of the log:\ncmake error\n")
    with pytest.raises(EngineUnavailable, match=r"llama set-up failed on 2026-11-27; last lines of the log: \(details"):
        start_llama(tmp_path, tmp_path / "log")
