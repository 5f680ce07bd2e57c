"""The ``wsbridge`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from . import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _print(line: str) -> None:
    print(line, flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from .demo import run_demo
        import websockets  # noqa: F401
    except ImportError:
        print("the demo needs the bundled server: pip install 'wsbridge[server]'", file=sys.stderr)
        return EXIT_FAILURE
    summary = run_demo(_print, burst=args.burst)
    return EXIT_OK if summary["rate"] else EXIT_FAILURE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsbridge",
        description="Receive live WebSocket data from synchronous code.",
    )
    parser.add_argument("--version", action="version", version=f"wsbridge {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug) to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="run the bundled server and a client side by side, then print a tally",
        description="Start the bundled test server on 127.0.0.1, connect a client, show chat, price and "
        "alert messages reaching their subscribers, echo a message, measure a burst, and exit.",
    )
    demo.add_argument("--burst", type=int, default=50_000, metavar="N", help="messages in the timed burst (default 50000)")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO, stream=sys.stderr)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
