"""``wsbridge listen``: print a feed's messages, with the full supervisor behind it."""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any, List, Optional

from ..errors import StoreError, StoreInUse
from ..message import Message
from ..redact import redact_url
from ..tracking.sqlite import SQLiteStore
from .common import (
    EXIT_CONNECT,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    Lifecycle,
    add_codec_options,
    add_connection_options,
    add_handshake_options,
    check_store_path,
    explain,
    make_client,
    message_json,
    message_line,
    positive_float,
    positive_int,
    printable,
    summary,
    wait_done,
)

DESCRIPTION = """\
Connect to URL and print every message as it arrives: one line each for a person,
or one JSON object per line (--json-lines) for jq and other tools. Behind it is the
whole client: reconnects with backoff and dead-peer detection; with --codec wsbridge
(a server of wsbridge's conventions, such as `wsbridge serve`) also dedup by sequence
id and a resume request after every reconnect, so a flaky network costs no message.
--seq-field, --id-field and --stream-field name the fields of another feed's JSON:
dedup, order and gap counting by them as the library does (no resume request: its
shape is the feed's own). A feed that wants a subscribe (or a login) first gets it
with --send-on-connect, on every connection, before anything else.

Connection events go to stderr, one line each; on Ctrl-C (or at --max / --timeout)
the client stops cleanly and prints a summary (received, duplicates, gaps, lost,
reconnects) to stderr."""

