"""``wsbridge bridge``: receive a feed and append it to a Redis Stream, with failover."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..client import Client
from ..redact import redact_url
from ..runtime.backoff import Backoff
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_connection_options,
    add_handshake_options,
    cli_words,
    client_options,
    positive_float,
    positive_int,
    require_redis,
)

DESCRIPTION = """\
Receive the feed at URL and append every message to a Redis Stream
(PREFIX:FEED:messages), nothing else. Start one on each of several machines for the
same --feed: one holds a lease in Redis and bridges, the others wait; when the holder
dies, a standby takes the lease within about --lease-ttl seconds and resumes the feed
from the positions stored in Redis, so nothing is lost and nothing is appended twice.
While Redis is unreachable, messages wait in a local buffer (--buffer) and are
appended when it answers again.

Read the stream with wsbridge.StreamConsumer (consumer groups), or redis-cli XRANGE.
Status lines go to stderr; SIGTERM or Ctrl-C stops the bridge and releases the lease."""

EPILOG = """\
examples:
  wsbridge bridge wss://feed.example.org/v1 --redis redis://10.0.0.5:6379/0 --feed trades
  wsbridge bridge ws://127.0.0.1:8765/ --redis redis://127.0.0.1:6379/0 --maxlen 1000000
  wsbridge bridge wss://stream.example.com/ws --redis redis://127.0.0.1:6379/0 --feed trades \\
      --send-on-connect '{"op": "subscribe", "channel": "trades"}' --bearer-env FEED_TOKEN

"""


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("bridge", help="append a feed to a Redis Stream (with standby failover)",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the feed")
    parser.add_argument("--redis", required=True, metavar="REDIS_URL", help="redis://host:port/db of the Redis to append to")
    parser.add_argument("--feed", default="default", metavar="NAME", help="the feed's name in Redis (default: default)")
    parser.add_argument("--prefix", default="wsbridge", metavar="P", help="key prefix in Redis (default: wsbridge)")
    parser.add_argument("--maxlen", type=positive_int, metavar="N",
                        help="keep about N entries in the stream (XTRIM MAXLEN ~ after each batch); default: all")
    parser.add_argument("--buffer", type=positive_int, default=100_000, metavar="N",
                        help="messages kept locally while Redis is unreachable (default: 100000)")
    parser.add_argument("--lease-ttl", type=positive_float, default=5.0, metavar="S",
                        help="seconds before a standby takes over from a dead bridge (default: 5)")
    add_handshake_options(parser)
    add_connection_options(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    require_redis()
    from ..redis.bridge import Bridge

    if args.maxlen is not None and args.maxlen < 1 or args.buffer < 0 or args.lease_ttl <= 0:
        raise CliError("--maxlen >= 1, --buffer >= 0 and --lease-ttl > 0 are required", EXIT_USAGE)
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            print(f"wsbridge: bridge {args.feed}: {text}", file=sys.stderr, flush=True)

    options = dict(client_options(args), backoff=Backoff(), resume=args.codec == "wsbridge")
    try:
        Client(args.url, **options)  # checks every option now, as the bridge's clients will (never started)
        bridge = Bridge(args.url, args.redis, feed=args.feed, prefix=args.prefix, maxlen=args.maxlen,
                        buffer_size=args.buffer, lease_ttl=args.lease_ttl, on_event=say, **options)
    except ValueError as exc:
        raise CliError(cli_words(str(exc)), EXIT_USAGE) from None
    signal.signal(signal.SIGTERM, lambda *_: bridge.stop())
    interrupted = False
    worker = threading.Thread(target=bridge.run, name="wsbridge-bridge", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.5)  # wakes for Ctrl-C
    except KeyboardInterrupt:
        interrupted = True
        bridge.stop()
        worker.join(15)
    store, client = bridge.store, bridge.client
    if client is not None and store is not None:
        s = client.stats
        say(f"stopped: {s.dispatched:,} received, {store.appended:,} appended to {redact_url(args.redis)}, "
            f"{store.skipped:,} already there, {s.duplicates:,} duplicates, {s.reconnects} reconnects, "
            f"{bridge.terms} term(s) holding the lease")
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if bridge.gave_up else EXIT_OK
