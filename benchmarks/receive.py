"""The receive benchmark: one table of every client variant and wsbridge, measured in the same run.

    python benchmarks/receive.py [--runs 5] [--count 100000] [--rate 10000] [--seconds 3] [--gc on|freeze|off]
                                 [--rows 0,6,...] [--baseline DIR]

A server in another process (`blaster.py`) writes pre-built frames as fast as
the kernel takes them, so the client is the bottleneck. Each row is a client:

* bare websocket-client `WebSocketApp` whose on_message only counts (with
  wsaccel if installed, without it, and with ``skip_utf8_validation=True``),
* a ``create_connection`` + ``recv()`` loop, a ``websockets.sync.client``
  ``recv()`` loop (if websockets is installed),
* a bare `WebSocketApp` + ``json.loads`` + one blinker signal,
* wsbridge with every feature of this release on (decode, sequence tracking,
  ordered dispatch to one subscriber, the pull buffer), with and without
  wsaccel, with an `SQLiteStore` written before dispatch, and with orjson as
  the JSON parser (opt-in, if installed),
* the decoder's limit: `JsonCodec.decode` alone over the same messages in
  memory (with ``json`` and with orjson); a line under the table says what share
  of it the pipeline reaches.

Columns: msg/s for ~100 B JSON text, 4 KiB JSON text, 64 KiB binary, and 64 KiB
binary sent as one message in 16 fragments of 4 KiB (the
ratio is to the bare `WebSocketApp` of the same wsaccel setting); latency
p50/p99 from the server's write to the handler's call at RATE msg/s (every
variant parses the JSON to read the stamp; the first half second is left out);
and the peak RSS of the process. Every (row, run) is a fresh process, and the
runs of all rows are interleaved, so drift on the machine hits all rows alike.
Numbers are medians over the runs. ``--baseline DIR`` adds, after each wsbridge
row, the same row run with the wsbridge package of DIR (another checkout), so a
change is measured beside what it changes, in the same run.

A second table compares wsbridge with the ``websockets.sync`` client on a JSON
market-data feed (book updates of about 300 B), sent plain and compressed with
permessage-deflate (RFC 7692, a window shared across messages, as servers
compress by default): msg/s, and the bytes each message takes on the wire. Its
like-for-like pairs: the ``recv()`` loop and wsbridge with `RawCodec` (neither
decodes), the loop + ``json.loads`` and wsbridge's full pipeline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("json100", "json4k", "bin64k", "frag64k")
FEED_KINDS = ("feed", "zfeed")
"""The JSON feed, plain and compressed (the second table)."""
NO_ACCEL = "(no wsaccel)"


class Stopwatch:
    """A handler that counts calls and notes the time of the first and the ``count``-th."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.n = 0
        self.first = self.last = 0.0
        self.done = threading.Event()

    def __call__(self, *args: Any) -> None:
        self.n += 1
        if self.n == 1:
            self.first = time.perf_counter()
        if self.n == self.count:
            self.last = time.perf_counter()
            self.done.set()

    def result(self) -> float:
        return (self.count - 1) / (self.last - self.first)


