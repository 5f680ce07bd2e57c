"""Memory: RSS while receiving a million messages, and the cost of a full send buffer.

    python benchmarks/memory.py [--count 1000000]

Each variant runs in a fresh process against `blaster.py` (another process):
RSS is sampled every 100,000 messages. Printed: RSS after the first 100,000
(warm) and at the end, and the growth between them, for a bare websocket-client
`WebSocketApp` (on_message counts) and for wsbridge with its defaults (decode,
dedup, ordered dispatch, a pull buffer of 10,000 that nobody reads). Then the
RSS that 100,000 small messages queued in wsbridge's send buffer take.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
STEP = 100_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def child(variant: str, url: str, count: int) -> None:
    """Runs in its own process; prints one JSON line of RSS samples."""
    samples = []
    done = threading.Event()
    n = [0]

    def tick(*_args) -> None:
        n[0] += 1
        if n[0] % STEP == 0:
            samples.append(rss_mb())
        if n[0] == count:
            done.set()

    if variant == "bare":
        import websocket

        app = websocket.WebSocketApp(url, on_message=tick)
        thread = threading.Thread(target=app.run_forever, daemon=True)
        thread.start()
        done.wait(600)
        app.close()
        thread.join(30)
    elif variant == "wsbridge":
        import wsbridge

        client = wsbridge.Client(url, backoff=wsbridge.NO_RETRY, ping_interval=0)  # blaster.py does not answer pings
        client.on_any(tick)
        client.start()
        done.wait(600)
        client.stop()
    else:  # outbox
        import wsbridge

        before = rss_mb()
        client = wsbridge.Client(url, outbox_size=count)
        for i in range(count):
            client.send({"type": "order", "id": i, "qty": 100, "px": 101.25, "side": "buy"})
        samples = [before, rss_mb()]
    print(json.dumps(samples), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "URL", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    try:
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}/json100/{args.count}"
        run = lambda variant, count: json.loads(subprocess.run(  # noqa: E731
            [sys.executable, __file__, "--child", variant, url, str(count)], capture_output=True, text=True, check=True
        ).stdout)
        print(f"RSS while receiving {args.count:,} ~100 B JSON messages (MB, sampled every {STEP:,})")
        for variant in ("bare", "wsbridge"):
            s = run(variant, args.count)
            print(f"  {variant:<9} after {STEP:,}: {s[0]:6.1f}   at the end: {s[-1]:6.1f}   growth: {s[-1] - s[0]:+5.1f}   "
                  f"samples: {' '.join(f'{x:.0f}' for x in s)}", flush=True)
        before, after = run("outbox", 100_000)
        print(f"send buffer: 100,000 queued ~70 B messages take {after - before:.1f} MB of RSS")
    finally:
        server.kill()
        server.wait(10)


if __name__ == "__main__":
    main()
