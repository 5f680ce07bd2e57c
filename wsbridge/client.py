"""`Client`: a WebSocket feed for synchronous code; a facade over its parts.

Each part has one job and one owning thread:

* `Supervisor` (its own thread): connections, one after another; the
  lifecycle state; the retry decisions of a `ReconnectPolicy`;
* the reader (one per connection, `Connection` and `wsbridge.wire.buffered`):
  frames, then `Intake` decodes and queues them;
* `Dispatcher` (its own thread) and `Delivery`: each batch tracked, stored,
  delivered to subscribers and to the pull buffer, in order;
* `Sender` (the calling thread, under its lock): the send buffer and flushes;
* `Reporter`: errors to the ``error`` signal and a quiet log.

Lifecycle and error signals go to the dispatcher as control items that never
wait, in line with the messages around them. The order of lifecycle signals:
``connecting``, ``connected`` (socket open and send buffer flushed),
``disconnected``, ``reconnecting``, ``connecting``, ... and at the end
``gave_up`` and/or ``stopped`` (the last signal of all).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Union

from .codecs import DEFAULT_MAX_LENGTH, Codec, JsonCodec
from .errors import ClientClosed, ConnectError, UsageError, WsbridgeError
from .redact import redact_url
from .runtime import registry
from .runtime.backoff import Backoff
from .runtime.delivery import Delivery, Emit
from .runtime.dispatch import Dispatcher
from .runtime.intake import Intake
from .runtime.policy import ReconnectPolicy
from .runtime.pull import PullBuffer, Pulling
from .runtime.reporting import Reporter
from .runtime.sender import OutFrame, ResumeBuilder, Sendable, Sender
from .runtime.signals import Signals, Subscribable, deliver
from .runtime.state import Lifecycle, State
from .runtime.stats import Stats
from .runtime.supervisor import Supervisor, describe
from .tracking.outbox import Outbox
from .tracking.resume import default_resume_request
from .tracking.sequence import Positions, SequenceTracker
from .tracking.store import Store
from .wire.options import ConnectOptions

log = logging.getLogger("wsbridge")

__all__ = ["Client", "Sendable", "OutFrame", "ResumeBuilder"]

_ids = itertools.count(1)

REPLACE_WAIT = 30.0
"""Seconds a client with a store waits for the threads of the same-named clients it
replaces (the last of them closes the store) before it gives up with `StoreError`."""


class Client(Subscribable, Pulling):
    """Receive (and send) WebSocket messages from synchronous code.

    ``start()`` returns at once; messages then reach the subscribers
    registered with `on` / `on_any` on the dispatcher thread, and the pull
    API (`recv`, `messages`, `wait_for`) for scripts. `send` is thread-safe
    and buffers while disconnected. ``stop()`` closes the connection,
    delivers what was already received, and joins every thread.

    Parameters (keyword-only after ``url``); the README documents each:
    ``codec`` (default `JsonCodec`), ``backoff`` (`Backoff`; ``NO_RETRY``
    connects once), ``retry_fatal``, or ``policy`` (a `ReconnectPolicy`: the
    retry rules, backoff included, as one object); ``outbox_size``, ``outbox_overflow``
    (``"raise"``, ``"drop_oldest"``, ``"block"``), ``outbox_timeout``;
    ``ping_interval``, ``ping_timeout`` (0: no pings), ``idle_timeout``,
    ``connect_timeout``, ``close_timeout``; ``headers``, ``sslopt``,
    ``subprotocols``; ``pull_buffer``, ``pull_buffer_bytes``, ``pull_overflow``;
    ``dispatch_queue``, ``dispatch_queue_bytes`` (bounds of the queue between
    the reader and the subscribers: when full the reader stops reading, so TCP
    pushes back on the server); ``store``; ``resume`` (False by default: nothing
    is sent that you did not ask for; True: the default request; or a callable
    ``positions -> message``); ``gap_timeout``, ``max_held``, ``seq_scope``
    (``"stream"``: a counter per stream; ``"global"``: one across streams, and a
    gap holds nothing back); `wsbridge.conventions` sets codec and resume for
    servers that speak wsbridge's conventions;
    ``max_message_size`` (default 16 MiB); ``name``.
    """

    def __init__(
        self,
        url: str,
        *,
        codec: Optional[Codec] = None,
        backoff: Optional[Backoff] = None,
        outbox_size: int = 10_000,
        outbox_overflow: str = "raise",
        outbox_timeout: Optional[float] = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        idle_timeout: Optional[float] = None,
        connect_timeout: float = 10.0,
        close_timeout: float = 1.0,
        headers: Optional[Mapping[str, str]] = None,
        sslopt: Optional[Dict[str, Any]] = None,
        subprotocols: Optional[List[str]] = None,
        pull_buffer: int = 10_000,
        pull_buffer_bytes: int = 16 * 1024 * 1024,
        pull_overflow: str = "drop_oldest",
        dispatch_queue: int = 100_000,
        dispatch_queue_bytes: int = 256 * 1024 * 1024,
        retry_fatal: bool = False,
        policy: Optional[ReconnectPolicy] = None,  # the retry rules whole (then no backoff, retry_fatal)
        store: Optional[Store] = None,
        resume: Union[bool, ResumeBuilder] = False,
        gap_timeout: float = 5.0,
        max_held: int = 10_000,
        seq_scope: str = "stream",
        max_message_size: int = DEFAULT_MAX_LENGTH,
        name: Optional[str] = None,
    ) -> None:
        self.options = ConnectOptions(  # checks them all: a ValueError says which is wrong
            _lower_scheme(url), dict(headers or {}), sslopt, subprotocols, ping_interval, ping_timeout if ping_interval else 0.0,
            idle_timeout, connect_timeout, close_timeout, max_message_size,
        )
        self.url = self.options.url
        self.codec: Codec = codec if codec is not None else JsonCodec()
        self.name = name or f"wsbridge-{next(_ids)}"
        self._named = name is not None
        self._replaced_by: Optional["Client"] = None  # set by the same-named client that takes its place
        self.store = store
        self.signals = Signals()
        self._pid = os.getpid()
        self._lifecycle = Lifecycle()
        self._store_closed = False
        self.policy = _policy(policy, backoff, retry_fatal)
        self._reporter = Reporter(self, self.signals, self._emit, self.name, emit_data=self._emit_data)
        self._pull = PullBuffer(pull_buffer, pull_overflow, pull_buffer_bytes)
        self._delivery = Delivery(
            self, self.signals, self._reporter,
            SequenceTracker(gap_timeout=gap_timeout, max_held=max_held, global_seq=_global_scope(seq_scope)), self._pull,
            store, self.codec.raw_is_payload, self._want_resume, self.name,
        )
        self._dispatcher = self._delivery.dispatcher = Dispatcher(
            self._delivery.handle, dispatch_queue, dispatch_queue_bytes,
            name=f"{self.name}-dispatcher", on_exit=self._dispatcher_exit,
        )
        builder: Optional[ResumeBuilder] = self._default_resume if resume is True else (resume or None)
        self._sender = Sender(
            self.codec, Outbox(outbox_size, outbox_overflow), resume=builder, closed=self._closed_why,
            report=self._reporter.report, emit_dropped=lambda n: self._emit(self.signals.dropped, what="outbox", count=n),
            wake=lambda: self._supervisor.wakeup.set(), outbox_timeout=outbox_timeout, name=self.name,
        )
        self._intake = Intake(self.codec, self._dispatcher, self._reporter.report)
        self._supervisor = Supervisor(
            self.options, self.policy, lifecycle=self._lifecycle, signals=self.signals, emit=self._emit,
            report=self._reporter.report, sender=self._sender, dispatcher=self._dispatcher, delivery=self._delivery,
            intake=self._intake, store=store, name=self.name,
        )

    # -- options, for code that read them as attributes ------------------------------------
    backoff = property(lambda self: self.policy.backoff)
    retry_fatal = property(lambda self: self.policy.retry_fatal)
    ping_interval = property(lambda self: self.options.ping_interval)
    ping_timeout = property(lambda self: self.options.ping_timeout)
    idle_timeout = property(lambda self: self.options.idle_timeout)
    connect_timeout = property(lambda self: self.options.connect_timeout)
    close_timeout = property(lambda self: self.options.close_timeout)
    max_message_size = property(lambda self: self.options.max_message_size)

    # -- lifecycle ------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<wsbridge.Client {self.name} {redact_url(self.url)} {self.state}>"

    def __enter__(self) -> "Client":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def state(self) -> State:
        """A `State` (a `str` too): ``new``, ``connecting``, ``connected``, ``backoff``, ``gave_up``, ``stopped``."""
        return self._lifecycle.state

    @property
    def connected(self) -> bool:
        """True while the socket is open and the send buffer flushed."""
        return self._lifecycle.state is State.CONNECTED

    @property
    def replaced_by(self) -> Optional["Client"]:
        """The client started with this one's ``name`` that took its place (and stopped
        it), else None."""
        return self._replaced_by

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol the server chose for the current (or last) connection,
        from those given as ``subprotocols`` (None: none chosen, or not connected yet)."""
        conn = self._supervisor.conn
        return conn.subprotocol if conn is not None else None

    def start(self) -> "Client":
        """Start the threads and connect in the background; returns at once."""
        self._check_process()
        if self._lifecycle.state.final:
            raise ClientClosed(f"{self.name} was stopped; make a new Client")
        if self._lifecycle.state is not State.NEW:
            return self
        # A notebook cell run again: the client it made before gives way, and is stopped
        # before this one opens the store they may share.
        me = threading.current_thread()
        if self.store is not None and self._named and any(me in c.threads() for c in registry.live() if c.name == self.name):
            raise UsageError(f"{self.name}: a client with a store cannot take the place of the client whose "
                             "subscriber starts it (that thread holds the store until the subscriber returns)")
        for earlier in registry.claim(self):
            if earlier.state not in (State.NEW, State.STOPPED):
                log.info("%s: a new client of this name starts; stopping the earlier one", self.name)
            earlier._replaced_by = self  # its `stopped` says so
            registry.replaced(earlier, self)  # its views (and their widgets) move to this one now
            earlier.stop()
        if self._lifecycle.state.final:  # another start of this name replaced this one meanwhile
            registry.discard(self)
            return self
        try:
            if self.store is not None:
                self._await_namesakes()
                self._open_store()
        except BaseException:
            registry.discard(self)
            raise
        if not self._lifecycle.begin():
            return self
        self._dispatcher.start()
        self._supervisor.thread.start()
        return self

    def _await_namesakes(self) -> None:
        """Wait (at most `REPLACE_WAIT` s) for the threads of the clients this one
        replaced, also those another start of this name is stopping: the last of them
        closes the store they may share (a subscriber may outlive `stop`'s timeout)."""
        deadline = time.monotonic() + REPLACE_WAIT
        me = threading.current_thread()
        for earlier in registry.namesakes(self):
            if earlier.store is None:
                continue
            for thread in earlier.threads():
                if thread is not me and thread.is_alive():
                    thread.join(max(0.0, deadline - time.monotonic()))

    def _open_store(self) -> None:
        """Open the store and pick up where the last run stopped (raises `StoreError`)."""
        store = self.store
        assert store is not None
        store.open()
        positions = store.positions()
        old = self._delivery.tracker
        self._delivery.tracker = SequenceTracker(
            positions, gap_timeout=old.gap_timeout, max_held=old.max_held, id_window=old.id_window, global_seq=old.global_seq
        )
        self._delivery.positions = dict(positions)
        self._supervisor.replay_pending = True
        kept = store.outbox_items()
        self._sender.keep_in(store, kept)  # with the frames sent before start, kept from now on
        if kept:
            log.info("%s: %d unsent message(s) from an earlier run wait in the send buffer", self.name, len(kept))

    def wait_connected(self, timeout: Optional[float] = None) -> "Client":
        """Block until connected (socket open, send buffer flushed).

        Raises `TimeoutError` (naming the last connection error) when that
        takes longer than ``timeout`` s, `ConnectError` when the client gave
        up, `ClientClosed` when it was stopped.
        """
        self._check_process()
        try:
            state = self._lifecycle.wait_for(lambda s: s is State.CONNECTED, timeout)
        except TimeoutError:
            error = self._lifecycle.last_error
            last = f" (last error: {describe(error)})" if error else ""
            raise TimeoutError(f"{self.name} not connected within {timeout} s{last}") from None
        if state is State.NEW:
            raise WsbridgeError("call start() before wait_connected()")
        if state is State.GAVE_UP:
            raise ConnectError(f"{self.name} gave up: {describe(self._supervisor.gave_up_error)}")
        if state is State.STOPPED:
            raise ClientClosed(f"{self.name} is stopped")
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Close the connection, deliver what was received, join every thread.

        Returns within ``timeout`` seconds (plus a few milliseconds), from any
        thread, in any state; True when every thread ended by then. What was
        received and not delivered by then is not delivered (with a store, the
        next run delivers it). Called from a subscriber, the stop completes
        once that subscriber returns. Messages still in the send buffer are
        kept (see `unsent`) and logged.
        """
        if os.getpid() != self._pid:
            return True  # inherited through fork(): nothing here belongs to this process
        deadline = time.monotonic() + timeout
        return self._await_stop(self._ask_stop(deadline), deadline)

    def _ask_stop(self, deadline: float) -> State:
        """The first half of `stop`: ask every thread to end by ``deadline``, waiting for
        none (`stop_all` asks all its clients first, so they end side by side); returns
        the state before."""
        before = self._lifecycle.stop()
        supervisor = self._supervisor
        supervisor.stop_deadline = deadline
        supervisor.stopping.set()
        supervisor.wakeup.set()
        self._sender.close()  # cuts a write stuck on a peer that does not read
        self._dispatcher.release_reader()
        return before

    def _await_stop(self, before: State, deadline: float) -> bool:
        """The second half of `stop`: wait until ``deadline`` for the threads to end
        (the dispatcher delivers what it can meanwhile); True when all did."""
        supervisor, dispatcher = self._supervisor, self._dispatcher
        me = threading.current_thread()
        if before is not State.NEW:
            if supervisor.thread.is_alive() and supervisor.thread is not me:
                supervisor.thread.join(max(0.0, deadline - time.monotonic()))
            self._pull.unblock()
            dispatcher.stop(max(0.0, deadline - time.monotonic()))  # its last act: `stopped`, see _dispatcher_exit
        else:
            self._close_store()
        self._pull.close()
        registry.discard(self)
        left = len(self._sender.outbox)
        if left and before is not State.STOPPED:
            kept = " (kept in the store: the next client with it sends them)" if self.store is not None else ""
            log.warning("%s stopped with %d message(s) not sent; client.unsent() returns them%s", self.name, left, kept)
        alive = [t.name for t in self.threads() if t.is_alive() and t is not me]
        if alive:
            log.warning("%s: threads still running when stop()'s time ran out: %s", self.name, ", ".join(alive))
        return not alive

    def _dispatcher_exit(self) -> None:
        """The dispatcher thread's last act: once the supervisor ended (bounded),
        deliver the signals it sent last (``disconnected``), then ``stopped``, the
        last signal of all, even when `stop` ran out of time for the data; then
        close the store (the thread that writes it closes it)."""
        supervisor = self._supervisor.thread
        if supervisor.ident is not None:
            supervisor.join(self.options.close_timeout + 6.0)
        late = self._dispatcher.drain()
        if late:
            self._delivery.handle(late)
        undelivered = self._delivery.abandoned  # final now: this thread counted them
        if undelivered:
            kept = " (kept in the store: the next client with it delivers them)" if self.store is not None else ""
            log.warning("%s: stop() ran out of time with %d received message(s) not delivered%s",
                        self.name, undelivered, kept)
        deliver(self.signals.stopped, self, self._reporter.listener_failed, replaced_by=self._replaced_by)
        self._close_store()

    def _close_store(self) -> None:
        """The store's last user closes it: the dispatcher thread as it ends, or
        `stop` when the client never started."""
        if self.store is not None and not self._store_closed and self._lifecycle.state.final:
            self._store_closed = True
            self.store.close()

    def threads(self) -> List[threading.Thread]:
        """Every thread this client started (for tests and diagnostics)."""
        threads = [self._supervisor.thread, self._dispatcher.thread]
        conn = self._supervisor.conn
        if conn is not None:
            threads.extend(conn.threads())
        return [t for t in threads if t.ident is not None]

    def _check_pull(self, what: str) -> None:
        self._check_process()
        if threading.current_thread() is self._dispatcher.thread:
            raise UsageError(
                f"{what}() was called from a subscriber: subscribers and the pull buffer are fed by the same "
                "thread, so it would wait for itself. Use the message the subscriber was given, or pull from another thread."
            )

    # -- sending -------------------------------------------------------------------------------
    def send(self, obj: Sendable, *, timeout: Optional[float] = None) -> None:
        """Send ``obj``: ``str`` as a text frame, ``bytes`` as a binary frame,
        a `Message` or a mapping through the codec. Thread-safe, and safe from
        a subscriber whatever the overflow policy.

        While disconnected (or while older messages wait) the frame goes to
        the send buffer, which the supervisor flushes in order on every
        (re)connect. What cannot be encoded raises here (`ValueError`), at once,
        and nothing is queued. ``timeout`` bounds the whole call: the wait for
        room (``outbox_overflow="block"``), for another sender's write and for
        the socket; a frame the socket did not begin to take by then waits in
        the send buffer (a stuck write never holds other senders).
        """
        self._check_process()
        self._sender.send(obj, timeout)

    def unsent(self) -> List[OutFrame]:
        """Frames still waiting in the send buffer, oldest first, as ``(data, binary)``."""
        self._check_process()
        return self._sender.unsent()

    def _closed_why(self) -> Optional[str]:
        state = self._lifecycle.state
        return str(state) if state.final else None

    # -- signals and reports -------------------------------------------------------------------
    def _emit(self, signal: Any, **kwargs: Any) -> None:
        """Send ``signal`` on the dispatcher thread, in line with the messages; never waits."""
        self._dispatcher.put_control(Emit(signal, kwargs))

    def _emit_data(self, signal: Any, size: int, **kwargs: Any) -> None:
        """Send ``signal`` carrying ``size`` bytes of frame data: waits for room, as data does (reader thread)."""
        self._dispatcher.put(Emit(signal, kwargs, size), size)

    def report_error(self, error: BaseException, context: str, **extra: Any) -> None:
        """Report a recoverable error on the ``error`` signal (or the log when
        nobody listens): for views and other extensions, from any thread; never waits."""
        self._check_process()
        self._reporter.report(error, context, **extra)

    def _default_resume(self, positions: Positions) -> Any:
        return default_resume_request(self.codec, positions)

    def _want_resume(self) -> None:
        self._supervisor.want_resume()

    def _check_process(self) -> None:  # also Subscribable's hook
        if os.getpid() != self._pid:
            raise UsageError(
                f"{self.name} was made in process {self._pid} and inherited through fork(): its threads and "
                "socket belong to that process. Make a new Client in this one."
            )

    # -- introspection ----------------------------------------------------------------------------
    @property
    def last_error(self) -> Optional[BaseException]:
        """Why the last connection attempt failed or the last connection ended (None: no error)."""
        return self._lifecycle.last_error

    @property
    def positions(self) -> Positions:
        """The last contiguous sequence id received per stream (what a resume asks to continue after)."""
        return dict(self._delivery.positions)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters (each written by one thread, read without a lock)."""
        d, i, s, sup, sent = self._delivery, self._intake, self._sender, self._supervisor, self._sender.counts
        return Stats(
            state=str(self.state), frames=i.frames, bytes=i.bytes, received=i.received, dispatched=d.dispatched,
            protocol_errors=i.protocol_errors + sup.wire_errors, subscriber_errors=self._reporter.subscriber_errors,
            sent=sent.sent, queued=sent.queued, outbox=len(s.outbox), flushed=sent.flushed, outbox_dropped=sent.dropped,
            pull_buffered=len(self._pull), pull_dropped=self._pull.dropped, dispatch_pending=len(self._dispatcher),
            dispatch_bytes=self._dispatcher.pending_bytes, backpressure_waits=self._dispatcher.blocked,
            duplicates=d.duplicates, gaps=d.gaps, lost=d.lost, held=d.tracker.held, resumes=sent.resumes,
            stored=d.stored, store_errors=d.store_errors + sent.store_errors, replayed=d.replayed,
            undelivered=d.abandoned,
            connects=sup.connects, reconnects=max(0, sup.connects - 1), connect_attempts=sup.attempts,
            disconnects=sup.disconnects,
        )


def _global_scope(seq_scope: str) -> bool:
    if seq_scope not in ("stream", "global"):
        raise ValueError(f"seq_scope is 'stream' (a counter per stream) or 'global' (one for all), not {seq_scope!r}")
    return seq_scope == "global"


def _policy(policy: Optional[ReconnectPolicy], backoff: Optional[Backoff], retry_fatal: bool) -> ReconnectPolicy:
    """The client's `ReconnectPolicy`: ``policy``, or the default rules with ``backoff`` and ``retry_fatal``."""
    if policy is None:
        return ReconnectPolicy(backoff if backoff is not None else Backoff(), retry_fatal)
    if not isinstance(policy, ReconnectPolicy):
        raise ValueError(f"policy is a wsbridge.ReconnectPolicy, not {type(policy).__name__}")
    if backoff is not None or retry_fatal:
        raise ValueError("pass backoff and retry_fatal to the ReconnectPolicy given as policy, not to Client")
    return policy


def _lower_scheme(url: str) -> str:
    """``WS://host/`` as ``ws://host/``: websocket-client knows the scheme in lower case only."""
    scheme, sep, rest = url.partition("://")
    return scheme.lower() + sep + rest if sep else url
