"""Messages/s of the full wsbridge pipeline against a bare websocket-client
`WebSocketApp` whose on_message only counts, measured in the same run against
the same server (a separate process writing pre-built frames).

    python benchmarks/throughput.py [--runs 5] [--count 200000]

Prints one table: median msg/s of each variant and its ratio to the bare app.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import websocket

import wsbridge

HERE = os.path.dirname(os.path.abspath(__file__))


class Stopwatch:
    """Counts calls; notes the time of the first and of the ``count``-th."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.n = 0
        self.first = self.last = 0.0
        self.done = threading.Event()

    def __call__(self, *args) -> None:
        self.n += 1
        if self.n == 1:
            self.first = time.perf_counter()
        if self.n == self.count:
            self.last = time.perf_counter()
            self.done.set()

    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first)


def bare_app(url: str, count: int) -> float:
    """websocket-client as shipped: WebSocketApp, on_message counts."""
    watch = Stopwatch(count)
    app = websocket.WebSocketApp(url, on_message=watch)
    thread = threading.Thread(target=app.run_forever, name="bench-bare", daemon=True)
    thread.start()
    if not watch.done.wait(300):
        raise RuntimeError("bare app did not finish")
    thread.join(30)
    return watch.rate()


def wsbridge_client(url: str, count: int, codec: wsbridge.Codec, store: bool = False) -> float:
    """wsbridge with every feature of this release on: decode, sequence
    tracking (dedup, order), ordered dispatch to one subscriber, the pull
    buffer; and, with ``store``, an SQLiteStore written before dispatch."""
    watch = Stopwatch(count)
    tmp = tempfile.mkdtemp() if store else None
    client = wsbridge.Client(url, codec=codec, backoff=wsbridge.NO_RETRY, ping_interval=0,  # blaster.py does not answer pings
                             store=wsbridge.SQLiteStore(os.path.join(tmp, "bench.db")) if tmp else None)
    client.on_any(watch)
    client.start()
    if not watch.done.wait(300):
        raise RuntimeError(f"wsbridge did not finish: {client.stats}")
    client.stop()
    if tmp:
        shutil.rmtree(tmp)
    return watch.rate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=100_000, help="messages per run (small messages)")
    args = parser.parse_args()

    server = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        base = f"ws://127.0.0.1:{port}"
        cases = [
            ("~100 B JSON text", "json100", args.count, wsbridge.JsonCodec(), False),
            ("4 KiB JSON text", "json4k", max(1000, args.count // 20), wsbridge.JsonCodec(), False),
            ("64 KiB binary", "bin64k", max(500, args.count // 100), wsbridge.RawCodec(), False),
            ("~100 B JSON, store", "json100", args.count, wsbridge.JsonCodec(), True),
        ]
        try:
            import wsaccel  # noqa: F401

            accel = "wsaccel installed"
        except ImportError:
            accel = "no wsaccel"
        print(f"wsbridge {wsbridge.__version__}, websocket-client {websocket.__version__} ({accel}), "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; median of {args.runs} runs")
        print(f"{'message':<18} {'bare WebSocketApp':>18} {'wsbridge':>12} {'ratio':>7}")
        for label, kind, count, codec, store in cases:
            url = f"{base}/{kind}/{count}"
            bare, ours = [], []
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                bare.append(bare_app(url, count))
                ours.append(wsbridge_client(url, count, codec, store))
            b, w = statistics.median(bare), statistics.median(ours)
            print(f"{label:<18} {b:>14,.0f}/s {w:>10,.0f}/s {w / b:>6.2f}x", flush=True)
    finally:
        server.kill()
        server.wait(10)


if __name__ == "__main__":
    main()
