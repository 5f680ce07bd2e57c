"""A WebSocket server that does nothing but write pre-built frames, as fast as
the kernel takes them, so the client under test is the bottleneck.

Run as a separate process: ``python benchmarks/blaster.py`` prints its port.
Each connection's path says what to send: ``/KIND/COUNT`` with KIND one of
``json100``, ``json4k``, ``bin64k``. After COUNT frames it sends a close frame.
``/sink`` sends nothing and reads (and drops) whatever arrives, as fast as it comes.
"""

from __future__ import annotations

import json
import socket
import sys
import threading

from wsbridge.testing.raw import accept_handshake, frame


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
        path = accept_handshake(conn)
        if path is None:
            return
        if path == "/sink":
            try:
                while conn.recv(1 << 20):
                    pass
            except OSError:
                pass
            return
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
