"""The ``wsbridge`` command: listen, connect, send, serve, history, replay, bridge, consume, demo."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from .. import __version__
from ..errors import install_hint
from ..redact import MASK, redact_protocol, redact_url
from . import bridge, connect, consume, history, listen, replay, send, serve
from .common import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliError,
    IntermixedParser,
    positive_float,
    positive_int,
)

__all__ = ["main", "build_parser", "Arguments", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE"]

DESCRIPTION = """\
Live WebSocket data from the command line, on wsbridge's client: reconnects with
backoff, dead-peer detection, dedup and resume by sequence id, an optional SQLite store.
Run `wsbridge COMMAND --help` for each command's options and examples."""


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .. import testing, views  # noqa: F401  (each says what it lacks; the demo needs both)
        from ..demo import run_demo
    except ImportError:
        raise CliError(f"the demo needs the bundled server and the views: {install_hint('server,views')}") from None
    live = sys.stdout.isatty() and not args.plain
    tally = run_demo(lambda line: print(line, flush=True), burst=args.burst, seconds=args.seconds, live=live)
    ok = tally["ended"] and tally["lost"] == 0 and tally["in_order"]
    return EXIT_OK if ok else EXIT_FAILURE


class Arguments(argparse.Namespace):
    """The parsed command line. Its ``repr`` masks what may be secret (a URL's
    password and tokens, every ``--header`` value, the messages ``send`` was given
    and ``--send-on-connect``'s, which may log in, subprotocols that look like
    credentials): tracebacks that show local variables print it."""

    def __repr__(self) -> str:
        shown = {
            name: [f"{h.partition(':')[0]}: {MASK}" if ":" in h else MASK for h in value] if name == "header"
            else f"<{len(value)} message(s)>" if name in ("messages", "send_on_connect") and isinstance(value, list)
            else [redact_protocol(p) for p in value] if name == "subprotocol" and isinstance(value, list)
            else redact_url(value) if isinstance(value, str) and "://" in value else value
            for name, value in vars(self).items() if name != "func"
        }
        return f"Arguments({', '.join(f'{name}={value!r}' for name, value in shown.items())})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsbridge", description=DESCRIPTION, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"wsbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedParser)
    for module in (listen, connect, send, serve, history, replay, bridge, consume):
        module.add_parser(sub, EXIT_CODES)
    demo = sub.add_parser(
        "demo",
        help="a feed through a chaos proxy, live views, and a tally that shows nothing was lost",
        description="Start the bundled server with a feed of ticks and chat, put a proxy that cuts the "
        "connection every second between it and a client, and show the client's views live while it "
        "reconnects, resumes and drops duplicates; then time a burst and print the tally (sent, "
        "received, lost = 0, duplicates dropped, reconnects). Exits by itself in about 10 s.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--burst", type=positive_int, default=20_000, metavar="N",
        help="messages in the timed burst (default 20000)")
    demo.add_argument("--seconds", type=positive_float, default=6.0, metavar="S", help="seconds of the chaos phase (default 6)")
    demo.add_argument("--plain", action="store_true", help="print lines instead of a live display, even on a terminal")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv, namespace=Arguments())
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    else:  # websocket-client logs every lost connection at ERROR; the commands say it better
        logging.getLogger("websocket").setLevel(logging.CRITICAL)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except CliError as exc:
        print(f"wsbridge: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