EPILOG = """\
examples:
  wsbridge listen wss://feed.example.org/v1 --type trade --type quote
  wsbridge listen ws://127.0.0.1:8765/ --json-lines --max 100 | jq .payload
  wsbridge listen wss://host/feed --header 'Authorization: Bearer TOKEN' --store feed.db
  wsbridge listen wss://internal/feed --ca-file company-ca.pem --cert me.pem --key me.key
  wsbridge listen wss://stream.example.com/ws --send-on-connect '{"op": "subscribe", "args": ["trades"]}' \\
      --seq-field seq --stream-field channel --bearer-env FEED_TOKEN --proxy socks5h://127.0.0.1:1080

"""


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("listen", help="print a feed's messages as they arrive",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL of the feed")
    parser.add_argument("--type", dest="types", action="append", metavar="T", help="print only messages of type T (repeatable)")
    parser.add_argument("--json-lines", action="store_true", help="one JSON object per message on stdout")
    parser.add_argument("--store", metavar="FILE",
        help="keep every message in an SQLite store; the next run first prints what this one did not "
             "(with --type, what that filter did not: each filter keeps its own place)")
    parser.add_argument("--max", type=positive_int, metavar="N",
        help="stop after N messages (exit 1 if fewer arrive before --timeout)")
    parser.add_argument("--timeout", type=positive_float, metavar="S", help="stop after S seconds")
    parser.add_argument("--no-retry", action="store_true", help="connect once; exit 3 if that fails (default: keep retrying)")
    add_codec_options(parser, tracking=True)
    add_handshake_options(parser)
    add_connection_options(parser)
    parser.set_defaults(func=run)
    return parser


def _pretty_writer() -> Optional[Any]:
    """On a terminal: lines with numbers, strings and keys highlighted (``rich``, if installed)."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console(highlight=True, soft_wrap=True)
    return lambda line: console.print(line, markup=False, emoji=False)


class PrintedStore(SQLiteStore):
    """The store of ``listen --store``: it marks handled only what was printed. Once a
    message could not be (stdout closed or failing), the mark stays before it, so the
    next run prints it and what came after it."""

    stuck = False
    """Set by the subscriber, read here: both on the dispatcher thread."""

    def mark_handled(self, key: int) -> None:
        if not self.stuck:
            super().mark_handled(key)


def run(args: argparse.Namespace) -> int:
    store = None
    if args.store:
        check_store_path(args.store, must_exist=False)
        # Filtered, it moves a handled mark of its own: the messages it does not
        # print stay unhandled for a run that prints everything.
        reader = "type:" + json.dumps(sorted(set(args.types))) if args.types else None
        store = PrintedStore(args.store, reader=reader)
    client = make_client(args, retry=not args.no_retry, store=store, pull_buffer=0)
    lifecycle = Lifecycle(client)
    done = threading.Event()
    count = [0]
    broken = [False]  # stdout failed: nothing more is printed (dispatcher thread)
    unprinted: List[str] = []  # why a message could not be printed (dispatcher thread)
    out = sys.stdout
    render = message_json if args.json_lines else message_line
    write = _pretty_writer() if out.isatty() and not args.json_lines else None

    def show(msg: Message) -> None:
        if broken[0] or (args.max is not None and count[0] >= args.max):
            return
        try:
            if write is not None:
                write(render(msg))
            else:
                out.write(render(msg) + "\n")
                out.flush()
        except Exception as exc:  # stdout is gone (`| head`) or fails: stop here, leaving the rest unhandled
            broken[0] = True
            if store is not None:
                store.stuck = True
            if not isinstance(exc, BrokenPipeError):  # the reader of `| head` left on purpose
                unprinted.append(f"{type(exc).__name__}: {exc}")
            client.stop(timeout=0)
            done.set()
            return
        count[0] += 1
        if args.max is not None and count[0] >= args.max:
            # Stop now, from here: the messages queued behind this one are not
            # delivered, so a store does not mark them handled: the next run shows them.
            client.stop(timeout=0)
            done.set()

    filtered = [0]  # messages of types --type did not ask for (dispatcher thread)
    if args.types:
        for mtype in args.types:
            client.on(mtype, show)
        wanted = frozenset(args.types)

        def tally(msg: Message) -> None:
            if msg.type not in wanted:
                filtered[0] += 1

        client.on_any(tally)
    else:
        client.on_any(show)
    gave_up = threading.Event()

    def on_gave_up(sender: Any, **kw: Any) -> None:
        gave_up.set()
        done.set()

    client.signals.gave_up.connect(on_gave_up)

    interrupted = False
    try:
        try:
            client.start()
        except StoreInUse as exc:  # may work later: a failure, not a usage error
            raise CliError(str(exc)) from None
        except StoreError as exc:  # a file that can never be a store
            raise CliError(str(exc), EXIT_USAGE) from None
        wait_done(done, args.timeout)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        client.stop(timeout=5)
    # Messages can come before `connected` (it waits for the send buffer to be
    # flushed, and `connects` counts once the supervisor saw the socket open): a
    # socket that opened counts, even if the run ended before either, and one that
    # delivered a frame surely opened.
    reached = args.max is not None and count[0] >= args.max  # perhaps all from the store, before connecting
    stats = client.stats
    opened = lifecycle.ever_connected or stats.connects > 0 or stats.frames > 0
    if opened and not lifecycle.ever_connected:
        lifecycle.connected(client, url=redact_url(client.url))
    if interrupted and not opened:
        lifecycle.say("interrupted before a connection opened" +
                      (f": {explain(client.last_error, client.url)}" if client.last_error is not None else ""))
    if opened or reached or interrupted:
        # With --type: what it printed and what it left out, not all that was received.
        counted = f"printed {count[0]:,}, filtered out {filtered[0]:,} (other types)" if args.types else None
        lifecycle.say(summary(client, counted) + (", not printed 1" if unprinted else ""))
    if interrupted:
        return EXIT_INTERRUPTED
    if unprinted:
        kept = "; the store keeps it and the next run with --store prints it" if store is not None else ""
        raise CliError(f"stopped: message {count[0] + 1} could not be printed ({printable(unprinted[0])}){kept}",
                       EXIT_FAILURE)
    if not reached and (not opened or (gave_up.is_set() and args.no_retry is False)):
        raise CliError(explain(client.last_error, client.url), EXIT_CONNECT)
    if args.max is not None and count[0] < args.max:
        when = f"within {args.timeout:g} s" if args.timeout is not None else "before the connection ended"
        raise CliError(f"{count[0]} of {args.max} messages arrived {when}", EXIT_FAILURE)
    return EXIT_OK
