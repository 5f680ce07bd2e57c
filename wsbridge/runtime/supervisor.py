"""The supervisor thread: one connection after another, for the life of a client.

It makes a `Connection` for every attempt, waits for it to open (within
``connect_timeout``), runs the handshake (the connect hooks and the recorded
subscriptions, `wsbridge.runtime.session`, on a thread of its own that it waits
for within the handshake's time), flushes the send buffer and only
then says ``connected``; while the connection lives it runs the heartbeat (the
pings, `Connection.heartbeat`, from the handshake on; the dead-peer rule, `_dead`)
and flushes again when a send's timeout left frames in the buffer; when it
ends, it asks the `ReconnectPolicy` whether and when to try again (unless
`reconnect` asked for a new connection at once). Liveness
deadlines pause while the reader is held back by wsbridge's own full dispatch
queue (`Dispatcher.holding`): backpressure is not a dead peer.

User code (a callable option on the reader thread, a connect hook on the
handshake's thread) never holds the supervisor: past its time the attempt fails
and the thread is left to end on its own (a `Straggler`). No new attempt starts
while one is still in user code (it waits, within ``connect_timeout``), so user
code is never called twice at once and at most one thread of a client is ever held by it.

The supervisor writes the lifecycle state (but STOPPED), the counters
below, and ``conn``; it emits lifecycle signals through ``emit``, which
never waits.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from ..errors import (
    ConnectError,
    ConnectHookError,
    MessageTooLarge,
    StoreError,
    UpgradeRefused,
    WireError,
    WsbridgeError,
    preview,
)
from ..message import Message
from ..redact import redact_url
from ..tracking.store import Store
from ..wire.connection import Connection, Hooks
from ..wire.options import ConnectOptions
from .delivery import END, EXPIRE, NEW_CONNECTION, Barrier, Delivery, Stored
from .dispatch import Dispatcher, weight
from .intake import Intake
from .policy import Decision, Ending, ReconnectPolicy
from .sender import Sender
from .session import INBOX_SIZE, Handshake, HandshakeRun, Inbox
from .signals import Signals
from .state import Lifecycle, State

log = logging.getLogger("wsbridge")

SETTLE_TIMEOUT = 1.0
"""How long a reader that must fail its connection waits for the subscribers to
finish the messages that came before the violation (their replies go out first)."""


class Straggler(NamedTuple):
    """A thread of an earlier attempt still in user code, and which code."""

    thread: threading.Thread
    what: str


def describe(error: Optional[BaseException]) -> str:
    """One line about an error, for logs and messages."""
    if error is None:
        return "none"
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
        self.stragglers: List[Straggler] = []
        """Threads of earlier attempts still held by user code that did not return in time
        (a callable option's reader, a connect hook's handshake thread): not waited for,
        but the client's (listed by `Client.threads`, waited for by `stop` within its
        timeout); no attempt starts until they ended (`_held_by_user`), so there is at
        most one. Written by the supervisor thread; replaced, never changed in place."""
        self.run: Optional[HandshakeRun] = None
        """The handshake running now (supervisor thread)."""
        self.stopping = threading.Event()
        self.wakeup = threading.Event()
        self.stop_deadline = float("inf")
        """`time.monotonic` by which `stop` wants the connection closed."""
        self.resume_wanted = False
        self.replay_pending = False
        self.held: List[Message] = []
        """Messages an earlier run kept behind open gaps (`Store.keep_held`): offered
        again after the stored ones (set before the thread starts)."""
        self.gave_up_error: Optional[BaseException] = None
        self.connects = self.attempts = self.disconnects = self.wire_errors = 0
        self.thread = threading.Thread(target=self._run, name=f"{name}-supervisor", daemon=True)
        self.handshake = Handshake(sender, self.stopping, lambda: self.delivery.positions)
        self.inbox: Optional[Inbox] = None
        """The handshake inbox of the connection of the moment (`reconnect` ends it)."""
        self._requests = threading.Lock()
        self.requested = 0
        """`reconnect` calls so far (under ``_requests``)."""
        self.served = 0
        """The value of ``requested`` as the connection of the moment was made: it
        serves every `reconnect` call up to there."""
        self.handshake_passed: Optional[Connection] = None
        """The last connection whose handshake the server passed (a hook, an acked
        subscription): the policy counts it healthy. Supervisor thread."""

    def want_resume(self) -> None:
        """A gap opened (dispatcher thread): send a resume request soon."""
        self.resume_wanted = True
        self.wakeup.set()

    def reconnect(self, options: Optional[ConnectOptions] = None) -> int:
        """Close the connection of the moment (1000) and connect again at once, with
        ``options`` from now on if given (any thread; never waits). Returns the
        request's number: the connection made for it has `served` it."""
        if options is not None:
            self.options = options  # replaced whole; the next attempt dials with it
        with self._requests:
            self.requested += 1
            number = self.requested
        inbox = self.inbox
        if inbox is not None:
            inbox.end("reconnect() was called")
        self.wakeup.set()
        return number

    def _reconnecting(self) -> bool:
        return self.requested > self.served

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        failures = auth_failures = 0  # carried from one decision of the policy to the next
        try:
            if self.replay_pending:
                self._replay_stored()
            while not self.stopping.is_set():
                conn, inbox = self._new_connection()
                self.served = self.requested  # after the new inbox: a later request ends its handshake
                self.conn = conn
                self.lifecycle.set(State.CONNECTING)
                self._emit(self.signals.connecting, attempt=failures)
                self.dispatcher.put_control(NEW_CONNECTION)  # before the reader starts: ahead of its messages
                # replaced, never mutated: a snapshot (numbered per connection: nothing to resume)
                resume_from = {} if self.delivery.tracker.per_connection else self.delivery.positions
                self.intake.new_connection()
                received = self.intake.received  # messages before this connection (its reader adds to it)
                self._watch(conn, resume_from, inbox)  # starts the reader once no earlier one is in user code
                calling = conn.calling
                if calling is not None:  # user code holds the reader: it ends when that returns
                    self._straggle(conn.thread, calling)
                elif not conn.join(self.options.close_timeout + 5.0):
                    log.warning("%s: the reader of the last connection did not end", self.name)
                ending = self._ended(conn, self.intake.received - received)
                if self.stopping.is_set():
                    break
                # reconnect() asked for a new connection: not a failure, and no wait.
                if self._reconnecting():
                    decision = Decision(failures, auth_failures=auth_failures)
                else:
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
                if self._pause(decision.delay):
                    break
        except Exception:
            log.exception("%s: supervisor failed", self.name)
            self._give_up(WsbridgeError("supervisor failed; see the log"))

    def _pause(self, delay: float) -> bool:
        """Wait out the backoff ``delay``, cut short by `reconnect`; True once stopping."""
        deadline = time.monotonic() + delay
        while not self.stopping.is_set() and not self._reconnecting():
            self.sender.expire_due()  # (as in `_watch`: each tick)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.wakeup.wait(min(remaining, self.options.tick) if self.sender.expiring else remaining)
            self.wakeup.clear()
        return self.stopping.is_set()

    def _straggle(self, thread: threading.Thread, what: str) -> None:
        """``thread`` is held by ``what`` (user code) past its time: go on without it."""
        log.warning("%s: %s has not returned; going on without waiting for it", self.name, what)
        self.stragglers = [*self.stragglers, Straggler(thread, what)]

    def _held_by_user(self) -> Optional[str]:
        """What user code still holds a thread of an earlier attempt (None: none)."""
        self.stragglers = [s for s in self.stragglers if s.thread.is_alive()]
        return self.stragglers[0].what if self.stragglers else None

    def _new_connection(self) -> Tuple[Connection, Inbox]:
        self.attempts += 1
        inbox = self.inbox = Inbox(INBOX_SIZE, self.dispatcher.max_bytes)
        self.intake.watch(inbox.add)  # until the handshake ends: the hook's replies, as they come
        hooks = Hooks(self.intake.on_frame, self._on_open, lambda conn: self._on_end(conn, inbox), self.dispatcher.wake,
                      self._settle)
        return Connection(self.options, hooks, name=f"{self.name}-reader-{self.attempts}"), inbox

    def _on_open(self, conn: Connection) -> None:  # reader thread
        self.wakeup.set()

    def _on_end(self, conn: Connection, inbox: Inbox) -> None:  # reader thread
        inbox.end("the connection ended")
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
        held, self.held = self.held, []
        for message in held:  # the tracker holds them again, and a resume asks for the gap
            self.dispatcher.put(message, weight(message))
        self.dispatcher.wake()
        if count:
            log.info("%s: delivering %d stored message(s) that were not handled before", self.name, count)
        if held:
            log.info("%s: %d message(s) an earlier run kept behind a gap are held again until it is filled",
                     self.name, len(held))

    # -- one connection ------------------------------------------------------------------------
    def _watch(self, conn: Connection, resume_from: Any, inbox: Inbox) -> None:
        """Run one connection until it ends: connect timeout, handshake, flush, heartbeat,
        stop, reconnect."""
        o = self.options
        started = time.monotonic()
        flushed = False
        failed: Optional[ConnectHookError] = None
        wake = self.wakeup
        tick = o.tick
        while not conn.ended.is_set():
            wake.clear()
            now = time.monotonic()
            self.sender.expire_due()  # sends past their ttl leave the buffer, counted, while none is flushed
            if self.stopping.is_set():
                conn.close(1000, "", max(0.0, min(o.close_timeout, self.stop_deadline - now)))
                break
            if self._reconnecting():
                log.info("%s: closing the connection to connect again (reconnect() was called)", self.name)
                conn.close(1000, "", o.close_timeout)
                break
            if not conn.opened.is_set():
                if not conn.started and self._held_by_user() is None:
                    conn.start()  # never while user code of an earlier attempt runs: it is not called twice at once
                remaining = started + o.connect_timeout - now
                if remaining <= 0:
                    calling = conn.calling if conn.started else self._held_by_user()
                    since = "" if conn.started else " since an earlier attempt"
                    held = f" ({calling} had not returned{since})" if calling else ""
                    conn.error = TimeoutError(f"connection not open within {o.connect_timeout} s{held}")
                    conn.abort()
                    break
                wake.wait(min(remaining, tick))
                continue
            if not flushed:
                flushed = True
                self.connects += 1
                failed = self._handshake(conn, inbox)
                if failed is not None:
                    break  # reported; the connection is closed
                if self.stopping.is_set() or self._reconnecting():
                    continue  # cut short: the loop closes the connection
                # Positions as they were before this connection: what it
                # delivered itself (the server may start sending at once) needs no resume.
                if self.sender.flush(conn, resume_from, self.stopping) and self.lifecycle.set(State.CONNECTED):
                    self._emit(self.signals.connected, url=redact_url(conn.url or ""))
                continue
            if self.sender.waiting(conn):  # a send's timeout left frames in the buffer: out they go, in order
                self.sender.flush(conn, {}, self.stopping)
                continue
            if self.resume_wanted:
                self.resume_wanted = False
                self.sender.send_resume(conn, self.delivery.positions)
            if self.delivery.tracker.waiting and len(self.dispatcher) < self.dispatcher.maxsize:
                self.dispatcher.put_control(EXPIRE)
            conn.heartbeat(now)
            if self.store is not None:
                self._store_upkeep()
            dead = self._dead(conn, now)
            if dead:
                conn.error = TimeoutError(dead)
                conn.abort()
                break
            wake.wait(tick)
        # Bounded: the socket is shut down, the reader's recv returns at once (unless user code holds it).
        if conn.started and conn.calling is None:
            conn.ended.wait(o.close_timeout + 5.0)
        if failed is not None:
            # Set once the reader ended, which strips its own error's traceback: this one
            # keeps the user's frames of a hook's exception.
            conn.error = failed

    def _handshake(self, conn: Connection, inbox: Inbox) -> Optional[ConnectHookError]:
        """Run the handshake on ``conn``, on a thread of its own; its error when it failed
        (reported, and the connection closed), else None: it passed, or `stop` (which
        cuts the connection) or `reconnect` cut it short (then quietly)."""
        self.sender.flushing = conn  # stop() cuts it: a hook waiting for a reply sees the connection end
        run = self.run = self.handshake.start(conn, inbox, f"{self.name}-handshake-{self.attempts}", self.wakeup.set)
        try:
            error = self._await_handshake(run, conn)
        finally:
            self.sender.flushing = None
            self.intake.watch(None)
            inbox.close()
            self.run = None
            if run.done.is_set():
                run.thread.join(self.options.tick)  # it is about to end
            if run.thread.is_alive():
                self._straggle(run.thread, run.what)
        if error is None:
            if run.done.is_set():
                self.handshake_passed = conn if run.passed else None
            return None
        if self.stopping.is_set() or self._reconnecting():
            return None
        self.lifecycle.last_error = error
        self._report(error, "handshake")
        conn.close(1000, "", self.options.close_timeout)
        return error

    def _await_handshake(self, run: HandshakeRun, conn: Connection) -> Optional[ConnectHookError]:
        """Wait for ``run``: its error (None: it passed, or `stop`/`reconnect` cut it
        short). Once its time is up or the connection ended, it has one `tick` to end
        (a hook waiting in the session ends at once); then the attempt fails without it,
        its thread left in the user code that holds it."""
        grace = self.options.tick
        wake = self.wakeup
        late_since: Optional[float] = None
        while True:
            wake.clear()
            if run.done.is_set():
                return run.error
            now = time.monotonic()
            if self.stopping.is_set() or self._reconnecting():
                run.abandon("the client is stopping" if self.stopping.is_set() else "reconnect() was called")
                run.done.wait(max(0.0, min(grace, self.stop_deadline - now)))
                return None
            conn.heartbeat(now)  # a long handshake keeps pinging, as the connection does after it
            deadline = run.session.deadline  # the run moves it on for each subscription
            if now < deadline and not conn.ended.is_set():
                late_since = None
                wake.wait(min(grace, deadline - now))
                continue
            if late_since is None:
                late_since = now
            if now - late_since < grace:
                wake.wait(late_since + grace - now)
                continue
            why = "when the connection ended" if conn.ended.is_set() else f"within {run.limit}"
            run.abandon(f"{run.what} had not returned {why}")
            if run.done.is_set():
                return run.error
            return ConnectHookError(f"{run.what} had not returned {why}; going on without it")

    def _store_upkeep(self) -> None:
        """The store's `Store.idle` (its checkpoints), on this thread: a failure is the
        store's to log; it never ends the connection."""
        try:
            self.store.idle()  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - upkeep must not cost the connection
            log.debug("%s: store upkeep failed", self.name, exc_info=True)

    def _dead(self, conn: Connection, now: float) -> Optional[str]:
        """Why the peer is presumed dead, or None. While wsbridge's own full queue
        holds the reader back (and for a deadline's length after), silence is ours.
        A frame received within ``ping_timeout`` shows the peer alive, however long its
        pong waits behind the frames it queued first (a resume's backlog on a slow
        link): only a ping unanswered *and* silence end the connection."""
        o = self.options
        dispatcher = self.dispatcher
        if dispatcher.holding:
            return None
        since = dispatcher.released_at
        if (o.ping_timeout and now - max(conn.last_frame_at, since) > o.ping_timeout
                and conn.ping_overdue(time.time())):
            return f"no pong within {o.ping_timeout} s: peer presumed dead"
        if o.idle_timeout and now - max(conn.last_frame_at, since) > o.idle_timeout:
            return f"no frame for {o.idle_timeout} s: peer presumed dead"
        return None

    def _ended(self, conn: Connection, delivered: int) -> Ending:
        """Count and announce the end of ``conn``, which ``delivered`` messages; what
        the policy needs to know."""
        self.sender.drop_live(conn)
        error = conn.error
        refused = error if isinstance(error, UpgradeRefused) else None
        status = refused.status if refused and not refused.proxy else None  # a proxy's is not the server's
        retry_after = refused.retry_after if refused else None
        if conn.opened_at is None:
            if conn.error is not None:
                log.info("%s: connection attempt failed: %s", self.name, describe(conn.error))
            self.lifecycle.last_error = conn.error
            return Ending(conn.error, http_status=status, retry_after=retry_after, fresh_credentials=conn.fresh_credentials)
        self.disconnects += 1
        failed = isinstance(conn.error, ConnectHookError)  # the handshake failed: an attempt that did not work
        error = conn.error if failed or not conn.closing else None  # closing: we ended it, in order
        if error is not None:
            self.lifecycle.last_error = error
        if isinstance(conn.error, WireError):  # the server broke RFC 6455: say how, with its bytes
            self.wire_errors += 1
            context = "limit" if isinstance(conn.error, MessageTooLarge) else "protocol"
            self._report(conn.error, context, frame=conn.error.frame)
        log.info(
            "%s: disconnected (code=%s reason=%r error=%s)", self.name, conn.close_code, conn.close_reason,
            describe(error) if error else None,
        )
        self._emit(self.signals.disconnected, code=conn.close_code, reason=conn.close_reason, error=error)
        open_for = None if failed else time.monotonic() - conn.opened_at
        return Ending(conn.error, conn.close_code, conn.close_reason, status, retry_after=retry_after,
                      fresh_credentials=conn.fresh_credentials, open_for=open_for, delivered=delivered,
                      handshake_done=self.handshake_passed is conn)

    def _give_up(self, error: BaseException, level: int = logging.ERROR, cause: Optional[BaseException] = None) -> None:
        """Stop for good; ``cause``, the connection's own error, stays `last_error`."""
        log.log(level, "%s: giving up: %s", self.name, error)
        error.__cause__ = cause
        self.gave_up_error = error
        self.lifecycle.set(State.GAVE_UP, cause or error)
        self._emit(self.signals.gave_up, error=error)
        # The pull buffer closes on the dispatcher thread, behind the messages still queued.
        self.dispatcher.put_control(END)
