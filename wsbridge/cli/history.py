"""``wsbridge history``: read a store back."""

from __future__ import annotations

import argparse
import datetime
import math
import re
import sys
import time
from typing import Any, Optional

from ..errors import StoreError
from ..tracking.sqlite import SQLiteStore
from ..tracking.store import Store
from .common import (
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    check_store_path,
    message_json,
    message_line,
    non_negative_int,
    positive_int,
    require_redis,
)

DESCRIPTION = """\
Print the messages kept in FILE (an SQLite store written by `wsbridge listen --store`
or by a client with store=SQLiteStore(...)), oldest first. Safe while a client is
still writing to it. FILE may also be a Redis URL (redis://host:port/db) with --feed:
the stream a RedisStreamStore or `wsbridge bridge` appends to (filters are applied
while reading it through)."""

EPILOG = """\
examples:
  wsbridge history feed.db --type trade --limit 20
  wsbridge history feed.db --since 2026-11-28T09:00 --json-lines | jq .payload.px
  wsbridge history feed.db --since 21:00 --until 10m --type trade
  wsbridge history feed.db --stream btc --after-seq 41000
  wsbridge history redis://127.0.0.1:6379/0 --feed trades --limit 10

"""


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("history", help="print the messages kept in a store",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", metavar="FILE", help="the store's SQLite file, or a redis:// URL (with --feed)")
    parser.add_argument("--feed", default="default", metavar="NAME", help="with a Redis URL: the feed (default: default)")
    parser.add_argument("--prefix", default="wsbridge", metavar="P", help="with a Redis URL: the key prefix (default: wsbridge)")
    parser.add_argument("--type", metavar="T", help="only messages of type T")
    parser.add_argument("--stream", metavar="S", help="only stream S")
    parser.add_argument("--since", metavar="TIME",
                        help="received at or after TIME: " + TIME_FORMS + ", e.g. --since 10m or --since 21:01")
    parser.add_argument("--until", metavar="TIME", help="received at or before TIME (the forms of --since), e.g. --until 5m")
    parser.add_argument("--after-seq", type=non_negative_int, metavar="N", help="only sequence ids above N")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="at most N messages")
    parser.add_argument("--json-lines", action="store_true", help="one JSON object per message")
    parser.set_defaults(func=run)
    return parser


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")
TIME_FORMS = "10m, 2h, 30s or 1d ago; 21:01 or 21:01:30 (the last time the clock showed it); ISO 8601 " \
             "(2026-11-28T09:00, local time unless it says); or seconds since the epoch"


def parse_time(text: Optional[str], option: str = "--since", now: Optional[float] = None) -> Optional[float]:
    """``text`` as seconds since the epoch (None stays None): a relative time (``10m``
    ago), a clock time (today in local time, or yesterday if that is still to come),
    ISO 8601 or epoch seconds. ``now`` (default: the time now) is what they count from."""
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # float() takes "nan" and "inf": neither is a moment
            raise CliError(f"{option} wants {TIME_FORMS}; not {text!r}", EXIT_USAGE)
        return seconds
    moment = time.time() if now is None else now
    relative = _RELATIVE.fullmatch(text.strip())
    if relative:
        return moment - float(relative.group(1)) * _UNITS[relative.group(2)]
    clock = _CLOCK.fullmatch(text.strip())
    if clock:
        hour, minute, second = int(clock.group(1)), int(clock.group(2)), int(clock.group(3) or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise CliError(f"{option}: {text!r} is not a time of day", EXIT_USAGE)
        today = datetime.datetime.fromtimestamp(moment).replace(hour=hour, minute=minute, second=second, microsecond=0)
        if today.timestamp() > moment:
            today -= datetime.timedelta(days=1)  # a time still to come today: yesterday's
        return today.timestamp()  # naive: local time
    iso = text.strip()
    if iso[-1:] in ("Z", "z"):  # UTC as ISO 8601 writes it, which fromisoformat reads only from Python 3.11
        iso = iso[:-1] + "+00:00"
    try:
        return datetime.datetime.fromisoformat(iso).timestamp()  # naive: local time
    except ValueError:
        raise CliError(f"{option} wants {TIME_FORMS}; not {text!r}", EXIT_USAGE) from None


def open_store(args: argparse.Namespace) -> Store:
    if args.file.startswith(("redis://", "rediss://", "unix://")):
        require_redis()
        from ..redis.store import RedisStreamStore

        return RedisStreamStore(args.file, feed=args.feed, prefix=args.prefix)
    check_store_path(args.file, must_exist=True)
    return SQLiteStore(args.file)


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    now = time.time()  # --since and --until count from the same moment
    since, until = parse_time(args.since, "--since", now), parse_time(args.until, "--until", now)
    render = message_json if args.json_lines else message_line
    count = 0
    try:
        # --until is read here: the stores filter by --since; --limit counts what is printed.
        limit = args.limit if until is None else None
        for msg in store.iter_history(args.type, args.stream, since, args.after_seq, limit):
            if until is not None and (msg.received_at or 0.0) > until:
                continue
            sys.stdout.write(render(msg) + "\n")
            count += 1
            if count == args.limit:
                break
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except BrokenPipeError:
        return EXIT_OK
    sys.stdout.flush()
    print(f"wsbridge: {count} message(s)", file=sys.stderr)
    return EXIT_OK
