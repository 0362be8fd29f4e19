"""The server's parts without a server: incremental detokenisation, the serve config, the request models."""

from __future__ import annotations

import pytest

from tqstar.errors import ConfigError
from tqstar.params import DecodeParams
from tqstar.serving.config import Limits, ServeConfig
from tqstar.serving.detok import IncrementalText, held_back
from tqstar.serving.protocol import ChatRequest, CompletionRequest, json_safe


# ---- detok -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,stop,hold", [
    ("hello wor", ("world",), 3),
    ("hello w", ("world", "wx"), 1),
    ("hello", ("world",), 0),
    ("abc\ufffd", (), 1),
    ("ab\ufffd\ufffd", ("zz",), 2),
    ("the end<", ("<end>", "<e"), 1),
    ("x <en", ("<end>",), 3),
])
def test_held_back_is_the_longest_stop_prefix_or_broken_character(text, stop, hold):
    assert held_back(text, stop) == hold


class _Decoder:
    """A model's ``decode`` alone (not local: decoded whole every time)."""

    def __init__(self, decode) -> None:
        self.decode = decode


def _byte_tokens(text: str) -> tuple[list[int], _Decoder]:
    """Byte-level "tokens": one per UTF-8 byte, decoded like a byte-level BPE (broken characters as U+FFFD)."""
    data = text.encode()
    return list(range(len(data))), _Decoder(lambda ids: data[: len(ids)].decode(errors="replace") if ids else "")


def _stream(decode, ids, stop, final):
    detok = IncrementalText(decode, stop)
    pieces = [detok.update(ids[: j + 1]) for j in range(len(ids))]
    return pieces, detok.finish(final)


def test_multibyte_characters_are_never_split():
    text = "tea ☕ and crème brûlée 🍵"
    ids, decode = _byte_tokens(text)
    pieces, rest = _stream(decode, ids, (), text)
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + rest == text
    assert sum(1 for p in pieces if p) > 5  # it streams, not all at the end


def test_a_stop_string_that_completes_is_never_sent():
    text = "say hello <end> and more"
    ids, decode = _byte_tokens(text)
    pieces, rest = _stream(decode, ids, ("<end>",), "say hello ")
    assert "".join(pieces) + rest == "say hello "
    assert not any("<" in p for p in pieces)


def test_held_back_text_is_released_when_it_is_not_a_stop():
    text = "a <en> b"
    ids, decode = _byte_tokens(text)
    detok = IncrementalText(decode, ("<end>",))
    sent = ""
    for j in range(len(ids)):
        sent += detok.update(ids[: j + 1])
        if text[: j + 1].endswith("<en"):
            assert sent == "a "  # "<en" may still become "<end>"
    assert sent == text


def test_text_that_a_tokenizer_rewrites_is_delayed_not_contradicted():
    outputs = {1: "a", 2: "a ,", 3: "a, b"}  # clean-up rewrites " ," once the next token arrives
    detok = IncrementalText(_Decoder(lambda ids: outputs[len(ids)]), ())
    pieces = [detok.update([0] * n) for n in (1, 2, 3)]
    assert pieces == ["a", " ,", ""]
    assert detok.finish("a, b") == ""  # cannot be reconciled: nothing contradictory is sent


# ---- config ----------------------------------------------------------------------------------------------------
def test_default_presets_follow_the_models_given():
    tiny = ServeConfig.from_dict({})
    assert [name for name, _ in tiny.presets] == ["tiny-tq", "tiny-cd", "tiny-baseline", "tiny-sft"]
    assert dict(tiny.presets)["tiny-cd"].method == "cd"


def test_presets_start_from_decode_and_are_checked_by_name():
    config = ServeConfig.from_dict({"decode": {"k": 6, "alpha": 3}, "presets": {"a": {"method": "cd", "alpha": 1}}})
    assert dict(config.presets)["a"].k == 6 and dict(config.presets)["a"].alpha == 1
    with pytest.raises(ConfigError, match=r"preset 'bad': `alpha` must be a finite number >= 0 \(0, or 1e-06 to 1e\+06\), got -1"):
        ServeConfig.from_dict({"presets": {"bad": {"alpha": -1}}})
    with pytest.raises(ConfigError, match=r"preset 'big': `k` must be <= 50 on this server, got 60"):
        ServeConfig.from_dict({"presets": {"big": {"k": 60}}})
    with pytest.raises(ConfigError, match="preset name 'no spaces'"):
        ServeConfig.from_dict({"presets": {"no spaces": {}}})


