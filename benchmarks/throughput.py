"""Messages/s of the full wsbridge pipeline against a bare websocket-client
`WebSocketApp` whose on_message only counts, measured in the same run against
the same server (a separate process writing pre-built frames).

    python benchmarks/throughput.py [--runs 5] [--count 200000]

Prints one table: median msg/s of each variant and its ratio to the bare app.
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

HERE = os.path.dirname(os.path.abspath(__file__))


def bare_app(url: str, count: int) -> float:
    """websocket-client as shipped: WebSocketApp, on_message counts."""
    done = threading.Event()
    marks = {}
    n = 0

    def on_message(app, data):
        nonlocal n
        n += 1
        if n == 1:
            marks["first"] = time.perf_counter()
        if n == count:
            marks["last"] = time.perf_counter()
            done.set()

    app = websocket.WebSocketApp(url, on_message=on_message)
    thread = threading.Thread(target=app.run_forever, name="bench-bare", daemon=True)
    thread.start()
    if not done.wait(300):
        raise RuntimeError("bare app did not finish")
    thread.join(30)
    return (count - 1) / (marks["last"] - marks["first"])


def wsbridge_client(url: str, count: int, codec: wsbridge.Codec) -> float:
    """wsbridge, every feature of this release on: decode, ordered dispatch to one subscriber, pull buffer."""
    done = threading.Event()
    marks = {}
    n = 0

    def on_message(msg):
        nonlocal n
        n += 1
        if n == 1:
            marks["first"] = time.perf_counter()
        if n == count:
            marks["last"] = time.perf_counter()
            done.set()

    client = wsbridge.Client(url, codec=codec, backoff=wsbridge.NO_RETRY)
    client.on_any(on_message)
    client.start()
    if not done.wait(300):
        raise RuntimeError(f"wsbridge did not finish: {client.stats}")
    client.stop()
    return (count - 1) / (marks["last"] - marks["first"])


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
            ("~100 B JSON text", "json100", args.count, wsbridge.JsonCodec()),
            ("4 KiB JSON text", "json4k", max(1000, args.count // 20), wsbridge.JsonCodec()),
            ("64 KiB binary", "bin64k", max(500, args.count // 100), wsbridge.RawCodec()),
        ]
        try:
            import wsaccel  # noqa: F401

            accel = "wsaccel installed"
        except ImportError:
            accel = "no wsaccel"
        print(f"wsbridge {wsbridge.__version__}, websocket-client {websocket.__version__} ({accel}), "
              f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; median of {args.runs} runs")
        print(f"{'message':<18} {'bare WebSocketApp':>18} {'wsbridge':>12} {'ratio':>7}")
        for label, kind, count, codec in cases:
            url = f"{base}/{kind}/{count}"
            bare, ours = [], []
            for _ in range(args.runs):  # interleaved, so drift hits both alike
                bare.append(bare_app(url, count))
                ours.append(wsbridge_client(url, count, codec))
            b, w = statistics.median(bare), statistics.median(ours)
            print(f"{label:<18} {b:>14,.0f}/s {w:>10,.0f}/s {w / b:>6.2f}x", flush=True)
    finally:
        server.kill()
        server.wait(10)


if __name__ == "__main__":
    main()
