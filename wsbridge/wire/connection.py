"""One connection attempt: a websocket-client `WebSocketApp` and its reader thread.

The supervisor makes a new `Connection` for every attempt, so no state leaks
from one socket to the next. websocket-client's own reconnect loop stays off
(it sleeps a fixed time and never reports the drop); so does its UTF-8 check
(pure Python without ``wsaccel``; the reader checks text itself).

Each attempt first obtains what it sends (`ConnectOptions.attempt`: the callable
options called, on the reader thread). The socket is then dialled here
(`wsbridge.wire.dial`: bounded by ``connect_timeout``, abortable in every phase,
through the proxy if any) and handed
to websocket-client wrapped in a `BufferedSocket`, which checks the upgrade
(`wsbridge.wire.handshake`). Every frame is read by our `ReadLoop`
(`wsbridge.wire.reader`), never by websocket-client's parser.

Frames are written by the sending threads, whole, under websocket-client's
send lock; a frame that a send with a timeout left half written is finished
by a writer thread of the connection (`send_within`), joined with the reader.
Under that lock, every data frame is refused once a close frame went out
(`CloseFrameSent`: nothing written), whoever wrote it.

Pings are sent by the supervisor thread (`heartbeat`), under the same lock,
not by websocket-client's ping thread: a connection costs one thread, its reader.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple, Union, cast

import websocket

from ..errors import CloseFrameSent
from ..redact import without_traceback
from .buffered import BufferedSocket, frame_complete
from .deflate import Deflater, Inflater, PerMessageDeflate
from .dial import open_socket
from .frames import close_payload
from .handshake import Handshake
from .nested_tls import TLS_SOCKETS
from .options import ConnectOptions
from .reader import ReadLoop
from .wsclient import (
    ABNF,
    App,
    close_sent,
    frame_bytes,
    mark_reader_thread,
    ping_sent,
    ping_times,
    prepare_socket,
    socket_send,
    stop_running,
)

try:  # POSIX: ask the kernel how many bytes wait, without reading them
    import fcntl
    import termios

    def _bytes_waiting(raw: BufferedSocket) -> int:
        return struct.unpack("i", fcntl.ioctl(raw.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]

except ImportError:  # pragma: no cover - Windows: always wake at once

    def _bytes_waiting(raw: BufferedSocket) -> int:
        return 0

log = logging.getLogger("wsbridge")

OPCODE_BINARY = ABNF.OPCODE_BINARY
OPCODE_TEXT = ABNF.OPCODE_TEXT
OPCODE_PING = ABNF.OPCODE_PING


class Hooks(NamedTuple):
    """Where a connection reports, each called on its reader thread."""

    on_frame: Callable[[bytes, bool], None]
    """Every whole message: ``(data, binary)``."""
    on_open: Callable[["Connection"], None]
    on_end: Callable[["Connection"], None]
    """Once, as the reader thread is about to exit."""
    on_drained: Callable[[], None] = lambda: None
    """The kernel holds no further whole frame: time to wake the dispatcher."""
    before_fail: Callable[[], None] = lambda: None
    """A violation is about to fail the connection (see `ReadLoop.fail`)."""


def _check_no_close_sent(ws: websocket.WebSocket) -> None:
    """Under the send lock: `CloseFrameSent` once a close frame went out (or is about to:
    whoever sends one marks it first, then takes this lock), so that no data frame ever
    follows it on the wire (RFC 6455 §5.5.1)."""
    if close_sent(ws):
        raise CloseFrameSent("a close frame went out on this connection: no data frame may follow it")


class Connection:
    """A single WebSocket connection, run by one named reader thread."""

    def __init__(self, options: ConnectOptions, hooks: Hooks, name: str = "wsbridge-reader") -> None:
        self.url: Optional[str] = None
        """The URL this attempt dials (set by the reader thread before it dials)."""
        self.options = options
        self.hooks = hooks
        self._sock_lock = threading.Lock()
        self._sock: Optional[socket.socket] = None  # the socket being dialled, from its birth
        self._aborted = threading.Event()
        self._raw: Optional[BufferedSocket] = None  # the socket upgraded and read: the reader thread's
        self.app = app = App(  # url, header, cookie, subprotocols: set for the attempt in _run
            "",
            on_open=self._handle_open,
            on_error=self._handle_error,
            on_close=self._handle_close,
        )
        app.make_reader = self._make_reader
        self.reader: Optional[ReadLoop] = None  # made by websocket-client's run_forever, on the reader thread
        self.handshake = Handshake()
        self.subprotocol: Optional[str] = None
        """The subprotocol the server chose; set before ``opened``."""
        self.deflate: Optional[PerMessageDeflate] = None
        """The permessage-deflate the server agreed to (None: none); set before ``opened``."""
        self._deflater: Optional[Deflater] = None  # set by the reader thread before ``opened``; senders' after
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.opened_at: Optional[float] = None
        self.last_frame_at = time.monotonic()
        self.close_code: Optional[int] = None
        self.close_reason: Optional[str] = None
        self.error: Optional[BaseException] = None
        self.closing = False
        self.calling: Optional[str] = None
        """Which callable option the reader thread is in (None: none). Written by the
        reader thread; read by the supervisor, which does not wait for a reader held
        by user code."""
        self.fresh_credentials = False
        """This attempt obtained credentials for itself (see `Attempt.fresh`)."""
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.writers: List[threading.Thread] = []
        """Threads finishing a frame a timed send left half written (see `send_within`);
        set by the thread that holds the send lock."""
        self._ping_due: Optional[float] = None  # `time.monotonic` of the next ping; the supervisor thread's
        self._ping_waiting = False  # the due ping found the send lock or the socket busy; the supervisor thread's

    # -- reader thread -------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        mark_reader_thread()
        try:
            deadline = time.monotonic() + self.options.connect_timeout
            attempt = self.options.attempt(deadline, self._note)
            self.url, self.fresh_credentials = attempt.url, attempt.fresh
            sock = open_socket(attempt.url, self.options.sslopt, deadline, self._adopt, self._aborted, attempt.proxy)
            self._raw = BufferedSocket(sock, self.options.max_message_size, self.handshake)
            prepare_socket(self.app, self._raw)
            app = self.app
            app.url, app.header, app.cookie, app.subprotocols = attempt.url, attempt.header, attempt.cookie, attempt.subprotocols
            app.run_forever(
                sslopt=self.options.sslopt,
                ping_interval=0,  # no ping thread: the supervisor sends them (`heartbeat`)
                ping_timeout=None,  # the supervisor judges pongs (it knows when backpressure, not the peer, is why)
                skip_utf8_validation=True,
                reconnect=0,
                host=attempt.host,
                origin=attempt.origin,
                suppress_origin=attempt.suppress_origin,
            )
        except BaseException as exc:  # run_forever re-raises KeyboardInterrupt/SystemExit
            if self.error is None:
                self.error = exc
        finally:
            error = self.error
            if (
                not self.opened.is_set()
                and isinstance(error, (TimeoutError, websocket.WebSocketTimeoutException))
                and not str(error).startswith("connection not open")
            ):
                # One message for every phase that ran out of time (TCP, TLS, upgrade).
                self.error = TimeoutError(f"connection not open within {self.options.connect_timeout} s ({self.error})")
            if self.error is not None:  # it outlives the connection: not the frames, whose locals hold the headers
                # Its own line only: a traceback would print the chained cause, whose text
                # (a callable's exception) may hold a secret.
                log.debug("%s: the connection's error: %s: %s", self.thread.name, type(self.error).__name__, self.error)
                without_traceback(self.error)
            self._release()
            self.ended.set()
            try:
                self.hooks.on_end(self)
            except Exception:
                log.exception("wsbridge: connection end handler failed")

    def _make_reader(self, ping_timeout: Any, disconnect: Callable[[Any], Any]) -> ReadLoop:
        assert self._raw is not None, "run_forever upgrades the socket prepared in _run"
        self.reader = ReadLoop(
            self.app, self.options.ping_timeout or 10, self._raw,
            self._fast_frame, self._after_run, self._handle_control, self.options.max_message_size, disconnect,
            self.hooks.before_fail,
        )
        return self.reader

    def _note(self, calling: Optional[str]) -> None:
        self.calling = calling

    def _adopt(self, sock: socket.socket) -> None:
        """Make a socket being dialled reachable by `abort` (or refuse it)."""
        with self._sock_lock:
            if self._aborted.is_set():
                raise ConnectionAbortedError("connection attempt aborted")
            self._sock = sock

    def _handle_open(self, app: websocket.WebSocketApp) -> None:
        raw = self._raw
        if raw is not None and self.options.io_timeout:
            # Bound every blocking send and every partial-frame read: a peer
            # that stops reading or stalls mid-frame is dead, not slow.
            raw.settimeout(self.options.io_timeout)
        self.subprotocol = self.handshake.subprotocol
        self.deflate = deflate = self.handshake.deflate
        if deflate is not None:
            assert self.reader is not None, "websocket-client makes the read loop before it connects"
            self.reader.use_deflate(Inflater(deflate))
            if Deflater.usable(deflate):
                self._deflater = Deflater(deflate)
        self.opened_at = self.last_frame_at = time.monotonic()
        self.opened.set()
        self.hooks.on_open(self)

    def _fast_frame(self, data: bytes, opcode: int) -> None:
        """A whole data frame from the read loop's fast path (see `ReadLoop`)."""
        try:
            self.hooks.on_frame(data, opcode == OPCODE_BINARY)
        except Exception as exc:  # as websocket-client treats a failing on_data
            self._handle_error(self.app, exc)
            raise

    def _after_run(self, drained: bool = False) -> None:
        """After a run of fast-path frames: one clock read and one wake decision
        (``drained``: the kernel had nothing more, so no need to ask it)."""
        self.last_frame_at = time.monotonic()
        if drained or not self._next_frame_here():
            self.hooks.on_drained()

    def _next_frame_here(self) -> bool:
        """Is the whole next frame already received, so that reading it
        will not block? Then the dispatcher need not be woken yet.

        websocket-client reads exactly one frame at a time, so what is
        buffered (ours, then the kernel's) starts with the next frame's
        header. A partly received frame (or anything unclear) wakes the
        dispatcher, so a message never waits for a later, slow frame.
        """
        raw = self._raw
        if raw is None:
            return False
        if raw.frame_buffered():
            return True
        buffered = raw.buffered()
        plain = not isinstance(raw.sock, TLS_SOCKETS)
        try:
            if buffered:
                head = raw.peek(10)
                if frame_complete(head, buffered):
                    return True
                return plain and frame_complete(head, buffered + _bytes_waiting(raw))
            if not plain:
                return False
            waiting = _bytes_waiting(raw)
            if waiting < 2:
                return False
            return frame_complete(raw.recv(min(waiting, 10), socket.MSG_PEEK), waiting)
        except (OSError, ValueError):
            return False

    def _handle_control(self) -> None:
        self.last_frame_at = time.monotonic()
        if not self._next_frame_here():
            self.hooks.on_drained()

    def _handle_error(self, app: websocket.WebSocketApp, exc: BaseException) -> None:
        if self.error is None and not self.closing:
            self.error = exc
        # The connection is over. Cut the socket now so websocket-client's
        # teardown does not wait 3 s for a close frame from a dead peer.
        self.abort()

    def _handle_close(self, app: websocket.WebSocketApp, code: Optional[int], reason: Optional[str]) -> None:
        self.close_code = code
        self.close_reason = reason
        orderly = code is not None or (self.reader is not None and self.reader.peer_closed)
        if orderly and isinstance(self.error, websocket.WebSocketConnectionClosedException):
            # websocket-client reports every close frame on on_error too; a close
            # frame is an orderly end, described by its code and reason (if any).
            self.error = None

    # -- any thread ----------------------------------------------------
    @property
    def started(self) -> bool:
        """Has the reader thread been started (`start`)?"""
        return self.thread.ident is not None

    @property
    def is_open(self) -> bool:
        """Open, neither ended nor cut, and no close frame sent: data frames may go out."""
        ws = self.app.sock
        return (self.opened.is_set() and not self.ended.is_set() and not self._aborted.is_set()
                and ws is not None and not close_sent(ws))

    def _frame(self, ws: websocket.WebSocket, data: Union[str, bytes], binary: bool) -> bytes:
        """A data frame of ``data``, compressed when permessage-deflate is in use."""
        deflater = self._deflater
        if deflater is None:
            return frame_bytes(ws, data, OPCODE_BINARY if binary else OPCODE_TEXT)
        payload = deflater.deflate(data.encode("utf-8") if isinstance(data, str) else data)
        return frame_bytes(ws, payload, OPCODE_BINARY if binary else OPCODE_TEXT, rsv1=1)

    def send(self, data: Union[str, bytes], binary: bool) -> None:
        """Write one frame; raises if the socket did not take all of it, `CloseFrameSent`
        (nothing written) once a close frame went out."""
        ws = self.app.sock
        if ws is None or ws.sock is None:
            raise websocket.WebSocketConnectionClosedException("connection is closed")
        view = memoryview(self._frame(ws, data, binary))
        with ws.lock:  # websocket-client's own send lock: no frame of another thread in between
            _check_no_close_sent(ws)
            while len(view):  # as websocket-client writes a frame: each write waits up to the socket's timeout
                taken = socket_send(ws.sock, cast(bytes, view))  # it hands any buffer to sock.send
                if not taken:
                    raise websocket.WebSocketTimeoutException("the socket took nothing within its timeout")
                view = view[taken:]

    def send_within(self, data: Union[str, bytes], binary: bool, deadline: float, on_lost: Callable[[], None]) -> bool:
        """Write one frame if the send lock and the socket free up before ``deadline``
        (`time.monotonic`): False when they did not, and nothing was written. A frame
        the socket took in part by then is finished by a thread of this connection,
        which holds the send lock until the rest is out (no other frame may come in
        between) and calls ``on_lost`` if the connection fails first. Raises if the
        socket is gone, `CloseFrameSent` once a close frame went out."""
        ws = self.app.sock
        if ws is None:
            raise websocket.WebSocketConnectionClosedException("connection is closed")
        return self._write_within(ws, self._frame(ws, data, binary), deadline, on_lost)

    def _write_within(self, ws: websocket.WebSocket, frame: bytes, deadline: float, on_lost: Callable[[], None]) -> bool:
        """`send_within` for a frame already made (a data frame, a ping)."""
        sock = ws.sock
        if not isinstance(sock, BufferedSocket):
            raise websocket.WebSocketConnectionClosedException("connection is closed")
        view = memoryview(frame)
        lock = ws.lock
        if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return False  # another write holds the socket
        handed = False
        try:
            _check_no_close_sent(ws)
            sent = 0
            while sent < len(view):
                taken = sock.send_some(view[sent:], deadline - time.monotonic())
                if not taken:
                    break
                sent += taken
            if sent == len(view):
                return True
            if not sent:
                return False  # the peer reads nothing: the frame stays with the caller
            self._finish(sock, view[sent:], lock, on_lost)
            handed = True
            return True
        finally:
            if not handed:
                lock.release()

    def _finish(self, sock: BufferedSocket, rest: memoryview, lock: Any, on_lost: Callable[[], None]) -> None:
        """Write ``rest`` on a thread of its own, then release ``lock`` (held since the
        frame began). The rest waits for room as any write does: at most ``io_timeout``
        without progress, then the connection is presumed dead and cut; a cut (`abort`,
        `stop`) ends it within a `tick`."""

        def finish() -> None:
            lost = False
            try:
                stalled_at = time.monotonic()
                view = rest
                while len(view):
                    if self._aborted.is_set():
                        raise ConnectionAbortedError("connection cut")
                    taken = sock.send_some(view, self.options.tick)
                    now = time.monotonic()
                    if taken:
                        view, stalled_at = view[taken:], now
                    elif now - stalled_at > self.options.io_timeout:
                        raise TimeoutError(f"the peer took nothing for {self.options.io_timeout} s")
            except Exception as exc:
                log.info("%s: the rest of a frame was not written (%s); the connection is cut", self.thread.name, exc)
                lost = True
                self.abort()  # half a frame went out: nothing more may follow on this connection
            finally:
                lock.release()
            if lost:
                on_lost()

        writer = threading.Thread(target=finish, name=f"{self.thread.name}-writer", daemon=True)
        self.writers = [*(t for t in self.writers if t.is_alive()), writer]  # replaced, never changed in place
        writer.start()

    def send_many(self, frames: Sequence[Tuple[Union[str, bytes], bool]]) -> None:
        """Write several frames in one system call (the send buffer's flush);
        raises if the socket did not take all of them."""
        ws = self.app.sock
        if ws is None or ws.sock is None:
            raise websocket.WebSocketConnectionClosedException("connection is closed")
        out = [self._frame(ws, data, binary) for data, binary in frames]
        with ws.lock:  # websocket-client's own send lock: no frame of another thread in between
            _check_no_close_sent(ws)
            ws.sock.sendall(b"".join(out))

    def heartbeat(self, now: float) -> None:
        """Send a ping if one is due (``now``: `time.monotonic`): ``ping_interval`` after
        the connection opened, then after the last ping went out. Supervisor thread, which
        calls it every `tick`: the ping goes out under the send lock, between whole frames,
        if the lock and the socket free up within a `tick` (waiting for the lock, not
        trying once: senders writing back to back would always hold it). Otherwise it is
        tried again on the next call, counted as sent from when it was due
        (`ping_overdue`), as websocket-client's own ping thread counted one waiting for the
        lock: a write stuck on a dead peer does not keep it from being cut."""
        interval, opened_at = self.options.ping_interval, self.opened_at
        if not interval or opened_at is None:
            return
        if self._ping_due is None:
            self._ping_due = opened_at + interval
        ws = self.app.sock
        if now < self._ping_due or ws is None:
            return
        if not self._ping_waiting:
            ping_sent(self.app)
            self._ping_waiting = True
        try:  # a ping half written is finished by a writer thread, as a data frame is
            written = self._write_within(ws, frame_bytes(ws, b"", OPCODE_PING), now + self.options.tick, lambda: None)
        except (CloseFrameSent, OSError, websocket.WebSocketException):
            return  # the connection is ending: its reader says why
        if written:
            self._ping_waiting = False
            self._ping_due = now + interval

    def ping_overdue(self, now_wall: float) -> bool:
        """Has a ping gone unanswered for longer than ``ping_timeout``?"""
        if not self.options.ping_timeout:
            return False
        last_ping, last_pong = ping_times(self.app)
        return bool(last_ping) and last_pong < last_ping and now_wall - last_ping > self.options.ping_timeout

    def close(self, code: int = 1000, reason: str = "", wait: float = 1.0) -> None:
        """Close politely: send a close frame, wait up to ``wait`` s for the
        peer's, then cut the socket. Joins nothing; see `join`."""
        self.closing = True
        reader = self.reader
        # Another thread's write may hold the send lock against a peer that does not
        # read: then there is no polite close to be had, and the socket is cut.
        if self.opened.is_set() and reader is not None and reader.send_close(close_payload(code, reason), min(wait, 0.2)):
            if self.ended.wait(wait):
                return
        self.abort()

    def abort(self) -> None:
        """Cut the TCP connection at once; the reader thread then ends."""
        stop_running(self.app)
        if self.reader is not None:
            self.reader.running = False
        ws = self.app.sock
        with self._sock_lock:  # never while `_release` closes them
            self._aborted.set()  # before the shutdown: see open_socket
            for sock in {self._sock, ws.sock if ws is not None else None}:
                if sock is not None:
                    try:  # also wakes a connect() still waiting for the peer's SYN-ACK
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

    def _release(self) -> None:
        """Close the sockets this attempt opened (websocket-client does not
        always, and a socket left to the garbage collector holds its file
        descriptor until a full collection)."""
        prepared = self.app.prepared_socket
        with self._sock_lock:
            self._aborted.set()
            for sock in (prepared, self._sock):
                if sock is not None:
                    try:
                        sock.close()
                    except OSError:
                        pass
            self._sock = None

    def threads(self) -> List[threading.Thread]:
        """The reader and the writers this connection started."""
        return [t for t in (self.thread, *self.writers) if t.ident is not None]

    def join(self, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        me = threading.current_thread()
        for thread in self.threads():
            if thread is not me:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads())
