"""Many clients in one process (a notebook watching many feeds): threads, memory, msg/s.

    python benchmarks/many_clients.py [--clients 1,50,200] [--total 100000] [--runs 3] [--compare TREE]

A server in another process (below, ``--serve``: asyncio on raw sockets, one thread)
holds every connection idle, answering pings, until the client sends a text frame;
then it writes that connection's share of ``--total`` pre-built ~100 B JSON frames
(`blaster.payloads`) in one go. Each (row, N, run) is a fresh process that starts N
clients at once and prints, per N:

* threads: what the N clients added to the process (``threading.enumerate``),
  and per client;
* RSS per client, idle: (RSS once all are connected - RSS before the first) / N;
* RSS per client while receiving: (peak RSS while they receive - RSS before) / N;
* msg/s: every client's share received, from the first "go" to the last message;
* server CPU: the server process's CPU time over that span, as a share of one core
  (well under 100%: the clients, not the server, set the pace).

Rows: N bare websocket-client `WebSocketApp`s (``run_forever(ping_interval=20,
ping_timeout=10, skip_utf8_validation=True)``, an on_message that only counts), and N `wsbridge.Client`s with
their defaults and one subscriber that counts. ``--compare TREE`` adds the wsbridge
row again with another source tree of wsbridge (a checkout of an earlier commit),
labelled with its commit; runs of all rows are interleaved and numbers are medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS = ("bare WebSocketApp", "wsbridge")


# --- the server ----------------------------------------------------------------------------------

class _Peer(asyncio.Protocol):
    """One connection: the upgrade, then pongs for pings, and ``/hold/COUNT``'s frames
    once the client sends a text frame."""

    frames: Dict[int, bytes] = {}

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        self.count: Optional[int] = None
        self.sent = False

    def data_received(self, data: bytes) -> None:
        from wsbridge.testing.raw import CLOSE, PING, PONG, TEXT, accept_response, frame

        self.buf += data
        if self.count is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            request, self.buf = self.buf[:end + 4], self.buf[end + 4:]
            self.count = int(request.split(b"\r\n")[0].split()[1].decode().rsplit("/", 1)[1])
            self.transport.write(accept_response(request))
        while len(self.buf) >= 6:  # client frames are masked: header, 4-byte key, payload
            opcode, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
            at = 2 + {126: 2, 127: 8}.get(n, 0)
            if n >= 126:
                n = int.from_bytes(self.buf[2:at], "big")
            if len(self.buf) < at + 4 + n:
                return
            key, payload = self.buf[at:at + 4], self.buf[at + 4:at + 4 + n]
            self.buf = self.buf[at + 4 + n:]
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            if opcode == PING:
                self.transport.write(frame(payload, PONG))
            elif opcode == TEXT and not self.sent:
                self.sent = True
                self.transport.write(self._frames(self.count))
            elif opcode == CLOSE:
                self.transport.write(frame(payload[:2], CLOSE))
                self.transport.close()
                return

    @classmethod
    def _frames(cls, count: int) -> bytes:
        if count not in cls.frames:
            from blaster import payloads

            cls.frames[count] = payloads("json100", count)
        return cls.frames[count]


def serve() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Peer, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# --- a child: N clients of one row ------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    """Counts every client's messages; ``done`` once each got its ``share``."""

    def __init__(self, clients: int, share: int) -> None:
        self.share = share
        self.left = clients
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.last = 0.0

    def handler(self) -> Any:
        n = [0]

        def count(*_args: Any) -> None:
            n[0] += 1
            if n[0] == self.share:
                with self.lock:
                    self.left -= 1
                    if not self.left:
                        self.last = time.perf_counter()
                        self.done.set()
        return count


