"""A WebSocket server that does nothing but write pre-built frames, as fast as
the kernel takes them, so the client under test is the bottleneck.

Run as a separate process: ``python benchmarks/blaster.py`` prints its port.
It answers no ping (so clients measured against it run with pings off, as a
bare `WebSocketApp` does by default).
Each connection's path says what to send: ``/KIND/COUNT`` with KIND one of
``json100``, ``json1k``, ``json4k``, ``bin64k``, ``frag64k`` (64 KiB binary messages,
each in 16 fragments of 4 KiB). After COUNT frames it sends a close frame.
``feed`` and ``zfeed`` are the same JSON market-data feed (book updates of
about 300 B), plain and compressed with permessage-deflate as a server does by
default (one window across messages); ``zfeed`` answers the client's offer of
permessage-deflate (and sends plain frames to a client that made none).
``/sink`` sends nothing and reads (and drops) whatever arrives, as fast as it comes.
``/paced/RATE/COUNT`` sends COUNT small JSON frames at RATE per second, each
carrying ``t``, the ``time.time()`` at which it was written (for latency).
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
import zlib
from typing import List

from wsbridge.testing.raw import accept_response, fragments, frame, header, read_request


def feed(count: int) -> List[bytes]:
    """``count`` book updates of a market-data feed, as JSON (the same for every run)."""
    rng = random.Random(24)
    mid = 64_000.0
    out = []
    for i in range(1, count + 1):
        mid += rng.choice((-0.5, 0, 0.5))
        bids, asks = ([[round(mid + sign * (0.5 + k * 0.5), 1), round(rng.uniform(0.001, 3), 4)] for k in range(5)]
                      for sign in (-1, 1))
        out.append(json.dumps({"type": "book", "seq": i, "channel": "level2", "symbol": "BTC-USD",
                               "bids": bids, "asks": asks, "ts": 1_700_000_000_000 + i * 7}).encode())
    return out


def deflated(messages: List[bytes]) -> List[bytes]:
    """Each message as a permessage-deflate payload, one compressor across them (context takeover)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return [(compressor.compress(m) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4] for m in messages]


def messages(kind: str, count: int) -> List[bytes]:
    """The ``count`` JSON messages of ``kind`` (json100, json1k, json4k, feed), each with its own seq."""
    if kind == "json100":
        tick = {"type": "tick", "seq": 0, "sym": "ACME", "px": 101.25, "qty": 300, "side": "buy", "venue": "X"}
        return [json.dumps({**tick, "seq": i}).encode() for i in range(1, count + 1)]  # the literal's key order
    if kind in ("json1k", "json4k"):
        pad = "x" * (900 if kind == "json1k" else 4000)
        return [json.dumps({"type": "doc", "seq": i, "body": pad}).encode() for i in range(1, count + 1)]
    if kind in ("feed", "zfeed"):
        return feed(count)
    raise ValueError(kind)


def payloads(kind: str, count: int) -> bytes:
    """``count`` frames of ``kind``, each with its own seq, as one buffer."""
    if kind == "zfeed":
        return b"".join(frame(m, 1, rsv=4) for m in deflated(feed(count)))
    if kind in ("bin64k", "frag64k"):
        blob = bytes(range(256)) * 256
        if kind == "frag64k":
            return fragments(blob, 4096, 2) * count
        return frame(blob, 2) * count
    return b"".join(frame(m, 1) for m in messages(kind, count))


def serve_one(conn: socket.socket) -> None:
    with conn:
        request = read_request(conn)
        if request is None:
            return
        path = request.split(b"\r\n")[0].split()[1].decode()
        deflate = b"permessage-deflate" in (header(request, b"sec-websocket-extensions") or b"")
        if path.startswith("/zfeed/") and deflate:
            conn.sendall(accept_response(request, b"Sec-WebSocket-Extensions: permessage-deflate\r\n"))
        else:
            conn.sendall(accept_response(request))
            path = path.replace("/zfeed/", "/feed/")
        if path == "/sink":
            try:
                while conn.recv(1 << 20):
                    pass
            except OSError:
                pass
            return
        if path.startswith("/paced/"):
            _, _, rate, count = path.split("/")
            paced(conn, float(rate), int(count))
            return
        _, kind, count = path.split("/")
        data = payloads(kind, int(count))
        try:
            conn.sendall(data)
            close_and_drain(conn)
        except OSError:
            pass


def close_and_drain(conn: socket.socket) -> None:
    """Send a close frame (1000), then read the client's frames until its close
    frame (or until it hangs up); the caller then closes TCP, as a server should."""
    conn.sendall(frame(b"\x03\xe8", 8))
    conn.settimeout(30)
    data = b""
    while True:
        while len(data) >= 2:  # client frames: masked, so header + 4-byte mask + payload
            opcode, n = data[0] & 0x0F, data[1] & 0x7F
            at = 2 + {126: 2, 127: 8}.get(n, 0)
            if len(data) < at:
                break
            if n >= 126:
                n = int.from_bytes(data[2:at], "big")
            if len(data) < at + 4 + n:
                break
            if opcode == 8:
                return
            data = data[at + 4 + n:]
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def paced(conn: socket.socket, rate: float, count: int) -> None:
    """Write ``count`` frames at ``rate``/s, in steps of 1 ms, stamped when written."""
    start = time.perf_counter()
    sent = 0
    try:
        while sent < count:
            due = min(count, int((time.perf_counter() - start) * rate) + 1)
            if due > sent:
                now = time.time()
                conn.sendall(b"".join(
                    frame(b'{"type":"tick","seq":%d,"t":%.6f,"sym":"ACME","px":101.25}' % (i, now))
                    for i in range(sent + 1, due + 1)
                ))
                sent = due
            time.sleep(0.0005)
        close_and_drain(conn)
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
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle delay on paced writes
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
