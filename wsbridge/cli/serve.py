"""``wsbridge serve``: the bundled test server as a local tool."""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from typing import Any, List, Optional

from ..codecs import CODECS, codec_by_name
from ..errors import install_hint
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, CliError, non_negative_int, port_number, positive_float

DESCRIPTION = """\
Run wsbridge's bundled WebSocket server (needs the server extra) on HOST:PORT
(127.0.0.1 by default) until Ctrl-C or --duration:

  echo       send every message back to its sender
  broadcast  a chat room: every message goes to every client
  feed       publish numbered messages (seq) from --script and/or --ticks, keep them,
             and answer resume requests, so clients that reconnect miss nothing
  document   one shared JSON document that clients edit with JSON Patch

Fault injection, to see a client cope: --cut-every S drops every connection at the
TCP level every S seconds; in feed mode --resend N resends N old messages on every
resume (duplicates), --skip IDS leaves those sequence ids out the first time (gaps),
--reorder swaps messages in pairs."""

EPILOG = """\
examples:
  wsbridge serve --mode broadcast --port 8765
  wsbridge serve --mode feed --ticks 500 --cut-every 2 --resend 5
  wsbridge serve --mode echo --script hello.jsonl   # a JSON object per line, sent on connect

"""


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("serve", help="run the bundled server: echo, chat room, feed or document, with faults on demand",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=port_number, default=8765, help="port (default: 8765; 0 picks a free one)")
    parser.add_argument("--mode", choices=("echo", "broadcast", "feed", "document"), default="echo",
                        help="what the server does (default: echo)")
    parser.add_argument("--codec", choices=sorted(set(CODECS) - {"msgpack"}), default="json",  # its script is JSON lines
                        help="wire format of --script and --ticks (default: json)")
    parser.add_argument("--script", metavar="FILE",
                        help="messages, one JSON object per line: sent to each client on connect, or published in feed mode")
    parser.add_argument("--ticks", type=positive_float, metavar="RATE",
        help="feed mode: publish synthetic price ticks, RATE per second")
    parser.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    chaos = parser.add_argument_group("fault injection")
    chaos.add_argument("--cut-every", type=positive_float, metavar="S", help="drop every client's TCP connection every S seconds")
    chaos.add_argument("--resend", type=non_negative_int, default=0, metavar="N",
        help="feed: resend N earlier messages on every resume")
    chaos.add_argument("--skip", default="", metavar="IDS", help="feed: comma-separated sequence ids left out the first time")
    chaos.add_argument("--reorder", action="store_true", help="feed: send messages in swapped pairs")
    parser.set_defaults(func=run)
    return parser


def _script(path: Optional[str]) -> List[dict]:
    if not path:
        return []
    items = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):  # noqa: B007 - ``number`` is read by the ValueError handler below
                if line.strip():
                    item = json.loads(line)
                    if not isinstance(item, dict):
                        raise ValueError("not a JSON object")
                    items.append(item)
    except OSError as exc:
        raise CliError(f"cannot read --script: {exc}", EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(f"--script {path}, line {number}: {exc}", EXIT_USAGE) from None
    return items


def run(args: argparse.Namespace) -> int:
    try:
        from ..testing import DocumentServer, Server
    except ImportError:
        raise CliError(f"serve needs the bundled server: {install_hint('server')}") from None
    try:
        skip = {int(x) for x in args.skip.split(",") if x.strip()}
    except ValueError:
        raise CliError("--skip wants comma-separated integers", EXIT_USAGE) from None
    if args.mode != "feed" and (args.ticks or args.resend or skip or args.reorder):
        raise CliError("--ticks, --resend, --skip and --reorder go with --mode feed", EXIT_USAGE)
    script = _script(args.script)
    options: dict = dict(host=args.host, port=args.port, codec=codec_by_name(args.codec), name="wsbridge-serve")
    if args.mode == "document":
        if args.codec != "json":
            raise CliError("--mode document speaks JSON", EXIT_USAGE)
        server: Server = DocumentServer({}, **options)
    elif args.mode == "feed":
        server = Server(feed_from="start", resend=args.resend, skip=skip, reorder=args.reorder, **options)
    else:
        server = Server(echo=args.mode == "echo", broadcast=args.mode == "broadcast", script=script, **options)
    try:
        server.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(f"serving {args.mode} on {server.url}", flush=True)
    if args.mode == "feed" and script:
        server.publish_many(script)
    stop = threading.Event()
    start = time.monotonic()
    next_cut = start + args.cut_every if args.cut_every else None
    rng = random.Random()
    prices = {"ACME": 101.0, "GLOBEX": 42.0, "INITECH": 7.5}
    published = 0
    interrupted = False
    try:
        while not stop.is_set():
            now = time.monotonic()
            if args.duration is not None and now - start >= args.duration:
                break
            if next_cut is not None and now >= next_cut:
                server.drop_clients()
                next_cut += args.cut_every
            if args.ticks:
                due = int((now - start) * args.ticks) - published
                if due > 0:
                    batch = []
                    for _ in range(due):
                        sym = rng.choice(list(prices))
                        prices[sym] = round(prices[sym] * (1 + rng.uniform(-0.002, 0.002)), 2)
                        batch.append({"type": "tick", "sym": sym, "px": prices[sym], "qty": rng.randrange(1, 10) * 100})
                    server.publish_many(batch)
                    published += due
            stop.wait(0.02 if args.ticks else 0.2)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        server.stop()
    print(f"stopped after {time.monotonic() - start:.1f} s; {server.connections_total} connection(s), "
          f"{len(server.received)} message(s) received, {len(server.history)} published", flush=True)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK
