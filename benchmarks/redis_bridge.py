"""Redis Streams: appends/s from one bridge, and end-to-end throughput with 1, 2 and 4 consumer processes.

    python benchmarks/redis_bridge.py [--count 100000] [--runs 3]

Starts a redis-server (append-only file, fsync every second) and `blaster.py`
in processes of their own. Rows, medians over the runs:

* redis-py pipeline: ``XADD`` of the same ~100 B messages in pipelines of 512,
  no WebSocket: what one Python client gets into Redis, the baseline;
* bridge: a `Client` receiving ~100 B JSON from the blaster, appending to a
  `RedisStreamStore` before dispatch (its append script: dedup by seq,
  positions, handled mark), and the same fenced by a `Lease`, as
  ``wsbridge bridge`` runs;
* end to end, with 1, 2 and 4 `StreamConsumer` processes in one group: from
  the bridge's start to the last message acknowledged, while the bridge
  appends. On 2 cores the bridge, the blaster, Redis and the consumers share
  the CPU, so more consumers add contention as much as capacity.

Beside each rate, the CPU time Redis spent per message in that row (its
``used_cpu_user`` and ``used_cpu_sys``, medians): the cost the store's append
script adds on the Redis side, which a busy machine's wall clock hides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from receive import Stopwatch  # noqa: E402

import wsbridge  # noqa: E402
from wsbridge.redis.store import connect  # noqa: E402
from wsbridge.testing.redis import RedisServer  # noqa: E402

MESSAGE = b'{"type":"tick","seq":%d,"sym":"ACME","px":101.25,"qty":300,"side":"buy","venue":"X"}'


def pipeline_baseline(redis_url: str, count: int) -> float:
    r = connect(redis_url)
    start = time.perf_counter()
    for base in range(0, count, 512):
        pipe = r.pipeline(transaction=False)
        for seq in range(base + 1, min(count, base + 512) + 1):
            pipe.xadd("baseline:messages", {"type": "tick", "seq": seq, "payload": MESSAGE % seq, "at": time.time()})
        pipe.execute()
    rate = count / (time.perf_counter() - start)
    r.delete("baseline:messages")
    r.close()
    return rate


def bridge(blaster: str, redis_url: str, feed: str, count: int, fenced: bool) -> float:
    lease = None
    if fenced:
        lease = wsbridge.Lease(redis_url, f"wsbridge:{feed}:lease", ttl=5)
        lease.acquire(timeout=10)
    store = wsbridge.RedisStreamStore(redis_url, feed=feed, lease=lease)
    watch = Stopwatch(count)
    client = wsbridge.Client(f"{blaster}/json100/{count}", store=store, pull_buffer=0,
                             backoff=wsbridge.NO_RETRY, ping_interval=0,  # blaster.py answers no ping
                             codec=wsbridge.JsonCodec.conventions())
    client.on_any(watch)
    client.start()
    try:
        if not watch.done.wait(300):
            raise RuntimeError(f"the bridge did not finish: {client.stats}")
    finally:
        client.stop()
        if lease is not None:
            lease.close()
    if store.appended != count:
        raise RuntimeError(f"{store.appended} of {count} appended")
    return watch.result()


def end_to_end(blaster: str, redis_url: str, feed: str, count: int, consumers: int) -> float:
    procs = [subprocess.Popen([sys.executable, __file__, "--consumer", redis_url, feed, f"c{i}"],
                              stdout=subprocess.PIPE, text=True) for i in range(consumers)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a consumer did not start")
        r = connect(redis_url)
        start = time.perf_counter()
        appended = threading.Thread(target=bridge, args=(blaster, redis_url, feed, count, True))
        appended.start()
        last = f"{count}-0".encode()
        while True:  # a benchmark's poll: 5 ms resolution on runs of seconds
            group = r.xinfo_groups(f"wsbridge:{feed}:messages")[0]
            if group["last-delivered-id"] == last and group["pending"] == 0:
                break
            time.sleep(0.005)
        elapsed = time.perf_counter() - start
        appended.join(60)
        r.close()
        return count / elapsed
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)


def redis_cpu(admin: Any) -> float:
    """CPU seconds the Redis server has used so far (user and system)."""
    info = admin.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def consumer_child(redis_url: str, feed: str, name: str) -> None:
    import signal

    consumer = wsbridge.StreamConsumer(redis_url, feed, group="bench", name=name)
    consumer.on_any(lambda message: None)
    consumer._ensure_group()
    signal.signal(signal.SIGTERM, lambda *_: consumer.stop(timeout=0))
    consumer.start()
    print("ready", flush=True)
    consumer.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--consumer", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        consumer_child(*args.consumer)
        return
    rows: List[tuple] = [("redis-py XADD pipeline (512 per round trip)", []), ("bridge: Client + RedisStreamStore", []),
                         ("  same, fenced by a Lease", [])] + [(f"end to end, {n} consumer process{'es' if n > 1 else ''}", [])
                                                                for n in (1, 2, 4)]
    blaster_proc = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    with RedisServer() as redis_server:
        try:
            blaster = f"ws://127.0.0.1:{int(blaster_proc.stdout.readline())}"
            url = redis_server.url
            admin = connect(url)
            cpu: List[List[float]] = [[] for _ in rows]  # Redis's CPU seconds per row and run

            def measure(row: int, run_row: Callable[..., float], *row_args: Any) -> None:
                before = redis_cpu(admin)
                rows[row][1].append(run_row(*row_args))
                cpu[row].append(redis_cpu(admin) - before)

            for run in range(args.runs):
                measure(0, pipeline_baseline, url, args.count)
                measure(1, bridge, blaster, url, f"b{run}", args.count, False)
                measure(2, bridge, blaster, url, f"f{run}", args.count, True)
                for i, n in enumerate((1, 2, 4)):
                    measure(3 + i, end_to_end, blaster, url, f"e{run}-{n}", args.count, n)
                admin.flushall()
                print(f"  run {run + 1} of {args.runs} done", file=sys.stderr, flush=True)
            version = admin.info("server")["redis_version"]
            admin.close()
        finally:
            blaster_proc.kill()
            blaster_proc.wait(10)
    print(f"wsbridge {wsbridge.__version__}, Redis {version} (append-only file, fsync every second), "
          f"{os.cpu_count()} cores; {args.count:,} ~100 B messages, median of {args.runs} runs")
    base = statistics.median(rows[0][1])
    for (label, rates), seconds in zip(rows, cpu, strict=True):
        rate = statistics.median(rates)
        used = statistics.median(seconds) / args.count * 1e6
        print(f"  {label:<46} {rate:>10,.0f} msg/s {rate / base:>6.2f}x   Redis CPU {used:5.1f} us/msg")


if __name__ == "__main__":
    main()
