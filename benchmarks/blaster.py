"""A WebSocket server that does nothing but write pre-built frames, as fast as
the kernel takes them, so the client under test is the bottleneck.

Run as a separate process: ``python benchmarks/blaster.py`` prints its port.
Each connection's path says what to send: ``/KIND/COUNT`` with KIND one of
``json100``, ``json4k``, ``bin64k``. After COUNT frames it sends a close frame.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, n))
    elif n < 65536:
        header = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return header + payload


def payloads(kind: str, count: int) -> bytes:
    """``count`` frames of ``kind``, each with its own seq, as one buffer."""
    if kind == "json100":
        make = lambda i: json.dumps({"type": "tick", "seq": i, "sym": "ACME", "px": 101.25, "qty": 300, "side": "buy", "venue": "X"}).encode()
        opcode = 1
    elif kind == "json4k":
        pad = "x" * 4000
        make = lambda i: json.dumps({"type": "doc", "seq": i, "body": pad}).encode()
        opcode = 1
    elif kind == "bin64k":
        blob = bytes(range(256)) * 256
        make = lambda i: blob
        opcode = 2
    else:
        raise ValueError(kind)
    return b"".join(frame(make(i), opcode) for i in range(1, count + 1))


def serve_one(conn: socket.socket) -> None:
    with conn:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                return
            request += chunk
        lines = request.split(b"\r\n")
        path = lines[0].split()[1].decode()
        key = next(l.split(b":", 1)[1].strip() for l in lines if l.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        _, kind, count = path.split("/")
        data = payloads(kind, int(count))
        try:
            conn.sendall(data)
            conn.sendall(frame(b"\x03\xe8", 8))
            conn.settimeout(30)
            while conn.recv(65536):
                pass
        except OSError:
            pass


def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
