"""Reconnect latency and send-buffer flush rate, on loopback.

    python benchmarks/reconnect.py [--runs 5] [--queued 100000]

1. The server stops; as soon as the client has scheduled its retry, the
   server listens again. Printed: how long after the scheduled retry time
   the client was connected (handshake + flush of an empty outbox).
2. ``--queued`` small messages are sent while the client is offline; printed:
   the rate at which the send buffer is flushed once the socket is open, into
   a server in another process that only reads (`blaster.py`'s ``/sink``),
   beside a bare websocket-client connection sending as many frames in a loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import websocket

import wsbridge
from wsbridge.testing import Server

HERE = os.path.dirname(os.path.abspath(__file__))


class Marks:
    def __init__(self) -> None:
        self.times = {}
        self.events = {name: threading.Event() for name in ("reconnecting", "connected")}
        self.delay = 0.0

    def on(self, name):
        def receiver(sender, **kw):
            self.times[name] = time.perf_counter()
            if name == "reconnecting":
                self.delay = kw["delay"]
            self.events[name].set()

        return receiver


def reconnect_once(backoff: wsbridge.Backoff) -> float:
    with Server() as server:
        client = wsbridge.Client(server.url, backoff=backoff)
        client.start().wait_connected(timeout=10)
        marks = Marks()
        client.signals.reconnecting.connect(marks.on("reconnecting"))
        client.signals.connected.connect(marks.on("connected"))
        server.stop()
        marks.events["reconnecting"].wait(10)
        server.start()
        client.wait_connected(timeout=30)
        ready = time.perf_counter()
        client.stop()
    return (ready - (marks.times["reconnecting"] + marks.delay)) * 1000


FRAME = '{"type":"order","qty":100,"px":101.25,"side":"buy"}'


def flush_once(url: str, queued: int) -> float:
    """Messages/s at which wsbridge flushes ``queued`` messages sent while offline."""
    opened = {}
    # The connect hook runs once the socket is open, just before the flush; `wait_connected`
    # returns after it. (The `connected` signal comes after the flush, on another thread.)
    client = wsbridge.Client(url, backoff=wsbridge.NO_RETRY, outbox_size=queued,
                             on_connect=lambda session: opened.setdefault("t", time.perf_counter()))
    for _ in range(queued):
        client.send(FRAME)  # not started yet: every frame waits in the send buffer
    client.start()
    client.wait_connected(timeout=120)  # returns once the flush is done
    ready = time.perf_counter()
    client.stop()
    return queued / (ready - opened["t"])


def bare_send(url: str, queued: int) -> float:
    """Messages/s of a bare websocket-client connection sending ``queued`` frames in a loop."""
    ws = websocket.create_connection(url)
    start = time.perf_counter()
    for _ in range(queued):
        ws.send(FRAME)
    elapsed = time.perf_counter() - start
    ws.close()
    return queued / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queued", type=int, default=100_000)
    args = parser.parse_args()
    backoff = wsbridge.Backoff(initial=0.2, jitter=0)
    lat = [reconnect_once(backoff) for _ in range(args.runs)]
    print(f"reconnect: connected {statistics.median(lat):.1f} ms (median; max {max(lat):.1f} ms) after the scheduled retry "
          f"({backoff.initial * 1000:.0f} ms backoff), {args.runs} runs")
    sink = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    try:
        url = f"ws://127.0.0.1:{int(sink.stdout.readline())}/sink"
        ours, bare = [], []
        for _ in range(args.runs):
            ours.append(flush_once(url, args.queued))
            bare.append(bare_send(url, args.queued))
    finally:
        sink.kill()
        sink.wait(10)
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"send-buffer flush: {o:,.0f} msg/s; bare websocket-client send loop: {b:,.0f} msg/s; ratio {o / b:.2f}x "
          f"(median of {args.runs}; {args.queued:,} ~52 B text frames, into a server in another process)")


if __name__ == "__main__":
    main()
