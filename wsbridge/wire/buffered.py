"""A socket with a read buffer, under wsbridge's frame reader (`wsbridge.wire.reader`).

websocket-client's own reader makes at least two ``recv`` calls per frame (the
2-byte header, then the payload, 16 KiB at a time) after one ``select``.
`BufferedSocket` takes what the kernel has in one ``recv`` of up to 256 KiB
and serves frames from memory; large payloads are read straight into their
final buffer (``recv_into``). During the upgrade it shows `wsbridge.wire.handshake`
the request and the bounded response head before websocket-client reads it.
Only the connection's reader thread reads from it.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
from typing import Any, Callable, Optional, Union

from ..codecs import DEFAULT_MAX_LENGTH
from .handshake import Handshake
from .nested_tls import TLS_SOCKETS, NestedTLS

CHUNK = 256 * 1024
"""Most bytes taken from the kernel in one call."""

PIECE = 16 * 1024
"""Most bytes `BufferedSocket.send_some` hands a TLS socket at once (TLS writes a
record whole, waiting for room within the socket's own timeout)."""

POLL_MAX = 2**31 - 1
"""The longest wait ``poll`` takes, in milliseconds (a C int: about 24.8 days)."""


class BufferedSocket:
    """A socket (plain or TLS) with a read buffer; everything but reading is the socket's own."""

    __slots__ = ("sock", "max_frame", "handshake", "_buf", "_pos", "_tls", "_timeout", "_direct")

    def __init__(
        self,
        sock: Union[socket.socket, ssl.SSLSocket, NestedTLS],
        max_frame: int = DEFAULT_MAX_LENGTH,
        handshake: Optional[Handshake] = None,
    ) -> None:
        self.sock = sock
        self.handshake = handshake
        """The upgrade under way: what is sent goes to its request, and the response
        head is read whole, bounded and checked before websocket-client reads it."""
        self.max_frame = max_frame
        """The largest data frame the read loop's fast path takes; a longer one
        goes to `ReadLoop.read_frame`, which refuses it from its header."""
        self._buf = b""
        self._pos = 0
        self._tls = isinstance(sock, TLS_SOCKETS)
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
        if self.handshake is not None:
            self._read_head(self.handshake)
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

    def _read_head(self, handshake: Handshake) -> None:
        """Read the upgrade response's head whole (within `Handshake`'s limits),
        check it, and leave it (its folded lines unfolded) for websocket-client.
        websocket-client never reads a byte of a head that was not checked: one
        cut short by the end of the stream is not handed on (it could read a
        line of spaces as its end, and a redirect in it)."""
        data = bytearray(self._buf[self._pos :])
        end = handshake.head_end(data)
        while end < 0:
            chunk = self.sock.recv(16384)
            if not chunk:
                raise _closed()
            data += chunk
            end = handshake.head_end(data)
        self.handshake = None
        head = handshake.check_response(bytes(data[:end]))
        self._buf, self._pos = head + bytes(data[end:]), 0

    def read_exact(self, n: int, check: Optional[Callable[[Any], Any]] = None) -> bytes:
        """Exactly ``n`` bytes; raises like websocket-client does when the peer
        closes mid-frame. ``check`` sees each piece as it arrives, before the
        next is waited for (so invalid text fails before the rest comes)."""
        available = len(self._buf) - self._pos
        if available >= n:
            data = self.recv(n) if n else b""
            if check is not None:
                check(data)
            return data
        if n <= 65536:
            parts = []
            need = n
            while need:
                part = self._recv_some(need)
                if check is not None:
                    check(part)
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
            if check is not None:
                check(view[:got])
        while got < n:
            count = self._recv_into(view[got:])
            if check is not None:
                check(view[got : got + count])
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
        if self.handshake is not None:
            self.handshake.request += bytes(data)
        return self.sock.send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        if self.handshake is not None:
            self.handshake.request += bytes(data)
        self.sock.sendall(data, flags)

    def writable_now(self) -> bool:
        """Would a short write go through without waiting?"""
        return self.wait_writable(0.0)

    def wait_writable(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s (at most `POLL_MAX` ms) for the socket to take bytes
        (False: it did not, or it is closed)."""
        try:
            fd = self.sock.fileno()
            if fd < 0:
                return False
            ms = max(0, int(min(timeout, POLL_MAX / 1000) * 1000 + 0.999))
            if hasattr(select, "poll"):  # no FD_SETSIZE limit
                poller = select.poll()
                poller.register(fd, select.POLLOUT)
                return bool(poller.poll(ms))
            return bool(select.select((), (self.sock,), (), ms / 1000)[1])
        except (OSError, ValueError):
            return False

    def send_some(self, data: memoryview, timeout: float) -> int:
        """Write what the socket takes of ``data`` once it has room, waiting at most
        ``timeout`` s for room (0: none came). A plain socket takes what fits at once;
        a TLS socket one piece of at most `PIECE` bytes. Raises when the connection
        is gone."""
        if not self.wait_writable(timeout):
            if self.sock.fileno() < 0:
                raise _closed()
            return 0
        return self.sock.send(data[:PIECE] if self._tls else data)

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
