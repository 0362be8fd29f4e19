"""The completion endpoints' logic, apart from the routes (:mod:`~tqstar.serving.app`): a request becomes a row,
the row is queued, and its events are relayed to the client.

:class:`Completions` validates a request (the preset, the ``tqstar`` overrides, the budget, the prompt's length),
builds its :class:`~tqstar.state.PromptState` row with :meth:`~tqstar.engine.Engine.new_state` (so the request's
tokens are those ``tqstar generate`` gives for the same prompt and preset), submits it to the scheduler and turns
its events into one OpenAI response or a stream of Server-Sent Events. Errors map to OpenAI-shaped 4xx bodies that
name the offending request field.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import os
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
)
from .scheduler import Done, Failed, Scheduler, Ticket, Token

POLL_S = 0.25  # how often a waiting handler checks that its client is still there


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
            raise APIError(401, "missing or wrong API key; send `Authorization: Bearer <key>` with a key from the"
                                f" server's {self.config.api_keys_env}", code="invalid_api_key")

    async def complete(self, request: Request, *, chat: bool) -> Response:
        self.authorize(request)
        body = await self._json(request)
        try:
            req = (ChatRequest if chat else CompletionRequest).model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        prompt = req.prompt() if chat else req.text()
        ticket = await run_in_threadpool(self._ticket, req, prompt, asyncio.get_running_loop())
        self.scheduler.submit(ticket)
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
    async def _json(self, request: Request) -> Any:
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limits.max_body_bytes:
                raise APIError(413, f"the request body is over the server's {self.limits.max_body_bytes}-byte limit;"
                                    " send a shorter prompt", code="request_too_large")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"the request body is not valid JSON ({exc}); send a JSON object",
                           code="invalid_json") from None

    def _ticket(self, req: ChatRequest | CompletionRequest, prompt: str | list[dict[str, str]],
                loop: asyncio.AbstractEventLoop) -> Ticket:
        """The validated, encoded row of ``req`` (runs in a worker thread: encoding may call a model server)."""
        preset = self.config.preset(req.model)
        if preset is None:
            raise APIError(404, f"model {req.model!r} is not served here; use one of "
                                f"{', '.join(name for name, _ in self.config.presets)} (GET /v1/models)",
                           param="model", code="model_not_found")
        refused = req.unsupported()
        if refused is not None:
            raise APIError(400, refused[1], param=refused[0], code="unsupported_parameter")
        engine = self.engines[self.config.baseline_of(req.model)]
        params = self._params(engine, preset, req)
        budget = req.token_budget()
        budget = min(preset.max_new_tokens, self.limits.max_tokens) if budget is None else budget
        if not 1 <= budget <= self.limits.max_tokens:
            field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
            raise APIError(400, f"`{field}` must be between 1 and {self.limits.max_tokens} on this server, got"
                                f" {budget}; ask for 1 to {self.limits.max_tokens} tokens", param=field)
        try:
            state = engine.new_state(prompt, params, seed=req.seed if req.seed is not None else preset.seed,
                                     max_new_tokens=budget, stop=req.stop_strings(), trace=req.tqstar.trace)
        except PromptTooLongError as exc:
            raise APIError(400, str(exc), param="messages" if isinstance(prompt, list) else "prompt",
                           code="context_length_exceeded") from None
        except TQStarError as exc:
            raise api_error(exc) from None
        n_prompt = len(state.prompt_ids["sft"])
        if n_prompt > self.limits.max_prompt_tokens:
            raise APIError(400, f"the prompt is {n_prompt} tokens, over the server's {self.limits.max_prompt_tokens}"
                                "-token limit; shorten it", param="messages" if isinstance(prompt, list) else "prompt",
                           code="context_length_exceeded")
        return Ticket(engine=engine, state=state, params=params, detok=IncrementalText(engine.models.sft, state.stop),
                      loop=loop, deadline=time.monotonic() + self.limits.request_timeout_s)

    def _params(self, engine: Engine, preset: DecodeParams, req: ChatRequest | CompletionRequest) -> DecodeParams:
        """The preset with the request's overrides, checked like the command line's and against the limits."""
        changes: dict[str, Any] = req.tqstar.overrides()
        if req.temperature is not None:
            changes["temperature"] = req.temperature
        try:
            params = preset.replace(**changes) if changes else preset
            engine.check(params)  # once per parameter group (remembered by the engine)
        except TQStarError as exc:
            raise api_error(exc) from None
        over = self.limits.check(params)
        if over is not None:
            raise APIError(400, over[1], param=param_name(over[0]))
        return params

    # ---- relaying events --------------------------------------------------------------------------------
    async def _next(self, request: Request, ticket: Ticket) -> Token | Done | Failed:
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
        chat, created = meta["chat"], int(time.time())
        chunk = dict(chat=chat, id=meta["id"], model=meta["model"], created=created)
        try:
            if chat:
                yield sse(chunk_body(**chunk, text="", first=True))
            while True:
                event = await self._next(request, ticket)
                if isinstance(event, Token):
                    extension = {"trace": json_safe(event.trace)} if event.trace is not None else None
                    yield sse(chunk_body(**chunk, text=event.text, extension=extension))
                    continue
                if isinstance(event, Done):
                    if event.rest:
                        yield sse(chunk_body(**chunk, text=event.rest))
                    response = event.response
                    yield sse(chunk_body(**chunk, text=None, finish_reason=FINISH_REASONS[response.finish_reason],
                                          usage=usage(event.prompt_tokens, len(response.token_ids))
                                          if include_usage else None,
                                          extension=response_extension(response, ticket.params, trace=False)))
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


def response_extension(response, params: DecodeParams, *, trace: bool) -> dict[str, Any]:
    """The ``tqstar`` object of a response: reward, KL, accounting, the effective parameters (and the trace)."""
    out = {"method": response.method, "reward": response.reward, "kl": response.kl, "kl_bound": response.kl_bound,
           "finish": response.finish_reason, "accounting": dataclasses.asdict(response.accounting),
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
    ``max_tokens``, ...; the parameter's own name when only the preset sets it)."""
    return (FIELDS[name].request if name in FIELDS else None) or name


def api_error(exc: TQStarError) -> APIError:
    """The answer to an error tqstar raised while checking a request, by its class: a :class:`ClientError` is the
    request's (400, naming the request field of the error's ``param``: ``tqstar.alpha``, ``temperature``, ...); a
    model server failing is 502; anything else tqstar runs failing is 500."""
    if isinstance(exc, ClientError):
        param = getattr(exc, "param", None)
        return APIError(400, str(exc), param=param_name(param) if param else None)
    if isinstance(exc, ModelServerError):
        return APIError(502, str(exc), type="server_error", code="model_server_error")
    return APIError(500, str(exc), type="server_error", code="internal_error")


def validation_error(exc: ValidationError) -> APIError:
    """A 400 naming the first invalid field (``messages.0.role``) with pydantic's reason."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    got = "" if first["type"] == "missing" else f", got {repr(first.get('input'))[:80]}"
    reason = first["msg"][:1].lower() + first["msg"][1:]
    return APIError(400, f"`{where}`: {reason}{got}; fix that field of the request", param=where)
