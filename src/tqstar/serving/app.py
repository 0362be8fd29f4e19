"""The HTTP API (FastAPI): OpenAI chat and text completions over presets, models, limits, health and metrics.

    POST /v1/chat/completions    messages → one response (or a Server-Sent Events stream of chunks)
    POST /v1/completions         prompt → one response (or a stream)
    GET  /v1/models              the presets, each with its decoding parameters and what its method is and uses
                                 (``tqstar`` metadata, from :mod:`tqstar.methods`)
    GET  /v1/models/{id}         one preset, the same way
    GET  /v1/tqstar/limits       the server's caps and every preset's parameters (for a playground's controls)
    GET  /health                 200 once the models are loaded and the engine runs; 503 while shutting down
    GET  /metrics                Prometheus text format (:mod:`~tqstar.serving.metrics`)
    GET  /                       the playground page (``static/``: plain HTML, CSS and ES modules; a client of the
                                 public API above, nothing loaded from elsewhere)

A request names a preset as its ``model`` and may override the preset's TQ* parameters in ``"tqstar": {...}``;
the parameters are checked exactly as the command line checks them (:class:`~tqstar.params.DecodeParams`, then
the engine against the loaded models) and against the server's limits. A request cannot load a model, read a
file or run code: it picks a preset and sets numbers. The decoding itself happens in the engine thread
(:mod:`~tqstar.serving.scheduler`); handlers only validate, queue and relay events
(:mod:`~tqstar.serving.completions`). This module holds the routes, the middleware and the exception handlers.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import Engine
from ..params import FIELDS, DecodeParams
from .completions import Completions, public_params
from .config import ServeConfig
from .metrics import ServerMetrics
from .protocol import OVERRIDABLE, APIError
from .scheduler import Scheduler, install_checkpoints

STATIC_DIR = Path(__file__).parent / "static"  # the playground page


def create_app(engines: Engine | Mapping[str | None, Engine], config: ServeConfig) -> FastAPI:
    """The app serving ``config``'s presets with ``engines`` (models loaded; see
    :func:`~tqstar.serving.server.build_engines`): one :class:`~tqstar.engine.Engine`, or one per baseline name
    (``None``: the top-level baseline).

    The engine thread starts with the app and stops (after the shutdown grace) when the app shuts down.
    """
    engines = {None: engines} if isinstance(engines, Engine) else dict(engines)
    metrics = ServerMetrics()
    scheduler = Scheduler(config.limits, metrics)
    install_checkpoints(engines.values())  # where a heavy step may hand the machine to another group

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            await run_in_threadpool(scheduler.close, config.limits.shutdown_grace_s + 5)

    app = FastAPI(title="tqstar", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics, app.state.config = scheduler, metrics, config
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=list(CORS_HEADERS), expose_headers=["x-should-retry", "Retry-After"])
    api = Completions(engines, config, scheduler, metrics)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:  # a bug: logged by the server
        error = APIError(500, f"the server failed on this request ({type(exc).__name__}); its log has the details",
                         type="server_error", code="internal_error")
        return JSONResponse(error.body(), status_code=500, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = APIError(exc.status_code, f"{request.method} {request.url.path[:80]}: {exc.detail}; see GET"
                                          " /v1/models and the docs for the routes",
                         code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=error.headers)

    app.add_middleware(_CountRequests, metrics=metrics)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await api.complete(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await api.complete(request, chat=False)

    def model_card(name: str, params: DecodeParams) -> dict[str, Any]:
        row = params.method_row
        return {"id": name, "object": "model", "created": api.started, "owned_by": "tqstar",
                "tqstar": {"params": public_params(params), "baseline": config.baseline_of(name),
                           "method": {"name": params.method, "kind": row.kind, "description": row.doc,
                                      "rolls": row.rolls, "uses": list(used_params(params))}}}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        api.authorize(request)
        return {"object": "list", "data": [model_card(name, params) for name, params in config.presets]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        api.authorize(request)
        params = config.preset(model_id)
        if params is None:
            raise APIError(404, f"model {model_id[:80]!r} is not served here; GET /v1/models lists the presets",
                           param="model", code="model_not_found")
        return model_card(model_id, params)

    @app.get("/v1/tqstar/limits")
    async def limits(request: Request) -> dict[str, Any]:
        api.authorize(request)
        return {"limits": dataclasses.asdict(config.limits), "overridable": list(OVERRIDABLE),
                "presets": {name: public_params(params) for name, params in config.presets}}

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = scheduler.ready
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


#: Request headers a browser page may send from an allowed origin (``cors_origins``): the ones the API reads, and the
#: ones the official OpenAI SDKs add to every request (the JS SDK's ``X-Stainless-*`` platform headers, its retry and
#: timeout headers, ``OpenAI-Organization`` / ``OpenAI-Project``), so that the SDK's preflight passes.
CORS_HEADERS = ("Authorization", "Content-Type", "Accept", "OpenAI-Organization", "OpenAI-Project", "OpenAI-Beta",
                "Idempotency-Key", "X-Stainless-Lang", "X-Stainless-Package-Version", "X-Stainless-OS",
                "X-Stainless-Arch", "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Retry-Count",
                "X-Stainless-Timeout", "X-Stainless-Helper-Method", "X-Stainless-Poll-Helper",
                "X-Stainless-Custom-Poll-Interval", "X-Stainless-Async")


def used_params(params: DecodeParams) -> tuple[str, ...]:
    """The decoding parameters a preset's method reads (a page disables the controls of the others): every field
    that applies to it (:meth:`DecodeParams.applies`: the field's declared scope, :data:`tqstar.methods.SCOPES`) --
    the one place that also refuses a flag or key without an effect."""
    return tuple(name for name in FIELDS if name != "method" and params.applies(name))


class _CountRequests:
    """ASGI middleware: count every answered HTTP request by endpoint and status (``tqstar_requests_total``).

    Plain ASGI rather than ``@app.middleware``: it only watches ``http.response.start``, so streamed responses
    pass through untouched."""

    def __init__(self, app, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before any answer

        async def watch(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            self.metrics.requests.labels(_endpoint(scope["path"]), str(status)).inc()


def _endpoint(path: str) -> str:
    known = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/tqstar/limits", "/health", "/metrics")
    return path if path in known else "other"


