"""Continuous batching: ONE engine thread owns the models and steps every active request together.

Each request is a :class:`Ticket` holding one :class:`~tqstar.state.PromptState` row. The engine thread loops::

    admit    waiting tickets join at the step boundary, up to ``limits.max_batch`` rows in all
    step     for each group of rows that can share a step (the same engine, i.e. baseline, and the same
             ``DecodeParams.group_key()``: method, k, alpha, rollouts, temperature, ...), in turn:
             ``Decoder.step(rows)`` advances every row by one token
    emit     each newly committed token goes to its request's event queue (text that is safe to send, see
             :mod:`~tqstar.serving.detok`), a step's trace row with its first token (a blockwise step commits
             several tokens and writes one row); rows that finished are scored together (``Engine.finish``) and leave
    drop     cancelled rows (a client that went away) and rows past their deadline leave before the next step

so a short request never waits for a long one, and a request's tokens are those ``tqstar generate`` gives for
the same prompt and preset (the decoder is the same, and its randomness is keyed per row, not per batch).
Events cross to the HTTP side through ``loop.call_soon_threadsafe`` into the ticket's ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from ..decoder import Decoder
from ..engine import Engine
from ..errors import ModelServerError, TQStarError
from ..params import DecodeParams
from ..state import PromptState, Response
from .config import Limits
from .detok import IncrementalText
from .metrics import ServerMetrics
from .protocol import APIError

log = logging.getLogger("tqstar.serve")


@dataclass
class Token:
    """One committed token: the text it made safe to send ("" while held back) and its trace row."""

    token_id: int
    text: str
    trace: dict[str, Any] | None


@dataclass
class Done:
    """The request finished: the final response, the text not yet sent, and the prompt's token count."""

    response: Response
    rest: str
    prompt_tokens: int


@dataclass
class Failed:
    """The request ended with an error (timeout, shutdown, a model server failing)."""

    error: APIError


