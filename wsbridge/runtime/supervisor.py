"""The supervisor thread: one connection after another, for the life of a client.

It makes a `Connection` for every attempt, waits for it to open (within
``connect_timeout``), flushes the send buffer and only then says
``connected``; it watches the heartbeat while the connection lives (and
flushes again when a send's timeout left frames in the buffer); when it
ends, it asks the `ReconnectPolicy` whether and when to try again. Liveness
deadlines pause while the reader is held back by wsbridge's own full dispatch
queue (`Dispatcher.holding`): backpressure is not a dead peer.

The supervisor writes the lifecycle state (but STOPPED), the counters
below, and ``conn``; it emits lifecycle signals through ``emit``, which
never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

import websocket

from ..errors import ConnectError, MessageTooLarge, StoreError, WireError, WsbridgeError, preview
from ..redact import redact_url
from ..tracking.store import Store
from ..wire.connection import Connection, Hooks
from ..wire.options import ConnectOptions
from .delivery import END, EXPIRE, Barrier, Delivery, Stored
from .dispatch import Dispatcher, weight
from .intake import Intake
from .policy import Ending, ReconnectPolicy
from .sender import Sender
from .signals import Signals
from .state import Lifecycle, State

log = logging.getLogger("wsbridge")

SETTLE_TIMEOUT = 1.0
"""How long a reader that must fail its connection waits for the subscribers to
finish the messages that came before the violation (their replies go out first)."""


def describe(error: Optional[BaseException]) -> str:
    """One line about an error, for logs and messages."""
    if error is None:
        return "none"
    if isinstance(error, websocket.WebSocketBadStatusException):
        return f"handshake refused with HTTP {error.status_code}"
    text = str(error).split("\n", 1)[0]
    return f"{type(error).__name__}: {preview(text, 200)}" if text else type(error).__name__


class Supervisor:
    def __init__(
        self,
        options: ConnectOptions,
        policy: ReconnectPolicy,
        *,
        lifecycle: Lifecycle,
        signals: Signals,
        emit: Callable[..., None],
        report: Callable[..., None],
        sender: Sender,
        dispatcher: Dispatcher,
        delivery: Delivery,
        intake: Intake,
        store: Optional[Store],
        name: str,
    ) -> None:
        self.options = options
        self.policy = policy
        self.lifecycle = lifecycle
        self.signals = signals
        self._emit = emit
        self._report = report
        self.sender = sender
        self.dispatcher = dispatcher
        self.delivery = delivery
        self.intake = intake
        self.store = store
        self.name = name
        self.conn: Optional[Connection] = None
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.stop_deadline = float("inf")
        """`time.monotonic` by which `stop` wants the connection closed."""
        self.resume_wanted = False
        self.replay_pending = False
        self.gave_up_error: Optional[BaseException] = None
        self.connects = self.attempts = self.disconnects = self.wire_errors = 0
        self.thread = threading.Thread(target=self._run, name=f"{name}-supervisor", daemon=True)

    def want_resume(self) -> None:
        """A gap opened (dispatcher thread): send a resume request soon."""
        self.resume_wanted = True
        self.wakeup.set()

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        failures = auth_failures = 0  # carried from one decision of the policy to the next
        try:
            if self.replay_pending:
                self._replay_stored()
            while not self.stopping.is_set():
                conn = self._new_connection()
                self.conn = conn
                self.lifecycle.set(State.CONNECTING)
                self._emit(self.signals.connecting, attempt=failures)
                resume_from = self.delivery.positions  # replaced, never mutated: a snapshot
                received = self.intake.received  # messages before this connection (its reader adds to it)
                conn.start()
                self._watch(conn, resume_from)
                if not conn.join(self.options.close_timeout + 5.0):
                    log.warning("%s: the reader of the last connection did not end", self.name)
                ending = self._ended(conn, self.intake.received - received)
                if self.stopping.is_set():
                    break
                decision = self.policy.decide(ending, failures, auth_failures=auth_failures)
                failures, auth_failures = decision.failures, decision.auth_failures
                if decision.give_up:
                    if decision.fatal:
                        self._give_up(ConnectError(decision.give_up), cause=conn.error)
                    else:
                        last = describe(conn.error) if conn.error else f"close code {conn.close_code}"
                        # NO_RETRY asked for one connection: its end is news, not a problem.
                        level = logging.INFO if self.policy.backoff.max_attempts == 0 else logging.WARNING
                        self._give_up(ConnectError(f"{decision.give_up}; last: {last}"), level=level, cause=conn.error)
                    break
                self.lifecycle.set(State.BACKOFF)
                log.info("%s: reconnecting in %.2f s (attempt %d)", self.name, decision.delay, failures)
                self._emit(self.signals.reconnecting, attempt=failures, delay=decision.delay)
                if self.stopping.wait(decision.delay):
                    break
        except Exception:
            log.exception("%s: supervisor failed", self.name)
            self._give_up(WsbridgeError("supervisor failed; see the log"))

    def _new_connection(self) -> Connection:
        self.attempts += 1
        hooks = Hooks(self.intake.on_frame, self._on_open, self._on_end, self.dispatcher.wake, self._settle)
        return Connection(self.options, hooks, name=f"{self.name}-reader-{self.attempts}")

    def _on_open(self, conn: Connection) -> None:  # reader thread
        self.wakeup.set()

    def _on_end(self, conn: Connection) -> None:  # reader thread
        self.sender.drop_live(conn)
        self.dispatcher.wake()
        self.wakeup.set()

    def _settle(self) -> None:  # reader thread
        """Before the reader fails its connection: let subscribers finish every
        message that came before the violation, so what they send in reply goes
        out before the close frame, as it would from a synchronous handler (a
        reply still in the send buffer, the connection being new, is given time
        to be flushed). Bounded by `SETTLE_TIMEOUT`; skipped when stopping."""
        if self.stopping.is_set():
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT
        barrier = Barrier()
        self.dispatcher.put_control(barrier)
        if barrier.done.wait(SETTLE_TIMEOUT):
            self.sender.wait_empty(max(0.0, deadline - time.monotonic()))

    def _replay_stored(self) -> None:
        """Queue the stored messages past the handled mark, before anything new
        arrives (the dispatch queue's bound paces a large backlog)."""
        self.replay_pending = False
        count = 0
        try:
            for key, message in self.store.unhandled():  # type: ignore[union-attr]
                if self.stopping.is_set():
                    break
                item = Stored(key, message)
                self.dispatcher.put(item, weight(item))
                count += 1
        except StoreError as exc:
            self._report(exc, "store")
        self.dispatcher.wake()
        if count:
            log.info("%s: delivering %d stored message(s) that were not handled before", self.name, count)

    # -- one connection ------------------------------------------------------------------------
    def _watch(self, conn: Connection, resume_from: Any) -> None:
        """Run one connection until it ends: connect timeout, flush, heartbeat, stop."""
        o = self.options
        started = time.monotonic()
        flushed = False
        wake = self.wakeup
        tick = o.tick
        while not conn.ended.is_set():
            wake.clear()
            now = time.monotonic()
            if self.stopping.is_set():
                conn.close(1000, "", max(0.0, min(o.close_timeout, self.stop_deadline - now)))
                break
            if not conn.opened.is_set():
                remaining = started + o.connect_timeout - now
                if remaining <= 0:
                    conn.error = TimeoutError(f"connection not open within {o.connect_timeout} s")
                    conn.abort()
                    break
                wake.wait(min(remaining, tick))
                continue
            if not flushed:
                flushed = True
                self.connects += 1
                # Positions as they were before this connection: what it
                # delivered itself (the server may start sending at once) needs no resume.
                if self.sender.flush(conn, resume_from, self.stopping) and self.lifecycle.set(State.CONNECTED):
                    self._emit(self.signals.connected, url=redact_url(o.url))
                continue
            if self.sender.waiting(conn):  # a send's timeout left frames in the buffer: out they go, in order
                self.sender.flush(conn, {}, self.stopping)
                continue
            if self.resume_wanted:
                self.resume_wanted = False
                self.sender.send_resume(conn, self.delivery.positions)
            if self.delivery.tracker.waiting and len(self.dispatcher) < self.dispatcher.maxsize:
                self.dispatcher.put_control(EXPIRE)
            dead = self._dead(conn, now)
            if dead:
                conn.error = TimeoutError(dead)
                conn.abort()
                break
            wake.wait(tick)
        # Bounded: the socket is shut down, the reader's recv returns at once.
        conn.ended.wait(o.close_timeout + 5.0)

    def _dead(self, conn: Connection, now: float) -> Optional[str]:
        """Why the peer is presumed dead, or None. While wsbridge's own full queue
        holds the reader back (and for a deadline's length after), silence is ours."""
        o = self.options
        dispatcher = self.dispatcher
        if dispatcher.holding:
            return None
        since = dispatcher.released_at
        if o.ping_timeout and now - since > o.ping_timeout and conn.ping_overdue(time.time()):
            return f"no pong within {o.ping_timeout} s: peer presumed dead"
        if o.idle_timeout and now - max(conn.last_frame_at, since) > o.idle_timeout:
            return f"no frame for {o.idle_timeout} s: peer presumed dead"
        return None

    def _ended(self, conn: Connection, delivered: int) -> Ending:
        """Count and announce the end of ``conn``, which ``delivered`` messages; what
        the policy needs to know."""
        self.sender.drop_live(conn)
        error = conn.error
        status = error.status_code if isinstance(error, websocket.WebSocketBadStatusException) else None
        if conn.opened_at is None:
            if conn.error is not None:
                log.info("%s: connection attempt failed: %s", self.name, describe(conn.error))
            self.lifecycle.last_error = conn.error
            return Ending(conn.error, http_status=status)
        self.disconnects += 1
        if conn.error is not None and not conn.closing:
            self.lifecycle.last_error = conn.error
        if isinstance(conn.error, WireError):  # the server broke RFC 6455: say how, with its bytes
            self.wire_errors += 1
            context = "limit" if isinstance(conn.error, MessageTooLarge) else "protocol"
            self._report(conn.error, context, frame=conn.error.frame)
        log.info(
            "%s: disconnected (code=%s reason=%r error=%s)", self.name, conn.close_code, conn.close_reason,
            describe(conn.error) if conn.error and not conn.closing else None,
        )
        self._emit(
            self.signals.disconnected, code=conn.close_code, reason=conn.close_reason, error=None if conn.closing else conn.error
        )
        return Ending(conn.error, conn.close_code, conn.close_reason, http_status=status,
                      open_for=time.monotonic() - conn.opened_at, delivered=delivered)

    def _give_up(self, error: BaseException, level: int = logging.ERROR, cause: Optional[BaseException] = None) -> None:
        """Stop for good; ``cause``, the connection's own error, stays `last_error`."""
        log.log(level, "%s: giving up: %s", self.name, error)
        error.__cause__ = cause
        self.gave_up_error = error
        self.lifecycle.set(State.GAVE_UP, cause or error)
        self._emit(self.signals.gave_up, error=error)
        # The pull buffer closes on the dispatcher thread, behind the messages still queued.
        self.dispatcher.put_control(END)
