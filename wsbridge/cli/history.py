"""``wsbridge history``: read a store back."""

from __future__ import annotations

import argparse
import datetime
import sys
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
                        help="received at or after TIME: ISO 8601 (local time unless it says) or seconds since the epoch")
    parser.add_argument("--after-seq", type=non_negative_int, metavar="N", help="only sequence ids above N")
    parser.add_argument("--limit", type=positive_int, metavar="N", help="at most N messages")
    parser.add_argument("--json-lines", action="store_true", help="one JSON object per message")
    parser.set_defaults(func=run)
    return parser


def parse_time(text: Optional[str]) -> Optional[float]:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since wants ISO 8601 (2026-11-28T09:00) or epoch seconds, not {text!r}", EXIT_USAGE) from None
    return moment.timestamp()  # naive: local time


def open_store(args: argparse.Namespace) -> Store:
    if args.file.startswith(("redis://", "rediss://", "unix://")):
        require_redis()
        from ..redis.store import RedisStreamStore

        return RedisStreamStore(args.file, feed=args.feed, prefix=args.prefix)
    check_store_path(args.file, must_exist=True)
    return SQLiteStore(args.file)


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    since = parse_time(args.since)
    render = message_json if args.json_lines else message_line
    count = 0
    try:
        for msg in store.iter_history(args.type, args.stream, since, args.after_seq, args.limit):
            sys.stdout.write(render(msg) + "\n")
            count += 1
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except BrokenPipeError:
        return EXIT_OK
    sys.stdout.flush()
    print(f"wsbridge: {count} message(s)", file=sys.stderr)
    return EXIT_OK
