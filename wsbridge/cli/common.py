"""What the commands share: connection options, building a client, telling a
person why a connection failed, and printing messages."""

from __future__ import annotations

import argparse
import base64
import errno
import importlib
import json
import os
import re
import socket
import ssl
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple

import websocket

from ..client import Client
from ..codecs import CODECS, Codec, Inflate, JsonCodec, PipeCodec, ProtobufCodec, codec_by_name
from ..codecs.inflate import WBITS
from ..codecs.json import MISSING_TYPE_HINT
from ..errors import (  # CliError: defined in errors.py, importable here as before
    CliError,
    ConnectError,
    ProtocolError,
    StoreError,
    UpgradeRefused,
    preview,
)
from ..message import Message
from ..redact import redact_protocol, redact_url
from ..runtime.backoff import NO_RETRY, Backoff
from ..runtime.session import Session
from ..tracking.store import check_store_path as check_path
from ..wire.handshake import REDIRECTS
from ..wire.options import check_headers

EXIT_OK = 0
EXIT_FAILURE = 1
"""Ran, but did not do what was asked (messages not sent, --max not reached, a reply missing)."""
EXIT_USAGE = 2
EXIT_CONNECT = 3
"""Could not connect, and retrying will not help or was not asked for."""
EXIT_INTERRUPTED = 130

EXIT_CODES = """exit codes:
  0    success
  1    ran, but not everything asked for happened (see the message)
  2    usage error (bad option, bad URL)
  3    could not connect (unreachable, handshake refused, TLS verification failed)
  130  interrupted (Ctrl-C), after a clean stop"""


