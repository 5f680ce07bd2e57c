"""``wsbridge send``: send messages, optionally wait for a reply."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable, Iterator, List, Tuple

from ..errors import ClientClosed
from ..message import Message
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
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
arrives) as one text frame, in order, and close. With the json codec every message
must be valid JSON (a stdin line that is not is reported with its number and skipped:
the rest is sent, and the exit code is 1); with pipe, TYPE|LENGTH|PAYLOAD; raw sends
the text as is. Ctrl-C stops and says how many messages were written (exit 130). With
--wait-for T, wait for the first message of type T after sending and print it as one
JSON object (with --type-field, the type is read from another field). Options may come
before, between or after the messages."""

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


RAW_HINT = "; to send text as it is, not as JSON: --codec raw"


def _stdin_lines() -> Iterator[Tuple[int, str]]:
    """Lines of stdin as they arrive (not all of it first: `tail -f log | wsbridge send URL`
    sends as it goes), each with its line number, for errors."""
    if sys.stdin.isatty():
        print("wsbridge send: reading messages from stdin, one per line; Ctrl-D ends", file=sys.stderr, flush=True)
    for number, line in enumerate(iter(sys.stdin.readline, ""), 1):
        if line.strip():
            yield number, line.rstrip("\r\n")


def run(args: argparse.Namespace) -> int:
    for number, text in enumerate(args.messages, 1):
        try:
            check_message(text, args.codec, RAW_HINT)  # arguments: all checked before anything is sent
        except CliError as exc:
            raise CliError(f"MESSAGE {number}: {exc} (nothing was sent)", exc.code) from None
    texts: Iterable[Tuple[int, str]] = [(0, text) for text in args.messages] or _stdin_lines()
    client = make_client(args, retry=False, resume=False)
    sent = 0
    ended = False  # the connection ended (the client gave up) while there was more to send
    skipped: List[int] = []  # stdin lines the codec refuses: reported, not sent, exit 1 at the end
    interrupted = False  # Ctrl-C: stop, then say what was written
    reply: Message = None  # type: ignore[assignment]
    try:
        client.start()
        wait_connected(client, args.timeout)
        for number, text in texts:
            try:
                check_message(text, args.codec, RAW_HINT)  # a stdin line: checked as it comes
            except CliError as exc:
                skipped.append(number)
                print(f"wsbridge: stdin line {number}: {exc}; skipped", file=sys.stderr, flush=True)
                continue
            try:
                client.send(text)
            except ClientClosed:
                ended = True
                break
            sent += 1
        if not sent and not ended and not skipped:
            raise CliError("nothing to send: give MESSAGE arguments or lines on stdin", EXIT_USAGE)
        if args.wait_for and not ended:
            try:
                reply = client.wait_for(args.wait_for, timeout=args.timeout)
            except (TimeoutError, ClientClosed):
                raise CliError(f"sent {sent} message(s); no {args.wait_for!r} message came back within {args.timeout} s",
                               EXIT_FAILURE) from None
    except KeyboardInterrupt:
        interrupted = True
    finally:
        client.stop(timeout=5)
        unsent = len(client.unsent())
    written = sent - unsent  # what the socket took: whether the server read it, WebSocket does not say
    not_sent = f" ({len(skipped)} stdin line(s) skipped)" if skipped else ""
    if interrupted:
        left = f", {unsent} not sent" if unsent else ""
        print(f"wsbridge: interrupted: {written} message(s) written to the socket{left}{not_sent}", file=sys.stderr,
              flush=True)
        return EXIT_INTERRUPTED
    if unsent or ended:
        total = len(args.messages) if args.messages else sent + int(ended)  # from stdin: the lines read
        rest = "; the rest of stdin was not read" if ended and not args.messages else ""
        raise CliError(f"{total - sent + unsent} of {total} message(s) were not sent (the connection ended first{rest}); "
                       f"{written} written to the socket{not_sent}", EXIT_FAILURE)
    if reply is not None:
        try:
            print(message_json(reply), flush=True)
        except OSError as exc:  # stdout is gone or full: say so, as listen does
            raise CliError(f"the {args.wait_for!r} reply came but could not be printed ({type(exc).__name__}: "
                           f"{printable(str(exc))})", EXIT_FAILURE) from None
    print(f"wsbridge: {written} message(s) written to the socket", file=sys.stderr, flush=True)
    if skipped:
        lines = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        raise CliError(f"{len(skipped)} stdin line(s) were not sent, as --codec {args.codec} refused them "
                       f"(line(s) {lines})", EXIT_FAILURE)
    return EXIT_OK