def child(row: int, url: str, clients: int, share: int, server_pid: int) -> None:
    import websocket

    import wsbridge

    gc.collect()
    threads_before = set(threading.enumerate())
    rss_before = rss_mb()
    counter = Counter(clients, share)
    stop: List[Any] = []
    go: List[Any] = []
    if row == 0:
        opened = threading.Semaphore(0)
        for i in range(clients):
            count = counter.handler()
            app = websocket.WebSocketApp(url, on_open=lambda _app: opened.release(),
                                         on_message=lambda _app, _data, count=count: count())
            thread = threading.Thread(target=app.run_forever, name=f"bare-{i}", daemon=True,
                                      kwargs={"ping_interval": 20, "ping_timeout": 10, "skip_utf8_validation": True})
            thread.start()
            go.append(lambda app=app: app.send("go"))
        for _ in range(clients):
            if not opened.acquire(timeout=120):
                raise SystemExit("the bare apps did not all connect")
    else:
        made = []
        for i in range(clients):
            client = wsbridge.Client(url, name=f"c{i}")
            client.on("tick", counter.handler())
            client.start()
            made.append(client)
            stop.append(lambda client=client: client.stop(timeout=30))
            go.append(lambda client=client: client.send("go"))
        for client in made:
            client.wait_connected(timeout=120)
    gc.collect()
    time.sleep(1.0)  # settled: every thread started, the first allocations done
    added = [t for t in set(threading.enumerate()) - threads_before if t.is_alive()]
    rss_idle = rss_mb()

    peak = [rss_idle]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
    sampler.start()
    server_cpu = cpu_seconds(server_pid)
    first = time.perf_counter()
    for send in go:
        send()
    if not counter.done.wait(600):
        raise SystemExit(f"not every message came: {counter.left} client(s) short")
    server_cpu = cpu_seconds(server_pid) - server_cpu
    sampling.set()
    sampler.join(10)
    peak[0] = max(peak[0], rss_mb())
    elapsed = counter.last - first
    for end in stop:  # (the bare apps are left to the end of the process: each close waits 3 s for a close frame)
        end()
    print(json.dumps({
        "threads": len(added), "idle": (rss_idle - rss_before) / clients, "receiving": (peak[0] - rss_before) / clients,
        "msgs": clients * share / elapsed, "server_cpu": server_cpu / elapsed,
    }))


# --- the table ---------------------------------------------------------------------------------

def commit_of(tree: str) -> str:
    done = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,50,200", help="numbers of clients, comma-separated")
    parser.add_argument("--total", type=int, default=100_000, help="messages in all, shared among the clients")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--compare", metavar="TREE", help="another wsbridge source tree, measured in the same run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=5, metavar=("ROW", "URL", "N", "SHARE", "SERVER_PID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.child:
        row, url, n, share, pid = args.child
        child(int(row), url, int(n), int(share), int(pid))
        return

    here = os.path.dirname(HERE)
    rows = [(ROWS[0], 0, here), (f"{ROWS[1]} ({commit_of(here)})", 1, here)]
    if args.compare:
        rows.append((f"{ROWS[1]} ({commit_of(args.compare)})", 1, os.path.abspath(args.compare)))
    sizes = [int(n) for n in args.clients.split(",")]
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join([here, HERE])})
    results: Dict[Any, List[Dict[str, float]]] = {}
    try:
        url = f"ws://127.0.0.1:{int(server.stdout.readline())}/hold/"  # type: ignore[union-attr]
        for run in range(args.runs):
            for n in sizes:
                share = max(1, args.total // n)
                for index, (_label, row, tree) in enumerate(rows):
                    done = subprocess.run(
                        [sys.executable, __file__, "--child", str(row), f"{url}{share}", str(n), str(share), str(server.pid)],
                        capture_output=True, text=True, timeout=900,
                        env={**os.environ, "PYTHONPATH": os.pathsep.join([tree, HERE])},
                    )
                    if done.returncode:
                        raise SystemExit(f"{rows[index][0]} with {n} clients failed:\n{done.stderr[-3000:]}")
                    results.setdefault((index, n), []).append(json.loads(done.stdout))
            print(f"  run {run + 1} of {args.runs} done", file=sys.stderr, flush=True)
    finally:
        server.kill()
        server.wait(10)

    import websocket

    print(f"websocket-client {websocket.__version__}, Python {sys.version.split()[0]}, {os.cpu_count()} cores; "
          f"{args.total:,} messages of ~100 B in all, shared among the clients; median of {args.runs} runs")
    print(f"{'client':<30}{'N':>5}{'threads':>9}{'/client':>9}{'idle MB/client':>16}{'recv MB/client':>16}"
          f"{'msg/s':>10}{'server CPU':>12}")
    for n in sizes:
        for index, (label, _row, _tree) in enumerate(rows):
            runs = results[(index, n)]
            med = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            print(f"{label:<30}{n:>5}{med['threads']:>9.0f}{med['threads'] / n:>9.1f}{med['idle']:>16.3f}"
                  f"{med['receiving']:>16.3f}{med['msgs']:>10,.0f}{100 * med['server_cpu']:>11.0f}%")


if __name__ == "__main__":
    sys.exit(main())