def _number(kind: Callable[[str], Any], low: float, low_ok: bool, high: Optional[float] = None) -> Callable[[str], Any]:
    """An argparse type: ``kind`` (int or float) above ``low`` (or equal, if ``low_ok``) and up to ``high``."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value != value or value < low or (value == low and not low_ok) or (high is not None and value > high):
            bound = f"{'at least' if low_ok else 'more than'} {low:g}" + (f" and at most {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {bound}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, 0, False)
non_negative_int = _number(int, 0, True)
positive_float = _number(float, 0, False)
non_negative_float = _number(float, 0, True)
port_number = _number(int, 0, True, 65535)
ping_seconds = _number(float, 0, True, 3600)  # inf would be no pings: 0 says so


class IntermixedParser(argparse.ArgumentParser):
    """A command's parser that takes its options anywhere among the positional
    arguments (``send URL --timeout 3 MSG``), as `parse_intermixed_args` does."""

    _inside = False  # parse_known_intermixed_args calls parse_known_args itself

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--codec", choices=sorted([*CODECS, "protobuf"]), default="json",
                       help="wire format (default: json); 'wsbridge': JSON with wsbridge's conventions (seq, id and "
                            "stream fields: dedup and resume; for `wsbridge serve`); 'protobuf' with --proto-class")
    # issue 24: compressed payloads and protobuf classes
    group.add_argument("--inflate", choices=list(WBITS), metavar="FORMAT",
                       help="inflate binary frames before --codec reads them: auto (gzip or zlib, by their header), "
                            "gzip, zlib or deflate (raw), e.g. --codec json --inflate deflate")
    group.add_argument("--proto-class", metavar="MODULE:CLASS",
                       help="--codec protobuf: the generated class of every frame, importable from the current "
                            "directory or PYTHONPATH, e.g. --proto-class feed_pb2:Push --type-field kind")
    group.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                       help="HTTP header for the handshake, repeatable (values are never logged)")
    group.add_argument("--header-env", action="append", default=[], metavar="NAME=VAR",
                       help="HTTP header whose value is read from the environment variable VAR, so that a secret is "
                            "never typed on the command line; repeatable, e.g. --header-env 'X-Api-Key=FEED_KEY'")
    group.add_argument("--bearer-env", metavar="VAR",
                       help="send 'Authorization: Bearer $VAR' (the token read from the environment variable VAR), "
                            "e.g. --bearer-env FEED_TOKEN")
    group.add_argument("--origin", metavar="ORIGIN",
                       help="the Origin header, for servers that check it, e.g. --origin https://app.example.org")
    group.add_argument("--subprotocol", action="append", default=[], metavar="NAME",
                       help="offer subprotocol NAME (Sec-WebSocket-Protocol), repeatable, in order of preference, "
                            "e.g. --subprotocol graphql-transport-ws")
    group.add_argument("--proxy", metavar="URL",
                       help="connect through this proxy: http://[user:pass@]host:port (HTTP CONNECT), https://..., "
                            "socks5:// or socks5h://, e.g. --proxy socks5h://127.0.0.1:1080 (default: the "
                            "environment's http_proxy / https_proxy)")
    group.add_argument("--ca-file", metavar="FILE",
                       help="PEM file of CA certificates to trust for wss:// (a private CA); "
                            "certificates and host names are always verified")
    group.add_argument("--cert", metavar="FILE",
                       help="wss://: a client certificate to present (PEM; with its key, unless the file holds it), "
                            "e.g. --cert me.pem --key me.key")
    group.add_argument("--key", metavar="FILE", help="the private key of --cert (PEM, not encrypted)")
    group.add_argument("--connect-timeout", type=positive_float, default=10.0, metavar="S",
                       help="seconds for one connection attempt: TCP, TLS and the upgrade (default: 10)")
    group.add_argument("--ping-interval", type=ping_seconds, default=20.0, metavar="S",
                       help="send a ping every S seconds; a pong must come within S/2 (at most 10 s) or the "
                            "connection counts as dead and is made again; 0: no pings (default: 20), "
                            "e.g. --ping-interval 5")
    group.add_argument("--no-compression", dest="compression", action="store_const", const=None, default="deflate",
                       help="do not offer permessage-deflate (offered by default, and used when the server agrees)")


def add_codec_options(parser: argparse.ArgumentParser, *, tracking: bool) -> None:
    """``--type-field`` and ``--default-type``; with ``tracking``, the fields that turn
    on dedup and sequence tracking too."""
    group = parser.add_argument_group("message fields (JSON)")
    group.add_argument("--type-field", metavar="NAME",
                       help="the field that holds the message type, or a dotted path to it (default: type), "
                            "e.g. --type-field event or --type-field data.type")
    group.add_argument("--default-type", metavar="T",
                       help="the type of objects without that field (default: such an object is a decode error)")
    if not tracking:
        return
    group.add_argument("--seq-field", metavar="NAME",
                       help="the field that holds the sequence number (an integer, per stream): messages are then "
                            "put in order, duplicates dropped and gaps counted, e.g. --seq-field seq")
    group.add_argument("--id-field", metavar="NAME",
                       help="the field that holds a message id: a message whose id was seen is dropped as a "
                            "duplicate, e.g. --id-field id")
    group.add_argument("--stream-field", metavar="NAME",
                       help="the field that names the stream (channel, symbol) that --seq-field counts in, "
                            "e.g. --stream-field channel")


def add_handshake_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("on every connect")
    group.add_argument("--send-on-connect", action="append", default=[], metavar="MSG",
                       help="send MSG first on every connection (a login, a subscribe), before anything else; "
                            "repeatable, sent in order; checked against --codec before connecting, e.g. "
                            "--send-on-connect '{\"op\": \"subscribe\", \"channel\": \"trades\"}'")


def check_message(text: str, codec: str, json_hint: str = "") -> None:
    """`CliError` (exit 2) for a message the codec would refuse, or that is not text
    (a byte that is not UTF-8 reaches Python as a lone surrogate: it cannot be sent).
    The message says where, never what the text holds (a login may carry a secret);
    ``json_hint`` follows it for text that is not JSON (what the command can do instead)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = ord(text[exc.start])
        what = f"byte 0x{char - 0xDC00:02x}" if 0xDC80 <= char <= 0xDCFF else f"a lone surrogate U+{char:04X}"
        raise CliError(f"not valid UTF-8 ({what} at character {exc.start + 1})", EXIT_USAGE) from None
    if codec in ("json", "wsbridge"):
        try:
            json.loads(text)
        except ValueError as exc:  # where it fails, not what it holds: a message may carry a secret
            raise CliError(f"not valid JSON ({exc}){json_hint}", EXIT_USAGE) from None
    elif codec == "pipe":
        try:
            PipeCodec().decode(text.encode("utf-8"), False)
        except ProtocolError as exc:
            raise CliError(f"not a valid pipe message: {exc}", EXIT_USAGE) from None


