"""``wsbridge connect``: an interactive session, as wscat and websocat give one: messages
printed as they come, each typed line sent, with the whole client behind it."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any, List, Mapping, Optional, TextIO, Union

from ..client import Client
from ..codecs import Codec, RawCodec
from ..codecs.base import Frame
from ..errors import ClientClosed, ConnectError, OutboxFull, ProtocolError
from ..message import Message
from ..tracking.resume import default_resume_request
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
    check_message,
    explain,
    make_client,
    make_codec,
    message_json,
    message_line,
    printable,
    summary,
    wait_done,
)

DESCRIPTION = """\
Connect to URL for an interactive session: every message that comes is printed as it
comes (as `listen` prints it: a line for a person, or --json-lines), and every line
typed (or read from stdin) is sent as one text frame, exactly as typed. Plain text
works with the default json codec: a line goes out as typed unless --json asks for
valid JSON (a line that is not is said on stderr and not sent), and a frame the codec
cannot decode (plain text, say) is printed as it came, as --codec raw prints it,
rather than skipped. Blank lines are not sent.

Behind it is the whole client: reconnects with backoff; lines typed while the
connection is down wait in the send buffer and go out in order once it is back, after
--send-on-connect's messages; headers from the environment, proxies, client
certificates. On a terminal, incoming messages are printed above the line being
typed, which is then shown again as it was.

Ctrl-D (the end of stdin) ends the session: lines still waiting in the send buffer get
up to --connect-timeout seconds to go out (exit 1 if some could not, or if a line was
refused); Ctrl-C ends it at once (exit 130). Either way a summary goes to stderr. For
one request and its reply in a script, `wsbridge send --wait-for` is the better tool."""

EPILOG = """\
examples:
  wsbridge connect ws://127.0.0.1:8765/
  wsbridge connect wss://chat.example.org/ws --bearer-env CHAT_TOKEN \\
      --send-on-connect '{"op": "join", "room": "lobby"}'
  wsbridge connect wss://api.example.org/rpc --json --json-lines --proxy http://proxy.internal:3128

"""

PROMPT = "> "


def add_parser(sub: Any, epilog_tail: str) -> argparse.ArgumentParser:
    parser = sub.add_parser("connect", help="an interactive session: messages printed as they come, typed lines sent",
                            description=DESCRIPTION, epilog=EPILOG + epilog_tail,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", metavar="URL", help="ws:// or wss:// URL")
    parser.add_argument("--json", action="store_true",
                        help="send only lines that are valid JSON (default: every line as typed, as text)")
    parser.add_argument("--json-lines", action="store_true", help="print each message as one JSON object")
    parser.add_argument("--no-retry", action="store_true",
                        help="connect once: the session ends with the connection (default: reconnect)")
    add_codec_options(parser, tracking=True)
    add_handshake_options(parser)
    add_connection_options(parser)
    parser.set_defaults(func=run)
    return parser


class ShowUndecoded(Codec):
    """The session's codec: the one chosen, and a frame that one cannot decode as it
    came (type ``text`` or ``binary``, as `RawCodec` gives it) rather than skipped: a
    session shows whatever the server says."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.name = codec.name
        self._raw = RawCodec()

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        try:
            return self.codec.decode(data, binary, received_at)
        except ProtocolError:
            return self._raw.decode(data, binary, received_at)

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        return self.codec.encode(obj)

    def __repr__(self) -> str:
        return f"ShowUndecoded({self.codec!r})"


class Console:
    """Where the session prints, one whole line at a time (the dispatcher thread prints
    messages and events, the input thread and the main thread their own); on a
    terminal, a line comes above the line being typed, which is then drawn again: the
    prompt and what readline holds (without readline, the prompt only: what was typed
    is still sent whole). As a context manager it leaves the terminal's modes as it
    found them, also when the input thread is still inside readline."""

    def __init__(self, out: TextIO, err: TextIO, terminal: bool) -> None:
        self.out, self.err, self.terminal = out, err, terminal
        self.lock = threading.Lock()
        self.reading = False
        """The input thread waits for a line (set by it; read by `show`)."""
        self.readline: Any = None
        self._modes: Optional[List[Any]] = None
        if terminal:
            try:
                import readline  # line editing for input(), and the text typed so far
            except ImportError:
                pass
            else:
                self.readline = readline

    def show(self, text: str, err: bool = False) -> None:
        """Print ``text`` as one line (stdout, or stderr); raises what the stream raises."""
        stream = self.err if err else self.out
        with self.lock:
            if self.terminal and self.reading:
                self.out.write("\r\x1b[K")  # the prompt and the text typed so far, erased
                self.out.flush()
                stream.write(text + "\n")
                stream.flush()
                typed = self.readline.get_line_buffer() if self.readline is not None else ""
                self.out.write(PROMPT + typed)
                self.out.flush()
            else:
                stream.write(text + "\n")
                stream.flush()

    def read(self) -> Optional[str]:
        """The next line (without its end), None at the end of input (the input thread's)."""
        self.reading = True
        try:
            if self.terminal:
                try:
                    return input(PROMPT)
                except EOFError:
                    return None
            line = sys.stdin.readline()
            return line.rstrip("\r\n") if line else None
        finally:
            with self.lock:
                self.reading = False

    def __enter__(self) -> "Console":
        if self.terminal:
            try:
                import termios

                self._modes = termios.tcgetattr(sys.stdin.fileno())
            except (ImportError, OSError):  # no termios (Windows): nothing to restore
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.lock:
            reading, self.reading = self.reading, False  # nothing is drawn again from now on
        if self._modes is not None:  # readline, still waiting in the input thread, changed them
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._modes)
        if self.terminal and reading:
            self.out.write("\n")  # below the prompt (and a ^C)
            self.out.flush()


