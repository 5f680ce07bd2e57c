"""Reconnect latency and send-buffer flush rate, on loopback.

    python benchmarks/reconnect.py [--runs 5] [--queued 100000]

1. The server stops; as soon as the client has scheduled its retry, the
   server listens again. Printed: how long after the scheduled retry time
   the client was connected (handshake + flush of an empty outbox).
2. ``--queued`` small messages are sent while the server is down; printed:
   the rate at which the outbox is flushed once the socket is open.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import wsbridge
from wsbridge.testing import Server


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


def flush_once(queued: int) -> float:
    server = Server().start()
    url = server.url
    server.stop()
    client = wsbridge.Client(url, backoff=wsbridge.Backoff(initial=0.05, max_delay=0.05, jitter=0), outbox_size=queued)
    opened = {}
    client.signals.connected.connect(lambda sender, **kw: opened.setdefault("t", time.perf_counter()))
    client.start()
    frame = '{"type":"order","qty":100,"px":101.25,"side":"buy"}'
    for _ in range(queued):
        client.send(frame)
    server.start()
    client.wait_connected(timeout=120)
    ready = time.perf_counter()
    server.wait_received(queued, timeout=120)
    client.stop()
    server.stop()
    # `connected` is signalled when the socket opens, `wait_connected` returns after the flush.
    return queued / (ready - opened["t"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--queued", type=int, default=100_000)
    args = parser.parse_args()
    backoff = wsbridge.Backoff(initial=0.2, jitter=0)
    lat = [reconnect_once(backoff) for _ in range(args.runs)]
    print(f"reconnect: connected {statistics.median(lat):.1f} ms (median; max {max(lat):.1f} ms) after the scheduled retry "
          f"({backoff.initial * 1000:.0f} ms backoff), {args.runs} runs")
    rates = [flush_once(args.queued) for _ in range(args.runs)]
    print(f"outbox flush: {statistics.median(rates):,.0f} msg/s (median of {args.runs}; {args.queued:,} queued ~52 B text frames)")


if __name__ == "__main__":
    main()