@dataclass(eq=False)
class Ticket:
    """One request's row and the queue its events go to (read on the event loop ``loop``)."""

    engine: Engine
    state: PromptState
    params: DecodeParams
    detok: IncrementalText
    loop: asyncio.AbstractEventLoop
    deadline: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    sent: int = 0  # tokens already pushed
    traced: int = 0  # trace rows already pushed

    def push(self, event: Token | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


@dataclass(eq=False)
class Group:
    """Rows that share a step: one engine (models) and one decoder for their common parameters."""

    engine: Engine
    params: DecodeParams
    decoder: Decoder
    tickets: list[Ticket] = field(default_factory=list)


class Scheduler:
    """The engine thread and its queue. ``submit`` / ``cancel`` / ``shutdown`` may be called from any thread."""

    def __init__(self, limits: Limits, metrics: ServerMetrics) -> None:
        self.limits, self.metrics = limits, metrics
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._groups: dict[Hashable, Group] = {}
        self._accepting = True
        self._drain_by: float | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="tqstar-engine", daemon=True)

    # ---- any thread ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._thread.is_alive() and self._accepting

    def submit(self, ticket: Ticket) -> None:
        """Queue ``ticket``; raise :class:`APIError` 429 when the queue is full, 503 when shutting down."""
        with self._cond:
            if not self._accepting:
                raise APIError(503, "the server is shutting down; retry against another replica",
                               type="server_error", code="shutting_down")
            if len(self._waiting) >= self.limits.max_queue:
                raise APIError(429, f"the server's queue is full ({self.limits.max_queue} requests waiting); retry"
                                    " after a second", type="rate_limit_error", code="queue_full",
                               headers={"Retry-After": "1"})
            self._waiting.append(ticket)
            self.metrics.queue_depth.set(len(self._waiting))
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> None:
        """Drop ``ticket`` before the next step (a no-op once it has finished or failed: it left already)."""
        ticket.cancelled = True
        with self._cond:
            self._cond.notify()

    def shutdown(self, grace_s: float) -> None:
        """Stop accepting requests; in-flight ones get ``grace_s`` seconds to finish, then end with an error."""
        with self._cond:
            self._accepting = False
            self._drain_by = time.monotonic() + grace_s
            self._cond.notify()

    def close(self, timeout: float = 30.0) -> None:
        """End the engine thread (after :meth:`shutdown`'s grace, every request still open ends with an error)."""
        with self._cond:
            self._accepting = False
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the engine thread --------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # a bug in the loop itself: end every request rather than leave it hanging
            log.exception("the engine thread failed; no request can be served any more")
            with self._cond:
                self._accepting = False
                for ticket in [*self._waiting, *(t for g in self._groups.values() for t in g.tickets)]:
                    self._fail(ticket, _error_for(RuntimeError("engine thread failed")))
            raise

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._admit()
                if not self._groups:
                    if self._closed:
                        break
                    self._cond.wait(timeout=0.5)
                    continue
            for key, group in list(self._groups.items()):  # groups step in turn
                self._step(group)
                if not group.tickets:
                    del self._groups[key]
            self.metrics.active_rows.set(self._active())

    def _active(self) -> int:
        return sum(len(g.tickets) for g in self._groups.values())

    def _admit(self) -> None:
        """Move waiting tickets into their groups while rows are free (called with the lock held)."""
        now = time.monotonic()
        for ticket in list(self._waiting):
            if ticket.cancelled or now > ticket.deadline or self._closed:
                self._waiting.remove(ticket)
                if not ticket.cancelled:
                    self._fail(ticket, _shutdown_error() if self._closed else _timeout_error(self.limits))
        while self._waiting and self._active() < self.limits.max_batch:
            ticket = self._waiting.popleft()
            key = (id(ticket.engine), ticket.params.group_key())
            group = self._groups.get(key)
            if group is None:  # checked when the request came in: Engine.decoder's check is remembered
                group = self._groups[key] = Group(ticket.engine, ticket.params, ticket.engine.decoder(ticket.params))
            group.tickets.append(ticket)
        self.metrics.queue_depth.set(len(self._waiting))
        self.metrics.active_rows.set(self._active())

    def _step(self, group: Group) -> None:
        """One decoder step for ``group``'s live rows; push their tokens; finish the rows that are done."""
        self._drop(group)
        if not group.tickets:
            return
        started = time.perf_counter()
        try:
            finished = group.decoder.step([t.state for t in group.tickets])
            self.metrics.step_seconds.observe(time.perf_counter() - started)
            self.metrics.step_rows.observe(len(group.tickets))
            for ticket in group.tickets:
                self._emit(ticket)
        except Exception as exc:  # noqa: BLE001 - every row of the group ends with the error; the server goes on
            self._fail_all(group, exc)
            return
        done_ids = {id(state) for state in finished}
        done = [t for t in group.tickets if id(t.state) in done_ids]
        if done:
            group.tickets = [t for t in group.tickets if id(t.state) not in done_ids]
            self.metrics.active_rows.set(self._active())  # before their answers go out
            self._finish(done, group)

    def _drop(self, group: Group) -> None:
        """Remove cancelled rows, rows past their deadline, and (after the shutdown grace) every row."""
        now = time.monotonic()
        draining = self._closed or (self._drain_by is not None and now > self._drain_by)
        keep = []
        for ticket in group.tickets:
            if ticket.cancelled:
                continue
            if draining or now > ticket.deadline:
                self._fail(ticket, _shutdown_error() if draining else _timeout_error(self.limits))
                continue
            keep.append(ticket)
        group.tickets = keep

    def _emit(self, ticket: Ticket) -> None:
        state = ticket.state
        rows = state.trace[ticket.traced:] if state.trace is not None else []  # at most one: this step's
        ticket.traced += len(rows)
        for j in range(ticket.sent, len(state.response)):
            if ticket.sent == 0:
                self.metrics.ttft.observe(time.monotonic() - ticket.arrived)
            text = ticket.detok.update(state.response[: j + 1])
            ticket.push(Token(state.response[j], text, rows.pop(0) if rows else None))
            ticket.sent = j + 1

    def _finish(self, tickets: list[Ticket], group: Group) -> None:
        try:
            responses = group.engine.finish([t.state for t in tickets], group.params)
        except Exception as exc:  # noqa: BLE001 - these rows end with the error; the server goes on
            for ticket in tickets:
                self._fail(ticket, _error_for(exc))
            return
        for ticket, response in zip(tickets, responses):
            prompt_tokens = len(ticket.state.prompt_ids["sft"])
            self.metrics.finished(prompt_tokens, len(response.token_ids), response.accounting)
            ticket.push(Done(response, ticket.detok.finish(response.text), prompt_tokens))

    def _fail_all(self, group: Group, exc: BaseException) -> None:
        error = _error_for(exc)
        for ticket in group.tickets:
            self._fail(ticket, error)
        group.tickets = []

    def _fail(self, ticket: Ticket, error: APIError) -> None:
        ticket.push(Failed(error))


def _error_for(exc: BaseException) -> APIError:
    """The API error for an exception raised while decoding (a model server failing, a reward failing, a bug)."""
    if isinstance(exc, ModelServerError):
        return APIError(502, str(exc), type="server_error", code="model_server_error")
    if isinstance(exc, TQStarError):
        return APIError(500, str(exc), type="server_error", code="decoding_error")
    log.exception("decoding failed", exc_info=exc)
    return APIError(500, f"decoding failed with an internal error ({type(exc).__name__}); the server log has the"
                         " details", type="server_error", code="internal_error")


def _timeout_error(limits: Limits) -> APIError:
    return APIError(504, f"the request ran past the server's {limits.request_timeout_s:g} s limit; ask for fewer"
                         " tokens (max_tokens) or a cheaper preset", type="server_error", code="timeout")


def _shutdown_error() -> APIError:
    return APIError(503, "the server shut down before the request finished; retry against another replica",
                    type="server_error", code="shutting_down")
