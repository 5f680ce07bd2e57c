"""Delivery figures: a chaos run and a 20,000-message catch-up, on loopback.

    python benchmarks/delivery.py [--runs 3] [--messages 20000] [--cuts 25]

The server (the bundled test server's feed, in another process) keeps a
history and answers resume requests, resending 7 messages of overlap each
time. Printed:

1. chaos: MESSAGES sequenced messages on two streams while the connection is
   cut (TCP reset, through a `Proxy`) at CUTS random points in the flow:
   sent, delivered, duplicates dropped, gaps, lost, reconnects, seconds.
2. catch-up: the client is away while MESSAGES are published, then comes
   back: seconds from its (re)start to the last message delivered, after a
   reconnect (positions in memory) and after a process restart (positions
   from an `SQLiteStore`), side by side with a live feed of the same size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import wsbridge
from wsbridge.testing import Proxy
from wsbridge.testing.chaos import ChaosReport, run_chaos

HERE = os.path.dirname(os.path.abspath(__file__))
FAST = wsbridge.Backoff(initial=0.01, factor=2, max_delay=0.05, jitter=0)


class FeedServer:
    def __init__(self, resend: int = 7) -> None:
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "feedserver.py"), str(resend)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())
        self.url = f"ws://127.0.0.1:{self.port}/"

    def __call__(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError(f"feed server failed on {command!r}")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


class Counter:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.done, self.last = total, 0, threading.Event(), 0.0

    def __call__(self, msg: wsbridge.Message) -> None:
        self.n += 1
        if self.n >= self.total:
            self.last = time.perf_counter()
            self.done.set()


def chaos(messages: int, cuts: int, seed: int) -> ChaosReport:
    feed = FeedServer()
    proxy = Proxy(("127.0.0.1", feed.port))
    try:
        return run_chaos(wsbridge.Client, proxy, lambda n, stream: feed(f"publish {n} {stream}"),
                         messages=messages, cuts=cuts, seed=seed, backoff=FAST, pull_buffer=0, **wsbridge.conventions())
    finally:
        proxy.close()
        feed.close()


def catch_up(messages: int, how: str) -> float:
    """Seconds from the client's return to the last of ``messages`` delivered
    (``how``: "live", no absence, the baseline; "reconnect"; "restart")."""
    feed = FeedServer(resend=0)
    proxy = Proxy(("127.0.0.1", feed.port))  # in every case, so all three pay for it alike
    store_path = os.path.join(tempfile.mkdtemp(), "feed.db")
    first, count = threading.Event(), Counter(messages)

    def on_tick(msg):
        if msg.seq == 1:
            first.set()
        else:
            count(msg)

    def new_client():
        store = wsbridge.SQLiteStore(store_path) if how == "restart" else None
        client = wsbridge.Client(proxy.url, backoff=FAST, store=store, pull_buffer=0, **wsbridge.conventions())
        client.on("tick", on_tick)
        return client

    client = new_client().start()
    client.wait_connected(timeout=10)
    feed("wait-clients 1")
    feed("publish 1")
    first.wait(10)
    if how == "live":
        start = time.perf_counter()
        feed(f"publish {messages}")
    elif how == "reconnect":
        proxy.refuse()
        proxy.cut()
        feed(f"publish {messages}")
        start = time.perf_counter()
        proxy.accept()
    else:
        client.stop()
        feed(f"publish {messages}")
        start = time.perf_counter()
        client = new_client().start()
    if not count.done.wait(300):
        raise RuntimeError(f"catch-up ({how}) did not finish: {client.stats}")
    elapsed = count.last - start
    client.stop()
    proxy.close()
    feed.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--cuts", type=int, default=25)
    args = parser.parse_args()
    print(f"chaos: {args.messages:,} messages on 2 streams, {args.cuts} cuts in the flow, 7 resent per resume")
    for run in range(args.runs):
        print(f"  run {run + 1}: {chaos(args.messages, args.cuts, seed=run)}", flush=True)
    print(f"catch-up of {args.messages:,} messages (median of {args.runs} runs):")
    for how, label in (("live", "live feed (baseline)"), ("reconnect", "after a reconnect"),
                       ("restart", "after a restart with SQLiteStore")):
        times = [catch_up(args.messages, how) for _ in range(args.runs)]
        t = statistics.median(times)
        print(f"  {label:<34} {t:6.2f} s  {args.messages / t:>9,.0f} msg/s", flush=True)


if __name__ == "__main__":
    main()