class Events(Lifecycle):
    """The lifecycle lines of `Lifecycle`, printed above the line being typed."""

    def __init__(self, client: Client, console: Console) -> None:
        self.console = console
        super().__init__(client)

    def say(self, text: str) -> None:
        try:
            self.console.show(f"wsbridge: {text}", err=True)
        except (OSError, ValueError):  # stderr is gone: nothing to tell it
            pass


class Input:
    """The input thread: each line read (typed, or from stdin) checked and sent, until
    the end of input or of the session. It is a daemon: a session that ends otherwise
    (Ctrl-C, the client gave up) leaves it waiting for a line, and the process ends."""

    def __init__(self, client: Client, console: Console, events: Events, check: str, done: threading.Event) -> None:
        self.client, self.console, self.events, self.check, self.done = client, console, events, check, done
        self.typed = 0
        """Lines given to the client to send (the counters are this thread's)."""
        self.refused = 0
        """Lines refused: not valid (``--json``, or not UTF-8), or the send buffer full."""
        self.failed = ""
        """Why stdin could not be read ("": it could)."""
        self.ended = threading.Event()
        """The input ended (Ctrl-D, the end of stdin)."""
        self.thread = threading.Thread(target=self._run, name="wsbridge-connect-input", daemon=True)

    def _run(self) -> None:
        try:
            while not self.done.is_set():
                text = self.console.read()
                if text is None:
                    self.ended.set()
                    break
                if not text.strip():
                    continue
                try:
                    check_message(text, self.check, JSON_ONLY_HINT)  # raw: text, UTF-8
                    self.client.send(text)
                except (CliError, OutboxFull) as exc:
                    self.refused += 1
                    self.events.say(f"not sent: {exc}")
                    continue
                except ClientClosed:
                    break
                self.typed += 1
        except Exception as exc:  # stdin failed (the terminal went away: EIO)
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


JSON_ONLY_HINT = "; without --json, a line is sent as typed"


def run(args: argparse.Namespace) -> int:
    if args.json and args.codec not in ("json", "wsbridge"):
        raise CliError("--json goes with --codec json or wsbridge", EXIT_USAGE)
    codec = make_codec(args)
    resume = (lambda positions: default_resume_request(codec, positions)) if args.codec == "wsbridge" else False
    client = make_client(args, retry=not args.no_retry, codec=ShowUndecoded(codec), resume=resume, pull_buffer=0)
    if hasattr(sys.stdin, "reconfigure"):  # a byte that is not UTF-8 is refused with its line, not a traceback
        sys.stdin.reconfigure(errors="surrogateescape")
    console = Console(sys.stdout, sys.stderr, sys.stdin.isatty() and sys.stdout.isatty())
    events = Events(client, console)
    render = message_json if args.json_lines else message_line
    done = threading.Event()  # the session is over: the input ended, the client gave up, stdout failed
    broken: List[BaseException] = []  # stdout failed: nothing more is printed (dispatcher thread)
    unprinted: List[str] = []  # why, unless the reader left (dispatcher thread)

    def show(msg: Message) -> None:
        if broken:
            return
        try:
            console.show(render(msg))
        except Exception as exc:  # stdout is gone or fails: the session ends
            broken.append(exc)
            if not isinstance(exc, BrokenPipeError):  # the reader of `| head` left on purpose
                unprinted.append(f"{type(exc).__name__}: {exc}")
            done.set()

    def on_gave_up(sender: Any, **kw: Any) -> None:
        gave_up.set()
        done.set()

    gave_up = threading.Event()
    client.on_any(show)
    client.signals.gave_up.connect(on_gave_up)
    typing = Input(client, console, events, args.codec if args.json else "raw", done)
    interrupted = False
    with console:
        try:
            client.start()
            if console.terminal:
                events.say(f"type a line to send it; Ctrl-D ends{' (lines must be JSON)' if args.json else ''}")
            typing.thread.start()
            wait_done(done, None)
            if typing.ended.is_set() and not gave_up.is_set() and not broken and (
                    client.unsent() or not (events.ever_connected or client.stats.frames)):
                try:  # the end of input: what waits gets the time of a connection attempt to go out
                    client.wait_connected(timeout=args.connect_timeout)
                except (ConnectError, TimeoutError, ClientClosed):
                    pass
        except KeyboardInterrupt:
            interrupted = True
        finally:
            client.stop(timeout=5)
    unsent, typed, refused = len(client.unsent()), typing.typed, typing.refused
    stats = client.stats
    opened = events.ever_connected or stats.connects > 0 or stats.frames > 0
    if opened:
        counts = f", sent {typed - unsent} line(s)" + (f", not sent {unsent + refused}" if unsent or refused else "")
        events.say(summary(client) + counts)
    if interrupted:
        return EXIT_INTERRUPTED
    if unprinted:
        raise CliError(f"stopped: a message could not be printed ({printable(unprinted[0])})", EXIT_FAILURE)
    if not opened or (gave_up.is_set() and not args.no_retry):
        raise CliError(explain(client.last_error, client.url), EXIT_CONNECT)
    if typing.failed:
        raise CliError(f"stopped: stdin could not be read ({printable(typing.failed)})", EXIT_FAILURE)
    if unsent:
        raise CliError(f"{unsent} of {typed} line(s) were not sent (the connection was not back in time)", EXIT_FAILURE)
    if refused:  # each was said as it was typed (not JSON, a full send buffer): exit 1, as send does for such a line
        return EXIT_FAILURE
    return EXIT_OK
