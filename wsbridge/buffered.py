"""A buffered reader under websocket-client's frame parser, and the read loop above it.

websocket-client reads a frame with at least two ``recv`` calls (the 2-byte
header, then the payload, 16 KiB at a time) after one ``select`` per frame:
for small messages the system calls, not the network, set the pace.
`BufferedSocket` takes what the kernel has in one ``recv`` of up to 256 KiB and
hands websocket-client its header and payload from memory; large payloads
are read straight into their final buffer (``recv_into``), with no 16 KiB
pieces to join.

The catch is the one the parser's read loop has: ``select`` on the socket
must not wait while whole frames sit in our buffer. `ReadLoop` is the loop
websocket-client runs frames in (its "dispatcher" hook): it reads on while
the buffer (or TLS) holds bytes and only then waits on the socket.

Even served from memory, websocket-client's parser costs tens of Python calls
per frame, more than the rest of wsbridge's work on a small message. So the
read loop takes the common case itself: a complete, unfragmented, unmasked
text or binary frame with no extension bits, lying whole in the buffer, at a
frame boundary, is cut out of the buffer in a few operations and handed to
the same ``on_data`` callback. Everything else (control frames: ping, pong,
close; fragments; anything unusual; a frame still arriving) goes through
websocket-client's parser, which keeps answering pings, closing and checking
frames as it always does.
"""

from __future__ import annotations

import os
import selectors
import socket
import ssl
from typing import Any, Callable, Optional, Union

from websocket._abnf import frame_buffer  # the parser whose reads we serve

from .codec import DEFAULT_MAX_LENGTH
from .errors import MessageTooLarge

CHUNK = 256 * 1024
"""Most bytes taken from the kernel in one call."""

TOPUP_MAX = 64 * 1024
"""The fast path tops a partly received frame up from the kernel itself when
the frame is at most this big (larger ones are read into their final buffer)."""

MAX_TOPUPS = 64
"""Top-ups in one run of the fast path before it returns to the read loop
(which checks pings and the stop flag between runs)."""


