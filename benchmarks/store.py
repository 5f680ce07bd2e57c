"""The store, sustained: msg/s of wsbridge with an `SQLiteStore` per slice of a long run,
beside a bare `WebSocketApp` measured in the same run.

    python benchmarks/store.py [--count 1000000] [--slice 100000] [--runs 3] [--profile]

`blaster.py` (another process) writes ``count`` small JSON frames (the ~100 B
``json100`` kind of `receive.py`) as fast as the kernel takes them; each client
notes the time at every ``slice``-th message, so a store that falls behind as its
database grows shows as slices getting slower. Every (client, run) is a fresh
process with a fresh store, and the runs alternate, so drift on the machine hits
both alike; the table gives the median over the runs of each slice's msg/s, and the
ratio of wsbridge to the bare app. ``--profile`` runs the store client once under
cProfile on its dispatcher thread (the one that writes the store) and prints where
that thread's time went.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import receive  # noqa: E402  (the clients and the server are receive.py's)

CLIENTS = {"bare": ("bare WebSocketApp, on_message counts", receive.bare_app),
           "store": ("wsbridge, full pipeline + SQLiteStore", receive.wsbridge_store)}


class Slices:
    """A handler that notes the time of every ``every``-th call, up to ``count``."""

    def __init__(self, count: int, every: int) -> None:
        self.count, self.every = count, every
        self.n = 0
        self.marks: List[float] = []
        self.done = threading.Event()

    def __call__(self, *args: Any) -> None:
        self.n += 1
        if self.n == 1 or self.n % self.every == 0:
            self.marks.append(time.perf_counter())
        if self.n == self.count:
            self.done.set()

    def rates(self) -> List[float]:
        """msg/s of each slice (the first from the first message on)."""
        marks = self.marks
        return [((self.every - 1) if i == 0 else self.every) / (marks[i + 1] - marks[i]) for i in range(len(marks) - 1)]


def child(which: str, base: str, count: int, every: int, profile: bool) -> None:
    """One run of one client, in its own process; prints its slices' msg/s as JSON."""
    handler = Slices(count, every)
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:  # profile the dispatcher thread only: wrap what it runs for each batch
        from wsbridge.runtime.delivery import Delivery

        handle = Delivery.handle

        def profiled(self: Delivery, batch: List[Any]) -> None:
            profiler.runcall(handle, self, batch)

        Delivery.handle = profiled  # type: ignore[method-assign]
    CLIENTS[which][1](f"{base}/json100/{count}", "json100", handler)
    print(json.dumps(handler.rates()), flush=True)
    if profiler is not None:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--slice", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="one profiled run of the store client, no table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count < args.slice or args.slice < 2:
        parser.error("--count must be at least --slice, and --slice at least 2")
    if args.child:
        child(args.child, args.base, args.count, args.slice, args.profile)
        return
    server = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    results: Dict[str, List[List[float]]] = {which: [] for which in CLIENTS}
    try:
        base = f"ws://127.0.0.1:{int(server.stdout.readline())}"  # type: ignore[union-attr]
        order = ["store"] if args.profile else list(CLIENTS)
        for run in range(1 if args.profile else args.runs):
            for which in order:
                done = subprocess.run(
                    [sys.executable, __file__, "--child", which, "--base", base, "--count", str(args.count),
                     "--slice", str(args.slice)] + (["--profile"] if args.profile else []),
                    capture_output=True, text=True, timeout=1800,
                )
                if done.returncode:
                    raise SystemExit(f"{which} failed:\n{done.stderr}")
                results[which].append(json.loads(done.stdout))
                if args.profile:
                    print(done.stderr)
            print(f"  run {run + 1} of {args.runs} done", file=sys.stderr, flush=True)
    finally:
        server.kill()
        server.wait(10)
    if args.profile:
        return
    print(f"{args.count:,} messages of ~100 B JSON, msg/s per slice of {args.slice:,}; median of {args.runs} runs")
    print(f"{'messages':>20}{CLIENTS['bare'][0][:26]:>30}{'wsbridge + SQLiteStore':>26}{'ratio':>8}")
    columns = {which: [statistics.median(s) for s in zip(*runs, strict=True)] for which, runs in results.items()}
    whole = {which: statistics.median(args.count / sum(args.slice / r for r in runs) for runs in results[which])
             for which in CLIENTS}
    for i, (bare, store) in enumerate(zip(columns["bare"], columns["store"], strict=True)):
        span = f"{i * args.slice + 1:,}-{(i + 1) * args.slice:,}"
        print(f"{span:>20}{bare:>30,.0f}{store:>26,.0f}{store / bare:>7.2f}x")
    print(f"{'whole run':>20}{whole['bare']:>30,.0f}{whole['store']:>26,.0f}{whole['store'] / whole['bare']:>7.2f}x")


if __name__ == "__main__":
    main()
