"""The OpenAI wire shapes the server reads and writes, as pydantic models, and the ``tqstar`` extension.

Requests: :class:`ChatRequest` (``POST /v1/chat/completions``, with vLLM's ``add_generation_prompt`` and
``continue_final_message``) and :class:`CompletionRequest` (``POST /v1/completions``). Both accept the OpenAI fields
tqstar can honour (``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``seed`` (a signed 64-bit integer),
``stop``, ``stream``, ``stream_options.include_usage`` (only with ``stream``), ``n`` = 1, ``user``) and an extension
object ``"tqstar": {"alpha": 2, "k": 10, "trace": true}`` that overrides the preset's decoding parameters
(:data:`OVERRIDABLE`). Fields that would change what OpenAI promises and that tqstar cannot do (``n`` > 1,
``logprobs``, tools, ``top_p`` < 1, ...) are refused by name rather than ignored.

Errors are :class:`APIError`, rendered as ``{"error": {"message", "type", "param", "code"}}`` with
``x-should-retry: false`` when a retry cannot help. A stream with usage ends with :func:`usage_chunk`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import typing
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic_core import PydanticCustomError

from ..params import FIELDS, DecodeParams

#: Decoding parameters a request may set in its ``tqstar`` object (the rest belong to the preset): the fields of
#: :class:`~tqstar.params.DecodeParams` that say so (``request="tqstar.<name>"``) and that rows share.
OVERRIDABLE = tuple(name for name, info in FIELDS.items() if info.request == f"tqstar.{name}" and info.scope == "group")

#: OpenAI's ``finish_reason`` for tqstar's (EOS and a stop string are both "stop").
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


#: Statuses a client may retry (OpenAI's clients retry 408, 409, 429 and 5xx unless told otherwise); every other error
#: carries ``x-should-retry: false``: the same request would fail the same way (a 504 is its own cost, a 500 a bug).
RETRYABLE = (408, 409, 429, 502, 503)


class APIError(Exception):
    """An answer with an HTTP error status and an OpenAI-shaped error body (``x-should-retry: false`` unless the
    status is one a retry can fix, :data:`RETRYABLE`)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = {**({} if status in RETRYABLE else {"x-should-retry": "false"}), **(headers or {})}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _no_boolean_numbers(cls: type[BaseModel], value: Any, info) -> Any:
    """Refuse ``true``/``false`` for a number: pydantic's lax mode reads them as 1 and 0, so ``"k": true`` would
    silently decode with k = 1."""
    if isinstance(value, bool):
        annotation = cls.model_fields[info.field_name].annotation
        if annotation is not bool and bool not in typing.get_args(annotation):
            raise PydanticCustomError("bool_number", "input should be a number, not true or false")
    return value


class _Options(BaseModel):
    """The request's ``tqstar`` extension: per-request overrides of the preset's TQ* parameters, and the trace.

    Its fields are the :class:`~tqstar.params.DecodeParams` fields a request may set (``request="tqstar.<name>"``):
    the shared ones (:data:`OVERRIDABLE`) default to the preset's (``None``), a row's own (``trace``) to the field's
    default. Values are checked by :class:`~tqstar.params.DecodeParams` (the same checks as the command line) and the
    server's limits, so a bad one is a 400 that names ``tqstar.<field>``.
    """

    model_config = ConfigDict(extra="forbid")
    _no_booleans = field_validator("*", mode="before")(classmethod(_no_boolean_numbers))

    def overrides(self) -> dict[str, Any]:
        """The fields the request set, an explicit ``null`` included (``"block_len": null`` asks a blockwise preset
        for token-level decisions; a field that takes no ``null`` then answers 400)."""
        return {name: getattr(self, name) for name in OVERRIDABLE if name in self.model_fields_set}


def _options_model() -> type[_Options]:
    hints = typing.get_type_hints(DecodeParams)
    defaults = {f.name: f.default for f in dataclasses.fields(DecodeParams)}
    fields: dict[str, Any] = {}
    for name, info in FIELDS.items():
        if info.request == f"tqstar.{name}":
            shared = name in OVERRIDABLE
            fields[name] = (hints[name] | None if shared else hints[name],
                            Field(None if shared else defaults[name], description=info.help))
    return create_model("TQStarOptions", __base__=_Options, __doc__=_Options.__doc__, **fields)


TQStarOptions = _options_model()


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")  # continuous_usage_stats (vLLM) and later fields: not honoured

    include_usage: bool = False

#: The seed's range, as OpenAI's and vLLM's (a signed 64-bit integer).
INT64 = (-(2**63), 2**63 - 1)