class BufferedSocket:
    """A socket (plain or TLS) with a read buffer; everything but reading is the socket's own."""

    __slots__ = ("sock", "max_frame", "_buf", "_pos", "_tls", "_timeout", "_direct")

    def __init__(self, sock: Union[socket.socket, ssl.SSLSocket], max_frame: int = DEFAULT_MAX_LENGTH) -> None:
        self.sock = sock
        self.max_frame = max_frame
        """The largest read the frame parser may ask for: a longer frame is
        refused from its header, before a byte of it is buffered."""
        self._buf = b""
        self._pos = 0
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._timeout = sock.gettimeout()
        self._direct = self._may_read_directly()

    def _may_read_directly(self) -> bool:
        """May `read_now` read the descriptor itself? Only for a plain socket
        with a timeout: Python keeps those non-blocking, so a read never waits;
        a TLS socket's bytes must go through TLS."""
        return not self._tls and self._timeout is not None and os.name == "posix"

    # -- reading -----------------------------------------------------------
    def buffered(self) -> int:
        """Bytes read from the kernel (or TLS) and not yet handed out."""
        return len(self._buf) - self._pos

    def pending(self) -> bool:
        """Can a read proceed without waiting for the network?"""
        return self._pos < len(self._buf) or (self._tls and self.sock.pending() > 0)  # type: ignore[union-attr]

    def frame_buffered(self) -> bool:
        """Is the whole next frame in the buffer? (Called after every frame: kept lean.)"""
        buf, pos = self._buf, self._pos
        available = len(buf) - pos
        if available < 2:
            return False
        second = buf[pos + 1]
        size = second & 0x7F
        if size < 126:
            return available >= 2 + size + (4 if second & 0x80 else 0)
        if size == 126 and available >= 4:
            return available >= 4 + ((buf[pos + 2] << 8) | buf[pos + 3]) + (4 if second & 0x80 else 0)
        return frame_complete(buf[pos : pos + 10], available)

    def read_now(self) -> bytes:
        """What the kernel holds for this socket right now (up to `CHUNK`), or
        b"" when it holds nothing, without waiting. One ``read`` system call:
        ``socket.recv`` on a socket with a timeout polls first (a second call).
        At the end of the stream, or on an error, also b"": the frame parser's
        own blocking read then meets the end or the error and reports it.

        The descriptor is asked for at each call (-1 once closed). Only the
        reader thread reads and closes this socket (other threads shut it
        down, which frees no descriptor), so the number cannot meanwhile
        belong to another file."""
        if not self._direct:
            return b""
        fd = self.sock.fileno()
        if fd < 0:
            return b""
        try:
            return os.read(fd, CHUNK)
        except OSError:  # BlockingIOError (nothing yet) included
            return b""

    def peek(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, left in place."""
        return self._buf[self._pos : self._pos + n]

    def recv(self, n: int, flags: int = 0) -> bytes:
        """Up to ``n`` bytes: from the buffer, else one read of up to `CHUNK` from the socket."""
        if flags:
            return self.sock.recv(n, flags)
        if n <= 0:
            return b""
        pos, buf = self._pos, self._buf
        if pos >= len(buf):
            buf = (self.read_now() if n <= CHUNK else b"") or self.sock.recv(max(n, CHUNK))
            if len(buf) <= n:
                self._buf, self._pos = b"", 0
                return buf
            self._buf, pos = buf, 0
        end = pos + n
        self._pos = end
        if end >= len(buf):
            self._buf, self._pos = b"", 0
            return buf[pos:] if pos else buf
        return buf[pos:end]

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes (what the frame parser asks for); raises like
        websocket-client does when the peer closes mid-frame."""
        if n > self.max_frame:
            raise MessageTooLarge(f"a frame of {n} bytes exceeds max_message_size ({self.max_frame} bytes)")
        available = len(self._buf) - self._pos
        if available >= n:
            return self.recv(n) if n else b""
        if n <= 65536:
            parts = []
            need = n
            while need:
                part = self._recv_some(need)
                parts.append(part)
                need -= len(part)
            return b"".join(parts)
        # A large payload: one buffer of its final size, filled by the kernel directly.
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        if available:
            view[:available] = self._buf[self._pos :]
            self._buf, self._pos, got = b"", 0, available
        while got < n:
            count = self._recv_into(view[got:])
            got += count
        return bytes(out)

    def _recv_some(self, n: int) -> bytes:
        try:
            data = self.recv(n)
        except socket.timeout:
            raise _timed_out() from None
        if not data:
            raise _closed()
        return data

    def _recv_into(self, view: memoryview) -> int:
        try:
            count = self.sock.recv_into(view)
        except socket.timeout:
            raise _timed_out() from None
        if not count:
            raise _closed()
        return count

    # -- everything else is the socket's ----------------------------------------
    def settimeout(self, value: Optional[float]) -> None:
        self._timeout = value
        self.sock.settimeout(value)
        self._direct = self._may_read_directly()

    def gettimeout(self) -> Optional[float]:
        return self._timeout

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, data: Any, flags: int = 0) -> int:
        return self.sock.send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        self.sock.sendall(data, flags)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def frame_complete(head: bytes, available: int) -> bool:
    """Does ``available`` bytes, starting with ``head`` (up to 10 bytes of a
    frame header), hold the whole frame?"""
    if len(head) < 2:
        return False
    size = head[1] & 0x7F
    mask = 4 if head[1] & 0x80 else 0
    if size == 126:
        if len(head) < 4:
            return False
        need = 4 + mask + int.from_bytes(head[2:4], "big")
    elif size == 127:
        if len(head) < 10:
            return False
        need = 10 + mask + int.from_bytes(head[2:10], "big")
    else:
        need = 2 + mask + size
    return available >= need


def _closed() -> Exception:
    from websocket import WebSocketConnectionClosedException

    return WebSocketConnectionClosedException("Connection to remote host was lost.")


def _timed_out() -> Exception:
    from websocket import WebSocketTimeoutException

    return WebSocketTimeoutException("Connection timed out")


def serve_parser(parser: frame_buffer, sock: BufferedSocket) -> None:
    """Have websocket-client's frame parser take its exact-size reads from ``sock``
    (its own way reads 16 KiB pieces and joins them)."""
    if parser.recv_buffer:  # bytes it already holds come first (none after a handshake)
        return
    parser.recv_strict = sock.read_exact  # type: ignore[method-assign]


