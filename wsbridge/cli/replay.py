"""``wsbridge replay``: play a stored feed back, printed as `listen` prints a live one."""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional

from ..client import Client
from ..errors import ClientClosed
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_codec_options,
    make_codec,
    message_json,
    message_line,
)
from .history import TIME_FORMS, open_store, parse_time

DESCRIPTION = """\
Play the messages kept in STORE (an SQLite store written by `wsbridge listen --store`
or by a client with store=SQLiteStore(...); or a Redis URL with --feed) back through
a client, as a live feed: decoded again from the frames the store kept, at the pace
they were received (--speed 1), faster (--speed 10), or as fast as they can be printed
(--speed max); printed as `listen` prints them. The store is only read: a client may
be writing it meanwhile, and its handled marks do not move."""

EPILOG = """\
examples:
  wsbridge replay feed.db --speed 10 --type trade
  wsbridge replay feed.db --speed max --since 2026-11-28T09:00 --json-lines | jq .payload.px
  wsbridge replay redis://127.0.0.1:6379/0 --feed trades --speed 1

"""

REPLAY_URL = "ws://127.0.0.1/"
"""The URL of the client behind a replay: never dialled (a replay never connects)."""


def speed_arg(text: str) -> Optional[float]:
    """``--speed``: a number > 0, or ``max`` (None: as fast as possible)."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number > 0 (1: as recorded, 10: ten times faster) or max, not {text!r}") \
            from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"a number > 0 (1: as recorded, 10: ten times faster) or max, not {text!r}")
    return value


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("replay", help="play a stored feed back, as a live one",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", metavar="STORE", help="the store's SQLite file, or a redis:// URL (with --feed)")
    parser.add_argument("--feed", default="default", metavar="NAME", help="with a Redis URL: the feed (default: default)")
    parser.add_argument("--prefix", default="wsbridge", metavar="P", help="with a Redis URL: the key prefix (default: wsbridge)")
    parser.add_argument("--speed", type=speed_arg, default=1.0, metavar="1|10|max",
                        help="1: the recorded pace (default), N: N times faster, max: as fast as possible")
    parser.add_argument("--type", dest="types", action="append", metavar="T", help="only messages of type T (repeatable)")
    parser.add_argument("--since", metavar="TIME",
                        help="received at or after TIME: " + TIME_FORMS + ", e.g. --since 1h")
    parser.add_argument("--json-lines", action="store_true", help="one JSON object per message on stdout")
    parser.add_argument("--codec", choices=("json", "wsbridge"), default="json",
                        help="how the kept frames are read again: json (the type only), or wsbridge (also seq, id and "
                             "stream, printed as `listen --codec wsbridge` prints them)")
    add_codec_options(parser, tracking=False)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    store = open_store(args)
    since = parse_time(args.since)
    try:
        codec = make_codec(args)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    # The pull buffer blocks when full: the replay waits for the printing, nothing is dropped.
    client = Client(REPLAY_URL, codec=codec, name="wsbridge-cli-replay", pull_overflow="block")
    render = message_json if args.json_lines else message_line
    out = sys.stdout
    unprinted: List[str] = []
    count = 0
    try:
        replay = client.replay(store, speed=args.speed, types=args.types, since=since)
        try:
            for msg in client.messages():  # the pull API: printed on this thread, as they are delivered
                out.write(render(msg) + "\n")
                out.flush()
                count += 1
        except ClientClosed:
            pass
        except BrokenPipeError:  # the reader of `| head` left on purpose
            return EXIT_OK
        except OSError as exc:
            unprinted.append(f"{type(exc).__name__}: {exc}")
        replay.wait()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        client.stop(timeout=5)
    print(f"wsbridge: replayed {count:,} message(s)", file=sys.stderr)
    if replay.error is not None:
        raise CliError(f"reading {store!r} failed after {replay.fed} message(s): {replay.error}")
    if unprinted:
        raise CliError(f"stopped: message {count + 1} could not be printed ({unprinted[0]})", EXIT_FAILURE)
    return EXIT_OK