class SendOnConnect:
    """The connect hook of ``--send-on-connect``: its messages, in order, first on every
    connection. Its repr (in the error of a hook that failed) does not show them: a
    login may carry a secret."""

    def __init__(self, messages: List[str]) -> None:
        self.messages = list(messages)

    def __call__(self, session: Session) -> None:
        for text in self.messages:
            session.send(text)

    def __repr__(self) -> str:
        return f"--send-on-connect ({len(self.messages)} message(s))"


def parse_headers(values: List[str], env_values: Optional[List[str]] = None, bearer_env: Optional[str] = None) -> Dict[str, str]:
    """The ``--header`` values, then those of ``--header-env`` and ``--bearer-env``
    (read from the environment now), as a dict, checked as the library checks them
    (so that a command that makes its client later, ``bridge``, refuses them up front
    too). No message here shows a value: it may be a secret."""
    pairs: List[Tuple[str, str]] = []
    for value in values:
        name, sep, text = value.partition(":")
        if not sep or not name.strip():
            raise CliError("--header wants 'NAME: VALUE': one has no name before a ':' (not shown: it may be a secret)",
                           EXIT_USAGE)
        pairs.append((name.strip(), text.strip()))
    for value in env_values or ():
        name, sep, variable = value.partition("=")
        if not sep or not name.strip() or not variable.strip():
            raise CliError("--header-env wants NAME=VAR (the header's name, the environment variable that holds its "
                           "value); what was given is not shown: it may be the secret itself", EXIT_USAGE)
        pairs.append((name.strip(), _environment(variable.strip(), f"--header-env {name.strip()}")))
    if bearer_env is not None:
        pairs.append(("Authorization", "Bearer " + _environment(bearer_env, "--bearer-env")))
    headers: Dict[str, str] = {}
    for name, text in pairs:
        if any(name.lower() == known.lower() for known in headers):
            raise CliError(f"header {name!r} is given twice (--header, --header-env and --bearer-env add to each other)",
                           EXIT_USAGE)
        headers[name] = text
    try:
        check_headers(headers)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return headers


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
"""A name shown in a message: an environment variable's name as people write them.
Anything else may be a secret typed where its variable's name goes (``--bearer-env
"$TOKEN"``), and is not shown."""


def _environment(variable: str, option: str) -> str:
    """The value of environment variable ``variable`` (`CliError`, exit 2, if it is not
    set or empty: naming it when it looks like a variable's name, never otherwise)."""
    value = os.environ.get(variable)
    if not value:
        state = "empty" if value == "" else "not set"
        if _ENV_NAME.fullmatch(variable):
            raise CliError(f"{option}: the environment variable {variable} is {state}", EXIT_USAGE)
        raise CliError(f"{option}: the environment variable named is {state}; its name is not shown, as it does not "
                       "look like one (A-Z, 0-9, _) and may be the secret itself: give the variable's name, not its "
                       "value", EXIT_USAGE)
    return value


LIBRARY_WORDS = (("sslopt['ca_certs']", "--ca-file"), ("sslopt['certfile']", "--cert"), ("sslopt['keyfile']", "--key"),
                 ("an encrypted key needs sslopt['password']", "an encrypted key is not supported: give it unencrypted"))
"""What the library's messages call an option, and what a person typed instead."""


