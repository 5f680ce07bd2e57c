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
``connecting``, ``connected`` (socket open, handshake done, send buffer flushed),
``disconnected``, ``reconnecting``, ``connecting``, ... and at the end
``gave_up`` and/or ``stopped`` (the last signal of all).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, Collection, Dict, List, Mapping, Optional, Sequence, Union

from .codecs import DEFAULT_MAX_LENGTH, Codec, JsonCodec
from .errors import ClientClosed, ConnectError, UsageError, WsbridgeError
from .message import Message
from .runtime import registry
from .runtime.backoff import Backoff
from .runtime.conflation import ConflationKey
from .runtime.delivery import Delivery, Emit
from .runtime.dispatch import Dispatcher
from .runtime.intake import Intake
from .runtime.outcomes import AckRule, SendHandle
from .runtime.policy import ReconnectPolicy
from .runtime.pull import PullBuffer, Pulling
from .runtime.replay import Replay
from .runtime.reporting import Reporter
from .runtime.sender import OutFrame, ResumeBuilder, Sendable, Sender, hook_session, in_connect_hook
from .runtime.session import ConnectHook
from .runtime.signals import Signals, Subscribable, deliver
from .runtime.state import WAIT_MAX, Lifecycle, State, timeout_arg
from .runtime.stats import Stats
from .runtime.subscriptions import Match, Subscription
from .runtime.supervisor import Supervisor, describe
from .tracking.outbox import Outbox
from .tracking.resume import default_resume_request
from .tracking.sequence import Epochs, Positions, Recall, SequenceTracker
from .tracking.store import Store
from .wire.deflate import PerMessageDeflate
from .wire.options import ConnectOptions, Cookie, Headers, Subprotocols, Url
from .wire.proxies import split_no_proxy

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

    Parameters (keyword-only after ``url``); the guide (docs/) documents each:
    ``codec`` (default `JsonCodec`), ``backoff`` (`Backoff`; ``NO_RETRY``
    connects once), ``retry_fatal``, or ``policy`` (a `ReconnectPolicy`: the
    retry rules, backoff included, as one object); ``outbox_size``, ``outbox_overflow``
    (``"raise"``, ``"drop_oldest"``, ``"block"``), ``outbox_timeout``;
    ``ping_interval``, ``ping_timeout`` (0: no pings), ``idle_timeout``,
    ``connect_timeout``, ``close_timeout``; ``headers``, ``sslopt``,
    ``subprotocols``, ``cookie`` (``url``, ``headers``, ``subprotocols`` and
    ``cookie`` may be callables, called before each attempt: fresh credentials),
    ``origin``, ``host``, ``suppress_origin``, ``proxy``, ``no_proxy``;
    ``pull_buffer``, ``pull_buffer_bytes``, ``pull_overflow``;
    ``dispatch_queue``, ``dispatch_queue_bytes`` (bounds of the queue between
    the reader and the subscribers: when full the reader stops reading, so TCP
    pushes back on the server); ``store``; ``resume`` (False by default: nothing
    is sent that you did not ask for; True: the default request; or a callable
    ``positions -> message``); ``gap_timeout``, ``max_held``, ``seq_scope``
    (``"stream"``: a counter per stream; ``"global"``: one across streams, and a
    gap holds nothing back; ``"connection"``: a counter per stream that every
    connection starts afresh), ``on_reset`` (``"drop"`` or ``"restart"``: what a
    seq back after a reconnect that is neither known as a replay nor as a restart
    means; see the guide's Delivery page); `wsbridge.conventions` sets codec and resume for
    servers that speak wsbridge's conventions;
    ``max_message_size`` (default 16 MiB); ``name``; ``on_connect`` (a hook
    ``fn(session)`` run on every connect before anything else is sent: see
    `on_connect`), ``connect_hook_timeout`` (default 10 s); ``conflate`` (message
    type -> key: see `conflate`); ``request_id_field``
    (default ``"id"``: where `request` puts its id and finds the reply's), ``ack`` (an
    `AckRule`: sends are kept until the server acks their id, and sent again after a
    reconnect), ``ack_window`` (default 1,000: the most unacknowledged at once);
    ``compression`` (default ``"deflate"``: permessage-deflate, RFC 7692, is offered,
    and used when the server agrees (see `deflate`); None: not offered).
    """

    def __init__(
        self,
        url: Url,
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
        headers: Optional[Headers] = None,
        sslopt: Optional[Dict[str, Any]] = None,
        subprotocols: Subprotocols = None,
        # What the upgrade request carries, and the way to the server (issue 22, points 1 and 5):
        cookie: Cookie = None,
        origin: Optional[str] = None,
        host: Optional[str] = None,
        suppress_origin: bool = False,
        proxy: Optional[str] = None,
        no_proxy: Optional[Union[str, Sequence[str]]] = None,
        pull_buffer: int = 10_000,
        pull_buffer_bytes: int = 16 * 1024 * 1024,
        pull_overflow: str = "drop_oldest",
        dispatch_queue: int = 4096,
        dispatch_queue_bytes: int = 4 * 1024 * 1024,
        retry_fatal: bool = False,
        policy: Optional[ReconnectPolicy] = None,  # the retry rules whole (then no backoff, retry_fatal)
        store: Optional[Store] = None,
        resume: Union[bool, ResumeBuilder] = False,
        gap_timeout: float = 5.0,
        max_held: int = 10_000,
        seq_scope: str = "stream",
        on_reset: str = "drop",  # numbering that starts again (issue 23, point 1)
        max_message_size: int = DEFAULT_MAX_LENGTH,
        name: Optional[str] = None,
        on_connect: Optional[ConnectHook] = None,
        connect_hook_timeout: float = 10.0,
        # Conflation and replay (issue 23, points 4 and 6):
        conflate: Optional[Mapping[str, ConflationKey]] = None,
        # Requests with replies and acknowledged sends (issue 23, points 2 and 3):
        request_id_field: str = "id",
        ack: Optional[AckRule] = None,
        ack_window: int = 1000,
        # Compression on the wire (issue 24, point 1): "deflate" offers permessage-deflate, None does not
        compression: Optional[str] = "deflate",
    ) -> None:
        self.options = ConnectOptions(  # checks them all: a ValueError says which is wrong
            url if callable(url) else _lower_scheme(url), headers if callable(headers) else dict(headers or {}), sslopt,
            subprotocols, ping_interval, ping_timeout if ping_interval else 0.0,
            idle_timeout, connect_timeout, close_timeout, max_message_size,
            cookie=cookie, origin=origin, host=host, suppress_origin=suppress_origin, proxy=proxy,
            no_proxy=split_no_proxy(no_proxy), compression=compression,
        )
        self.codec: Codec = codec if codec is not None else JsonCodec()
        self.name = name or f"wsbridge-{next(_ids)}"
        self._named = name is not None
        self._replaced_by: Optional["Client"] = None  # set by the same-named client that takes its place
        self.store = store
        if store is not None:  # a second writer's StoreInUse names this client
            store.owner = self.name
        self.signals = Signals()
        """The blinker signals (``client.signals.error.connect(fn)``): ``connecting``, ``connected``,
        ``disconnected``, ``reconnecting``, ``gave_up``, ``stopped``, ``message``, ``duplicate``, ``error``,
        ``dropped``, ``gap``, ``reset``; the keywords each passes are its receiver protocol
        (`ErrorReceiver`, ...)."""
        self._pid = os.getpid()
        self._lifecycle = Lifecycle()
        self._store_closed = False
        self.policy = _policy(policy, backoff, retry_fatal)
        self._reporter = Reporter(self, self.signals, self._emit, self.name, emit_data=self._emit_data)
        self._pull = PullBuffer(pull_buffer, pull_overflow, pull_buffer_bytes)
        self._delivery = Delivery(
            self, self.signals, self._reporter,
            SequenceTracker(gap_timeout=gap_timeout, max_held=max_held, on_reset=on_reset, recall=_recall(store),
                            global_seq=_scope(seq_scope) == "global", per_connection=seq_scope == "connection"),
            self._pull,
            store, self.codec, self._want_resume, self.name,
        )
        self._dispatcher = self._delivery.dispatcher = Dispatcher(
            self._delivery.handle, dispatch_queue, dispatch_queue_bytes,
            name=f"{self.name}-dispatcher", on_exit=self._dispatcher_exit,
        )
        builder: Optional[ResumeBuilder] = self._default_resume if resume is True else (resume or None)
        self._sender = Sender(
            self.codec, Outbox(outbox_size, outbox_overflow), resume=builder, closed=self._closed_why,
            report=self._reporter.report, emit_dropped=lambda n: self._emit(self.signals.dropped, what="outbox", count=n),
            wake=lambda: self._supervisor.wakeup.set(), outbox_timeout=timeout_arg(outbox_timeout, "outbox_timeout"),
            name=self.name,
        )
        self._intake = Intake(self.codec, self._dispatcher, self._reporter.report)
        self._supervisor = Supervisor(
            self.options, self.policy, lifecycle=self._lifecycle, signals=self.signals, emit=self._emit,
            report=self._reporter.report, sender=self._sender, dispatcher=self._dispatcher, delivery=self._delivery,
            intake=self._intake, store=store, name=self.name,
        )
        # The handshake of every connection: the connect hooks, then the recorded subscriptions.
        if on_connect is not None and not callable(on_connect):
            raise ValueError(f"on_connect is a function of the session, not {type(on_connect).__name__}")
        if not connect_hook_timeout > 0:
            raise ValueError(f"connect_hook_timeout is > 0 seconds, not {connect_hook_timeout!r}")
        self._supervisor.handshake.hooks = (on_connect,) if on_connect is not None else ()
        self._supervisor.handshake.timeout = connect_hook_timeout
        # Conflation: type -> key, as `conflate` sets them (issue 23, point 4).
        if conflate is not None and not isinstance(conflate, Mapping):
            raise ValueError(f"conflate is a mapping of message type to key, not {type(conflate).__name__}")
        self._delivery.conflation.update(conflate or {})
        self._replay: Optional[Replay] = None  # set by `replay` (the caller's thread), before its thread starts
        # Requests with replies and acknowledged sends: matched on the reader thread (`Sender.correlate`).
        if not isinstance(request_id_field, str) or not request_id_field:
            raise ValueError(f"request_id_field is the name of a field, a non-empty str, not {request_id_field!r}")
        if ack is not None and not isinstance(ack, AckRule):
            raise ValueError(f"ack is a wsbridge.AckRule(type=..., id_field=...), not {type(ack).__name__}")
        if isinstance(ack_window, bool) or not isinstance(ack_window, int) or ack_window < 1:
            raise ValueError(f"ack_window is the most unacknowledged messages, an int >= 1, not {ack_window!r}")
        self._sender.request_field, self._sender.ack_window = request_id_field, ack_window
        self._sender.ack = ack.check() if ack is not None else None
        self._sender.correlating = lambda: self._intake.correlate(self._sender.correlate)
        self._sender.unbounded = self._dispatcher.unbounded  # a subscriber waiting for a reply or an ack
        if ack is not None:
            self._sender.correlating()

    # -- options, for code that read them as attributes ------------------------------------
    @property
    def url(self) -> str:
        """The URL: as given, or for a callable ``url`` the one the current (or last)
        attempt dialled ("" before the first)."""
        if not callable(self.options.url):
            return self.options.url
        conn = self._supervisor.conn
        return (conn.url if conn is not None else None) or ""

    # The options as given (read-only: `options` holds them all, `policy` the retry rules).
    @property
    def backoff(self) -> Backoff:
        """The delays between attempts (`policy.backoff`)."""
        return self.policy.backoff

    @property
    def retry_fatal(self) -> bool:
        """Whether endings that will not heal by themselves are retried too (`policy.retry_fatal`)."""
        return self.policy.retry_fatal

    @property
    def ping_interval(self) -> float:
        """Seconds between pings (0: none)."""
        return self.options.ping_interval

    @property
    def ping_timeout(self) -> float:
        """Seconds a ping waits for a pong (or any frame) before the peer is presumed dead."""
        return self.options.ping_timeout

    @property
    def idle_timeout(self) -> Optional[float]:
        """Seconds without any frame after which the connection is cut (None: no limit)."""
        return self.options.idle_timeout

    @property
    def connect_timeout(self) -> float:
        """Seconds a whole connection attempt may take: TCP, proxy, TLS and the upgrade."""
        return self.options.connect_timeout

    @property
    def close_timeout(self) -> float:
        """Seconds `stop` waits for the server's close frame before it cuts the socket."""
        return self.options.close_timeout

    @property
    def max_message_size(self) -> int:
        """The largest message accepted, in bytes (inflated size; larger ones close with 1009)."""
        return self.options.max_message_size

    # -- lifecycle ------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"<wsbridge.Client {self.name} {self.options.shown_url} {self.state}>"

    def __enter__(self) -> "Client":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def state(self) -> State:
        """A `State` (a `str` too): ``new``, ``connecting``, ``connected``, ``backoff``, ``gave_up``,
        ``stopped``, or ``replaying`` during a `replay`."""
        return self._lifecycle.state

    @property
    def connected(self) -> bool:
        """True while the socket is open, the handshake done and the send buffer flushed."""
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

    @property
    def deflate(self) -> Optional[PerMessageDeflate]:
        """The permessage-deflate parameters the server agreed to for the current (or
        last) connection (``str()`` of it: as the header gave them); None: the messages
        are not compressed (``compression=None``, the server declined, or not connected yet)."""
        conn = self._supervisor.conn
        return conn.deflate if conn is not None else None

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
        old = self._delivery.tracker
        positions = {} if old.per_connection else store.positions()  # per connection: nothing to resume from
        epochs = {s: e for s, e in store.epochs().items() if s in positions}
        self._delivery.tracker = SequenceTracker(
            positions, gap_timeout=old.gap_timeout, max_held=old.max_held, id_window=old.id_window, global_seq=old.global_seq,
            per_connection=old.per_connection, epochs=epochs, on_reset=old.on_reset, reset_window=old.reset_window,
            recall=old.recall,
        )
        self._delivery.positions = dict(positions)
        self._delivery.epochs = epochs
        self._supervisor.replay_pending = True
        # What a stop kept behind open gaps: held again (ahead of the positions) while a
        # resume asks for the gaps. Those at or below a position were delivered since.
        self._supervisor.held = [m for m in store.held_messages()
                                 if m.seq is not None and m.stream in positions and m.seq > positions[m.stream]]
        kept = store.outbox_items()
        self._sender.keep_in(store, kept)  # with the frames sent before start, kept from now on
        if kept:
            log.info("%s: %d unsent message(s) from an earlier run wait in the send buffer", self.name, len(kept))

    def wait_connected(self, timeout: Optional[float] = None) -> "Client":
        """Block until connected (socket open, handshake done, send buffer flushed).

        Raises `TimeoutError` (naming the last connection error) when that
        takes longer than ``timeout`` s, `ConnectError` when the client gave
        up, `ClientClosed` when it was stopped.
        """
        self._check_process()
        self._check_not_hook("wait_connected")
        timeout = timeout_arg(timeout)
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

    def stop(self, timeout: Optional[float] = 5.0) -> bool:
        """Close the connection, deliver what was received, join every thread.

        Returns within ``timeout`` seconds (plus a few milliseconds; None or
        ``inf``: once every thread ended), from any thread, in any state; True
        when every thread ended by then. What was received and not delivered by
        then is not delivered (with a store, the next run delivers it).

        Messages held behind an open gap are delivered, the gap declared lost;
        with a store that keeps them (`SQLiteStore`) they are kept for the next
        run instead, which asks for the gap again.

        Called from a subscriber, the stop completes once the subscriber returns. A thread
        still held by user code (a connect hook or a callable option past its time) is
        waited for until ``timeout``, then left to end on its own (the result is False).
        Messages still in the send buffer are kept (see `unsent`) and logged.
        """
        limit = timeout_arg(timeout)
        if os.getpid() != self._pid:
            return True  # inherited through fork(): nothing here belongs to this process
        deadline = time.monotonic() + (WAIT_MAX if limit is None else limit)
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
        hook = me is supervisor.thread  # a connect hook stops its client: the threads end once it returns
        if before is not State.NEW:
            if supervisor.thread.is_alive() and not hook:
                supervisor.thread.join(max(0.0, deadline - time.monotonic()))
            self._pull.unblock()
            # Its last act: `stopped`, see _dispatcher_exit (after the supervisor ended: not awaited from a hook).
            dispatcher.stop(max(0.0, deadline - time.monotonic()), join=not hook)
            kept = ""
        else:
            kept = self._keep_unsent()
            self._close_store()
        self._pull.close()
        registry.discard(self)
        left = len(self._sender.outbox) + len(self._sender.unacked)  # unacknowledged: sent again by the next run
        if left and before is not State.STOPPED:
            if not kept and self.store is not None and self._sender.all_kept():
                kept = " (kept in the store: the next client with it sends them)"
            log.warning("%s stopped with %d message(s) not sent; client.unsent() returns them%s", self.name, left, kept)
        if not hook:  # a thread held by user code (a hook, a callable option) may yet end in time
            for thread in self.threads():
                if thread is not me:
                    thread.join(max(0.0, deadline - time.monotonic()))
        alive = [] if hook else [t.name for t in self.threads() if t.is_alive() and t is not me]
        if alive:
            log.warning("%s: threads still running when stop()'s time ran out: %s", self.name, ", ".join(alive))
        return not alive

    def _keep_unsent(self) -> str:
        """Never started: the frames sent meanwhile go to the store (opened for them, and
        closed), where the next client with it sends them. Says how that went, for the log."""
        if self.store is None or not len(self._sender.outbox):
            return ""
        try:
            self.store.open()
        except Exception as exc:  # in use by another client, or not a store
            return f" (not kept in the store, which could not be opened: {exc})"
        self._sender.keep_in(self.store, [])
        if self._sender.all_kept():
            return " (kept in the store: the next client with it sends them)"
        return f" (not all kept in {self.store!r}: see the error reported)"

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
        self._delivery.finish()  # what open gaps hold: kept in the store, or delivered
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
        supervisor = self._supervisor
        threads = [supervisor.thread, self._dispatcher.thread]
        conn, run = supervisor.conn, supervisor.run
        if conn is not None:
            threads.extend(conn.threads())
        if run is not None:
            threads.append(run.thread)
        threads.extend(s.thread for s in supervisor.stragglers)
        if self._replay is not None:
            threads.append(self._replay.thread)
        return list(dict.fromkeys(t for t in threads if t.ident is not None))

    def _check_pull(self, what: str) -> None:
        self._check_process()
        if threading.current_thread() is self._dispatcher.thread:
            raise UsageError(
                f"{what}() was called from a subscriber: subscribers and the pull buffer are fed by the same "
                "thread, so it would wait for itself. Use the message the subscriber was given, or pull from another thread."
            )

    def _pull_started(self) -> None:
        dropped = self._pull.started()
        if dropped:
            self._emit(self.signals.dropped, what="pull", count=dropped)

    # -- sending -------------------------------------------------------------------------------
    def send(self, obj: Sendable, *, timeout: Optional[float] = None, ttl: Optional[float] = None) -> SendHandle:
        """Send ``obj``: ``str`` as a text frame, ``bytes`` as a binary frame,
        a `Message` or a mapping through the codec. Thread-safe, and safe from
        a subscriber whatever the overflow policy.

        While disconnected (or while older messages wait) the frame goes to
        the send buffer, which the supervisor flushes in order on every
        (re)connect. What cannot be encoded raises here (`ValueError`), at once,
        and nothing is queued. ``timeout`` bounds the whole call: the wait for
        room (``outbox_overflow="block"``), for another sender's write and for
        the socket; a frame the socket did not begin to take by then waits in
        the send buffer (a stuck write never holds other senders). None or
        ``inf``: no limit of the caller's (the connection's write timeout applies);
        negative or NaN: `ValueError`. With a store, a frame that must wait in the
        send buffer and does not fit in its ``max_size`` raises `StoreFull`, and
        nothing is queued.

        Returns a `SendHandle`: ``state`` ``"queued"``, ``"sent"`` (the socket took
        it), ``"acknowledged"`` (with ``ack``: the server acked its id), ``"dropped"``
        (``outbox_overflow="drop_oldest"`` made room with it) or ``"expired"``;
        ``wait(timeout)`` waits for the outcome. ``ttl``: seconds it may wait in the
        send buffer; past that it is removed, never written, counted in
        ``stats.outbox_expired``. With an ack rule, a mapping gets an id in its
        ``id_field`` (a copy; yours is not changed) unless it has one.
        """
        self._check_process()
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl is > 0 seconds, or None, not {ttl!r}")
        return self._sender.send(obj, timeout_arg(timeout), ttl)

    def request(self, message: Sendable, *, timeout: float = 10.0, resend: bool = False) -> Message:
        """Send ``message`` (a mapping, or a `Message` of one) and return its reply: the
        first message received after it whose ``request_id_field`` (default ``"id"``)
        holds the request's id, which is added (to a copy) when ``message`` has none.
        Text and bytes cannot carry an id: `ValueError`.

        The reply is matched as it is read, before it is dispatched, never through the
        pull buffer, so it is not missed however many messages follow it, and it works
        from any thread: a subscriber, a connect hook (there it goes out on the
        connection being opened, as `Session.request`), several threads at once. The
        reply still reaches the subscribers as usual. An ack of ``ack`` is never a reply.

        `TimeoutError` after ``timeout`` s; `ConnectionLost` at once when the connection
        the request went out on ends first, or with ``resend=True`` it is sent again on
        the next connection and the wait goes on (the server may then get it twice);
        `ClientClosed` when the client stops; `OutboxFull` as `send` raises it, or when
        ``drop_oldest`` dropped the request from the send buffer."""
        self._check_process()
        if not timeout > 0:
            raise ValueError(f"timeout is > 0 seconds, not {timeout!r}")
        session = hook_session()
        if session is not None:
            return session.request(message, None, timeout)
        return self._sender.request(message, timeout, resend)

    def unsent(self) -> List[OutFrame]:
        """Frames still waiting in the send buffer, oldest first, as ``(data, binary)``."""
        self._check_process()
        return self._sender.unsent()

    # -- conflation and replay -----------------------------------------------------------------
    def conflate(self, mtype: str, key: Optional[ConflationKey]) -> None:
        """While the subscribers are behind, deliver only the latest message of type
        ``mtype`` per ``key`` (a payload field, a dotted path, or a function of the
        `Message`; a message whose key is None is not conflated). Of the messages of one
        type and key queued together (one batch of the dispatcher: what came while the
        subscribers were busy, up to 4,096 messages), the newest is delivered at the
        place of the oldest, and the others are counted in ``stats.conflated`` (no
        ``dropped`` signal). Messages held by the sequence tracker are not conflated (it
        runs first), the store still records every message, and messages delivered from
        a store (after a restart, or a `replay`) are each delivered. ``key=None`` stops
        conflating ``mtype``. From any thread, at any time: from the next batch on."""
        self._check_process()
        self._delivery.conflation.set(mtype, key)

    def replay(
        self, store: Store, *, speed: Optional[float] = 1.0, types: Optional[Collection[str]] = None,
        since: Optional[float] = None,
    ) -> Replay:
        """Feed the messages kept in ``store`` (an `SQLiteStore` or a `RedisStreamStore`)
        to this client's subscribers, views and pull buffer, as a live feed would, in
        place of `start`: the client never connects. Each message is decoded again with
        this client's codec when the store kept its frame, else delivered as stored
        (``received_at`` as recorded). ``speed``: 1.0 keeps the recorded pace (from
        ``received_at``), 10 plays ten times faster, None as fast as the subscribers
        take them. ``types``: only these types; ``since``: only messages received at or
        after that time (seconds since the epoch). The store is only read: no lock is
        taken, nothing written, no handled mark moved (a live client may be writing it
        meanwhile), and this client's own ``store`` is not used. Returns at once; the
        client stops by itself once every message was delivered (`Replay.wait`), and
        then the pull API says `ClientClosed`. ``stop()`` ends it early. `UsageError`
        if the client was started; `ValueError` for a bad option."""
        self._check_process()
        if not isinstance(store, Store):
            raise ValueError(f"replay() reads a wsbridge Store (SQLiteStore, RedisStreamStore), not {type(store).__name__}")
        if types is not None and (isinstance(types, str) or not all(isinstance(t, str) for t in types)):
            raise ValueError(f"types is a collection of message types (str), not {types!r}")
        if since is not None and (isinstance(since, bool) or not isinstance(since, (int, float))):
            raise ValueError(f"since is a time in seconds since the epoch, not {since!r}")
        if self._lifecycle.state is not State.NEW:
            raise UsageError(f"{self.name} was started: replay() feeds a client that never connects; make a new Client")
        replay = Replay(store, self.codec, self._dispatcher, speed=speed, types=types, since=since,
                        stopping=self._supervisor.stopping, report=self._reporter.report, on_end=self._replayed,
                        name=self.name)
        for earlier in registry.claim(self):  # a notebook cell run again, as in `start`
            earlier._replaced_by = self
            registry.replaced(earlier, self)
            earlier.stop()
        self._delivery.store = None  # a replay writes no store, nor opens (or closes) the client's own
        self._store_closed = True
        if not self._lifecycle.begin(State.REPLAYING):
            registry.discard(self)
            raise UsageError(f"{self.name} was started: replay() feeds a client that never connects")
        self._replay = replay
        self._dispatcher.start()
        replay.thread.start()
        return replay

    def _replayed(self) -> None:
        """The replay's last act (its thread): every message queued; stop, delivering them all."""
        if not self._supervisor.stopping.is_set():
            self.stop(None)

    # -- the connect handshake ---------------------------------------------------------------
    def on_connect(self, fn: ConnectHook) -> ConnectHook:
        """Run ``fn(session)`` on every connect, before anything else is sent (use as
        a decorator; returns ``fn``). Hooks run in the order given (the constructor's
        ``on_connect`` first), on a thread of their own, never behind the subscribers:
        ``session.send(obj)`` sends on that connection only, ``session.request(obj,
        type or predicate, timeout)`` sends and waits for the reply (matched as it
        arrives: never missed), ``session.wait_for(type or predicate, timeout)`` waits
        for a message received on it (which subscribers still get as usual),
        ``session.positions`` are the last sequence positions. Then come the recorded
        subscriptions (`subscribe`), the send buffer, the resume request, and only
        then ``connected``. A hook that raises or runs out of ``connect_hook_timeout``
        fails the attempt: reported on ``error`` (context ``"handshake"``, a
        `ConnectHookError` naming the exception's type, the exception its
        ``__cause__``), the connection closed, retried by the backoff. A hook still
        running then (blocked in your code) is left to return on its own; the next
        attempt waits for it (within ``connect_timeout``), so a hook never runs twice
        at once. ``client.send`` from a hook queues for after the handshake, and never
        raises `OutboxFull` nor waits for room (only the end of the hooks drains the
        buffer); ``client.stop()`` from a hook stops the client. A hook added while
        connected runs from the next connect."""
        self._check_process()
        if not callable(fn):
            raise ValueError(f"a connect hook is a function of the session, not {type(fn).__name__}")
        handshake = self._supervisor.handshake
        handshake.hooks = (*handshake.hooks, fn)
        return fn

    def subscribe(
        self, message: Union[Sendable, Callable[[Positions], Optional[Sendable]]], *, ack: Optional[Match] = None,
        timeout: Optional[float] = None,
    ) -> Subscription:
        """Record a subscription: ``message`` is sent now if connected (in order with
        other sends) and again in the handshake of every later connection, after the
        connect hooks and before the send buffer; once per connection, never twice.
        ``message`` may be a callable of the positions (the last sequence id per
        stream) that returns the message (None: nothing this time), so that it
        carries its own resume offset. ``ack``: a message type or a predicate that
        the handshake waits for after sending it, up to ``timeout`` seconds (default
        ``connect_hook_timeout``); none in time fails the attempt like a failing
        hook. (Sent while connected, its ack reaches the subscribers as any message
        does.) Returns the handle for `unsubscribe`. Thread-safe, also from a
        subscriber or a hook. What cannot be encoded raises `ValueError` here."""
        self._check_process()
        sub = Subscription(message, self._sender.frame, ack, timeout)
        self._sender.subscribe(sub, self._delivery.positions)
        return sub

    def unsubscribe(self, subscription: Union[Subscription, Sendable], unsubscribe_message: Optional[Sendable] = None) -> bool:
        """Forget a subscription (its handle, or the message it was made with): no
        later connection sends it. ``unsubscribe_message``, if given, is sent now on the
        connection the subscription went out on, if that one is still open (never on
        another). Returns False when no such subscription was recorded."""
        self._check_process()
        sub = subscription if isinstance(subscription, Subscription) else next(
            (s for s in self._sender.subscriptions if s.message == subscription), None)
        return sub is not None and self._sender.unsubscribe(sub, unsubscribe_message)

    @property
    def subscriptions(self) -> List[Subscription]:
        """The recorded subscriptions, in the order they are sent."""
        return list(self._sender.subscriptions)

    def reconnect(self, url: Optional[Url] = None, *, wait: Optional[float] = None) -> None:
        """Close the connection cleanly (code 1000) and connect again at once: no
        backoff, not counted as a failure; the subscriptions, positions and send
        buffer are kept. ``url`` (a str, or a callable as the constructor takes)
        switches the URL for this and every later attempt (checked as the
        constructor checks it: `ValueError`). Returns at once from
        any thread, a subscriber's included; with ``wait``, blocks up to that many
        seconds until the new connection is made (as `wait_connected`). Before
        `start`, it only switches the URL."""
        self._check_process()
        options = None
        if url is not None:
            options = dataclasses.replace(self.options, url=url if callable(url) else _lower_scheme(url))
        if self._lifecycle.state.final:
            raise ClientClosed(f"{self.name} is {self.state}; make a new Client")
        if options is not None:
            self.options = options
        if self._lifecycle.state is State.NEW:
            self._supervisor.options = self.options
            return
        if wait is not None:
            self._check_not_hook("reconnect(wait=...)")
        number = self._supervisor.reconnect(options)
        if wait is not None:
            supervisor = self._supervisor
            try:
                state = self._lifecycle.wait_for(lambda s: s is State.CONNECTED and supervisor.served >= number, wait)
            except TimeoutError:
                raise TimeoutError(f"{self.name} not connected again within {wait} s") from None
            if state is not State.CONNECTED:
                self.wait_connected(0)  # raises why: gave up, or stopped

    def _check_not_hook(self, what: str) -> None:
        if in_connect_hook() or threading.current_thread() is self._supervisor.thread:
            raise UsageError(f"{what} was called from a connect hook: the connection is made once the hook returns")

    def _closed_why(self) -> Optional[str]:
        if self._replay is not None:  # never connects: a send could only wait until stop() dropped it
            return "replaying a stored feed"
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
        return default_resume_request(self.codec, positions, self._delivery.epochs)

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
    def epochs(self) -> Epochs:
        """The epoch of each stream's position, for the streams whose messages carry one
        (the codec's ``epoch_field``): a resume continues after a position in its epoch."""
        return dict(self._delivery.epochs)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters (each written by one thread, read without a lock)."""
        d, i, s, sup, sent = self._delivery, self._intake, self._sender, self._supervisor, self._sender.counts
        return Stats(
            state=str(self.state), frames=i.frames, bytes=i.bytes, received=i.received + d.received,
            dispatched=d.dispatched, protocol_errors=i.protocol_errors + d.protocol_errors + sup.wire_errors,
            subscriber_errors=self._reporter.subscriber_errors,
            sent=sent.sent, queued=sent.queued, outbox=len(s.outbox), flushed=sent.flushed, outbox_dropped=sent.dropped,
            outbox_expired=sent.expired, acked=sent.acked, unacked=len(s.unacked), resent=sent.resent,
            pull_buffered=len(self._pull), pull_dropped=self._pull.dropped, dispatch_pending=len(self._dispatcher),
            dispatch_bytes=self._dispatcher.pending_bytes, backpressure_waits=self._dispatcher.blocked,
            duplicates=d.duplicates, gaps=d.gaps, lost=d.lost, resets=d.resets, held=d.tracker.held, resumes=sent.resumes,
            stored=d.stored, store_errors=d.store_errors + sent.store_errors, replayed=d.replayed,
            conflated=d.conflation.conflated,
            undelivered=d.abandoned,
            connects=sup.connects, reconnects=max(0, sup.connects - 1), connect_attempts=sup.attempts,
            disconnects=sup.disconnects,
        )


def _scope(seq_scope: str) -> str:
    if seq_scope not in ("stream", "global", "connection"):
        raise ValueError(f"seq_scope is 'stream' (a counter per stream), 'global' (one for all) or 'connection' "
                         f"(a counter per stream, afresh on every connection), not {seq_scope!r}")
    return seq_scope


def _recall(store: Optional[Store]) -> Optional[Recall]:
    """The store's `Store.digest`, when it has its own (a seq back after a restart is judged by it)."""
    if store is None or type(store).digest is Store.digest:
        return None
    return store.digest


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
