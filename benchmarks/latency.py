"""Latency from the server's write to the subscriber's call, at a steady rate.

    python benchmarks/latency.py [--rate 10000] [--seconds 5] [--runs 3]

A server in another process (`blaster.py`, ``/paced``) writes small JSON
frames at RATE per second, each stamped with the time it was written. Printed:
p50 / p99 / max of (time of the call - stamp) for wsbridge (decode, dedup,
ordered dispatch to one subscriber) and, in the same run, for a bare
websocket-client `WebSocketApp` whose on_message parses the JSON. The first
second is left out (connection warm-up).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from typing import List

import websocket

import wsbridge

HERE = os.path.dirname(os.path.abspath(__file__))


def percentiles(samples: List[float]) -> str:
    samples = sorted(samples)
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))] * 1000  # noqa: E731
    return f"p50 {pick(0.5):6.3f} ms   p99 {pick(0.99):6.3f} ms   max {samples[-1] * 1000:7.3f} ms"


def measure_bare(url: str, count: int, skip: int) -> List[float]:
    lat: List[float] = []
    done = threading.Event()

    def on_message(app, data):
        now = time.time()
        msg = json.loads(data)
        if msg["seq"] > skip:
            lat.append(now - msg["t"])
        if msg["seq"] == count:
            done.set()

    app = websocket.WebSocketApp(url, on_message=on_message)
    thread = threading.Thread(target=app.run_forever, name="bench-bare", daemon=True)
    thread.start()
    done.wait(120)
    app.close()
    thread.join(30)
    return lat


def measure_wsbridge(url: str, count: int, skip: int) -> List[float]:
    lat: List[float] = []
    done = threading.Event()

    def on_tick(msg: wsbridge.Message) -> None:
        now = time.time()
        if msg.seq > skip:
            lat.append(now - msg.payload["t"])
        if msg.seq == count:
            done.set()

    client = wsbridge.Client(url, backoff=wsbridge.NO_RETRY, ping_interval=0)  # blaster.py does not answer pings
    client.on("tick", on_tick)
    client.start()
    done.wait(120)
    client.stop()
    return lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gc", choices=("on", "freeze", "off"), default="on",
                        help="the garbage collector: as is, gc.freeze() after start-up, or off (it makes the tail)")
    args = parser.parse_args()
    if args.gc == "freeze":
        gc.freeze()
    elif args.gc == "off":
        gc.disable()
    count, skip = int(args.rate * args.seconds), int(args.rate)
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    try:
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}/paced/{args.rate}/{count}"
        bare: List[float] = []
        ours: List[float] = []
        for _ in range(args.runs):  # interleaved, so drift hits both alike
            bare += measure_bare(url, count, skip)
            ours += measure_wsbridge(url, count, skip)
    finally:
        server.kill()
        server.wait(10)
    print(f"latency at {args.rate:,.0f} msg/s, {args.runs} runs of {args.seconds:g} s ({len(ours):,} samples each side), gc {args.gc}")
    print(f"  bare WebSocketApp + json.loads  {percentiles(bare)}")
    print(f"  wsbridge                        {percentiles(ours)}")


if __name__ == "__main__":
    main()
