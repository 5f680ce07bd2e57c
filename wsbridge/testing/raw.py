"""Byte-level WebSocket server pieces, for tests that need frames a normal
server will not send (half a frame, a frame cut in two TCP writes) and for
benchmarks that need a server faster than the client under test."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable, List, Optional, Tuple

from ..wire.handshake import accept_value

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10
CONTINUATION = 0


def frame(payload: bytes, opcode: int = TEXT, *, fin: bool = True, rsv: int = 0, mask: Optional[bytes] = None) -> bytes:
    """One frame: by default unmasked (server-to-client) with FIN set. ``fin=False``
    makes a fragment, ``rsv`` sets RSV bits (0-7), ``mask`` a 4-byte key masks it
    (what a server must never do: for tests of the client's checks)."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv & 7) << 4 | opcode
    masked = 0x80 if mask is not None else 0
    if n < 126:
        header = bytes((first, masked | n))
    elif n < 65536:
        header = bytes((first, masked | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, masked | 127)) + n.to_bytes(8, "big")
    if mask is not None:
        return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + payload


def fragments(payload: bytes, size: int, opcode: int = TEXT) -> bytes:
    """``payload`` as one message in fragments of ``size`` bytes (at least one frame)."""
    pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
    last = len(pieces) - 1
    return b"".join(frame(p, opcode if i == 0 else CONTINUATION, fin=i == last) for i, p in enumerate(pieces))


def read_request(conn: socket.socket, limit: int = 65536) -> Optional[bytes]:
    """The HTTP head a client sent (None: it went away first)."""
    request = b""
    while b"\r\n\r\n" not in request and len(request) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        request += chunk
    return request


def header(request: bytes, name: bytes) -> Optional[bytes]:
    """The value of header ``name`` in an HTTP head (None: absent)."""
    for line in request.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def accept_response(request: bytes, extra: bytes = b"") -> bytes:
    """The 101 answer to ``request`` (``extra``: more header lines, each ending in CRLF)."""
    accept = accept_value(header(request, b"sec-websocket-key") or b"")
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n" + extra + b"\r\n"
    )


def accept_handshake(conn: socket.socket) -> Optional[str]:
    """Read an opening handshake from ``conn`` and accept it; returns the request path."""
    request = read_request(conn)
    if request is None:
        return None
    conn.sendall(accept_response(request))
    return request.split(b"\r\n")[0].split()[1].decode()


def read_frame(conn: socket.socket, timeout: float = 10.0) -> Tuple[int, bytes]:
    """One frame the client sent: ``(opcode, unmasked payload)``; raises
    `ConnectionError` if the client closed TCP first."""
    opcode, _, payload = read_frame_head(conn, None, timeout)
    return opcode, payload


def read_frame_head(conn: socket.socket, keep: Optional[int] = None, timeout: float = 10.0) -> Tuple[int, int, bytes]:
    """One frame the client sent: ``(opcode, payload length, the first ``keep`` bytes of
    the payload unmasked)`` (None: all of it); the rest is read and dropped (unmasking
    megabytes in Python takes seconds). `ConnectionError` if the client closed TCP first."""
    first, n, head = read_frame_bits(conn, keep, timeout)
    return first & 0x0F, n, head


def read_frame_bits(conn: socket.socket, keep: Optional[int] = None, timeout: float = 10.0) -> Tuple[int, int, bytes]:
    """`read_frame_head` with the frame's whole first byte (FIN and RSV bits too) for its opcode."""
    conn.settimeout(timeout)

    def exact(n: int) -> bytes:
        data = bytearray()
        while len(data) < n:
            chunk = conn.recv(min(n - len(data), 1 << 20))
            if not chunk:
                raise ConnectionError("the client closed the TCP connection")
            data += chunk
        return bytes(data)

    first, second = exact(2)
    n = second & 0x7F
    if n == 126:
        n = int.from_bytes(exact(2), "big")
    elif n == 127:
        n = int.from_bytes(exact(8), "big")
    key = exact(4) if second & 0x80 else b"\0\0\0\0"
    head = exact(n if keep is None else min(n, keep))
    left = n - len(head)
    while left:
        left -= len(exact(min(left, 1 << 20)))
    return first, n, bytes(b ^ key[i % 4] for i, b in enumerate(head))


def read_close(conn: socket.socket, timeout: float = 10.0) -> Optional[int]:
    """Read frames until the client's close frame; return its code (None: no code)."""
    deadline = time.monotonic() + timeout
    while True:
        opcode, payload = read_frame(conn, max(0.01, deadline - time.monotonic()))
        if opcode == CLOSE:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None


class RawServer:
    """Accepts connections on 127.0.0.1, completes the handshake, and lets
    the test write raw bytes to the newest connection.

    ``respond(request)`` may answer the upgrade instead (any bytes: a redirect,
    a wrong accept key, a header that never ends); the connection is kept
    only if it returns a 101, or with ``keep_refused`` (a server that promises a
    body it never sends). Every request is kept in ``requests``, and
    ``accepted`` counts the TCP connections, with a request or without."""

    def __init__(self, respond: Optional[Callable[[bytes], bytes]] = None, *, keep_refused: bool = False) -> None:
        self._respond = respond or accept_response
        self._keep_refused = keep_refused
        self.requests: List[bytes] = []
        self.accepted = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.connections: List[socket.socket] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._accept, name="wsbridge-rawserver", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self.accepted += 1
            try:
                request = read_request(conn)
                if request is None:
                    conn.close()
                    continue
                answer = self._respond(request)
                with self._cond:
                    self.requests.append(request)
                    self._cond.notify_all()
                conn.sendall(answer)
            except OSError:
                conn.close()
                continue
            if not answer.startswith(b"HTTP/1.1 101") and not self._keep_refused:
                conn.close()
                continue
            with self._cond:
                self.connections.append(conn)
                self._cond.notify_all()

    def wait_connection(self, timeout: float = 10.0) -> socket.socket:
        with self._cond:
            if not self._cond.wait_for(lambda: self.connections, timeout):
                raise TimeoutError("no client connected to the raw server")
            return self.connections[-1]

    def wait_connections(self, n: int, timeout: float = 10.0) -> socket.socket:
        """Wait until ``n`` connections were accepted in all; return the newest."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.connections) >= n, timeout):
                raise TimeoutError(f"{n} connection(s) to the raw server did not come")
            return self.connections[-1]

    def sendall(self, data: bytes) -> None:
        self.wait_connection().sendall(data)

    def close(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._thread.join(10)
        for conn in self.connections:
            conn.close()

    def __enter__(self) -> "RawServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