@pytest.mark.parametrize("data,message", [
    ({"prompts": ["x"]}, "`prompts` is a `tqstar generate` setting"),
    ({"limits": {"max_batch": 0}}, r"`limits.max_batch` must be a number > 0, got 0"),
    ({"limits": {"max_queue": 2.5}}, r"`limits.max_queue` must be an integer, got 2.5"),
    ({"bogus": 1}, "unknown key `bogus` in config; valid keys are .*presets"),
    ({"limits": {"max_bogus": 1}}, "unknown key `max_bogus` in limits"),
    ({"port": 70000}, r"`port` must be an integer from 0 to 65535, got 70000"),
    ({"presets": {"t": {"trace": True}}}, "preset 't' sets `trace`"),
])
def test_bad_serve_configs_fail_before_loading(data, message):
    with pytest.raises(ConfigError, match=message):
        ServeConfig.from_dict(data)


def test_limits_cap_the_overrides():
    limits = Limits(max_k=5, max_alpha=10)
    assert limits.check(DecodeParams(k=5, alpha=10)) is None
    assert limits.check(DecodeParams(k=6))[0] == "k"
    assert limits.check(DecodeParams(k=5, alpha=11))[0] == "alpha"


# ---- protocol --------------------------------------------------------------------------------------------------
def test_requests_read_openai_fields():
    chat = ChatRequest.model_validate({"model": "m", "messages": [
        {"role": "developer", "content": "be kind"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}],
        "stop": "x", "max_completion_tokens": 5, "tqstar": {"alpha": 2, "trace": True}})
    assert chat.prompt() == [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi there"}]
    assert chat.stop_strings() == ("x",) and chat.token_budget() == 5
    assert chat.tqstar.overrides() == {"alpha": 2} and chat.tqstar.trace
    text = CompletionRequest.model_validate({"model": "m", "prompt": ["one"], "max_tokens": 3, "best_of": 1})
    assert text.text() == "one" and text.token_budget() == 3 and text.unsupported() is None
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "top_p": 0.5}).unsupported()[0] == "top_p"
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "echo": True}).unsupported()[0] == "echo"


def test_json_safe_drops_non_finite_numbers():
    assert json_safe({"a": [1.0, float("-inf"), None], "b": float("nan"), "c": (2, "x")}) == \
        {"a": [1.0, None, None], "b": None, "c": [2, "x"]}


@pytest.mark.parametrize("argv,message", [
    (["serve", "--port", "70000"], "`port` must be an integer from 0 to 65535, got 70000"),
    (["serve", "--max-batch", "0"], "`limits.max_batch` must be a number > 0, got 0"),
    (["serve", "--sft", "/no/such/model"], "/no/such/model"),
])
def test_serve_command_errors_are_one_line_before_loading(argv, message, capsys):
    from tqstar.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tqstar: error: ") and "\n" not in err and message in err


# ---- what a request may cost -------------------------------------------------------------------------------------
def test_kv_bytes_per_token_reads_the_model_config(tiny_paths):
    from tqstar.lm.hf import TransformersLM
    from tqstar.serving.budget import kv_bytes_per_token

    lm = TransformersLM.from_pretrained(tiny_paths["sft"])
    cfg = lm.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert kv_bytes_per_token(lm) == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 4  # float32
    assert kv_bytes_per_token(None) == 0  # a served model's memory is its server's


@pytest.mark.parametrize("values,rows,tokens", [
    ({"method": "tq-direct", "k": 8, "n_rollouts": 2, "rollout_len": 30, "rollout_temperature": 1.0}, 16, 8 * 2 * 20),
    ({"method": "cd", "k": 5, "rollout_len": 10}, 6, 5 * 10),  # the SFT model keeps its row and the rollouts
    ({"method": "sft"}, 1, 1),
    ({"method": "args", "k": 7}, 1, 7),
    ({"method": "eft", "k": 7}, 8, 7),
    ({"method": "bon", "bon_n": 6, "temperature": 1.0}, 6, 6 * 20),
])
def test_a_steps_rows_and_tokens(values, rows, tokens):
    from tqstar.serving.budget import step_rows, step_tokens

    params = DecodeParams.from_dict(values)
    assert step_rows(params) == rows
    assert step_tokens(params, 20) == tokens


def test_the_largest_budget_keeps_the_kv_under_the_cap(tiny_paths):
    from tqstar.serving.budget import kv_bytes, largest_budget

    engine = ServeConfig.from_dict({"sft": str(tiny_paths["sft"]), "baseline": str(tiny_paths["baseline"]),
                                    "reward": "sentiment"}).run.build(check=False)
    params = DecodeParams(method="tq-direct", k=8)
    prompt = {"sft": 12, "baseline": 12}
    cap = kv_bytes(engine, params, prompt, 100) + 1
    budget = largest_budget(engine, params, prompt, 10**9, cap)
    assert budget >= 100 and kv_bytes(engine, params, prompt, budget) <= cap < kv_bytes(engine, params, prompt, budget + 1)
    assert largest_budget(engine, params, prompt, 10**9, kv_bytes(engine, params, prompt, 0)) == 0
    bon = DecodeParams(method="bon", bon_n=4, temperature=1.0)
    assert largest_budget(engine, bon, prompt, 100, 10**12) == 25  # its step is its samples: bon_n × budget


def test_presets_over_the_step_caps_fail_at_start():
    with pytest.raises(ConfigError, match=r"preset 'big' runs 40 sequences per forward pass"):
        ServeConfig.from_dict({"presets": {"big": {"k": 20, "n_rollouts": 2, "rollout_temperature": 1.0}}})
    with pytest.raises(ConfigError, match=r"preset 'long' rolls out k × n_rollouts × rollout_len = 10 × 1 × 256"):
        ServeConfig.from_dict({"presets": {"long": {"k": 10, "rollout_len": 256}}, "limits": {"max_step_tokens": 2000}})


