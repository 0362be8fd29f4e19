"""JSON over HTTP to model servers, with the standard library only: timeouts, retries with exponential backoff on
429 / 5xx / connection errors, and a bound on requests in flight. Used by the remote language model
(:mod:`tqstar.lm.remote`) and the LLM judge (:mod:`tqstar.eval.judge`)."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError, ModelServerError, ServerRejectedError

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException)


@dataclass
class RequestCounts:
    """What a client sent: requests answered, retries, and requests that failed for good."""

    requests: int = 0
    retries: int = 0
    failures: int = 0


@dataclass
class JsonClient:
    """POST/GET JSON to ``base_url`` (``http(s)://host:port``, with or without a trailing ``/v1``).

    Args:
        base_url: the server's address.
        api_key_env: environment variable holding a bearer token (unset: no ``Authorization`` header).
        timeout: seconds to wait for one answer.
        retries: further attempts after a 429 / 5xx / connection error / timeout (0: none).
        backoff: seconds before the first retry; doubled each time (with jitter), capped at 30 s; a
            ``Retry-After`` header wins when the server sends one.
        max_in_flight: requests this client has open at once, over all threads.
    """

    base_url: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    retries: int = 4
    backoff: float = 0.5
    max_in_flight: int = 8
    counts: RequestCounts = field(default_factory=RequestCounts, repr=False)

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {self.base_url!r} must start with http:// or https://; e.g."
                              " http://127.0.0.1:8000")
        for name, value, low in (("timeout", self.timeout, 0), ("backoff", self.backoff, 0)):
            if not value > low:
                raise ConfigError(f"`{name}` must be > {low} seconds, got {value!r}", param=name, value=value)
        if self.retries < 0 or self.max_in_flight < 1:
            raise ConfigError(f"`retries` must be >= 0 and `max_in_flight` >= 1, got {self.retries} and"
                              f" {self.max_in_flight}", param="retries")
        root = self.base_url.rstrip("/")
        self.root = root[: -len("/v1")] if root.endswith("/v1") else root
        self._slots = threading.BoundedSemaphore(self.max_in_flight)
        self._lock = threading.Lock()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self._call(path, json.dumps(body).encode())

    def get(self, path: str, *, raw: bool = False, retries: int | None = None) -> Any:
        return self._call(path, None, raw=raw, retries=retries)

    # ---- internals --------------------------------------------------------------------------------------
    def _call(self, path: str, data: bytes | None, *, raw: bool = False, retries: int | None = None) -> Any:
        url = self.root + path
        headers = {"Content-Type": "application/json"}
        if os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {os.environ[self.api_key_env]}"
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            wait = None
            try:
                with self._slots, urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers),
                                                         timeout=self.timeout) as response:
                    payload = response.read()
                self._count("requests")
                return payload.decode() if raw else json.loads(payload)
            except urllib.error.HTTPError as exc:
                detail = _detail(exc)
                if exc.code not in RETRY_STATUS:
                    self._count("failures")
                    raise ServerRejectedError(f"server {url} answered HTTP {exc.code}: {detail}", exc.code,
                                              detail) from exc
                last = f"HTTP {exc.code}: {detail}"
                wait = _retry_after(exc)
            except json.JSONDecodeError as exc:
                self._count("failures")
                raise ModelServerError(f"server {url} answered with something that is not JSON ({exc}); is this an"
                                       " OpenAI-compatible server?") from exc
            except _NETWORK_ERRORS as exc:
                last = str(getattr(exc, "reason", None) or exc) or type(exc).__name__
            if attempt < retries:
                self._count("retries")
                time.sleep(wait if wait is not None else min(30.0, self.backoff * 2**attempt) * random.uniform(1, 1.5))
        self._count("failures")
        raise ModelServerError(f"server {url} failed after {retries + 1} attempt(s) ({last}); check that it is running and"
                               " reachable, or raise the model's `timeout` / `retries` settings")

    def _count(self, what: str) -> None:
        with self._lock:
            setattr(self.counts, what, getattr(self.counts, what) + 1)


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read().decode(errors="replace")
    except Exception:  # noqa: BLE001 - the body is only for the message
        return exc.reason or ""
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        return text.strip()[:500]
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message", error))[:500]
    return str(error)[:500]


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return min(30.0, float(value)) if value is not None else None
    except ValueError:
        return None
