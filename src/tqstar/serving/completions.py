"""The completion endpoints' logic, apart from the routes (:mod:`~tqstar.serving.app`): a request becomes a row,
the row is queued, and its events are relayed to the client.

:class:`Completions` reads the body (JSON only, :func:`read_json`), validates the request (the preset, the
``tqstar`` overrides, the stop strings, the budget and the request's cost, the prompt's length), builds its
:class:`~tqstar.state.PromptState` row with :meth:`~tqstar.engine.Engine.new_state` (so the request's tokens are those
``tqstar generate`` gives for the same prompt and parameters), submits it to the scheduler and turns its events into
one OpenAI response or a stream of Server-Sent Events. Errors map to OpenAI-shaped 4xx bodies that name the offending
request field and give advice in request fields (:func:`api_message`), never command-line flags or server paths.

What a client would notice, as OpenAI and vLLM do it (docs/serving.md has the whole table):

* no ``seed``: a fresh random seed, reported back in ``tqstar.params.seed`` so the answer can be repeated;
* no ``max_tokens``: the rest of the context, capped by ``limits.max_tokens`` (and by what the request may cost);
* a chat answer is a new assistant turn; ``continue_final_message`` continues a final assistant message instead;
* ``tqstar.params`` is what ran for this request: its seed, budget, stop strings and every override.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from ..engine import Engine
from ..errors import ClientError, ModelServerError, PromptTooLongError, TQStarError
from ..params import FIELDS, DecodeParams
from . import budget as cost
from .config import ServeConfig
from .detok import IncrementalText
from .metrics import ServerMetrics
from .protocol import (
    FINISH_REASONS,
    APIError,
    ChatRequest,
    CompletionRequest,
    chunk_body,
    completion_body,
    json_safe,
    new_id,
    usage,
    usage_chunk,
)
from .scheduler import Done, Failed, Scheduler, Step, Ticket

POLL_S = 0.25  # how often a waiting handler checks that its client is still there
MAX_DEPTH = 32  # nesting of a request body (an OpenAI request nests 5 levels at most)
MiB = 2**20


class ClientGone(Exception):
    """The client disconnected while its request was queued or decoding (the request is cancelled)."""


class Completions:
    """The completion handlers' logic: validate, build the row, queue it, relay its events."""

    def __init__(self, engines: dict[str | None, Engine], config: ServeConfig, scheduler: Scheduler,
                 metrics: ServerMetrics) -> None:
        self.engines, self.config, self.scheduler, self.metrics = engines, config, scheduler, metrics
        self.limits = config.limits
        self.started = int(time.time())
        keys = os.environ.get(config.api_keys_env, "")
        self.keys = [k.strip().encode() for k in keys.split(",") if k.strip()]

    def authorize(self, request: Request) -> None:
        if not self.keys:
            return
        header = request.headers.get("authorization", "")
        given = header[7:].strip().encode() if header.lower().startswith("bearer ") else b""
        if not any(hmac.compare_digest(given, key) for key in self.keys):
            raise APIError(401, "missing or wrong API key; send `Authorization: Bearer <key>` with a key this"
                                " server accepts", code="invalid_api_key")

    async def complete(self, request: Request, *, chat: bool) -> Response:
        self.authorize(request)
        arrived = time.monotonic()  # latencies (TTFT, end to end) count from here: reading and encoding included
        self.scheduler.arriving(+1)  # a new group's first step waits briefly for requests sent with this one
        try:
            body = await read_json(request, self.limits.max_body_bytes)
            try:
                req = (ChatRequest if chat else CompletionRequest).model_validate(body)
            except ValidationError as exc:
                raise validation_error(exc) from None
            ticket = await run_in_threadpool(self._ticket, req, asyncio.get_running_loop(), arrived)
            self.scheduler.submit(ticket)
        finally:
            self.scheduler.arriving(-1)
        meta = {"chat": chat, "id": new_id(chat), "model": req.model}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._stream(request, ticket, meta, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            while True:
                event = await self._next(request, ticket)
                if isinstance(event, Failed):
                    raise event.error
                if isinstance(event, Done):
                    return JSONResponse(self._body(meta, event, ticket))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; counted as 499, "client closed the request"
        finally:
            self.scheduler.cancel(ticket)

    # ---- building a row ---------------------------------------------------------------------------------
    def _ticket(self, req: ChatRequest | CompletionRequest, loop: asyncio.AbstractEventLoop, arrived: float) -> Ticket:
        """The validated, encoded row of ``req`` (runs in a worker thread: encoding may call a model server)."""
        chat = isinstance(req, ChatRequest)
        prompt_field = "messages" if chat else "prompt"
        preset = self.config.preset(req.model)
        if preset is None:
            raise APIError(404, f"model {req.model[:80]!r} is not served here; use one of "
                                f"{', '.join(name for name, _ in self.config.presets)} (GET /v1/models)",
                           param="model", code="model_not_found")
        refused = req.unsupported()
        if refused is not None:
            raise APIError(400, refused[1], param=refused[0], code="unsupported_parameter")
        stop = req.stop_strings()
        if len(stop) > self.limits.max_stop:
            raise APIError(400, f"`stop` may hold at most {self.limits.max_stop} strings on this server, got"
                                f" {len(stop)}; keep the {self.limits.max_stop} that matter", param="stop")
        if chat:
            add_generation_prompt, continue_final = req.turn()
            ending, prompt = ("continue" if continue_final else "assistant" if add_generation_prompt
                              else "none"), req.prompt()
        else:
            ending, prompt = "auto", req.text()
        engine = self.engines[self.config.baseline_of(req.model)]
        params = self._params(engine, preset, req)
        seed = req.seed if req.seed is not None else fresh_seed()
        try:
            state = engine.new_state(prompt, params, seed=seed, max_new_tokens=1, stop=stop, trace=req.tqstar.trace,
                                     ending=ending)
        except PromptTooLongError:
            raise self._too_long(engine, params, prompt_field, None, None) from None
        except TQStarError as exc:
            raise self.api_error(exc, prompt_field) from None
        prompt_tokens = {role: len(ids) for role, ids in state.prompt_ids.items()}
        if prompt_tokens["sft"] > self.limits.max_prompt_tokens:
            raise APIError(400, f"{_the(prompt_field)} {prompt_tokens['sft']} tokens, over this server's"
                                f" {self.limits.max_prompt_tokens}-token limit; shorten {_it(prompt_field)}",
                           param=prompt_field,
                           code="context_length_exceeded")
        budget = self._budget(engine, params, req, prompt_tokens, prompt_field)
        row = params.replace(seed=seed, max_new_tokens=budget, stop=stop, trace=req.tqstar.trace)
        return Ticket(engine=engine, state=dataclasses.replace(state, max_new_tokens=budget), params=row,
                      detok=IncrementalText(engine.models.sft, stop), loop=loop, arrived=arrived,
                      deadline=arrived + self.limits.request_timeout_s)

    def _params(self, engine: Engine, preset: DecodeParams, req: ChatRequest | CompletionRequest) -> DecodeParams:
        """The preset with the request's overrides, checked like the command line's and against the limits."""
        changes: dict[str, Any] = req.tqstar.overrides()
        if req.temperature is not None:
            changes["temperature"] = req.temperature
        try:
            params = preset.replace(**changes) if changes else preset
            params.check_given(req.tqstar.overrides())  # an override the method ignores is refused, not dropped
            engine.check(params)  # once per parameter group (remembered by the engine)
        except TQStarError as exc:
            raise self.api_error(exc) from None
        over = self.limits.check(params)
        if over is not None:
            raise APIError(400, over[1], param=param_name(over[0]))
        return params

    def _budget(self, engine: Engine, params: DecodeParams, req: ChatRequest | CompletionRequest,
                prompt_tokens: dict[str, int], prompt_field: str) -> int:
        """The request's response budget: ``max_tokens`` as asked, or the rest of the context under the server's
        caps (as OpenAI and vLLM default); then its cost per step and its KV memory against the caps."""
        limits, asked = self.limits, req.token_budget()
        field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        room = self._room(engine, params, prompt_tokens)
        kv_cap = limits.max_request_kv_mb * MiB
        affordable = cost.largest_budget(engine, params, prompt_tokens, limits.max_step_tokens, kv_cap)
        if asked is None:
            if room is not None and room < 1:
                raise self._too_long(engine, params, prompt_field, prompt_tokens, None)
            budget = min(limits.max_tokens, room if room is not None else limits.max_tokens, affordable)
        else:
            if not 1 <= asked <= limits.max_tokens:
                raise APIError(400, f"`{field}` must be between 1 and {limits.max_tokens} on this server, got"
                                    f" {asked}; ask for 1 to {limits.max_tokens} tokens", param=field)
            if room is not None and asked > room:
                raise self._too_long(engine, params, prompt_field, prompt_tokens, (field, asked))
            budget = asked
        rows = cost.step_rows(params)
        if rows > limits.max_step_rows:
            raise APIError(400, f"one step of this request would run {rows} sequences at once"
                                f" ({rows_formula(params)}), over this server's {limits.max_step_rows} (max_step_rows in"
                                f" GET /v1/tqstar/limits); lower {step_fields(params, req, rows=True)}",
                           param=step_param(params, req, rows=True), code="request_too_costly")
        steps = cost.step_tokens(params, max(budget, 1))
        if steps > limits.max_step_tokens:
            raise APIError(400, f"one step of this request would generate {steps} tokens ({step_formula(params)}),"
                                f" over this server's {limits.max_step_tokens} per step (max_step_tokens in GET"
                                f" /v1/tqstar/limits); lower {step_fields(params, req)}",
                           param=step_param(params, req), code="request_too_costly")
        kv = cost.kv_bytes(engine, params, prompt_tokens, max(budget, 1))
        if budget < 1 or kv > kv_cap:
            fix = f"lower `{field}` (at most {affordable} here) or " if asked is not None and affordable >= 1 else ""
            raise APIError(400, f"this request would keep {kv / MiB:.0f} MiB of KV cache ({sum(cost.cache_rows(params).values())}"
                                f" rows of prompt + answer), over this server's {limits.max_request_kv_mb:g} MiB per"
                                f" request (max_request_kv_mb in GET /v1/tqstar/limits); {fix}shorten the"
                                f" {prompt_field}" + (" or lower `tqstar.k` / `tqstar.n_rollouts`"
                                                      if params.is_token_level else ""),
                           param=field if fix else prompt_field, code="request_too_costly")
        return budget

    def _room(self, engine: Engine, params: DecodeParams, prompt_tokens: dict[str, int]) -> int | None:
        """Tokens left for the answer in the tightest context the method uses (``None``: unbounded)."""
        roles = ["sft", "baseline"] if params.uses_baseline else ["sft"]
        rooms = [lm.max_context - prompt_tokens.get(role, prompt_tokens["sft"]) for role in roles
                 if (lm := engine.models.lm(role)).max_context is not None]
        return min(rooms) if rooms else None

    def _too_long(self, engine: Engine, params: DecodeParams, prompt_field: str, prompt_tokens: dict[str, int] | None,
                  asked: tuple[str, int] | None) -> APIError:
        """A 400 for a prompt that leaves the answer no room (or less than asked), in request terms."""
        roles = ["sft", "baseline"] if params.uses_baseline else ["sft"]
        context = min(c for role in roles if (c := engine.models.lm(role).max_context) is not None)
        n = f"{prompt_tokens['sft']} tokens" if prompt_tokens else "too long"
        if asked is None:
            message = (f"{_the(prompt_field)} {n}, which leaves no room for an answer in this model's {context}-token"
                       f" context; shorten {_it(prompt_field)}")
        else:
            message = (f"{_the(prompt_field)} {n} and `{asked[0]}` asks for {asked[1]} more, over this model's"
                       f" {context}-token context; shorten the {prompt_field} or lower `{asked[0]}` (at most"
                       f" {max(0, context - prompt_tokens['sft'])} here)")
        return APIError(400, message, param=prompt_field if asked is None else asked[0],
                        code="context_length_exceeded")

    def api_error(self, exc: TQStarError, prompt_field: str | None = None) -> APIError:
        """The answer to an error tqstar raised while checking a request, by its class: a :class:`ClientError` is
        the request's (400, naming the request field of the error's ``param``); a model server failing is 502;
        anything else tqstar runs failing is 500. The message is made API-facing (:func:`api_message`)."""
        message = api_message(str(exc), self.engines.values())
        if isinstance(exc, ClientError):
            param = getattr(exc, "param", None)
            return APIError(400, message, param=param_name(param) if param else prompt_field)
        if isinstance(exc, ModelServerError):
            return APIError(502, message, type="server_error", code="model_server_error")
        return APIError(500, message, type="server_error", code="internal_error")

    # ---- relaying events --------------------------------------------------------------------------------
    async def _next(self, request: Request, ticket: Ticket) -> Step | Done | Failed:
        """The ticket's next event; a client that went away cancels it (checked every ``POLL_S``)."""
        while True:
            try:
                return await asyncio.wait_for(ticket.events.get(), POLL_S)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    self.scheduler.cancel(ticket)
                    raise ClientGone from None

    async def _stream(self, request: Request, ticket: Ticket, meta: dict[str, Any],
                      include_usage: bool) -> AsyncIterator[str]:
        """One chunk per decoder step (the text it made safe to send, with the step's trace row when asked), the
        final chunk with ``finish_reason`` and the ``tqstar`` object, OpenAI's usage chunk (``choices: []``) when
        asked, then ``[DONE]``. An error after the stream began is an error event, then ``[DONE]``."""
        chat = meta["chat"]
        chunk = dict(chat=chat, id=meta["id"], model=meta["model"], created=int(time.time()), null_usage=include_usage)
        try:
            if chat:
                yield sse(chunk_body(**chunk, text="", first=True))
            while True:
                event = await self._next(request, ticket)
                if isinstance(event, Step):
                    extension = {"trace": json_safe(event.trace)} if event.trace is not None else None
                    yield sse(chunk_body(**chunk, text=event.text, extension=extension))
                    continue
                if isinstance(event, Done):
                    if event.rest:
                        yield sse(chunk_body(**chunk, text=event.rest))
                    response = event.response
                    yield sse(chunk_body(**chunk, text=None, finish_reason=FINISH_REASONS[response.finish_reason],
                                          extension=response_extension(response, ticket.params, trace=False)))
                    if include_usage:
                        yield sse(usage_chunk(chat=chat, id=meta["id"], model=meta["model"], created=chunk["created"],
                                              usage=usage(event.prompt_tokens, len(response.token_ids))))
                else:
                    yield sse(event.error.body())
                break
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        finally:
            self.scheduler.cancel(ticket)

    def _body(self, meta: dict[str, Any], event: Done, ticket: Ticket) -> dict[str, Any]:
        response = event.response
        return completion_body(chat=meta["chat"], id=meta["id"], model=meta["model"], text=response.text,
                               finish_reason=FINISH_REASONS[response.finish_reason],
                               usage=usage(event.prompt_tokens, len(response.token_ids)),
                               extension=response_extension(response, ticket.params, trace=True))


def _the(prompt_field: str) -> str:
    return "the messages are" if prompt_field == "messages" else "the prompt is"


def _it(prompt_field: str) -> str:
    return "them" if prompt_field == "messages" else "it"


def fresh_seed() -> int:
    """The seed of a request that gave none (fresh randomness, as OpenAI and vLLM): below 2**53, so that a JavaScript
    client reads the reported seed exactly and can send it back to repeat the answer."""
    return secrets.randbits(53)


# ---- reading a body ------------------------------------------------------------------------------------------
async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object, or a 4xx naming what is wrong with it.

    Only ``Content-Type: application/json`` is read (415 otherwise): a web page can POST ``text/plain`` to a server
    on localhost without the browser asking the server first (no CORS preflight), and JSON only closes that door.
    The body must be UTF-8 JSON without ``NaN`` / ``Infinity``, an object, nested at most :data:`MAX_DEPTH` deep,
    whose strings are Unicode text (a lone surrogate such as ``"\\ud800"`` is valid JSON but no character)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        shown = f"{media!r}" if media else "none"
        raise APIError(415, f"the request body must be JSON sent with `Content-Type: application/json`, got {shown};"
                            " set that header", code="unsupported_media_type")
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is over the server's {max_bytes}-byte limit; send a shorter"
                                " prompt", code="request_too_large")
        chunks.append(chunk)
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise APIError(400, f"the request body is not UTF-8 (byte {exc.start}); send JSON as UTF-8 text",
                       code="invalid_json") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise APIError(400, f"the request body nests too deeply; an OpenAI request nests {MAX_DEPTH} levels at most",
                       code="invalid_json") from None
    except _NotJSON as exc:
        raise APIError(400, f"the request body holds `{exc}`, which is not JSON; send numbers as finite numbers",
                       code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object",
                       code="invalid_json") from None
    except ValueError:  # an integer with more digits than Python reads
        raise APIError(400, "the request body holds a number too long to read; send numbers of at most a few"
                            " dozen digits", code="invalid_json") from None
    if not isinstance(value, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(value).__name__ if value is not None else 'null'}"
                            "; send {\"model\": ..., ...}", code="invalid_json")
    check_text(value)
    return value