# ---- the request's shape -------------------------------------------------------------------------------------
def test_chat_turns_follow_vllm():
    from tqstar.serving.protocol import APIError

    def turn(**fields):
        messages = fields.pop("messages", [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
        return ChatRequest.model_validate({"model": "m", "messages": messages, **fields}).turn()

    assert turn() == (True, False)  # a new assistant turn, as OpenAI
    assert turn(continue_final_message=True) == (False, True)
    assert turn(continue_final_message=True, add_generation_prompt=False) == (False, True)
    assert turn(add_generation_prompt=False) == (False, False)
    with pytest.raises(APIError, match="cannot both be true"):
        turn(continue_final_message=True, add_generation_prompt=True)
    with pytest.raises(APIError, match="last message is 'user'"):
        turn(continue_final_message=True, messages=[{"role": "user", "content": "x"}])


def test_stream_options_need_stream():
    body = {"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}
    assert CompletionRequest.model_validate(body).unsupported()[0] == "stream_options"
    assert CompletionRequest.model_validate({**body, "stream": True}).unsupported() is None


def test_the_usage_chunk_has_no_choices():
    from tqstar.serving.protocol import chunk_body, usage, usage_chunk

    chunk = usage_chunk(chat=True, id="c", model="m", created=1, usage=usage(3, 4))
    assert chunk["choices"] == [] and chunk["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert chunk_body(chat=True, id="c", model="m", created=1, text="a", null_usage=True)["usage"] is None
    assert "usage" not in chunk_body(chat=False, id="c", model="m", created=1, text="a")


def test_errors_a_retry_cannot_fix_say_so():
    from tqstar.serving.protocol import APIError

    for status in (400, 401, 404, 413, 415, 500, 504):
        assert APIError(status, "x").headers == {"x-should-retry": "false"}
    for status in (408, 409, 429, 502, 503):
        assert "x-should-retry" not in APIError(status, "x").headers
    assert APIError(429, "x", headers={"Retry-After": "1"}).headers == {"Retry-After": "1"}


def test_api_messages_name_request_fields_not_flags_or_paths(tiny_paths):
    from tqstar.serving.completions import api_message

    engine = ServeConfig.from_dict({"sft": str(tiny_paths["sft"])}).run.build(check=False)
    name = engine.models.sft.name
    message = api_message(f"`k` must be <= the vocabulary size of {name} (90), got 99; or lower `max_new_tokens`"
                          " with --max-new-tokens", [engine])
    assert message == ("`tqstar.k` must be <= the vocabulary size of the SFT model (90), got 99; or lower"
                       " `max_tokens` with `max_tokens`")


@pytest.mark.parametrize("body,where", [
    ({"prompt": "a\ud800"}, "prompt"),
    ({"messages": [{"content": "ok"}, {"content": "\udfff"}]}, "messages.1.content"),
    ({"x\ny": "\ud800"}, '"x\\ny"'),
])
def test_lone_surrogates_are_named_where_they_are(body, where):
    from tqstar.serving.completions import check_text
    from tqstar.serving.protocol import APIError

    with pytest.raises(APIError) as error:
        check_text(body)
    assert error.value.status == 400 and error.value.param == where and "\n" not in error.value.message


def test_nesting_is_capped_without_recursion():
    from tqstar.serving.completions import MAX_DEPTH, check_text
    from tqstar.serving.protocol import APIError

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(APIError, match=f"more than {MAX_DEPTH} levels"):
        check_text({"user": deep})
    check_text({"user": [[[["fine"]]]]})


@pytest.mark.parametrize(("values", "used", "unused"), [
    ({"method": "tq-direct"}, {"k", "alpha", "block_len", "prune", "rollout_len", "trace", "tail"},
     {"bon_n", "soft_beta"}),
    ({"method": "tq-direct", "block_len": 4}, {"k", "alpha", "block_len", "rollout_len", "trace"},
     {"prune", "prune_probe", "tail"}),  # pruning and the tail act on top-k decisions only
    ({"method": "eft"}, {"k", "alpha", "beta"}, {"block_len", "rollout_len"}),
    ({"method": "bon", "temperature": 1.0}, {"bon_n", "bon_policy", "temperature", "trace"}, {"bon_beta", "k", "alpha"}),
    ({"method": "soft-bon", "temperature": 1.0}, {"bon_n", "bon_beta", "trace"}, {"block_len", "k"}),
    ({"method": "sft"}, {"temperature", "max_new_tokens", "seed"}, {"alpha", "trace", "block_len", "tail"}),
])
def test_what_a_preset_uses_is_what_a_key_may_be_given_for(values, used, unused):
    """/v1/models' ``uses`` (the playground's enabled controls) and the refusal of a key without an effect read the same
    declarations: every listed field may be given, every other one is refused."""
    from tqstar.params import FIELDS
    from tqstar.serving.app import used_params

    params = DecodeParams(**values)
    uses = set(used_params(params))
    assert used <= uses and not unused & uses
    for name in set(FIELDS) - {"method"}:
        assert (params.unused([name]) is None) == (name in uses), name


@pytest.mark.parametrize("body", [{"tqstar": {"k": True}}, {"tqstar": {"block_len": True}}, {"max_tokens": True},
                                  {"temperature": False}, {"seed": True}, {"tqstar": {"alpha": True}}])
def test_true_or_false_is_no_number(body):
    """Pydantic's lax mode reads true as 1: "tqstar": {"block_len": true} decoded blocks of one token, silently."""
    from pydantic import ValidationError

    from tqstar.serving.completions import validation_error

    with pytest.raises(ValidationError) as err:
        ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], **body)
    field = next(iter(body)) if "tqstar" not in body else "tqstar." + next(iter(body["tqstar"]))
    assert validation_error(err.value).message.startswith(f"`{field}`: input should be a number, not true or false")
    assert ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
                       tqstar={"trace": True}).stream  # a boolean field still takes one


def test_an_explicit_null_is_an_override():
    """"block_len": null asks a blockwise preset for token-level decisions; it was dropped as if unset, so the
    preset's blocks ran and the answer said nothing."""
    chat = ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}], tqstar={"block_len": None, "alpha": 2})
    assert chat.tqstar.overrides() == {"block_len": None, "alpha": 2}
    preset = DecodeParams(method="cd", k=3, block_len=4, temperature=1.0)
    assert preset.replace(**chat.tqstar.overrides()).block_len is None
    with pytest.raises(ConfigError, match="`k` must be an integer >= 1, got None"):
        preset.replace(**ChatRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                     tqstar={"k": None}).tqstar.overrides())