def client_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The `Client` options of the connection options (and the codec and handshake
    options, where the command has them); `CliError` (exit 2) for any that cannot work."""
    url = args.url.lower()
    sslopt: Dict[str, Any] = {}
    for option, key in (("ca_file", "ca_certs"), ("cert", "certfile"), ("key", "keyfile")):
        path = getattr(args, option, None)
        if path:
            if not url.startswith("wss://"):
                raise CliError(f"--{option.replace('_', '-')} goes with a wss:// URL (a ws:// connection has no TLS)",
                               EXIT_USAGE)
            sslopt[key] = path  # checked by the client (PEM certificates, a key that goes with them)
    if "keyfile" in sslopt and "certfile" not in sslopt:
        raise CliError("--key goes with --cert (the client certificate it is the key of)", EXIT_USAGE)
    options: Dict[str, Any] = dict(
        codec=make_codec(args),
        headers=parse_headers(args.header, args.header_env, args.bearer_env),
        sslopt=sslopt or None,
        connect_timeout=args.connect_timeout,
        origin=args.origin,
        subprotocols=args.subprotocol or None,
        proxy=args.proxy,
        ping_interval=args.ping_interval,
        ping_timeout=min(10.0, args.ping_interval / 2),
        compression=args.compression,
    )
    messages = getattr(args, "send_on_connect", None)
    if messages:
        for number, text in enumerate(messages, 1):
            try:
                check_message(text, args.codec, "; --codec raw sends text as it is (and prints frames as they come)")
            except CliError as exc:
                raise CliError(f"--send-on-connect {number}: {exc}", exc.code) from None
        options["on_connect"] = SendOnConnect(messages)
    return options


def make_client(args: argparse.Namespace, *, retry: bool = True, **options: Any) -> Client:
    """A client from the connection options (`CliError` on a bad URL or option)."""
    try:
        return Client(
            args.url,
            backoff=Backoff() if retry else NO_RETRY,
            name="wsbridge-cli",
            # resume: only a server of wsbridge's conventions understands its request
            **{**client_options(args), "resume": args.codec == "wsbridge", **options},
        )
    except ValueError as exc:  # the library names sslopt's keys; a person typed --ca-file, --cert, --key
        raise CliError(cli_words(str(exc)), EXIT_USAGE) from None


def cli_words(text: str) -> str:
    """A message of the library's, in the words of the command line's options."""
    for words, option in LIBRARY_WORDS:
        text = text.replace(words, option)
    return text


def make_codec(args: argparse.Namespace) -> Any:
    """The codec of ``--codec``, with the ``--type-field`` ... ``--stream-field`` the command has
    (and ``--proto-class``, ``--inflate`` where it has them)."""
    fields = {name: getattr(args, name, None) for name in ("type_field", "default_type", "seq_field", "id_field",
                                                            "stream_field")}
    given = {name: value for name, value in fields.items() if value is not None}
    proto_class = getattr(args, "proto_class", None)
    if (args.codec == "protobuf") != (proto_class is not None):
        raise CliError("--codec protobuf and --proto-class MODULE:CLASS go together", EXIT_USAGE)
    if given and args.codec not in ("json", "wsbridge", "msgpack", "protobuf"):
        options = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CliError(f"{options}: these options go with --codec json, wsbridge, msgpack or protobuf", EXIT_USAGE)
    try:
        if proto_class is not None:
            codec: Codec = ProtobufCodec(import_class(proto_class), **given)
        elif args.codec == "wsbridge":
            codec = JsonCodec.conventions(**given)
        else:
            codec = CODECS[args.codec](**given) if given else codec_by_name(args.codec)
    except (ValueError, ImportError) as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    inflate = getattr(args, "inflate", None)
    return Inflate(codec, inflate) if inflate else codec


def import_class(name: str) -> Any:
    """The class ``MODULE:CLASS`` names, imported (the current directory first, as ``python -m`` does);
    `CliError` (exit 2) when it cannot be."""
    module_name, _, class_name = name.partition(":")
    if not module_name or not class_name:
        raise CliError(f"--proto-class {name!r}: write MODULE:CLASS, e.g. feed_pb2:Push", EXIT_USAGE)
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, "")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise CliError(f"--proto-class {name!r}: cannot import {module_name!r} ({exc})", EXIT_USAGE) from None
    except AttributeError:
        raise CliError(f"--proto-class {name!r}: {module_name!r} has no {class_name!r}", EXIT_USAGE) from None


def check_store_path(path: str, *, must_exist: bool) -> None:
    """`CliError` (exit 2) for a store path that can never work: what the store itself
    refuses (`store.check_store_path`), an empty file where one must exist, a file that
    is not an SQLite database. (A folder where nothing can be written fails when the
    store is opened, also with exit 2.)"""
    try:
        check_path(path, must_exist=must_exist)
    except StoreError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if not os.path.exists(path):
        return
    if must_exist and os.path.getsize(path) == 0:
        raise CliError(f"{path!r} is empty, not a store (an SQLite file written by --store)", EXIT_USAGE)
    try:  # nothing here has the database open yet: reading it cannot drop SQLite's locks
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise CliError(f"cannot read the store {path!r}: {exc.strerror or exc}", EXIT_USAGE) from None
    if head and head != b"SQLite format 3\x00":
        raise CliError(f"{path!r} is not a store (an SQLite file written by --store)", EXIT_USAGE)


def explain(error: Optional[BaseException], url: str) -> str:
    """What went wrong, in words a person can act on."""
    where = redact_url(url)
    root = error
    while isinstance(root, ConnectError) and root.__cause__ is not None:
        root = root.__cause__
    if root is None:
        return f"could not connect to {where}"
    refused = root if isinstance(root, UpgradeRefused) and not root.proxy and root.status not in REDIRECTS else None
    if refused is not None and 200 <= refused.status < 300:
        return f"{where} is not a WebSocket server: it answered the upgrade with HTTP {refused.status}"
    if refused is not None:
        hint = {401: " (check the credentials: --bearer-env, --header-env or --header)", 403: " (access denied)",
                404: " (check the URL's path)"}.get(refused.status, "")
        return f"{where} refused the WebSocket handshake with HTTP {refused.status}{hint}"
    if isinstance(root, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed for {where}: {root.verify_message or root}; "
                f"if the server uses a private CA, pass it with --ca-file")
    if isinstance(root, ssl.SSLError):
        return f"TLS error with {where}: {root}"
    if isinstance(root, socket.gaierror):
        return f"cannot resolve the host of {where}: {root.strerror or root}"
    if isinstance(root, ConnectionRefusedError) or getattr(root, "errno", None) == errno.ECONNREFUSED:
        return f"connection refused: nothing accepts connections at {where}"
    if isinstance(root, (TimeoutError, websocket.WebSocketTimeoutException)):
        return f"{where} did not answer in time ({root})"
    if isinstance(root, OSError) and root.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return f"{where} is unreachable: {root.strerror}"
    if isinstance(root, ConnectError):
        return f"{where}: {root}"
    return f"could not connect to {where}: {type(root).__name__}: {preview(str(root), 200)}"


def wait_done(done: threading.Event, timeout: Optional[float]) -> None:
    """Wait until ``done`` is set or ``timeout`` seconds passed (None: no limit),
    in steps of 0.5 s so that Ctrl-C (KeyboardInterrupt) gets through."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not done.is_set():
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return
        done.wait(0.5 if remaining is None else min(0.5, remaining))


