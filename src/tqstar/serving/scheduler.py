"""Continuous batching with fair shares: groups of rows step in threads of their own, one group computing at a time,
and the machine goes to the group that has used the least time per request.

Each request is a :class:`Ticket` holding one :class:`~tqstar.state.PromptState` row. Rows that can share a decoder
step — the same engine (i.e. baseline) and the same ``DecodeParams.group_key()`` (method, k, alpha, rollouts,
temperature, ...) — form a :class:`Group`::

    admit   the admission thread puts waiting tickets into their groups (new or running), up to
            ``limits.max_batch`` rows in all; a ticket joins its group at that group's next step boundary
    step    the group's own thread: ``Decoder.step(rows)`` advances every row by one decision
    emit    each row's newly committed tokens go to its request as ONE event per step (the text that became safe to
            send, :mod:`~tqstar.serving.detok`, and the step's trace row), however many tokens the step committed;
            rows that finished are scored together (``Engine.finish``) and leave
    drop    cancelled rows (a client that went away), rows past their deadline and, after the shutdown grace,
            every row leave before the next step

A request's tokens are those ``tqstar generate`` gives for the same prompt and parameters: the decoder is the same,
its randomness is keyed per row, and the backends' prefix caches change only how fast a result comes.

Why the machine is shared this way
----------------------------------
Steps of different groups cost very different amounts: a plain ``sft`` step is one forward pass of its rows, a TQ*
step with k = 20, N = 16, L = 64 is 64 forward passes of 320 rollout rows. Stepping the groups in turn lets every
group advance one step per round, so the light group's pace is set by the heaviest step (a 6-token ``sft`` request
took 136 s instead of 1.2 s beside one such request). Weighting a round-robin by each group's measured step cost
(deficit round-robin) or giving each round a time budget fixes the long-run shares but not the latency: a step is
indivisible there, so the light request still waits a whole heavy step each time the heavy group's turn comes.

So the heavy step is split, at the unit the machine actually computes in: one forward pass of a local model. Every
local model gets a forward pre-hook (:func:`install_checkpoints`) that calls :meth:`FairShare.checkpoint`; the
decoder and the backends run unchanged and do not know. Only the group holding the :class:`FairShare` computes; at a
checkpoint, once it has computed for ``quantum_s``, it hands over to the waiting group that has used the least
*virtual time* — compute seconds divided by the group's rows, so every request gets an equal share of the machine
(start-time fair queuing). A group that (re)appears starts at the least virtual time of the running groups, so it
cannot claim time it did not wait for. Hence a row advances at (its speed alone) / (requests running): a rate that
does not depend on what another group's steps cost, and a light step waits at most one forward pass of a heavy
group. What cannot be split is capped at admission instead (:mod:`~tqstar.serving.budget`: the tokens one step rolls
out, which bounds the rows of that forward pass, and the request's KV memory, which is not time-shared).

Handing over only at a forward pre-hook or between steps is safe for the local backends: they keep a step's tensors
in locals and replace their stored prefix cache whole, and any stored cache gives the same results. A served model
(``openai:``) is one HTTP call per model call, with no checkpoint inside: the model server batches it with its own
scheduler. Reward models are not split (their scoring holds the reward's lock).

Events cross to the HTTP side through ``loop.call_soon_threadsafe`` into the ticket's ``asyncio.Queue``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..decoder import Decoder
from ..engine import Engine
from ..errors import ModelServerError, TQStarError
from ..params import DecodeParams
from ..reward import base as reward_base
from ..state import PromptState, Response
from .config import Limits
from .detok import IncrementalText
from .metrics import ServerMetrics
from .protocol import APIError

log = logging.getLogger("tqstar.serve")

#: A group computes at least this long before a checkpoint may hand the machine to another group.
QUANTUM_S = 0.02
#: A new group's first step waits at most this long for requests that are still arriving (being read and encoded), so
#: that requests sent together start with one batched step, as one ``tqstar generate`` batch would.
GATHER_S = 0.05


@dataclass
class Step:
    """What one decoder step committed for a row: its token ids (one, or several for a block or ``bon``), the text
    they made safe to send ("" while held back) and the step's trace row (``None`` without a trace)."""

    token_ids: list[int]
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
    """One request's row and the queue its events go to (read on the event loop ``loop``). ``params``: everything
    the row runs with, its own seed, budget and stop strings included (what the response reports)."""

    engine: Engine
    state: PromptState
    params: DecodeParams
    detok: IncrementalText
    loop: asyncio.AbstractEventLoop
    deadline: float
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrived: float = field(default_factory=time.monotonic)
    admitted: float | None = None  # when it got a row
    last_event: float | None = None  # when its last step event was pushed
    cancelled: bool = False
    sent: int = 0  # tokens already pushed
    traced: int = 0  # trace rows already pushed

    def push(self, event: Step | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled = True


_order = itertools.count()


@dataclass(eq=False)
class Group:
    """Rows that share a step: one engine (models) and one decoder for their common parameters, stepped by their own
    thread. ``pending`` tickets join at the next step boundary. ``vtime``: compute seconds used per row."""

    key: Hashable
    engine: Engine
    params: DecodeParams
    decoder: Decoder
    tickets: list[Ticket] = field(default_factory=list)
    pending: list[Ticket] = field(default_factory=list)
    vtime: float = 0.0
    rows: int = 1
    slice_start: float = 0.0
    order: int = field(default_factory=lambda: next(_order))

    @property
    def size(self) -> int:
        return len(self.tickets) + len(self.pending)


class FairShare:
    """The machine, held by one group at a time; it goes to the waiting group with the least virtual time.

    :meth:`acquire` / :meth:`release` bracket a group's step; :meth:`checkpoint` (between model forwards, on the
    holder's thread) hands over to a waiting group that has used less time per row, once the holder has computed
    for ``quantum_s``."""

    def __init__(self, quantum_s: float = QUANTUM_S) -> None:
        self.quantum_s = quantum_s
        self._cond = threading.Condition()
        self._holder: Group | None = None
        self._waiting: list[Group] = []

    def start(self, group: Group, running: Iterable[Group]) -> None:
        """A new group starts at the least virtual time of the ``running`` ones (it claims no time it did not wait
        for)."""
        with self._cond:
            group.vtime = min((g.vtime for g in running if g is not group), default=0.0)

    def acquire(self, group: Group) -> None:
        with self._cond:
            self._wait_turn(group)

    def release(self, group: Group) -> None:
        with self._cond:
            self._charge(group, time.perf_counter())
            self._holder = None
            self._cond.notify_all()

    def checkpoint(self, group: Group) -> None:
        """Hand the machine over if another group is due (called on the holder's thread)."""
        now = time.perf_counter()
        if now - group.slice_start < self.quantum_s or _holds_reward_lock():
            return
        with self._cond:
            self._charge(group, now)
            due = self._next()
            if due is None or (due.vtime, due.order) >= (group.vtime, group.order):
                return
            self._holder = None
            self._cond.notify_all()
            self._wait_turn(group)

    def _wait_turn(self, group: Group) -> None:
        self._waiting.append(group)
        while self._holder is not None or self._next() is not group:
            self._cond.wait()
        self._waiting.remove(group)
        self._holder = group
        group.slice_start = time.perf_counter()

    def _next(self) -> Group | None:
        return min(self._waiting, key=lambda g: (g.vtime, g.order), default=None)

    def _charge(self, group: Group, now: float) -> None:
        group.vtime += (now - group.slice_start) / max(1, group.rows)
        group.slice_start = now


# ---- the forward-pass checkpoints ---------------------------------------------------------------------------------
_local = threading.local()  # .slot = (FairShare, Group) on a group's thread


def _checkpoint_hook(module, args) -> None:
    slot = getattr(_local, "slot", None)
    if slot is not None:
        slot[0].checkpoint(slot[1])


def _holds_reward_lock() -> bool:
    """Whether this thread is inside a reward's scoring (which holds the rewards' lock: never hand over there)."""
    is_owned = getattr(reward_base._SCORING, "_is_owned", None)
    return bool(is_owned and is_owned())


def install_checkpoints(engines: Iterable[Engine]) -> None:
    """Put :func:`_checkpoint_hook` before every forward pass of the engines' local language models (once per
    module; it does nothing on a thread that is not a group's, e.g. ``Engine.generate`` in the same process)."""
    import torch

    for engine in engines:
        for lm in (engine.models.sft, engine.models.baseline):
            module = getattr(lm, "model", None)
            if isinstance(module, torch.nn.Module) and not getattr(module, "_tqstar_checkpoint", False):
                module.register_forward_pre_hook(_checkpoint_hook)
                module._tqstar_checkpoint = True


# ---- the scheduler --------------------------------------------------------------------------------------------
class Scheduler:
    """The admission thread, the groups' threads and the queue. ``submit`` / ``cancel`` / ``shutdown`` may be called
    from any thread."""

    def __init__(self, limits: Limits, metrics: ServerMetrics, quantum_s: float = QUANTUM_S) -> None:
        self.limits, self.metrics = limits, metrics
        self.share = FairShare(quantum_s)
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._groups: dict[Hashable, Group] = {}
        self._accepting = True
        self._drain_by: float | None = None
        self._closed = False
        self._arriving = 0  # requests being read and encoded, not yet submitted
        self._thread = threading.Thread(target=self._run, name="tqstar-admit", daemon=True)

    # ---- any thread ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._thread.is_alive() and self._accepting

    @property
    def idle(self) -> bool:
        """No request waiting or decoding."""
        with self._cond:
            return not self._waiting and not self._groups

    @property
    def running(self) -> int:
        """Requests decoding now (their rows)."""
        with self._cond:
            return sum(g.size for g in self._groups.values())

    def arriving(self, change: int) -> None:
        """A request started (+1) or stopped (-1) being read and encoded (see :data:`GATHER_S`)."""
        with self._cond:
            self._arriving += change
            self._cond.notify_all()

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
            self._cond.notify_all()

    def cancel(self, ticket: Ticket) -> None:
        """Drop ``ticket`` before its next step (a no-op once it has finished or failed: it left already)."""
        ticket.cancelled = True
        with self._cond:
            self._cond.notify_all()

    def shutdown(self, grace_s: float) -> None:
        """Stop accepting requests; in-flight ones get ``grace_s`` seconds to finish, then end with an error."""
        with self._cond:
            self._accepting = False
            self._drain_by = time.monotonic() + grace_s
            self._cond.notify_all()

    def close(self, timeout: float = 30.0) -> None:
        """End every thread (after :meth:`shutdown`'s grace, every request still open ends with an error)."""
        with self._cond:
            self._accepting = False
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the admission thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._expire_waiting()
                    self._admit()
                    if self._closed and not self._groups and not self._waiting:
                        return
                    self._cond.wait(timeout=0.25)
        except BaseException:  # a bug in admission itself: end every request rather than leave it hanging
            log.exception("the admission thread failed; no request can be served any more")
            with self._cond:
                self._accepting = False
                for ticket in [*self._waiting, *(t for g in self._groups.values() for t in (*g.tickets, *g.pending))]:
                    self._end(ticket, Failed(_error_for(RuntimeError("engine thread failed"))), "error")
            raise

    def _expire_waiting(self) -> None:
        """Tickets still waiting for a row: cancelled ones leave; past their deadline, or at shutdown, they fail."""
        now = time.monotonic()
        for ticket in list(self._waiting):
            if ticket.cancelled or now > ticket.deadline or self._closed:
                self._waiting.remove(ticket)
                if ticket.cancelled:
                    self.metrics.finish_reasons.labels("cancelled").inc()
                else:
                    error = _shutdown_error() if self._closed else _queue_timeout_error(self.limits, now - ticket.arrived)
                    self._end(ticket, Failed(error), "shutdown" if self._closed else "timeout")

    def _admit(self) -> None:
        """Move waiting tickets into their groups while rows are free (called with the lock held)."""
        rows = sum(g.size for g in self._groups.values())
        while self._waiting and rows < self.limits.max_batch and not self._closed:
            ticket = self._waiting.popleft()
            ticket.admitted = time.monotonic()
            self.metrics.queue_seconds.observe(ticket.admitted - ticket.arrived)
            key = (id(ticket.engine), ticket.params.group_key())
            group = self._groups.get(key)
            if group is None:  # checked when the request came in: Engine.decoder's check is remembered
                group = Group(key, ticket.engine, ticket.params, ticket.engine.decoder(ticket.params))
                self.share.start(group, self._groups.values())
                self._groups[key] = group
                group.pending.append(ticket)
                threading.Thread(target=self._run_group, args=(group,), name=f"tqstar-group-{group.order}",
                                 daemon=True).start()
            else:
                group.pending.append(ticket)
            rows += 1
        self.metrics.queue_depth.set(len(self._waiting))
        self.metrics.active_rows.set(rows)

    # ---- a group's thread ---------------------------------------------------------------------------------
    def _run_group(self, group: Group) -> None:
        _local.slot = (self.share, group)
        try:
            self._gather()
            while self._next_rows(group):
                self.share.acquire(group)
                try:
                    self._step(group)
                finally:
                    self.share.release(group)
        except BaseException as exc:  # noqa: BLE001 - a bug here ends this group's requests; the server goes on
            log.exception("a group's thread failed")
            with self._cond:
                for ticket in [*group.tickets, *group.pending]:
                    self._end(ticket, Failed(_error_for(exc)), "error")
                group.tickets, group.pending = [], []
                self._groups.pop(group.key, None)
                self._cond.notify_all()
        finally:
            _local.slot = None

    def _gather(self) -> None:
        """Before a new group's first step: wait (at most :data:`GATHER_S`) while requests are still arriving, and
        admit them, so that requests sent together take their first step together."""
        deadline = time.monotonic() + GATHER_S
        with self._cond:
            while self._arriving > 0 and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            self._admit()

    def _next_rows(self, group: Group) -> bool:
        """At a step boundary: admit the pending tickets, drop the ones that must leave; ``False`` (and the group
        is gone) when no row is left."""
        with self._cond:
            group.tickets += group.pending
            group.pending = []
            self._drop(group)
            group.rows = len(group.tickets)
            if not group.tickets:
                del self._groups[group.key]
                self._cond.notify_all()  # rows are free: admit
                return False
            self.metrics.active_rows.set(sum(g.size for g in self._groups.values()))
            return True

    def _step(self, group: Group) -> None:
        """One decoder step for ``group``'s rows; push their tokens; finish the rows that are done."""
        started = time.perf_counter()
        try:
            finished = group.decoder.step([t.state for t in group.tickets])
        except Exception as exc:  # noqa: BLE001 - every row of the group ends with the error; the server goes on
            with self._cond:
                for ticket in group.tickets:
                    self._end(ticket, Failed(_error_for(exc)), "error")
                group.tickets = []
            return
        self.metrics.step_seconds.observe(time.perf_counter() - started)
        self.metrics.step_rows.observe(len(group.tickets))
        for ticket in group.tickets:
            self._emit(ticket)
        done_ids = {id(state) for state in finished}
        done = [t for t in group.tickets if id(t.state) in done_ids]
        if done:
            with self._cond:
                group.tickets = [t for t in group.tickets if id(t.state) not in done_ids]
                self._cond.notify_all()  # their rows are free before their answers go out
            self._finish(done, group)

    def _drop(self, group: Group) -> None:
        """Remove cancelled rows, rows past their deadline, and (after the shutdown grace) every row."""
        now = time.monotonic()
        draining = self._closed or (self._drain_by is not None and now > self._drain_by)
        keep = []
        for ticket in group.tickets:
            if ticket.cancelled:
                self.metrics.finish_reasons.labels("cancelled").inc()
            elif draining:
                self._end(ticket, Failed(_shutdown_error()), "shutdown")
            elif now > ticket.deadline:
                self._end(ticket, Failed(_timeout_error(self.limits, ticket, len(self._groups))), "timeout")
            else:
                keep.append(ticket)
        group.tickets = keep

    def _emit(self, ticket: Ticket) -> None:
        """One :class:`Step` event for the tokens (and the trace row) the row committed since the last event."""
        state = ticket.state
        new = state.response[ticket.sent:]
        rows = state.trace[ticket.traced:] if state.trace is not None else []
        if not new and not rows:
            return
        now = time.monotonic()
        if ticket.sent == 0:
            self.metrics.ttft.observe(now - ticket.arrived)
        elif new and ticket.last_event is not None:
            self.metrics.itl.observe((now - ticket.last_event) / len(new))
        text = ticket.detok.update(state.response)
        ticket.sent, ticket.traced, ticket.last_event = len(state.response), ticket.traced + len(rows), now
        for row in rows[:-1]:  # a decoder writes one trace row per step; should one write more, none is lost
            ticket.push(Step([], "", row))
        ticket.push(Step(list(new), text, rows[-1] if rows else None))

    def _finish(self, tickets: list[Ticket], group: Group) -> None:
        try:
            responses = group.engine.finish([t.state for t in tickets], group.params)
        except Exception as exc:  # noqa: BLE001 - these rows end with the error; the server goes on
            for ticket in tickets:
                self._end(ticket, Failed(_error_for(exc)), "error")
            return
        for ticket, response in zip(tickets, responses):
            prompt_tokens = len(ticket.state.prompt_ids["sft"])
            self.metrics.finished(prompt_tokens, len(response.token_ids), response.accounting)
            self._end(ticket, Done(response, ticket.detok.finish(response.text), prompt_tokens),
                      response.finish_reason)

    def _end(self, ticket: Ticket, event: Done | Failed, reason: str) -> None:
        """The ticket's last event, counted by why it ended, with its end-to-end latency."""
        self.metrics.finish_reasons.labels(reason).inc()
        self.metrics.e2e.observe(time.monotonic() - ticket.arrived)
        ticket.push(event)


def _error_for(exc: BaseException) -> APIError:
    """The API error for an exception raised while decoding (a model server failing, a reward failing, a bug)."""
    if isinstance(exc, ModelServerError):
        return APIError(502, str(exc), type="server_error", code="model_server_error")
    if isinstance(exc, TQStarError):
        return APIError(500, str(exc), type="server_error", code="decoding_error")
    log.exception("decoding failed", exc_info=exc)
    return APIError(500, f"decoding failed with an internal error ({type(exc).__name__}); the server log has the"
                         " details", type="server_error", code="internal_error")


def _timeout_error(limits: Limits, ticket: Ticket, groups: int) -> APIError:
    """A request that ran past its deadline while decoding: how far it got, and what it shared the machine with."""
    state = ticket.state
    waited = (ticket.admitted or ticket.arrived) - ticket.arrived
    return APIError(504, f"the request ran past the server's {limits.request_timeout_s:g} s limit after"
                         f" {len(state.response)} of its {state.max_new_tokens} tokens (it waited {waited:.1f} s for a"
                         f" row, then shared the machine with {max(0, groups - 1)} other parameter group(s)); ask for"
                         " fewer tokens (max_tokens) or cheaper tqstar settings (k, n_rollouts, rollout_len)",
                    type="server_error", code="timeout")


def _queue_timeout_error(limits: Limits, waited: float) -> APIError:
    """A request that never got a row: the server was busy, which a later retry may not find."""
    return APIError(503, f"the server was busy: the request waited {waited:.1f} s for one of its"
                         f" {limits.max_batch} rows and reached the {limits.request_timeout_s:g} s limit before"
                         " decoding began; retry later", type="server_error", code="queue_timeout",
                    headers={"Retry-After": "5"})


def _shutdown_error() -> APIError:
    return APIError(503, "the server shut down before the request finished; retry against another replica",
                    type="server_error", code="shutting_down")
