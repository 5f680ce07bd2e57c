"""The long leak checks: start/stop cycles and forced reconnects, counting
threads and open file descriptors before and after (the test suite runs
short versions of both; `memory.py` watches RSS over a million messages).

    python benchmarks/soak.py [--cycles 1000] [--reconnects 200]
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time

import wsbridge
from wsbridge.testing import Proxy, Server


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--reconnects", type=int, default=200)
    args = parser.parse_args()
    with Server() as server:
        warm = wsbridge.Client(server.url, name="soak-warm").start()
        warm.wait_connected(timeout=10)
        warm.stop()
        gc.collect()
        threads0, fds0, start = threading.active_count(), fds(), time.perf_counter()
        for i in range(args.cycles):
            client = wsbridge.Client(server.url, name=f"soak-{i}")
            client.start().wait_connected(timeout=10)
            if not client.stop(timeout=10):
                raise SystemExit(f"cycle {i}: threads left running")
        print(f"{args.cycles} start/stop cycles in {time.perf_counter() - start:.1f} s: "
              f"threads {threads0} -> {threading.active_count()}, open fds {fds0} -> {fds()}", flush=True)

        with Proxy(("127.0.0.1", server.port)) as proxy:
            opened = threading.Semaphore(0)
            client = wsbridge.Client(proxy.url, name="soak-r", backoff=wsbridge.Backoff(initial=0.01, max_delay=0.02, jitter=0))
            client.signals.connected.connect(lambda sender, **kw: opened.release())
            client.start().wait_connected(timeout=10)
            opened.acquire(timeout=10)
            threads1, fds1, start = threading.active_count(), fds(), time.perf_counter()
            for n in range(args.reconnects):
                proxy.cut()
                if not opened.acquire(timeout=10):
                    raise SystemExit(f"reconnect {n}: not connected again")
            client.wait_connected(timeout=10)
            time.sleep(0.2)  # the last cut pair's threads end
            print(f"{args.reconnects} forced reconnects in {time.perf_counter() - start:.1f} s: "
                  f"threads {threads1} -> {threading.active_count()}, open fds {fds1} -> {fds()}", flush=True)
            client.stop()


if __name__ == "__main__":
    main()