class _Request(BaseModel):
    """Fields common to both endpoints. Unknown fields are ignored, as OpenAI-compatible servers do."""

    model_config = ConfigDict(extra="allow")
    _no_booleans = field_validator("*", mode="before")(classmethod(_no_boolean_numbers))

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = Field(None, ge=INT64[0], le=INT64[1])
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    user: str | None = None
    top_p: float | None = None
    tqstar: TQStarOptions = Field(default_factory=TQStarOptions)

    def unsupported(self) -> tuple[str, str] | None:
        """``(field, why)`` of the first field set to something tqstar cannot honour, else ``None``."""
        if self.stream_options is not None and not self.stream:
            return "stream_options", "`stream_options` is only allowed with `stream: true`; drop it or stream"
        if self.n != 1:
            return "n", f"`n` must be 1 (one response per request), got {self.n}; send {self.n} requests instead"
        if self.top_p is not None and self.top_p != 1:
            return "top_p", (f"`top_p` must be 1 (tqstar samples from softmax(score/temperature) over the top-k"
                             f" candidates), got {self.top_p}; set `tqstar.k` instead")
        extra = self.model_extra or {}
        for name in ("logprobs", "top_logprobs", "tools", "functions", "tool_choice", "response_format", "echo",
                     "best_of", "suffix", "logit_bias"):
            value = extra.get(name)
            if value in (None, False, [], {}) or (name == "best_of" and value == 1):  # absent or the default
                continue
            return name, f"`{name}` is not supported by tqstar, got {value!r}; leave it out"
        return None

    def stop_strings(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(stop)

    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        """The message as tqstar's prompt encoding takes it (``developer`` is OpenAI's newer ``system``)."""
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Request):
    """``messages`` with vLLM's two chat-template switches: by default the answer is a new assistant turn
    (``add_generation_prompt``); ``continue_final_message`` continues a final assistant message instead (a prefill)."""

    messages: list[Message] = Field(min_length=1)
    add_generation_prompt: bool = True
    continue_final_message: bool = False

    def prompt(self) -> list[dict[str, str]]:
        return [message.as_dict() for message in self.messages]

    def turn(self) -> tuple[bool, bool]:
        """``(add_generation_prompt, continue_final_message)`` as the request meant them; raises :class:`APIError`
        when they contradict each other or the messages (as vLLM does)."""
        explicit = "add_generation_prompt" in self.model_fields_set
        if self.continue_final_message:
            if explicit and self.add_generation_prompt:
                raise APIError(400, "`continue_final_message` and `add_generation_prompt` cannot both be true; set"
                                    " one of them", param="continue_final_message")
            if self.messages[-1].role != "assistant":
                raise APIError(400, "`continue_final_message` continues a final assistant message, but the last"
                                    f" message is {self.messages[-1].role!r}; end `messages` with the assistant's"
                                    " start or drop the field", param="continue_final_message")
            return False, True
        return self.add_generation_prompt, False


class CompletionRequest(_Request):
    prompt: str | list[str]

    def text(self) -> str:
        """The one prompt; a list must hold exactly one string (one response per request)."""
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise APIError(400, f"`prompt` must be one string, got a list of {len(self.prompt)}; send one request"
                                " per prompt", param="prompt")
        return self.prompt[0]


# ---- responses -----------------------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (a −inf log-probability, an unbounded KL) as ``None``: JSON has no
    NaN or Infinity, and strict clients (browsers' ``JSON.parse``) reject them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_body(*, chat: bool, id: str, model: str, text: str, finish_reason: str, usage: dict[str, int],
                    extension: dict[str, Any]) -> dict[str, Any]:
    """A whole ``chat.completion`` or ``text_completion`` object."""
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
                  "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}
    return {"id": id, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage, "tqstar": extension}


def chunk_body(*, chat: bool, id: str, model: str, created: int, text: str | None, finish_reason: str | None = None,
               first: bool = False, null_usage: bool = False,
               extension: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed chunk: ``chat.completion.chunk`` (a ``delta``) or ``text_completion`` (a ``text``).
    ``null_usage``: the stream ends with a :func:`usage_chunk`, and OpenAI's other chunks then carry ``usage: null``."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    body: dict[str, Any] = {"id": id, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": created, "model": model, "choices": [choice]}
    if null_usage:
        body["usage"] = None
    if extension is not None:
        body["tqstar"] = extension
    return body


def usage_chunk(*, chat: bool, id: str, model: str, created: int, usage: dict[str, int]) -> dict[str, Any]:
    """The last chunk of a stream with ``stream_options.include_usage``: OpenAI's ``choices: []`` and the usage."""
    return {"id": id, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": [], "usage": usage}
