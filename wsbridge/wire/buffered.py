"""A socket with a read buffer, under wsbridge's frame reader (`wsbridge.wire.reader`).

websocket-client's own reader makes at least two ``recv`` calls per frame (the
2-byte header, then the payload, 16 KiB at a time) after one ``select``, and
joins the pieces. `BufferedSocket` has the kernel write what it has straight
into one read buffer per connection (up to 256 KiB in one call), and frames are
cut from there: a message's bytes are its one copy after the kernel's, and a
fragment is copied from the buffer into its message. A payload over 64 KiB that
is still arriving is read straight into a buffer of its own size. During the upgrade it shows `wsbridge.wire.handshake`
the request and the bounded response head before websocket-client reads it.
Only the connection's reader thread reads from it.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import ssl
from typing import Any, Callable, Optional, Union

from ..codecs import DEFAULT_MAX_LENGTH
from .handshake import Handshake
from .nested_tls import TLS_SOCKETS, NestedTLS

CAPACITY = 256 * 1024
"""The read buffer's size: most bytes taken from the kernel in one call. Its pages stay
resident once written, so a busy connection keeps this much (many feeds in one process
add up); 1 MiB measured no faster."""

LARGE = 64 * 1024 + 16
"""The largest payload read through the buffer (a 64 KiB one and its header fit); a
longer one is read by the kernel straight into a buffer of its own size."""

PIECE = 16 * 1024
"""Most bytes `BufferedSocket.send_some` hands a TLS socket at once (TLS writes a
record whole, waiting for room within the socket's own timeout)."""

POLL_MAX = 2**31 - 1
"""The longest wait ``poll`` takes, in milliseconds (a C int: about 24.8 days)."""


class BufferedSocket:
    """A socket (plain or TLS) with a read buffer; everything but reading is the socket's own."""

    __slots__ = ("sock", "max_frame", "handshake", "_view", "_pos", "_end", "_tls", "_timeout", "_direct")

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
        # The read buffer: an anonymous mapping, so memory is taken only as far as it is
        # written (an idle connection's is a page or two); the bytes held are
        # _view[_pos:_end]. Frames are cut from it with one copy each.
        self._view = memoryview(mmap.mmap(-1, CAPACITY))
        self._pos = self._end = 0
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
        return self._end - self._pos

    def pending(self) -> bool:
        """Can a read proceed without waiting for the network?"""
        return self._pos < self._end or (self._tls and self.sock.pending() > 0)  # type: ignore[union-attr]

    def frame_buffered(self) -> bool:
        """Is the whole next frame in the buffer? (Called after every frame: kept lean.)"""
        view, pos = self._view, self._pos
        available = self._end - pos
        if available < 2:
            return False
        second = view[pos + 1]
        size = second & 0x7F
        if size < 126:
            return available >= 2 + size + (4 if second & 0x80 else 0)
        if size == 126 and available >= 4:
            return available >= 4 + ((view[pos + 2] << 8) | view[pos + 3]) + (4 if second & 0x80 else 0)
        return frame_complete(self.peek(10), available)

    def read_now(self) -> int:
        """Add what the kernel holds for this socket right now to the buffer
        (up to its free room, at least `LARGE`) without waiting;
        return how many bytes (0 when it holds nothing). One ``readv`` system
        call straight into the buffer: ``socket.recv_into`` on a socket with a
        timeout polls first (a second call). At the end of the stream, or on an
        error, also 0: the frame parser's own blocking read then meets the end
        or the error and reports it.

        The descriptor is asked for at each call (-1 once closed). Only the
        reader thread reads and closes this socket (other threads shut it
        down, which frees no descriptor), so the number cannot meanwhile
        belong to another file."""
        if not self._direct:
            return 0
        fd = self.sock.fileno()
        if fd < 0:
            return 0
        end = self._room()
        try:
            count = os.readv(fd, (self._view[end:],))
        except OSError:  # BlockingIOError (nothing yet) included
            return 0
        self._end = end + count
        return count

    def _room(self) -> int:
        """Make room at the buffer's end for a read (at least `LARGE`); return where it
        starts. Kept bytes move to the front only when the room left is shorter: they are
        one partial frame of at most `LARGE` (a read is made only when the next frame is
        not whole in the buffer), so the move is short and leaves room enough."""
        pos, end = self._pos, self._end
        if pos == end:
            self._pos = self._end = 0
            return 0
        if CAPACITY - end < LARGE:
            kept = end - pos
            self._view[:kept] = self._view[pos:end]
            self._pos, self._end = 0, kept
            return kept
        return end

    def _fill(self) -> int:
        """Add what the socket has to the buffer, waiting for it (within the socket's
        timeout, which raises); return how many bytes (0: the end of the stream)."""
        end = self._room()
        count = self.sock.recv_into(self._view[end:])
        self._end = end + count
        return count

    def _take(self, n: int) -> bytes:
        """The next ``n`` buffered bytes (there are as many), as their own bytes."""
        pos = self._pos
        stop = pos + n
        data = self._view[pos:stop].tobytes()
        if stop == self._end:
            self._pos = self._end = 0
        else:
            self._pos = stop
        return data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` buffered bytes, left in place."""
        pos = self._pos
        return self._view[pos : min(pos + n, self._end)].tobytes()

    def recv(self, n: int, flags: int = 0) -> bytes:
        """Up to ``n`` bytes: from the buffer, else from one read of what the socket has."""
        if flags:
            return self.sock.recv(n, flags)
        if self.handshake is not None:
            self._read_head(self.handshake)
        if n <= 0:
            return b""
        if self._pos >= self._end and not self.read_now() and not self._fill():
            return b""  # the end of the stream, as a socket's recv reports it
        return self._take(min(n, self._end - self._pos))

    def _read_head(self, handshake: Handshake) -> None:
        """Read the upgrade response's head whole (within `Handshake`'s limits),
        check it, and leave it (its folded lines unfolded) for websocket-client.
        websocket-client never reads a byte of a head that was not checked: one
        cut short by the end of the stream is not handed on (it could read a
        line of spaces as its end, and a redirect in it)."""
        data = bytearray(self._view[self._pos : self._end])
        end = handshake.head_end(data)
        while end < 0:
            chunk = self.sock.recv(16384)
            if not chunk:
                raise _closed()
            data += chunk
            end = handshake.head_end(data)
        self.handshake = None
        head = handshake.check_response(bytes(data[:end]))
        rest = head + bytes(data[end:])  # within MAX_HEAD and one read past it: fits the buffer
        self._view[: len(rest)] = rest
        self._pos, self._end = 0, len(rest)

    def read_exact(self, n: int, check: Optional[Callable[[Any], Any]] = None) -> bytes:
        """Exactly ``n`` bytes; raises like websocket-client does when the peer
        closes mid-frame. ``check`` sees each piece as it arrives, before the
        next is waited for (so invalid text fails before the rest comes)."""
        if n <= LARGE:
            return self._take(self._gather(n, check))
        # A large payload: one buffer of its final size, filled by the kernel directly.
        out = bytearray(n)
        view = memoryview(out)
        got = min(n, self._end - self._pos)
        if got:
            view[:got] = self._view[self._pos : self._pos + got]
            self._pos += got
            if check is not None:
                check(view[:got])
        while got < n:
            count = self._recv_into(view[got:])
            if check is not None:
                check(view[got : got + count])
            got += count
        return bytes(out)

    def read_view(self, n: int, check: Optional[Callable[[Any], Any]] = None) -> Union[bytes, memoryview]:
        """`read_exact`, but for ``n`` up to `LARGE` the bytes where they lie in the
        buffer (no copy), valid until the next read: for a caller that copies them on
        at once (a fragment joined to its message)."""
        if n > LARGE:
            return self.read_exact(n, check)
        count = self._gather(n, check)
        pos = self._pos
        self._pos = pos + count
        return self._view[pos : pos + count]

    def _gather(self, n: int, check: Optional[Callable[[Any], Any]]) -> int:
        """Read until the buffer holds ``n`` (at most `LARGE`) bytes, showing ``check``
        each piece of them as it arrives; returns ``n``."""
        checked = 0
        while True:
            pos = self._pos
            have = min(n, self._end - pos)
            if check is not None and have > checked:
                check(self._view[pos + checked : pos + have])
                checked = have
            if have == n:
                return n
            try:
                count = self.read_now() or self._fill()
            except socket.timeout:
                raise _timed_out() from None
            if not count:
                raise _closed()

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
