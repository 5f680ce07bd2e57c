"""``wsbridge send``: send messages, optionally wait for a reply."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Iterator, Tuple

from ..errors import ClientClosed
from ..message import Message
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    add_codec_options,
    add_connection_options,
    check_message,
    make_client,
    message_json,
    positive_float,
    printable,
    wait_connected,
)

DESCRIPTION = """\
Connect to URL, send each MESSAGE (or, with none given, each line of stdin, as it
arrives) as one text frame, in order, and close. With the json codec every message must be valid JSON;
with pipe, TYPE|LENGTH|PAYLOAD; raw sends the text as is. With --wait-for T, wait for
the first message of type T after sending and print it as one JSON object (with
--type-field, the type is read from another field). Options may come before, between
or after the messages."""

EPILOG = """\
examples:
  wsbridge send ws://127.0.0.1:8765/ '{"type": "join", "room": "lobby"}'
  wsbridge send ws://127.0.0.1:8765/ '{"type": "ping"}' --wait-for pong --timeout 5
  wsbridge send wss://host/rpc --timeout 3 '{"event": "ping"}' --type-field event --wait-for pong
  jq -c '.[]' orders.json | wsbridge send wss://host/orders --bearer-env ORDERS_TOKEN

"""


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("send", help="send messages (from arguments or stdin), optionally wait for a reply",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL")
    parser.add_argument("messages", nargs="*", metavar="MESSAGE", help="a message to send (default: read lines from stdin)")
    parser.add_argument("--wait-for", metavar="T", help="after sending, wait for a message of type T and print it")
    parser.add_argument("--timeout", type=positive_float, default=10.0, metavar="S",
                        help="seconds to connect, and to wait for the reply (default: 10)")
    add_codec_options(parser, tracking=False)
    add_connection_options(parser)
    parser.set_defaults(func=run)
    return parser


def _stdin_lines() -> Iterator[Tuple[str, str]]:
    """Lines of stdin as they arrive (not all of it first: `tail -f log | wsbridge send URL`
    sends as it goes), each with where it is, for errors: ``("stdin line 3", text)``."""
    if sys.stdin.isatty():
        print("wsbridge send: reading messages from stdin, one per line; Ctrl-D ends", file=sys.stderr, flush=True)
    for number, line in enumerate(iter(sys.stdin.readline, ""), 1):
        if line.strip():
            yield f"stdin line {number}", line.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    for number, text in enumerate(args.messages, 1):
        try:
            check_message(text, args.codec)  # arguments: all checked before anything is sent
        except CliError as exc:
            raise CliError(f"MESSAGE {number}: {exc} (nothing was sent)", exc.code) from None
    texts: Iterable[Tuple[str, str]] = [("", text) for text in args.messages] or _stdin_lines()
    client = make_client(args, retry=False, resume=False)
    sent = 0
    ended = False  # the connection ended (the client gave up) while there was more to send
    reply: Message = None  # type: ignore[assignment]
    try:
        client.start()
        wait_connected(client, args.timeout)
        for where, text in texts:
            try:
                check_message(text, args.codec)  # a stdin line: checked as it comes; those before it are sent
            except CliError as exc:
                raise CliError(f"{where}: {exc} ({sent} message(s) before it were sent; the rest of stdin was not "
                               "read)", exc.code) from None
            try:
                client.send(text)
            except ClientClosed:
                ended = True
                break
            sent += 1
        if not sent and not ended:
            raise CliError("nothing to send: give MESSAGE arguments or lines on stdin", EXIT_USAGE)
        if args.wait_for and not ended:
            try:
                reply = client.wait_for(args.wait_for, timeout=args.timeout)
            except (TimeoutError, ClientClosed):
                raise CliError(f"sent {sent} message(s); no {args.wait_for!r} message came back within {args.timeout} s",
                               EXIT_FAILURE) from None
    finally:
        client.stop(timeout=5)
        unsent = len(client.unsent())
    written = sent - unsent  # what the socket took: whether the server read it, WebSocket does not say
    if unsent or ended:
        total = len(args.messages) if args.messages else sent + int(ended)  # from stdin: the lines read
        rest = "; the rest of stdin was not read" if ended and not args.messages else ""
        raise CliError(f"{total - sent + unsent} of {total} message(s) were not sent (the connection ended first{rest}); "
                       f"{written} written to the socket", EXIT_FAILURE)
    if reply is not None:
        try:
            print(message_json(reply), flush=True)
        except OSError as exc:  # stdout is gone or full: say so, as listen does
            raise CliError(f"the {args.wait_for!r} reply came but could not be printed ({type(exc).__name__}: "
                           f"{printable(str(exc))})", EXIT_FAILURE) from None
    print(f"wsbridge: {written} message(s) written to the socket", file=sys.stderr, flush=True)
    return EXIT_OK
