"""``wsbridge consume``: handle a feed from Redis as one consumer of a group, printing each message."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..message import Message
from ..redact import redact_url
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    message_json,
    message_line,
    non_negative_float,
    positive_float,
    positive_int,
    require_redis,
    wait_done,
)

DESCRIPTION = """\
Read the feed NAME that `wsbridge bridge` (or a RedisStreamStore) appends to in the Redis
at REDIS_URL, as consumer --name of the consumer group --group, and print every message:
one line each for a person, or one JSON object per line (--json-lines). Each message is
acknowledged (XACK) once printed. Consumers of one group share the messages; every group
sees all of them; messages a dead consumer left pending for --claim-idle seconds are
claimed and printed by a live one.

Status goes to stderr; Ctrl-C or SIGTERM stops after the batch in hand (acknowledged)."""

EPILOG = """\
examples:
  wsbridge consume redis://127.0.0.1:6379/0 --feed trades --group audit --name "$HOSTNAME"
  wsbridge consume redis://10.0.0.5:6379/0 --feed trades --group tail --from-now --json-lines | jq .payload

"""


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("consume", help="print a feed from Redis as one consumer of a group",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("redis", metavar="REDIS_URL", help="redis://host:port/db")
    parser.add_argument("--feed", default="default", metavar="NAME", help="the feed's name (default: default)")
    parser.add_argument("--prefix", default="wsbridge", metavar="P", help="key prefix in Redis (default: wsbridge)")
    parser.add_argument("--group", default="wsbridge-cli", metavar="G", help="consumer group (default: wsbridge-cli)")
    parser.add_argument("--name", default="cli", metavar="N", help="this consumer's name in the group (default: cli)")
    parser.add_argument("--from-now", action="store_true",
                        help="a new group starts at the end of the stream (default: its start)")
    parser.add_argument("--type", dest="types", action="append", metavar="T",
                        help="print only messages of type T (repeatable; others are acknowledged too)")
    parser.add_argument("--json-lines", action="store_true", help="one JSON object per message on stdout")
    parser.add_argument("--max", type=positive_int, metavar="N", help="stop after N printed messages")
    parser.add_argument("--timeout", type=positive_float, metavar="S", help="stop after S seconds")
    parser.add_argument("--claim-idle", type=non_negative_float, default=30.0, metavar="S",
                        help="claim messages another consumer left pending this long (default: 30)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    require_redis()
    from ..redis.consumer import StreamConsumer

    if args.max is not None and args.max < 1 or args.claim_idle < 0:
        raise CliError("--max >= 1 and --claim-idle >= 0 are required", EXIT_USAGE)
    consumer = StreamConsumer(args.redis, args.feed, args.group, args.name, prefix=args.prefix,
                              start_id="$" if args.from_now else "0", claim_idle=args.claim_idle)
    done = threading.Event()
    count = [0]
    render = message_json if args.json_lines else message_line
    wanted = set(args.types or ())

    def show(msg: Message) -> None:
        if (wanted and msg.type not in wanted) or (args.max is not None and count[0] >= args.max):
            return
        try:
            sys.stdout.write(render(msg) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `| head`: the reader is gone; leave the rest pending
            consumer.stop(timeout=0)
            done.set()
            return
        count[0] += 1
        if args.max is not None and count[0] >= args.max:
            consumer.stop(timeout=0)  # from here: what was read but not printed stays pending, not acknowledged
            done.set()

    def say(text: str) -> None:
        print(f"wsbridge: {text}", file=sys.stderr, flush=True)

    where = f"{args.feed} at {redact_url(args.redis)}"
    consumer.on_any(show)
    consumer.signals.connected.connect(lambda sender, **kw: say(f"consuming {where} as {args.name} in group {args.group}"))
    consumer.signals.disconnected.connect(lambda sender, error=None, **kw: say(f"lost Redis ({error}); retrying"))
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    interrupted = False
    consumer.start()
    try:
        wait_done(done, args.timeout)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        consumer.stop()
    say(f"{count[0]:,} printed; {consumer.handled:,} handled, {consumer.acked:,} acknowledged, "
        f"{consumer.claimed:,} claimed from other consumers")
    if interrupted:
        return EXIT_INTERRUPTED
    if args.max is not None and count[0] < args.max:
        raise CliError(f"{count[0]} of {args.max} messages arrived within {args.timeout} s", EXIT_FAILURE)
    return EXIT_OK