class _NotJSON(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJSON(name)


def check_text(value: Any) -> None:
    """Raise a 400 for a body nested deeper than :data:`MAX_DEPTH` or holding a string that is not Unicode text
    (a lone surrogate), naming where (``messages.0.content``). Iterative: no depth can overflow it."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise APIError(400, f"the request body nests more than {MAX_DEPTH} levels deep (at `{_where(path)}`);"
                                " an OpenAI request nests a few levels", param=_where(path), code="invalid_json")
        if isinstance(item, str):
            _check_string(item, path)
        elif isinstance(item, dict):
            for key, child in item.items():
                _check_string(key, path)
                stack.append((child, (*path, key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, (*path, i), depth + 1) for i, child in enumerate(item))


def _check_string(text: str, path: tuple) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = _where(path)
        raise APIError(400, f"`{where}` holds a lone UTF-16 surrogate ({text[exc.start]!r} at character {exc.start}),"
                            " which is not a character; send valid Unicode text", param=where,
                       code="invalid_text") from None


_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _where(path: tuple) -> str:
    """A field's path as the error's ``param``: ``messages.0.content``; an odd key JSON-escaped and cut short."""
    parts = [str(p) if isinstance(p, int) or _NAME.fullmatch(p) else json.dumps(p[:40]) for p in path]
    return ".".join(parts) or "body"


# ---- what a response says ---------------------------------------------------------------------------------------
def response_extension(response, params: DecodeParams, *, trace: bool) -> dict[str, Any]:
    """The ``tqstar`` object of a response: reward, KL, accounting, the parameters this request ran with (its own
    seed, budget and stop strings included), and the trace."""
    out = {"method": response.method, "reward": response.reward, "kl": response.kl, "kl_kind": response.kl_kind,
           "kl_bound": response.kl_bound, "finish": response.finish_reason, "accounting": dataclasses.asdict(response.accounting),
           "params": public_params(params)}
    if trace and response.trace is not None:
        out["trace"] = response.trace
    return json_safe(out)


def public_params(params: DecodeParams) -> dict[str, Any]:
    values = dataclasses.asdict(params)
    values["stop"] = list(params.stop)
    return values


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def param_name(name: str) -> str:
    """The request field that sets the decoding parameter ``name`` (``tqstar.alpha``, ``temperature``,
    ``max_tokens``, ...; the parameter's own name when only the server's preset sets it)."""
    return (FIELDS[name].request if name in FIELDS else None) or name


_FLAG = re.compile(r"--([a-z][a-z0-9-]+)")
_FIELD = re.compile(r"`([a-z_]+)`")


def api_message(message: str, engines) -> str:
    """``message`` (written for the library and the command line) for an API client: a model's name (its path on
    the server) becomes its role, a decoding parameter becomes the request field that sets it (`` `alpha` `` →
    `` `tqstar.alpha` ``, ``--max-new-tokens`` → ``max_tokens``)."""
    for engine in engines:
        for role, model in (("the SFT model", engine.models.sft), ("the baseline", engine.models.baseline)):
            name = getattr(model, "name", None)
            if name:
                message = message.replace(name, role)

    def field(match: re.Match, tick: str) -> str:
        name = match.group(1).replace("-", "_")
        request = FIELDS[name].request if name in FIELDS else None
        return f"{tick}{request}{tick}" if request else match.group(0)

    message = _FIELD.sub(lambda m: field(m, "`"), message)
    return _FLAG.sub(lambda m: field(m, "`"), message)


def step_formula(params: DecodeParams) -> str:
    if params.method_row.kind == "best-of-n":
        return f"bon_n {params.bon_n} × max_tokens"
    return f"k {params.k} × n_rollouts {params.n_rollouts} × rollout_len {params.rollout_len}"


def rows_formula(params: DecodeParams) -> str:
    if params.method_row.kind == "best-of-n":
        return f"bon_n {params.bon_n}"
    return f"k {params.k} × n_rollouts {params.n_rollouts}" if params.rolls_out else f"k {params.k}"


def step_fields(params: DecodeParams, req: ChatRequest | CompletionRequest, rows: bool = False) -> str:
    if params.method_row.kind == "best-of-n":
        return "`tqstar.bon_n`" if rows else "`tqstar.bon_n` or `max_tokens`"
    if rows:
        return "`tqstar.k` or `tqstar.n_rollouts`" if params.rolls_out else "`tqstar.k`"
    return "`tqstar.k`, `tqstar.n_rollouts` or `tqstar.rollout_len`"


def step_param(params: DecodeParams, req: ChatRequest | CompletionRequest, rows: bool = False) -> str:
    """The field to blame for a step over a cap: the first of the request's own overrides that raise it."""
    names = ("bon_n",) if params.method_row.kind == "best-of-n" else ("n_rollouts", "k") if rows else (
        "n_rollouts", "k", "rollout_len")
    set_here = req.tqstar.overrides()
    return next((f"tqstar.{n}" for n in names if n in set_here), f"tqstar.{names[0]}")


_TYPE_TAG = re.compile(r"\[|^(str|int|float|bool|none|list|dict|literal|function-.*)$")


def validation_error(exc: ValidationError) -> APIError:
    """A 400 naming the first invalid field (``messages.0.role``) with pydantic's reason (pydantic's names of union
    members, ``str`` or ``list[TextPart]``, are left out of the field's path)."""
    first = exc.errors()[0]
    where = _where(tuple(part for part in first["loc"] if not _TYPE_TAG.search(str(part))))
    got = "" if first["type"] == "missing" else f", got {_short(first.get('input'))}"
    reason = first["msg"][:1].lower() + first["msg"][1:]
    return APIError(400, f"`{where}`: {reason}{got}; fix that field of the request", param=where)


def _short(value: Any) -> str:
    if isinstance(value, (dict, list)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    return repr(value)[:80]
