"""`Client`: a WebSocket feed for synchronous code.

Three threads, each with one job:

* the **reader** (one per connection, see `Connection`) decodes frames and
  hands messages to the dispatcher;
* the **dispatcher** delivers them, in arrival order, to subscribers and to
  the pull buffer, so a slow subscriber never stalls the socket;
* the **supervisor** owns the connection's life: connect, flush the send
  buffer, watch heartbeats, reconnect with backoff, and close on `stop()`.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import ssl
import threading
import time
import weakref
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, NamedTuple, Optional, Tuple, Union
from urllib.parse import urlsplit

import websocket

from .backoff import Backoff
from .codec import DEFAULT_MAX_LENGTH, Codec, JsonCodec
from .connection import Connection
from .dispatch import Dispatcher
from .errors import ClientClosed, ConnectError, HandshakeError, MessageTooLarge, OutboxFull, ProtocolError, WireError, WsbridgeError, preview
from .message import Message
from .outbox import Outbox
from .pull import PullBuffer
from .redact import redact_url
from .resume import default_resume_request
from .sequence import Outcome, Positions, SequenceTracker
from .signals import MessageHandler, Signals, Subscriber, deliver
from .stats import Stats
from .store import Store, StoreError

log = logging.getLogger("wsbridge")

Sendable = Union[str, bytes, bytearray, memoryview, Message, Mapping[str, Any]]
OutFrame = Tuple[Union[str, bytes], bool]


class _Queued(NamedTuple):
    """A frame in the send buffer; ``key`` is its place in the store, if kept there."""

    data: Union[str, bytes]
    binary: bool
    key: Optional[int] = None


FLUSH_BATCH = 512
FLUSH_BATCH_BYTES = 256 * 1024
"""The send buffer is flushed in writes of at most this many frames / bytes."""

FLUSH_FORGET_EVERY = 256
"""Kept frames the socket took are forgotten by the store in batches of this many
(a crash in between sends those again: at least once, never lost)."""

FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 426})
"""Handshake refusals that retrying will not fix: the client gives up."""
FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1010})
"""Close codes that say "your client is wrong", not "try again later"."""

ResumeBuilder = Callable[[Positions], Optional[Sendable]]

_EXPIRE = object()
"""Dispatcher item: give up gaps that waited longer than ``gap_timeout``."""


class _Barrier:
    """Dispatcher item: set ``done`` once every item queued before it was delivered."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


SETTLE_TIMEOUT = 1.0
"""How long a reader that must fail its connection waits for the subscribers to
finish the messages that came before the violation (their replies go out first)."""


class _Stored(NamedTuple):
    """Dispatcher item: a message from the store, past its handled mark."""

    key: int
    message: Message


_ids = itertools.count(1)
_live_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()


@atexit.register
def _stop_live_clients() -> None:
    for client in list(_live_clients):
        client.stop(timeout=2.0)