class LatencyProbe:
    """A handler that notes (now - the server's stamp) of every message after ``skip``."""

    def __init__(self, count: int, skip: int, parse: Callable[[Any], dict]) -> None:
        self.count, self.skip, self.parse = count, skip, parse
        self.samples: List[float] = []
        self.done = threading.Event()

    def __call__(self, *args: Any) -> None:
        now = time.time()
        msg = self.parse(args[-1])
        if msg["seq"] > self.skip:
            self.samples.append(now - msg["t"])
        if msg["seq"] == self.count:
            self.done.set()

    def result(self) -> Dict[str, float]:
        s = sorted(self.samples)
        return {"p50": s[len(s) // 2] * 1000, "p99": s[min(len(s) - 1, int(0.99 * len(s)))] * 1000}


# --- the clients: each receives from url until the handler is done ------------------------------

def bare_app(url: str, kind: str, handler: Any, on_message: Any = None, **run_options: Any) -> None:
    import websocket

    app = websocket.WebSocketApp(url, on_message=on_message or handler)
    thread = threading.Thread(target=app.run_forever, kwargs=run_options, name="bench-bare", daemon=True)
    thread.start()
    wait(handler)
    app.close()
    thread.join(30)


def bare_skip_utf8(url: str, kind: str, handler: Any) -> None:
    bare_app(url, kind, handler, skip_utf8_validation=True)


def bare_json_blinker(url: str, kind: str, handler: Any) -> None:
    import blinker

    signal = blinker.Signal()
    signal.connect(lambda sender, msg: handler(msg), weak=False)
    bare_app(url, kind, handler, on_message=lambda _app, data: signal.send(None, msg=json.loads(data)))


def recv_loop(url: str, kind: str, handler: Any) -> None:
    import websocket

    ws = websocket.create_connection(url)
    try:
        while not handler.done.is_set():
            handler(ws.recv())
    finally:
        ws.close()


def websockets_sync(url: str, kind: str, handler: Any, done: Optional[threading.Event] = None) -> None:
    from websockets.sync.client import connect

    with connect(url, max_size=None, compression="deflate" if kind == "zfeed" else None) as ws:
        while not (done or handler.done).is_set():
            handler(ws.recv())


def websockets_sync_json(url: str, kind: str, handler: Any) -> None:
    """`websockets_sync`, each message parsed with ``json.loads`` (as wsbridge's pipeline does)."""
    websockets_sync(url, kind, lambda data: handler(json.loads(data)), handler.done)


def wsbridge_client(url: str, kind: str, handler: Any, store: bool = False, loads: Any = None) -> None:
    import wsbridge

    tmp = tempfile.mkdtemp() if store else None
    client = wsbridge.Client(
        url,
        codec=wsbridge.RawCodec() if kind in ("bin64k", "frag64k") else wsbridge.JsonCodec.conventions(loads=loads or json.loads),
        backoff=wsbridge.NO_RETRY,
        ping_interval=0,  # blaster.py does not answer pings
        store=wsbridge.SQLiteStore(os.path.join(tmp, "bench.db")) if tmp else None,
    )
    client.on_any(handler)
    client.start()
    try:
        wait(handler)
    finally:
        client.stop()
        if tmp:
            shutil.rmtree(tmp)


def wsbridge_store(url: str, kind: str, handler: Any) -> None:
    wsbridge_client(url, kind, handler, store=True)


def wsbridge_orjson(url: str, kind: str, handler: Any) -> None:
    import orjson

    wsbridge_client(url, kind, handler, loads=orjson.loads)


def wsbridge_raw(url: str, kind: str, handler: Any) -> None:
    """wsbridge with `RawCodec`: no decoding, as a ``recv()`` loop does none."""
    wsbridge_client(url, "bin64k", handler)  # (the kind that picks RawCodec)


def decode_only(url: str, kind: str, handler: Any, loads: Any = None) -> None:
    """The decoder's limit: `JsonCodec.decode` alone over the same messages, in memory
    (no socket, no thread), each handed to the handler as the pipeline hands it."""
    from blaster import messages

    import wsbridge

    codec = wsbridge.JsonCodec.conventions(loads=loads or json.loads)
    decode = codec.decode
    for data in messages(kind, int(url.rsplit("/", 1)[1])):
        handler(decode(data, False, time.time())[0])


def decode_only_orjson(url: str, kind: str, handler: Any) -> None:
    import orjson

    decode_only(url, kind, handler, loads=orjson.loads)


def wait(handler: Any) -> None:
    if not handler.done.wait(300):
        raise RuntimeError("the client did not receive every message within 300 s")


# (label, client, kinds it is measured on, whether wsaccel is hidden from it)
ROWS = [
    ("bare WebSocketApp, on_message counts", bare_app, KINDS, False),
    (f"  same {NO_ACCEL}", bare_app, KINDS, True),
    ("  same, skip_utf8_validation=True", bare_skip_utf8, KINDS, False),
    ("create_connection + recv() loop", recv_loop, KINDS, False),
    ("websockets.sync.client recv() loop", websockets_sync, KINDS, False),
    ("bare WebSocketApp + json.loads + blinker", bare_json_blinker, ("json100", "json4k"), False),
    ("wsbridge, full pipeline", wsbridge_client, KINDS, False),
    (f"  same {NO_ACCEL}", wsbridge_client, KINDS, True),
    ("  same + SQLiteStore", wsbridge_store, ("json100",), False),
    ("  same, JsonCodec(loads=orjson.loads)", wsbridge_orjson, ("json100", "json4k"), False),
    ("JsonCodec.decode alone, in memory", decode_only, ("json100", "json4k"), False),
    ("  same, loads=orjson.loads", decode_only_orjson, ("json100", "json4k"), False),
    ("websockets.sync.client recv() loop", websockets_sync, FEED_KINDS, False),
    ("  same + json.loads", websockets_sync_json, FEED_KINDS, False),
    ("wsbridge, full pipeline", wsbridge_client, FEED_KINDS, False),
    ("  same, RawCodec (no decoding)", wsbridge_raw, FEED_KINDS, False),
]
DECODERS = {decode_only: wsbridge_client, decode_only_orjson: wsbridge_orjson}
"""The decoder's-limit rows, and the pipeline row measured against each."""
WSBRIDGE_ROWS = (wsbridge_client, wsbridge_store, wsbridge_orjson, wsbridge_raw)
ORIGIN = list(range(len(ROWS)))
"""The number of each row in ROWS as written (what ``--rows`` names), baseline rows included."""
BEFORE = "  before: "


def with_baseline(baseline: Optional[str]) -> None:
    """With ``--baseline DIR``: after each wsbridge row, the same row with the wsbridge of
    DIR (another checkout, e.g. a detached worktree of the last release), measured in the
    same run, interleaved with the others."""
    if baseline:
        expanded = [(n, r) for n, row in enumerate(ROWS) for r in ([row, (BEFORE + row[0].strip(), *row[1:])]
                                                                   if row[1] in WSBRIDGE_ROWS else [row])]
        ORIGIN[:] = [n for n, _ in expanded]
        ROWS[:] = [r for _, r in expanded]


def parse_for(client: Callable[..., None]) -> Callable[[Any], dict]:
    """How a latency probe reads the stamp from what this client hands its handler."""
    if client in (wsbridge_client, wsbridge_store, wsbridge_orjson):
        return lambda msg: msg.payload
    if client is bare_json_blinker:
        return lambda msg: msg
    return json.loads


def child(row: int, base: str, count: int, rate: float, seconds: float, gc_mode: str) -> None:
    """One run of one row, in its own process; prints one JSON line."""
    label, client, kinds, hide_accel = ROWS[row]
    if hide_accel:
        sys.modules["wsaccel"] = None  # type: ignore[assignment]  # makes `import wsaccel` fail
    if gc_mode == "freeze":
        gc.freeze()
    elif gc_mode == "off":
        gc.disable()
    out: Dict[str, Any] = {}
    for kind in kinds:
        n = {"json100": count, "json4k": max(1000, count // 5), "bin64k": max(500, count // 50),
             "frag64k": max(500, count // 50), "feed": max(1000, count // 2), "zfeed": max(1000, count // 2)}[kind]
        watch = Stopwatch(n)
        client(f"{base}/{kind}/{n}", kind, watch)
        out[kind] = watch.result()
        gc.collect()  # the last client's garbage is not the next measurement's to collect
    if "json100" in kinds and client not in DECODERS:
        n = int(rate * seconds)
        probe = LatencyProbe(n, int(rate / 2), parse_for(client))
        client(f"{base}/paced/{rate}/{n}", "json100", probe)
        out.update(probe.result())
    out["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out), flush=True)


def cpu_times() -> List[int]:
    """The machine's CPU time counters (user, nice, system, idle, iowait, irq, softirq, steal), or []."""
    try:
        with open("/proc/stat") as f:
            return [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return []


def available(client: Callable[..., None]) -> Optional[str]:
    module = {websockets_sync: "websockets.sync.client", websockets_sync_json: "websockets.sync.client",
              wsbridge_orjson: "orjson", decode_only_orjson: "orjson"}.get(client)
    if module:
        try:
            __import__(module)
        except ImportError:
            return f"{module.split('.')[0]} is not installed"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=100_000,
                        help="small messages per run (4 KiB: count/5, 64 KiB: count/50, "
                             "so that buffers reach their steady state)")
    parser.add_argument("--rows", help="measure only these rows (comma-separated numbers from 0; for a quick look)")
    parser.add_argument("--rate", type=float, default=10_000, help="msg/s of the latency run")
    parser.add_argument("--seconds", type=float, default=3, help="length of the latency run")
    parser.add_argument("--gc", choices=("on", "freeze", "off"), default="on",
                        help="the garbage collector in every client process: as is, gc.freeze() after imports, or off")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also measure each wsbridge row with the wsbridge package of DIR (a checkout to compare with)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with_baseline(args.baseline)
    if args.child is not None:
        child(args.child, args.base, args.count, args.rate, args.seconds, args.gc)
        return

    import websocket

    import wsbridge

    server = subprocess.Popen([sys.executable, os.path.join(HERE, "blaster.py")], stdout=subprocess.PIPE, text=True)
    results: List[List[Dict[str, Any]]] = [[] for _ in ROWS]
    cpu_before = cpu_times()
    try:
        base = f"ws://127.0.0.1:{int(server.stdout.readline())}"
        for run in range(args.runs):
            for row, (label, client, _kinds, _hide) in enumerate(ROWS):
                if available(client) or (args.rows and str(ORIGIN[row]) not in args.rows.split(",")):
                    continue
                env = dict(os.environ, PYTHONPATH=os.path.abspath(args.baseline)) if label.startswith(BEFORE) else None
                done = subprocess.run(
                    [sys.executable, __file__, "--child", str(row), "--base", base, "--count", str(args.count),
                     "--rate", str(args.rate), "--seconds", str(args.seconds), "--gc", args.gc,
                     *(["--baseline", args.baseline] if args.baseline else [])],
                    capture_output=True, text=True, timeout=900, env=env,
                )
                if done.returncode:
                    raise SystemExit(f"{label.strip()} failed:\n{done.stderr}")
                results[row].append(json.loads(done.stdout))
            print(f"  run {run + 1} of {args.runs} done", file=sys.stderr, flush=True)
    finally:
        server.kill()
        server.wait(10)
    cpu = [b - a for a, b in zip(cpu_before, cpu_times(), strict=True)]

    try:
        import wsaccel  # noqa: F401

        accel = "wsaccel installed"
    except ImportError:
        accel = "no wsaccel installed: the rows marked (no wsaccel) are the same as the rows above them"
    print(f"wsbridge {wsbridge.__version__}, websocket-client {websocket.__version__} ({accel}), "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, gc {args.gc}; median of {args.runs} runs")
    if cpu and sum(cpu):
        # steal: time a virtual machine's CPUs were ready to run but the host ran something else.
        # It makes latency tails that no client can avoid; the single-threaded recv() loops show that floor.
        print(f"CPU time during the run: {100 * (cpu[0] + cpu[1] + cpu[2]) / sum(cpu):.0f}% busy, "
              f"{100 * cpu[7] / sum(cpu):.0f}% stolen by the hypervisor")
    print(f"msg/s and ratio to the bare WebSocketApp; latency at {args.rate:,.0f} msg/s; peak RSS of the process")
    head = f"{'client':<42}" + "".join(f"{h:>19}" for h in ("~100 B JSON", "4 KiB JSON", "64 KiB binary", "64K in 4K frags"))
    print(head + f"{'p50 ms':>9}{'p99 ms':>9}{'RSS MB':>8}")
    median = lambda row, key: statistics.median(r[key] for r in results[row]) if results[row] and key in results[row][0] else None  # noqa: E731
    for row, (label, client, kinds, hide) in enumerate(ROWS):
        if kinds == FEED_KINDS:
            continue  # the second table's
        why = available(client)
        if why:
            print(f"{label:<42}  ({why})")
            continue
        if not results[row] or not results[1 if hide else 0]:
            continue
        bare_row = 1 if hide else 0
        cells = []
        for kind in KINDS:
            ours, bare = median(row, kind), median(bare_row, kind)
            cells.append(f"{ours:>11,.0f} {ours / bare:>5.2f}x" if ours else f"{'-':>19}")
        lat = [median(row, k) for k in ("p50", "p99")]
        print(f"{label:<42}" + "".join(f"{c:>19}" for c in cells)
              + "".join(f"{x:>9.2f}" if x is not None else f"{'-':>9}" for x in lat) + f"{median(row, 'rss'):>8.1f}")
    rows: Dict[Callable[..., None], int] = {}
    for row, (label, client, _kinds, _hide) in enumerate(ROWS):
        if not label.startswith(BEFORE):
            rows.setdefault(client, row)
    for decoder, pipeline in DECODERS.items():
        limit, ours = rows[decoder], rows[pipeline]
        if results[limit] and results[ours]:
            print(f"{ROWS[ours][0].strip()} / {ROWS[limit][0].strip()}: "
                  + ", ".join(f"{kind} {median(ours, kind) / median(limit, kind):.2f}x" for kind in ROWS[limit][2]))
    feed_table(args.count, results, median)


def feed_table(count: int, results: List[List[Dict[str, Any]]], median: Callable[[int, str], Optional[float]]) -> None:
    """The second table: the JSON feed, plain and with permessage-deflate."""
    from blaster import payloads

    n = max(1000, count // 2)
    size = {kind: len(payloads(kind, n)) / n for kind in FEED_KINDS}
    print(f"\nJSON feed ({n:,} book updates): plain, and with permessage-deflate; msg/s and bytes a message on the wire")
    print(f"{'client':<42}{'plain msg/s':>14}{'B/msg':>8}{'deflate msg/s':>16}{'B/msg':>8}{'deflate/plain':>15}")
    for row, (label, _client, kinds, _hide) in enumerate(ROWS):
        if kinds != FEED_KINDS or not results[row]:
            continue
        plain, packed = median(row, "feed"), median(row, "zfeed")
        assert plain and packed
        print(f"{label:<42}{plain:>14,.0f}{size['feed']:>8.0f}{packed:>16,.0f}{size['zfeed']:>8.0f}{packed / plain:>14.2f}x")


if __name__ == "__main__":
    main()