class ReadLoop:
    """websocket-client's read loop ("dispatcher"), aware of the buffer below it.

    Reads frames while any are buffered, then waits on the socket for at most
    ``ping_timeout`` (websocket-client's own choice), and runs its ping check
    after every wait, as its stock loop does.
    """

    def __init__(
        self,
        app: Any,
        ping_timeout: Optional[float],
        sock: BufferedSocket,
        deliver: Callable[[bytes, int], Any],
        after_run: Callable[[bool], Any],
    ) -> None:
        self.app = app
        self.ping_timeout = ping_timeout
        self.buffered = sock
        self.deliver = deliver
        """``deliver(payload, opcode)``: where whole data frames go (websocket-client's on_data, in effect)."""
        self.after_run = after_run
        """Called once after each run of frames the fast path delivered (not after each frame),
        with True when the kernel was found empty (no more bytes to read now)."""

    def read(self, sock: Any, read_callback: Callable[[], bool], check_callback: Callable[[], Any]) -> None:
        app = self.app
        buffered = self.buffered
        pending = buffered.pending
        fast = self.take_data_frames
        with selectors.DefaultSelector() as selector:
            selector.register(buffered.fileno(), selectors.EVENT_READ)
            while app.keep_running:
                if pending() or selector.select(self.ping_timeout):
                    if not fast() and not read_callback():
                        return
                    while pending() and app.keep_running:
                        if not fast() and not read_callback():
                            return
                check_callback()

    def take_data_frames(self) -> int:
        """Deliver the whole, plain data frames at the front of the buffer;
        return how many (0: the next frame is websocket-client's to read)."""
        ws = self.app.sock
        if ws is None or ws.frame_buffer.header is not None or ws.cont_frame.recving_frames is not None:
            return 0  # websocket-client is inside a frame or a fragmented message
        sock = self.buffered
        buf, pos = sock._buf, sock._pos
        end = len(buf)
        deliver = self.deliver
        app = self.app
        read_now = sock.read_now
        count = topups = 0
        drained = False
        while True:
            if end - pos >= 2:
                first, second = buf[pos], buf[pos + 1]
                if first & 0xF0 != 0x80 or second & 0x80:
                    break  # not FIN, extension bits, or masked: websocket-client decides
                opcode = first & 0x0F
                if opcode != 1 and opcode != 2:
                    break  # control frame or continuation: websocket-client's
                size, start = second, pos + 2
                if size == 126:
                    size, start = ((buf[pos + 2] << 8) | buf[pos + 3], pos + 4) if end - pos >= 4 else (TOPUP_MAX, end + 1)
                elif size == 127:
                    size, start = (int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10) if end - pos >= 10 else (TOPUP_MAX, end + 1)
                stop = start + size
                if size > sock.max_frame:
                    break  # too large: websocket-client's read refuses it
                if stop <= end:
                    pos = stop
                    sock._pos = pos  # the buffer's state is right before anyone else looks
                    count += 1
                    deliver(buf[start:stop], opcode)
                    if not app.keep_running:
                        break
                    continue
                if size > TOPUP_MAX:
                    break  # a large frame still arriving: read into its final buffer by the parser
            # The buffer ends inside a frame (or at a frame's end): take what
            # the kernel has now, rather than a select and a parser read.
            if topups >= MAX_TOPUPS:
                break
            more = read_now()
            if not more:
                drained = sock._direct
                break
            topups += 1
            buf = buf[pos:] + more if pos < end else more
            pos, end = 0, len(buf)
            sock._buf, sock._pos = buf, 0
        if pos >= end:
            sock._buf, sock._pos = b"", 0
        if count:
            self.after_run(drained)
        return count

    # Unused with reconnect=0, but part of websocket-client's dispatcher contract.
    def timeout(self, seconds: Optional[float], callback: Callable[[], Any]) -> None:
        callback()

    def reconnect(self, seconds: int, reconnector: Callable[..., Any]) -> None:
        raise RuntimeError("wsbridge reconnects in its supervisor, never inside websocket-client")

    def send(self, sock: Any, data: Union[str, bytes]) -> int:
        from websocket._socket import send

        return send(sock, data)