class Client:
    """Receive (and send) WebSocket messages from synchronous code.

    ``start()`` returns at once; messages then reach the subscribers
    registered with `on` / `on_any` on the dispatcher thread, and the pull
    API (`recv`, `messages`, `wait_for`) for scripts. `send` is thread-safe
    and buffers while disconnected. ``stop()`` closes the connection,
    delivers what was already received, and joins every thread.

    Parameters are keyword-only after ``url``:

    codec
        Wire format, default `JsonCodec`.
    backoff
        Reconnect policy (`Backoff`); ``wsbridge.NO_RETRY`` connects once.
    outbox_size, outbox_overflow, outbox_timeout
        The send buffer's bound and what `send` does when it is full:
        ``"raise"`` (`OutboxFull`), ``"drop_oldest"`` (counted, logged and
        signalled on ``dropped``) or ``"block"`` (waits up to
        ``outbox_timeout`` seconds, then raises `OutboxFull`).
    ping_interval, ping_timeout
        Heartbeat: a ping every ``ping_interval`` s; no pong within
        ``ping_timeout`` s means the peer is dead. 0 turns pings off.
    idle_timeout
        Also treat the peer as dead after this many seconds without any frame.
    connect_timeout
        Seconds allowed from the start of an attempt to the open socket:
        TCP connect (an unanswered SYN included), TLS and the HTTP upgrade.
    close_timeout
        Seconds `stop` waits for the peer's close frame before cutting.
    headers, sslopt, subprotocols
        Passed to websocket-client (``sslopt`` e.g. ``{"ca_certs": path}``).
    pull_buffer, pull_buffer_bytes, pull_overflow
        Bounds of the buffer behind the pull API, in messages (0: off) and
        in bytes, and its policy when full: ``"drop_oldest"`` (counted in
        ``stats.pull_dropped``) or ``"block"`` (see `PullBuffer`).
    dispatch_queue
        Messages decoded but not yet delivered; when full the reader stops
        reading, so TCP pushes back on the server.
    retry_fatal
        Retry even after a refusal that will not heal by itself (HTTP 401,
        403, ...; close codes 1008, ...; a TLS certificate that fails).
    store
        A `Store` (e.g. `SQLiteStore`) that keeps every message before its
        subscribers see it; on start, stored messages past the handled mark
        are delivered first and the feed resumes from the stored positions.
    resume
        After every (re)connect and on a gap, ask the server to resend what
        came after the last sequence ids received: ``True`` (the default
        request, see `wsbridge.resume`), ``False``, or a callable
        ``positions -> message`` (None: send nothing) in your server's shape.
    max_message_size
        The largest frame accepted, in bytes (default 16 MiB): a longer one is
        refused from its header, before its payload is read, reported on
        ``error`` (context ``"limit"``), and the connection closed with 1009
        and made again.
    gap_timeout, max_held
        Messages after a gap wait (in memory, up to ``max_held`` per stream)
        this many seconds for the missing ones; then the gap is lost
        (``gap`` signal, ``stats.lost``) and they are delivered.
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
        retry_fatal: bool = False,
        store: Optional[Store] = None,
        resume: Union[bool, ResumeBuilder] = True,
        gap_timeout: float = 5.0,
        max_held: int = 10_000,
        max_message_size: int = DEFAULT_MAX_LENGTH,
        name: Optional[str] = None,
    ) -> None:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in ("ws", "wss"):
            raise ValueError(f"a WebSocket URL starts with ws:// or wss://, not {redact_url(url)!r}")
        if ping_interval < 0 or ping_timeout < 0:
            raise ValueError("ping_interval and ping_timeout must be >= 0")
        if ping_interval and ping_timeout and ping_interval <= ping_timeout:
            raise ValueError(
                f"ping_interval ({ping_interval}) must be greater than ping_timeout ({ping_timeout}): "
                "a ping must be answered before the next one is due"
            )
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0 or None")
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1 byte")
        if connect_timeout <= 0 or close_timeout < 0:
            raise ValueError("connect_timeout must be > 0 and close_timeout >= 0")
        self.url = url
        self.codec: Codec = codec if codec is not None else JsonCodec()
        self.backoff = backoff if backoff is not None else Backoff()
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout if ping_interval else 0.0
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.retry_fatal = retry_fatal
        self.max_message_size = max_message_size
        self._headers = dict(headers or {})
        self._sslopt = sslopt
        self._subprotocols = subprotocols
        self.name = name or f"wsbridge-{next(_ids)}"
        self.signals = Signals()

        self._outbox: Outbox[_Queued] = Outbox(outbox_size, outbox_overflow)
        self._outbox_timeout = outbox_timeout
        self._send_cond = threading.Condition()
        self._live: Optional[Connection] = None  # open and flushed: sends go straight out
        self._inflight: List[_Queued] = []  # the outbox head being flushed

        self.store = store
        if resume is True:
            self._resume: Optional[ResumeBuilder] = lambda positions: default_resume_request(self.codec, positions)
        else:
            self._resume = resume or None
        self._tracker = SequenceTracker(gap_timeout=gap_timeout, max_held=max_held)
        self._positions: Positions = {}  # the tracker's, as of the last batch (read by the supervisor)
        self._resume_wanted = False
        self._replay_pending = False  # stored messages past the handled mark go first

        self._pull = PullBuffer(pull_buffer, pull_overflow, pull_buffer_bytes)
        self._dispatcher = Dispatcher(self._handle_batch, dispatch_queue, name=f"{self.name}-dispatcher")
        self._supervisor = threading.Thread(target=self._supervise, name=f"{self.name}-supervisor", daemon=True)
        self._conn: Optional[Connection] = None
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._state_cond = threading.Condition()
        self._state = "new"
        self._last_error: Optional[BaseException] = None
        self._gave_up_error: Optional[BaseException] = None

        # Counters; each is written by one thread only.
        self._frames = self._bytes = self._received = 0  # reader
        self._protocol_errors = 0  # reader
        self._dispatched = self._subscriber_errors = 0  # dispatcher
        self._duplicates = self._gaps = self._lost = self._stored = self._store_errors = self._replayed = 0  # dispatcher
        self._resumes = 0  # supervisor
        self._sent = self._queued = self._flushed = self._outbox_dropped = self._send_store_errors = 0  # under _send_cond
        self._connects = self._attempts = self._disconnects = 0  # supervisor

    # -- lifecycle -------------------------------------------------------
    def __repr__(self) -> str:
        return f"<wsbridge.Client {self.name} {redact_url(self.url)} {self._state}>"

    def __enter__(self) -> "Client":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def state(self) -> str:
        """``new``, ``connecting``, ``connected``, ``backoff``, ``gave_up`` or ``stopped``."""
        return self._state

    @property
    def connected(self) -> bool:
        """True while the socket is open and the send buffer flushed."""
        return self._state == "connected"

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol the server chose for the current (or last) connection,
        from those given as ``subprotocols`` (None: none chosen, or not connected yet)."""
        conn = self._conn
        return conn.subprotocol if conn is not None else None

    def _set_state(self, state: str, error: Optional[BaseException] = None) -> None:
        with self._state_cond:
            if self._state in ("stopped", "gave_up") and state != "stopped":
                return
            self._state = state
            if error is not None:
                self._last_error = error
            self._state_cond.notify_all()

    def start(self) -> "Client":
        """Start the threads and connect in the background; returns at once."""
        with self._state_cond:
            if self._state != "new":
                if self._state in ("stopped", "gave_up"):
                    raise ClientClosed(f"{self.name} was stopped; make a new Client")
                return self
            if self.store is not None:
                self._open_store()
            self._state = "connecting"
        _live_clients.add(self)
        self._dispatcher.start()
        self._supervisor.start()
        return self

    def _open_store(self) -> None:
        """Open the store and pick up where the last run stopped (raises `StoreError`)."""
        store = self.store
        assert store is not None
        store.open()
        positions = store.positions()
        tracker = self._tracker
        self._tracker = SequenceTracker(positions, gap_timeout=tracker.gap_timeout, max_held=tracker.max_held, id_window=tracker.id_window)
        self._positions = dict(positions)
        self._replay_pending = True
        kept = store.outbox_items()
        if kept:
            with self._send_cond:
                self._outbox.restore([_Queued(data, binary, key) for key, data, binary in kept])
            log.info("%s: %d unsent message(s) from an earlier run wait in the send buffer", self.name, len(kept))

    def wait_connected(self, timeout: Optional[float] = None) -> "Client":
        """Block until connected (socket open, send buffer flushed).

        Raises `TimeoutError` (naming the last connection error) when that
        takes longer than ``timeout`` s, `ConnectError` when the client gave
        up, `ClientClosed` when it was stopped.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._state_cond:
            while self._state != "connected":
                if self._state == "new":
                    raise WsbridgeError("call start() before wait_connected()")
                if self._state == "gave_up":
                    raise ConnectError(f"{self.name} gave up: {self._describe(self._gave_up_error)}")
                if self._state == "stopped":
                    raise ClientClosed(f"{self.name} is stopped")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    last = f" (last error: {self._describe(self._last_error)})" if self._last_error else ""
                    raise TimeoutError(f"{self.name} not connected within {timeout} s{last}")
                self._state_cond.wait(remaining)
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Close the connection, deliver what was received, join every thread.

        Returns True when every thread ended within ``timeout`` seconds.
        Messages still in the send buffer are kept (see `unsent`) and logged.
        """
        deadline = time.monotonic() + timeout
        with self._state_cond:
            started = self._state != "new"
            first = self._state != "stopped"
            self._state = "stopped"
            self._state_cond.notify_all()
        self._stopping.set()
        self._wakeup.set()
        with self._send_cond:
            self._live = None
            self._send_cond.notify_all()
        if started:
            if self._supervisor.is_alive() and self._supervisor is not threading.current_thread():
                self._supervisor.join(max(0.0, deadline - time.monotonic()))
            self._pull.unblock()
            if first:
                self._emit(self.signals.stopped)  # last of all, after everything received
            self._dispatcher.stop(max(0.0, deadline - time.monotonic()))
        self._pull.close()
        if self.store is not None and not self._dispatcher.thread.is_alive():
            self.store.close()
        _live_clients.discard(self)
        left = len(self._outbox)
        if left:
            kept = " (kept in the store: the next client with it sends them)" if self.store is not None else ""
            log.warning("%s stopped with %d message(s) not sent; client.unsent() returns them%s", self.name, left, kept)
        alive = [t.name for t in self.threads() if t.is_alive()]
        if alive:
            log.warning("%s: threads still running after stop(): %s", self.name, ", ".join(alive))
        return not alive

    def threads(self) -> List[threading.Thread]:
        """Every thread this client started (for tests and diagnostics)."""
        threads = [self._supervisor, self._dispatcher.thread]
        conn = self._conn
        if conn is not None:
            threads.append(conn.thread)
        return [t for t in threads if t.ident is not None]

    # -- subscribing ------------------------------------------------------
    def on(self, mtype: str, fn: Optional[MessageHandler] = None) -> Any:
        """Subscribe ``fn(message)`` to messages of type ``mtype``.

        Use as ``client.on("chat", fn)`` or as a decorator ``@client.on("chat")``.
        Subscribers run on the dispatcher thread, one message at a time, in
        arrival order; returns ``fn`` so decorators stack.
        """
        def register(fn: MessageHandler) -> MessageHandler:
            self.signals.subscribe(self.signals.for_type(mtype), fn)
            return fn

        return register if fn is None else register(fn)

    def on_any(self, fn: MessageHandler) -> MessageHandler:
        """Subscribe ``fn(message)`` to every message."""
        self.signals.subscribe(self.signals.message, fn)
        return fn

    def off(self, fn: Callable[..., Any], mtype: Optional[str] = None) -> int:
        """Unsubscribe ``fn`` (from ``mtype`` only, or from everything)."""
        return self.signals.unsubscribe(fn, mtype)

    # -- pull API -----------------------------------------------------------
    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message, waiting up to ``timeout`` s (`TimeoutError`).

        Raises `ClientClosed` once the client has stopped (or gave up) and
        every buffered message was taken.
        """
        return self._pull.get(timeout)

    def messages(self, types: Optional[Collection[str]] = None, timeout: Optional[float] = None) -> Iterator[Message]:
        """Iterate over messages (of ``types`` only, if given).

        The iteration ends when no matching message arrives within ``timeout``
        seconds, or when the client stops. Messages of other types stay
        buffered for `recv`.
        """
        types = frozenset(types) if types is not None else None
        while True:
            try:
                yield self._pull.get(timeout, types)
            except (TimeoutError, ClientClosed):
                return

    def wait_for(
        self, mtype: str, predicate: Optional[Callable[[Message], bool]] = None, timeout: Optional[float] = None
    ) -> Message:
        """The first buffered or future message of type ``mtype`` (matching
        ``predicate``), leaving other messages buffered."""
        return self._pull.get(timeout, frozenset((mtype,)), predicate)

    # -- sending -----------------------------------------------------------
    def _frame(self, obj: Sendable) -> OutFrame:
        if isinstance(obj, str):
            return obj, False
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj), True
        return self.codec.encode(obj)

    def send(self, obj: Sendable, *, timeout: Optional[float] = None) -> None:
        """Send ``obj``: ``str`` as a text frame, ``bytes`` as a binary frame,
        a `Message` or a mapping through the codec. Thread-safe.

        While disconnected (or while older messages wait) the frame goes to
        the send buffer, which the supervisor flushes in order on every
        (re)connect. Encoding errors raise here, at once.
        """
        frame = self._frame(obj)
        with self._send_cond:
            self._check_open()
            if self._outbox.full and self._outbox.overflow == "block":
                self._wait_for_room(self._outbox_timeout if timeout is None else timeout)
            # Invariant: _live is set only while the outbox is empty, so a
            # direct send can never overtake a buffered frame.
            conn = self._live
            if conn is not None:
                try:
                    conn.send(*frame)
                    self._sent += 1
                    return
                except Exception as exc:
                    log.info("%s: send failed (%s); buffering and reconnecting", self.name, exc)
                    self._live = None
                    conn.abort()
            dropped = self._queue(frame)
        if dropped is not None:
            self._outbox_dropped += 1
            log.warning("%s: send buffer full; dropped the oldest unsent message (%d dropped so far)", self.name, self._outbox_dropped)
            self._emit(self.signals.dropped, what="outbox", count=1)

    def _queue(self, frame: OutFrame) -> Optional[_Queued]:
        """Append to the send buffer (and keep it in the store); return what the
        overflow policy dropped. Called with ``_send_cond`` held."""
        key = self._keep(self.store.outbox_add, *frame) if self.store is not None else None
        try:
            dropped = self._outbox.put(_Queued(frame[0], frame[1], key), keep=len(self._inflight))
        except OutboxFull:
            self._forget(key)
            raise
        self._queued += 1
        if dropped is not None:
            self._forget(dropped.key)
        return dropped

    def _forget(self, key: Optional[int], through: bool = False) -> None:
        if key is not None and self.store is not None:
            self._keep(self.store.outbox_remove_through if through else self.store.outbox_remove, key)

    def _keep(self, operation: Callable[..., Any], *args: Any) -> Any:
        """A send-buffer operation on the store. A failure is reported, not
        raised: the frame is still in memory (only a crash could lose it now)."""
        try:
            return operation(*args)
        except Exception as exc:
            self._send_store_errors += 1
            self._report(exc if isinstance(exc, StoreError) else StoreError(f"{self.store!r} failed: {exc!r}"), "store")
            return None

    def _check_open(self) -> None:
        if self._state in ("stopped", "gave_up"):
            raise ClientClosed(f"{self.name} is {self._state}; nothing can be sent")

    def _wait_for_room(self, timeout: Optional[float]) -> None:
        """The ``block`` policy: wait (lock released) until the flush makes room."""
        outbox = self._outbox
        deadline = None if timeout is None else time.monotonic() + timeout
        while outbox.full:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise OutboxFull(f"send buffer still full ({outbox.maxsize} messages) after {timeout} s")
            self._send_cond.wait(remaining)
            self._check_open()

    def unsent(self) -> List[OutFrame]:
        """Frames still waiting in the send buffer, oldest first, as ``(data, binary)``."""
        with self._send_cond:
            return [(q.data, q.binary) for q in self._outbox.items()]

    def _flush(self, conn: Connection, resume_from: Positions) -> bool:
        """Send the buffer in order, then the resume request; open for
        direct sends once both are out (so nothing new overtakes them).

        Frames go out in batches (one system call for up to `FLUSH_BATCH`
        frames or `FLUSH_BATCH_BYTES`) and leave the buffer only once the
        socket took the whole batch: a connection lost mid-batch sends the
        batch again on the next one (at least once, never lost).
        """
        cond = self._send_cond
        sent_key: Optional[int] = None  # the last kept frame the socket took, not yet forgotten
        unforgotten = 0
        while True:
            with cond:
                batch = self._outbox.peek_many(FLUSH_BATCH)
                if unforgotten and (not batch or unforgotten >= FLUSH_FORGET_EVERY):
                    self._forget(sent_key, through=True)
                    unforgotten = 0
                if not batch:
                    if not self._send_resume(conn, resume_from):
                        return False
                    if conn.is_open and not self._stopping.is_set():
                        self._live = conn
                        cond.notify_all()
                        return True
                    return False
                size = 0
                for n, frame in enumerate(batch, 1):
                    size += len(frame.data)
                    if size >= FLUSH_BATCH_BYTES:
                        del batch[n:]
                        break
                self._inflight = batch
            try:
                conn.send_many([(frame.data, frame.binary) for frame in batch])
            except Exception as exc:
                with cond:
                    self._inflight = []
                    if unforgotten:
                        self._forget(sent_key, through=True)
                log.info("%s: flush interrupted (%s); %d message(s) stay buffered", self.name, exc, len(self._outbox))
                conn.abort()
                return False
            with cond:
                self._inflight = []
                self._outbox.pop_many(len(batch))
                for frame in batch:
                    if frame.key is not None:
                        sent_key = frame.key
                        unforgotten += 1
                self._flushed += len(batch)
                self._sent += len(batch)
                cond.notify_all()

    def _send_resume(self, conn: Connection, positions: Positions) -> bool:
        """Ask the server for what came after ``positions`` (if there are any)."""
        self._resume_wanted = False
        if self._resume is None or not positions:
            return True
        try:
            request = self._resume(dict(positions))
            if request is None:
                return True
            frame = self._frame(request)
        except Exception as exc:
            self._report(exc, "resume")
            return True
        try:
            conn.send(*frame)
        except Exception as exc:
            log.info("%s: resume request not sent (%s)", self.name, exc)
            conn.abort()
            return False
        self._resumes += 1
        self._sent += 1
        log.debug("%s: resume request sent for %d stream(s)", self.name, len(positions))
        return True

    # -- reader thread -------------------------------------------------------
    def _on_frame(self, data: bytes, binary: bool) -> None:
        self._frames += 1
        size = len(data)
        self._bytes += size
        try:  # the reader checked the size and, for text, UTF-8 (`wsbridge.frames`)
            messages = self.codec.decode(data, binary, time.time())
        except ProtocolError as exc:
            self._protocol_errors += 1
            self._report(exc, "decode", frame=data)
            return
        except Exception as exc:  # a codec bug must not kill the reader
            self._protocol_errors += 1
            self._report(ProtocolError(f"codec {self.codec!r} failed: {exc!r}", data), "decode", frame=data)
            return
        put = self._dispatcher.put
        for message in messages:
            put(message)
        self._received += len(messages)

    def _settle(self) -> None:
        """Before the reader fails its connection: let subscribers finish every
        message that came before the violation, so what they send in reply goes
        out before the close frame, as it would from a synchronous handler.
        Bounded by `SETTLE_TIMEOUT`; skipped when the queue is full (the reader
        must not block on data to fail a connection)."""
        dispatcher = self._dispatcher
        if self._stopping.is_set() or len(dispatcher) >= dispatcher.maxsize:
            return
        deadline = time.monotonic() + SETTLE_TIMEOUT
        barrier = _Barrier()
        dispatcher.put_now(barrier)
        if barrier.done.wait(SETTLE_TIMEOUT):  # a reply sent before the first flush is in the send buffer
            with self._send_cond:
                self._send_cond.wait_for(lambda: not self._outbox, max(0.0, deadline - time.monotonic()))

    def _on_open(self, conn: Connection) -> None:
        self._emit(self.signals.connected, url=redact_url(self.url))
        self._wakeup.set()

    def _on_end(self, conn: Connection) -> None:
        with self._send_cond:
            if self._live is conn:
                self._live = None
        self._dispatcher.wake()
        self._wakeup.set()

    # -- dispatcher thread -----------------------------------------------------
    def _emit(self, signal: Any, **kwargs: Any) -> None:
        self._dispatcher.put_now((signal, kwargs))

    def report_error(self, error: BaseException, context: str, **extra: Any) -> None:
        """Report a recoverable error on the ``error`` signal (or the log when
        nobody listens): for views and other extensions, from any thread."""
        self._report(error, context, **extra)

    def _report(self, error: BaseException, context: str, **extra: Any) -> None:
        """Report a recoverable error on the error signal (and the log)."""
        if self.signals.error.receivers:
            log.debug("%s: %s error: %s", self.name, context, error)
        else:
            log.warning("%s: %s error: %s", self.name, context, error)
        self._emit(self.signals.error, error=error, context=context, **extra)

    def _subscriber_failed(self, exc: BaseException, receiver: Any, kwargs: Dict[str, Any]) -> None:
        self._subscriber_errors += 1
        fn = receiver.fn if isinstance(receiver, Subscriber) else receiver
        message = kwargs.get("message")
        if self.signals.error.receivers:
            log.debug("%s: subscriber %r raised on %r", self.name, fn, message, exc_info=exc)
            deliver(self.signals.error, self, self._listener_failed, error=exc, context="subscriber", message=message, subscriber=fn)
        else:
            log.error("%s: subscriber %r raised on %r", self.name, fn, message, exc_info=exc)

    def _listener_failed(self, exc: BaseException, receiver: Any, kwargs: Dict[str, Any]) -> None:
        log.error("%s: signal receiver %r raised", self.name, receiver, exc_info=exc)

    def _handle_batch(self, batch: List[Any]) -> None:
        """Dedup and order the batch, store it, then deliver it item by item."""
        items = self._track(batch)
        keys = self._store_batch(items) if self.store is not None else None
        signals = self.signals
        types = signals.types
        any_signal = signals.message
        failed = self._subscriber_failed
        store = self.store
        pull = self._pull
        pulled: List[Message] = []
        for item in items:
            cls = item.__class__
            if cls is Message or cls is _Stored:
                if cls is _Stored:
                    key, item = item
                    self._replayed += 1
                else:
                    key = next(keys) if keys is not None else None
                signal = types.get(item.type)
                if signal is not None and signal.receivers:
                    deliver(signal, self, failed, message=item)
                if any_signal.receivers:
                    deliver(any_signal, self, failed, message=item)
                self._dispatched += 1
                if key is not None:
                    store.mark_handled(key)  # type: ignore[union-attr]
                pulled.append(item)
            elif cls is _Barrier:
                item.done.set()
            else:
                signal, kwargs = item
                deliver(signal, self, self._listener_failed, **kwargs)
        if pulled and pull.enabled:
            dropped = pull.extend(pulled)
            if dropped:
                deliver(signals.dropped, self, self._listener_failed, what="pull", count=dropped)

    def _track(self, batch: List[Any]) -> List[Any]:
        """Run the batch through the sequence tracker: duplicates out, held
        messages released in order, gap and duplicate news as signals."""
        tracker = self._tracker
        out: List[Any] = []
        now = time.monotonic()
        for item in batch:
            if item.__class__ is Message:
                if item.seq is None and item.id is None:
                    out.append(item)
                else:
                    self._tracked(tracker.offer(item, now), out, item)
            elif item is _EXPIRE:
                for outcome in tracker.expire(now):
                    self._tracked(outcome, out, None)
            else:
                out.append(item)
        positions = tracker.positions()
        if positions != self._positions:
            self._positions = positions
        return out

    def _tracked(self, outcome: Outcome, out: List[Any], message: Optional[Message]) -> None:
        if outcome.duplicate:
            self._duplicates += 1
            if self.signals.duplicate.receivers:
                out.append((self.signals.duplicate, {"message": message}))
            return
        if outcome.opened is not None:
            self._gaps += 1
            gap = outcome.opened
            log.info("%s: gap in stream %r: ids %d..%d missing; holding later messages back", self.name, gap.stream, gap.first, gap.last)
            out.append((self.signals.gap, {"stream": gap.stream, "first": gap.first, "last": gap.last, "status": "open"}))
            self._resume_wanted = True
            self._wakeup.set()
        if outcome.lost is not None:
            gap = outcome.lost
            self._lost += gap.count
            log.warning("%s: stream %r: %d message(s) (ids %d..%d) never arrived; going on without them",
                        self.name, gap.stream, gap.count, gap.first, gap.last)
            out.append((self.signals.gap, {"stream": gap.stream, "first": gap.first, "last": gap.last, "status": "lost"}))
        out.extend(outcome.ready)
        if outcome.filled is not None:
            gap = outcome.filled
            out.append((self.signals.gap, {"stream": gap.stream, "first": gap.first, "last": gap.last, "status": "filled"}))

    def _store_batch(self, items: List[Any]) -> Optional[Iterator[int]]:
        """Write the batch's new messages in one transaction; their keys, in order."""
        messages = [item for item in items if item.__class__ is Message]
        if not messages:
            return None
        try:
            first = self.store.append(messages, self._positions, self.codec.raw_is_payload)  # type: ignore[union-attr]
        except Exception as exc:
            self._store_errors += 1
            error = exc if isinstance(exc, StoreError) else StoreError(f"{self.store!r} failed: {exc!r}")
            log.error("%s: %s; delivering %d message(s) without storing them", self.name, error, len(messages))
            deliver(self.signals.error, self, self._listener_failed, error=error, context="store", count=len(messages))
            return None
        self._stored += len(messages)
        return iter(range(first, first + len(messages)))

    # -- supervisor thread -------------------------------------------------------
    def _new_connection(self) -> Connection:
        self._attempts += 1
        return Connection(
            self.url,
            on_frame=self._on_frame,
            on_open=self._on_open,
            on_end=self._on_end,
            on_drained=self._dispatcher.wake,
            before_fail=self._settle,
            headers=self._headers,
            sslopt=self._sslopt,
            subprotocols=self._subprotocols,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout or None,
            io_timeout=self._io_timeout(),
            connect_timeout=self.connect_timeout,
            max_message_size=self.max_message_size,
            name=f"{self.name}-reader-{self._attempts}",
        )

    def _io_timeout(self) -> float:
        bounds = [t for t in (self.ping_timeout, self.idle_timeout) if t]
        return min(bounds) if bounds else 30.0

    def _supervise(self) -> None:
        failures = 0
        try:
            if self._replay_pending:
                self._replay_stored()
            while not self._stopping.is_set():
                conn = self._new_connection()
                self._conn = conn
                self._set_state("connecting")
                self._emit(self.signals.connecting, attempt=failures)
                resume_from = self._positions  # replaced, never mutated: a snapshot
                conn.start()
                self._watch(conn, resume_from)
                conn.join()
                self._ended(conn)
                if self._stopping.is_set():
                    break
                fatal = self._fatal_reason(conn)
                if fatal and not self.retry_fatal:
                    self._give_up(ConnectError(fatal), cause=conn.error)
                    break
                if conn.opened_at is not None and time.monotonic() - conn.opened_at >= self.backoff.reset_after:
                    failures = 0
                failures += 1
                if not self.backoff.allows(failures):
                    last = self._describe(conn.error) if conn.error else f"close code {conn.close_code}"
                    self._give_up(
                        ConnectError(f"retries exhausted (max_attempts={self.backoff.max_attempts}); last: {last}"),
                        # NO_RETRY asked for one connection: its end is news, not a problem.
                        level=logging.INFO if self.backoff.max_attempts == 0 else logging.WARNING,
                        cause=conn.error,
                    )
                    break
                delay = self.backoff.delay(failures)
                self._set_state("backoff")
                log.info("%s: reconnecting in %.2f s (attempt %d)", self.name, delay, failures)
                self._emit(self.signals.reconnecting, attempt=failures, delay=delay)
                if self._stopping.wait(delay):
                    break
        except Exception:
            log.exception("%s: supervisor failed", self.name)
            self._give_up(WsbridgeError("supervisor failed; see the log"))

    def _replay_stored(self) -> None:
        """Queue the stored messages past the handled mark, before anything new
        arrives (the dispatch queue's bound paces a large backlog)."""
        self._replay_pending = False
        count = 0
        try:
            for key, message in self.store.unhandled():  # type: ignore[union-attr]
                if self._stopping.is_set():
                    break
                self._dispatcher.put(_Stored(key, message))
                count += 1
        except StoreError as exc:
            self._report(exc, "store")
        self._dispatcher.wake()
        if count:
            log.info("%s: delivering %d stored message(s) that were not handled before", self.name, count)

    def _watch(self, conn: Connection, resume_from: Positions) -> None:
        """Run one connection until it ends: connect timeout, flush, heartbeat, stop."""
        started = time.monotonic()
        flushed = False
        wake = self._wakeup
        tick = self._tick()
        while not conn.ended.is_set():
            wake.clear()
            if self._stopping.is_set():
                conn.close(1000, "", self.close_timeout)
                break
            now = time.monotonic()
            if not conn.opened.is_set():
                remaining = started + self.connect_timeout - now
                if remaining <= 0:
                    conn.error = TimeoutError(f"connection not open within {self.connect_timeout} s")
                    conn.abort()
                    break
                wake.wait(min(remaining, tick))
                continue
            if not flushed:
                flushed = True
                self._connects += 1
                # Positions as they were before this connection: what it
                # delivered itself (the server may start sending at once)
                # needs no resume.
                if self._flush(conn, resume_from):
                    self._set_state("connected")
                continue
            if self._resume_wanted:
                with self._send_cond:  # in line with the sends, never between two frames
                    self._send_resume(conn, self._positions)
            if self._tracker.held and len(self._dispatcher) < self._dispatcher.maxsize:
                self._dispatcher.put_now(_EXPIRE)
            if conn.ping_overdue(time.time()):
                conn.error = TimeoutError(f"no pong within {self.ping_timeout} s: peer presumed dead")
                conn.abort()
                break
            if self.idle_timeout and now - conn.last_frame_at > self.idle_timeout:
                conn.error = TimeoutError(f"no frame for {self.idle_timeout} s: peer presumed dead")
                conn.abort()
                break
            wake.wait(tick)
        # Bounded: the socket is shut down, the reader's recv returns at once.
        conn.ended.wait(self.close_timeout + 5.0)

    def _tick(self) -> float:
        bounds = [t / 4 for t in (self.ping_timeout, self.idle_timeout) if t]
        return min([0.25, *bounds])

    def _ended(self, conn: Connection) -> None:
        with self._send_cond:
            if self._live is conn:
                self._live = None
        if conn.opened_at is None:
            if conn.error is not None:
                log.info("%s: connection attempt failed: %s", self.name, self._describe(conn.error))
            self._last_error = conn.error
            return
        self._disconnects += 1
        if conn.error is not None and not conn.closing:
            self._last_error = conn.error
        if isinstance(conn.error, WireError):  # the server broke RFC 6455: say how, with its bytes
            self._protocol_errors += 1
            self._report(conn.error, "limit" if isinstance(conn.error, MessageTooLarge) else "protocol", frame=conn.error.frame)
        log.info(
            "%s: disconnected (code=%s reason=%r error=%s)", self.name, conn.close_code, conn.close_reason,
            self._describe(conn.error) if conn.error and not conn.closing else None,
        )
        self._emit(
            self.signals.disconnected,
            code=conn.close_code,
            reason=conn.close_reason,
            error=None if conn.closing else conn.error,
        )

    def _fatal_reason(self, conn: Connection) -> Optional[str]:
        err = conn.error
        if isinstance(err, HandshakeError):
            return str(err)
        if isinstance(err, websocket.WebSocketBadStatusException) and err.status_code in FATAL_HTTP_STATUSES:
            return f"handshake refused with HTTP {err.status_code}"
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {err.verify_message or err}"
        if conn.close_code in FATAL_CLOSE_CODES:
            return f"server closed the connection with code {conn.close_code} ({conn.close_reason or 'no reason'})"
        return None

    def _give_up(self, error: BaseException, level: int = logging.ERROR, cause: Optional[BaseException] = None) -> None:
        """Stop for good; ``cause``, the connection's own error, stays `last_error`."""
        log.log(level, "%s: giving up: %s", self.name, error)
        error.__cause__ = cause
        self._gave_up_error = error
        self._set_state("gave_up", cause or error)
        self._emit(self.signals.gave_up, error=error)
        self._pull.close()

    @staticmethod
    def _describe(error: Optional[BaseException]) -> str:
        if error is None:
            return "none"
        if isinstance(error, websocket.WebSocketBadStatusException):
            return f"handshake refused with HTTP {error.status_code}"
        text = str(error).split("\n", 1)[0]
        return f"{type(error).__name__}: {preview(text, 200)}" if text else type(error).__name__

    # -- introspection ----------------------------------------------------------
    @property
    def last_error(self) -> Optional[BaseException]:
        """Why the last connection attempt failed or the last connection ended (None: no error)."""
        return self._last_error

    @property
    def positions(self) -> Positions:
        """The last contiguous sequence id received per stream (what a resume asks to continue after)."""
        return dict(self._positions)

    @property
    def stats(self) -> Stats:
        """A snapshot of the counters."""
        return Stats(
            state=self._state,
            frames=self._frames,
            bytes=self._bytes,
            received=self._received,
            dispatched=self._dispatched,
            protocol_errors=self._protocol_errors,
            subscriber_errors=self._subscriber_errors,
            sent=self._sent,
            queued=self._queued,
            outbox=len(self._outbox),
            flushed=self._flushed,
            outbox_dropped=self._outbox_dropped,
            pull_buffered=len(self._pull),
            pull_dropped=self._pull.dropped,
            dispatch_pending=len(self._dispatcher),
            backpressure_waits=self._dispatcher.blocked,
            duplicates=self._duplicates,
            gaps=self._gaps,
            lost=self._lost,
            held=self._tracker.held,
            resumes=self._resumes,
            stored=self._stored,
            store_errors=self._store_errors + self._send_store_errors,
            replayed=self._replayed,
            connects=self._connects,
            reconnects=max(0, self._connects - 1),
            connect_attempts=self._attempts,
            disconnects=self._disconnects,
        )
