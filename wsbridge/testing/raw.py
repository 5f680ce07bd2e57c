"""Byte-level WebSocket server pieces, for tests that need frames a normal
server will not send (half a frame, a frame cut in two TCP writes) and for
benchmarks that need a server faster than the client under test."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from typing import List, Optional

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING = 1, 2, 8, 9


def frame(payload: bytes, opcode: int = TEXT) -> bytes:
    """One unmasked (server-to-client) frame with FIN set."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


def accept_handshake(conn: socket.socket) -> Optional[str]:
    """Read an opening handshake from ``conn`` and accept it; returns the request path."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        request += chunk
    lines = request.split(b"\r\n")
    path = lines[0].split()[1].decode()
    key = next(line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )
    return path


class RawServer:
    """Accepts connections on 127.0.0.1, completes the handshake, and lets
    the test write raw bytes to the newest connection."""

    def __init__(self) -> None:
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
            if accept_handshake(conn) is None:
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