def require_redis() -> None:
    """`CliError` unless the ``redis`` extra is installed."""
    from ..redis.conn import load_redis

    try:
        load_redis()
    except StoreError as exc:
        raise CliError(str(exc)) from None


def wait_connected(client: Client, timeout: Optional[float]) -> None:
    """`Client.wait_connected`, its failures as `CliError` (exit 3)."""
    try:
        client.wait_connected(timeout=timeout)
    except ConnectError:
        raise CliError(explain(client.last_error, client.url), EXIT_CONNECT) from None
    except TimeoutError:
        raise CliError(explain(client.last_error or TimeoutError(f"not connected within {timeout} s"), client.url),
                       EXIT_CONNECT) from None


class Lifecycle:
    """Lifecycle events as one line each on stderr (the status a person sees)."""

    def __init__(self, client: Client, out: TextIO = sys.stderr) -> None:
        self.client = client
        self.out = out
        self._lock = threading.Lock()
        self._open = False
        self.ever_connected = False
        """Did a connection open? (``stats.connects`` counts flushed connections only.)"""
        signals = client.signals
        signals.connected.connect(self.connected)
        signals.disconnected.connect(self.disconnected)
        signals.reconnecting.connect(self.reconnecting)
        signals.gave_up.connect(self.gave_up)
        signals.error.connect(self.error)
        self.errors: Dict[str, int] = {}
        """Errors reported on the client's ``error`` signal, by context."""

    def say(self, text: str) -> None:
        with self._lock:
            print(f"wsbridge: {text}", file=self.out, flush=True)

    def connected(self, sender: Any, url: str, **kw: Any) -> None:
        self._open = self.ever_connected = True
        chosen = self.client.subprotocol
        self.say(f"connected to {url}" + (f" (subprotocol {redact_protocol(chosen)})" if chosen else ""))

    def disconnected(self, sender: Any, code: Optional[int], reason: Optional[str], error: Any, **kw: Any) -> None:
        if self.client.state == "stopped":
            return  # our own stop: the summary follows
        why = f"code {code}{' ' + reason if reason else ''}" if code else (str(error) if error else "connection lost")
        self.say(f"disconnected ({why})")

    def reconnecting(self, sender: Any, attempt: int, delay: float, **kw: Any) -> None:
        # After a connection that was up, "disconnected" said why; after a failed attempt, say it here.
        why = "" if self._open else f": {explain(self.client.last_error, self.client.url)}"
        self._open = False
        self.say(f"reconnecting in {delay:.1f} s (attempt {attempt}){why}")

    def gave_up(self, sender: Any, error: Any, **kw: Any) -> None:
        pass  # the command reports it, with its exit code

    def error(self, sender: Any, error: BaseException, context: str, **kw: Any) -> None:
        """The first error of each kind, once, with what it means here; the rest are counted."""
        with self._lock:
            count = self.errors[context] = self.errors.get(context, 0) + 1
        if count == 1:
            text = str(error)
            hint = ERROR_HINTS.get(context, "the stream goes on")
            if context == "decode" and MISSING_TYPE_HINT in text:  # the library's advice, in the CLI's words
                text = text.replace(MISSING_TYPE_HINT, "")
                hint += "; --type-field NAME names the field that holds the type, --default-type T types the rest"
            text = text if len(text) <= 300 else text[:300] + "..."
            self.say(printable(f"{context} error: {text} ({hint}; more are counted in the summary)"))


