"""Memory: RSS while receiving a million messages, a callback-only client, a stalled
subscriber, and the cost of a full send buffer.

    python benchmarks/memory.py [--count 1000000]

Each variant runs in a fresh process against `blaster.py` (another process):

1. RSS sampled every 100,000 of COUNT ~100 B JSON messages: after the first
   100,000 (warm), at the end, the growth between them, and the peak, for a bare
   websocket-client `WebSocketApp` (on_message counts) and for wsbridge with its
   defaults (decode, dedup, ordered dispatch to one subscriber, the pull buffer).
2. A callback-only client: 200,000 messages of ~1 KiB, one subscriber, no pull
   call: the peak RSS of each, and how often wsbridge's ``dropped`` signal fired.
3. A stalled subscriber with the default bounds: a subscriber that never returns
   from the first of a stream of 64 KiB binary frames. RSS grows until the reader
   stops reading (TCP pushes back); printed: the growth over the RSS before the
   first frame, and what the client holds then.
4. The RSS that 100,000 small messages queued in wsbridge's send buffer take.
"""


from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STEP = 100_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # KiB -> MB, as rss_mb


def child(variant: str, url: str, count: int) -> None:
    """Runs in its own process; prints one JSON line: RSS samples, the peak, and counts."""
    samples = []
    done = threading.Event()
    n = [0]
    extra = {}

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
        dropped = []
        client.signals.dropped.connect(lambda _client, **kw: dropped.append(kw["count"]))
        client.start()
        done.wait(600)
        client.stop()
        extra = {"dropped_signals": len(dropped), "pull_buffered": client.stats.pull_buffered}
    elif variant == "stall":
        import wsbridge

        release = threading.Event()
        client = wsbridge.Client(url, codec=wsbridge.RawCodec(), backoff=wsbridge.NO_RETRY, ping_interval=0)
        client.on_any(lambda message: release.wait(600))
        before = rss_mb()
        client.start()
        last, still = -1, 0
        for _ in range(600):  # until the reader has not read for 1 s while it waits for room (at most 60 s)
            time.sleep(0.1)
            stats = client.stats
            still = still + 1 if stats.frames == last and stats.backpressure_waits else 0
            if still == 10:
                break
            last = stats.frames
        samples = [before, rss_mb()]
        extra = {"frames": client.stats.frames, "dispatch_bytes": client.stats.dispatch_bytes}
        release.set()
        client.stop(timeout=1)
    else:  # outbox
        import wsbridge

        before = rss_mb()
        client = wsbridge.Client(url, outbox_size=count)
        for i in range(count):
            client.send({"type": "order", "id": i, "qty": 100, "px": 101.25, "side": "buy"})
        samples = [before, rss_mb()]
    print(json.dumps({"samples": samples, "peak": peak_mb(), **extra}), flush=True)


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
        base = f"ws://127.0.0.1:{int(server.stdout.readline())}"
        run = lambda variant, path, count: json.loads(subprocess.run(  # noqa: E731
            [sys.executable, __file__, "--child", variant, f"{base}/{path}", str(count)],
            capture_output=True, text=True, check=True,
        ).stdout)
        print(f"RSS while receiving {args.count:,} ~100 B JSON messages (MB, sampled every {STEP:,})")
        for variant in ("bare", "wsbridge"):
            r = run(variant, f"json100/{args.count}", args.count)
            s = r["samples"]
            print(f"  {variant:<9} after {STEP:,}: {s[0]:6.1f}   at the end: {s[-1]:6.1f}   growth: {s[-1] - s[0]:+5.1f}   "
                  f"peak: {r['peak']:6.1f}   samples: {' '.join(f'{x:.0f}' for x in s)}", flush=True)
        print("A callback-only client: 200,000 ~1 KiB JSON messages, one subscriber, no pull call")
        peaks = {}
        for variant in ("bare", "wsbridge"):
            r = run(variant, "json1k/200000", 200_000)
            peaks[variant] = r["peak"]
            more = (f"   {r['peak'] - peaks['bare']:+.1f} over bare; dropped signalled {r['dropped_signals']} times, "
                    f"{r['pull_buffered']} messages in the pull window") if variant == "wsbridge" else ""
            print(f"  {variant:<9} peak RSS {r['peak']:6.1f}{more}", flush=True)
        r = run("stall", "bin64k/5000", 5000)
        before, after = r["samples"]
        print(f"A stalled subscriber, 64 KiB frames, default bounds: RSS {before:.1f} -> {after:.1f} MB "
              f"({after - before:+.1f}); the reader stopped after {r['frames']} frames, "
              f"{r['dispatch_bytes'] / 2**20:.1f} MiB queued or in hand", flush=True)
        r = run("outbox", "json100/1", 100_000)
        before, after = r["samples"]
        print(f"send buffer: 100,000 queued ~70 B messages take {after - before:.1f} MB of RSS")
    finally:
        server.kill()
        server.wait(10)


if __name__ == "__main__":
    main()