ERROR_HINTS = {
    "decode": "the message is skipped; --codec raw prints frames as they come",
    "store": "messages are still printed, but not kept in the store",
}


def summary(client: Client, counted: Optional[str] = None) -> str:
    """The stats a person reads at the end; ``counted`` instead of ``received N`` (what a
    filtered command printed and left out)."""
    s = client.stats
    store = f", store errors {s.store_errors:,}" if s.store_errors else ""
    return (f"{counted or f'received {s.dispatched:,}'}, duplicates {s.duplicates:,}, gaps {s.gaps}, lost {s.lost}, "
            f"reconnects {s.reconnects}, protocol errors {s.protocol_errors}{store}")


def message_json(msg: Message) -> str:
    """One message as one JSON object (``--json-lines``); bytes payloads in base64."""
    record: Dict[str, Any] = {"type": msg.type}
    for field in ("stream", "seq", "id"):
        value = getattr(msg, field)
        if value is not None:
            record[field] = value
    record["received_at"] = msg.received_at
    if isinstance(msg.payload, (bytes, bytearray)):
        record["payload_base64"] = base64.b64encode(msg.payload).decode("ascii")
    else:
        record["payload"] = msg.payload
    return json.dumps(record, ensure_ascii=False, default=str).translate(_SURROGATES)


def message_line(msg: Message) -> str:
    """One message as a line for a person: time, type, position, payload."""
    stamp = time.strftime("%H:%M:%S", time.localtime(msg.received_at or time.time()))
    where = ""
    if msg.seq is not None:
        where = f" [{msg.stream + ':' if msg.stream else ''}{msg.seq}]"
    payload = msg.payload
    if isinstance(payload, (bytes, bytearray)):
        body = f"<{len(payload)} bytes> {preview(bytes(payload), 48)}"
    elif isinstance(payload, str):
        body = payload
    else:
        body = json.dumps(payload, ensure_ascii=False, default=str)
    return printable(f"{stamp} {msg.type}{where} {body}")


_SURROGATES = {c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)}
"""Lone surrogates (``"\\ud800"`` is valid JSON) as the JSON escape they came as: no
encoding can write them, and the escape is valid JSON inside a JSON string too."""

_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_CONTROLS.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_CONTROLS.update(_SURROGATES)
"""C0, DEL and C1 controls, the Unicode line and paragraph separators, and the bidi
embeddings, overrides and isolates: a feed must not move the cursor, recolour a
terminal (ANSI escapes), break a line or reorder what a person reads. And lone
surrogates, which could not be printed at all."""


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates written as ``\\xNN`` /
    ``\\uNNNN`` (newlines included: one message, one line)."""
    return text.translate(_CONTROLS)
