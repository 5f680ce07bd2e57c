"""Everything wsbridge relies on in websocket-client beyond its documented API.

wsbridge runs each connection in a `websocket.WebSocketApp` (its thread,
handshake, callbacks and teardown) but dials the socket, reads every frame,
checks the upgrade and sends the pings (no ping thread) itself. Doing so touches names and
attributes websocket-client does not document; they are all here, and only
here, listed in `CONTRACT`, which ``tests/test_wsclient_contract.py`` checks
against the installed release so that a release that changes one of them
fails loudly in the tests rather than quietly in production.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import threading
import time
from typing import Any, Callable, List, Optional, Tuple, Union

import websocket
from websocket import ABNF, WebSocketApp, _handshake
from websocket._http import _ssl_socket as ssl_socket  # TLS wrapping with websocket-client's sslopt meaning
from websocket._socket import send as socket_send  # the stock dispatcher's send
from websocket._url import parse_url

__all__ = [
    "ABNF", "App", "CONTRACT", "mark_reader_thread", "parse_url", "prepare_socket", "ssl_socket", "socket_send",
    "close_frame_sent", "close_sent", "frame_bytes", "ping_sent", "ping_times", "pong_received", "stop_running",
]


_thread = threading.local()


class _QuietForWsbridge(logging.Filter):
    """websocket-client logs the end of every connection at ERROR ("Connection to
    remote host was lost. - goodbye"), even an orderly one. For the connections
    wsbridge runs, the client says what happened itself (signals, and its own log in
    its own words), so records of INFO and above from their reader threads are
    dropped; DEBUG (websocket-client's trace) still passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.INFO or not getattr(_thread, "wsbridge_reader", False)


logging.getLogger("websocket").addFilter(_QuietForWsbridge())


class _NoJarForWsbridge:
    """websocket-client keeps one cookie jar for the whole process
    (``websocket._handshake.CookieJar``): every ``Set-Cookie`` of a 101 answer goes in,
    keyed by the cookie's ``Domain`` alone, and goes out again in every later upgrade
    to a matching host, whatever its port, scheme or ``Secure`` flag, whichever client
    (and credentials) makes it, and with no check that the server could set that
    domain. For the connections wsbridge runs (their reader threads), the jar is
    neither read nor written: a cookie goes only where the user's ``headers`` send
    it. Other users of websocket-client in the process keep its behaviour."""

    def __init__(self, jar: Any) -> None:
        self.jar = jar

    def add(self, set_cookie: Optional[str]) -> None:
        if not getattr(_thread, "wsbridge_reader", False):
            self.jar.add(set_cookie)

    def set(self, set_cookie: str) -> None:
        if not getattr(_thread, "wsbridge_reader", False):
            self.jar.set(set_cookie)

    def get(self, host: str) -> str:
        return "" if getattr(_thread, "wsbridge_reader", False) else self.jar.get(host)


if not isinstance(_handshake.CookieJar, _NoJarForWsbridge):
    _handshake.CookieJar = _NoJarForWsbridge(_handshake.CookieJar)  # type: ignore[assignment]


def mark_reader_thread() -> None:
    """This thread runs a wsbridge connection: websocket-client's INFO+ records from it are dropped."""
    _thread.wsbridge_reader = True


class App(WebSocketApp):
    """A `WebSocketApp` whose read loop ("dispatcher") is made by ``make_reader``,
    and whose `websocket.WebSocket` never follows a redirect.

    ``make_reader(ping_timeout, disconnect)`` returns the loop object;
    ``disconnect`` is websocket-client's own end of a connection
    (``handleDisconnect``: on_error, teardown, on_close; pass it an exception, or
    a close frame as an `ABNF`)."""

    make_reader: Optional[Callable[[Any, Callable[[Any], Any]], Any]] = None
    _ws: Optional[websocket.WebSocket] = None

    @property
    def sock(self) -> Optional[websocket.WebSocket]:
        """websocket-client's `WebSocket` for the connection (None before and after one)."""
        return self._ws

    @sock.setter
    def sock(self, ws: Optional[websocket.WebSocket]) -> None:
        # run_forever makes the WebSocket, sets it here, then connects it. On a redirect,
        # websocket-client would dial the new origin itself and send it every header: its
        # connect is given redirect_limit=0, so it fails instead. (The upgrade check
        # refuses redirects first: this holds whatever websocket-client reads.)
        if ws is not None:
            ws.connect = functools.partial(ws.connect, redirect_limit=0)  # type: ignore[method-assign]
        self._ws = ws

    def create_dispatcher(
        self, ping_timeout: Any, dispatcher: Any = None, is_ssl: bool = False, handleDisconnect: Any = None
    ) -> Any:
        assert dispatcher is None and self.make_reader is not None, "wsbridge runs every connection in its own read loop"
        return self.make_reader(ping_timeout, handleDisconnect)


def prepare_socket(app: WebSocketApp, sock: Any) -> None:
    """Give the app a socket of ours (connected; a `BufferedSocket`) to upgrade and run on."""
    app.prepared_socket = sock


def stop_running(app: WebSocketApp) -> None:
    app.keep_running = False


def ping_sent(app: WebSocketApp) -> None:
    app.last_ping_tm = time.time()


def pong_received(app: WebSocketApp) -> None:
    app.last_pong_tm = time.time()


def ping_times(app: WebSocketApp) -> Tuple[float, float]:
    """(last ping sent, last pong received), as ``time.time()`` values (0: none yet)."""
    return app.last_ping_tm, app.last_pong_tm


def close_frame_sent(ws: websocket.WebSocket) -> None:
    """Tell websocket-client a close frame is going out, so its teardown sends none of
    its own, and wsbridge's writers that no data frame may follow (`close_sent`). Called
    before the close frame's writer takes the send lock."""
    ws.connected = False


def close_sent(ws: websocket.WebSocket) -> bool:
    """Has a close frame gone out, or is one about to (ours: `close_frame_sent`;
    websocket-client's ``close``/``send_close`` mark it the same way first), or the
    socket been shut? Read under the send lock, it is final for the frame being written."""
    return not ws.connected


def frame_bytes(ws: websocket.WebSocket, payload: Union[str, bytes], opcode: int, rsv1: int = 0) -> bytes:
    """One frame as the client sends it (masked with the app's mask source); ``rsv1``:
    a compressed message's payload (bytes; permessage-deflate)."""
    frame = ABNF(1, 1, 0, 0, opcode, 1, payload) if rsv1 else ABNF.create_frame(payload, opcode)
    if ws.get_mask_key:
        frame.get_mask_key = ws.get_mask_key
    return frame.format()


def _app() -> WebSocketApp:
    return WebSocketApp("ws://127.0.0.1:9/")


def _params(fn: Any) -> List[str]:
    return list(inspect.signature(fn).parameters)


_RUN_FOREVER = inspect.getsource(WebSocketApp.run_forever)

CONTRACT: List[Tuple[str, Callable[[], bool]]] = [
    ("WebSocketApp.create_dispatcher(ping_timeout, dispatcher, is_ssl, handleDisconnect)",
     lambda: _params(WebSocketApp.create_dispatcher)[1:5] == ["ping_timeout", "dispatcher", "is_ssl", "handleDisconnect"]),
    ("WebSocketApp.run_forever makes its dispatcher with create_dispatcher",
     lambda: "create_dispatcher(" in _RUN_FOREVER),
    ("WebSocketApp.prepared_socket, used by run_forever as the socket to upgrade",
     lambda: hasattr(_app(), "prepared_socket") and "socket=self.prepared_socket" in _RUN_FOREVER),
    ("WebSocketApp.run_forever sets self.sock to a new WebSocket, then calls self.sock.connect",
     lambda: re.search(r"self\.sock = WebSocket\((.|\n)*self\.sock\.connect\(", _RUN_FOREVER) is not None),
    ("WebSocket.connect(url, redirect_limit=0) follows no redirect (tests/test_wsclient_contract.py runs it)",
     lambda: 'options.pop("redirect_limit", 3)' in inspect.getsource(websocket.WebSocket.connect)),
    ("WebSocketApp.keep_running, last_ping_tm, last_pong_tm",
     lambda: all(hasattr(_app(), a) for a in ("keep_running", "last_ping_tm", "last_pong_tm"))),
    ("WebSocket.sock, connected, lock, get_mask_key, handshake_response",
     lambda: all(hasattr(websocket.WebSocket(), a) for a in ("sock", "connected", "lock", "get_mask_key", "handshake_response"))),
    ("WebSocket(enable_multithread=True).lock is a lock with acquire(timeout=) and release()",
     lambda: isinstance(websocket.WebSocket(enable_multithread=True).lock, type(threading.Lock()))),
    ("WebSocket.pong, send, send_close",
     lambda: all(callable(getattr(websocket.WebSocket, a)) for a in ("pong", "send", "send_close"))),
    ("WebSocket.close and send_close set connected = False before they write the close frame (close_sent reads it)",
     lambda: all(0 <= src.find("self.connected = False") < src.find("self.send(")
                 for src in (inspect.getsource(websocket.WebSocket.close), inspect.getsource(websocket.WebSocket.send_close)))),
    ("websocket._http._ssl_socket(sock, user_sslopt, hostname)",
     lambda: _params(ssl_socket)[:3] == ["sock", "user_sslopt", "hostname"]),
    ("websocket._url.parse_url -> (host, port, resource, secure)",
     lambda: parse_url("wss://h:1/p") == ("h", 1, "/p", True)),
    ("WebSocketApp.run_forever reads self.url, self.header, self.cookie and self.subprotocols when it connects "
     "(wsbridge.wire.connection sets them for each attempt)",
     lambda: all(f"self.{a}" in _RUN_FOREVER for a in ("url", "header", "cookie", "subprotocols"))),
    ("websocket._handshake.CookieJar: read by the upgrade request (get(host)) and filled by every 101 (add)",
     lambda: "CookieJar.get(host)" in inspect.getsource(_handshake._get_handshake_headers)
     and "CookieJar.add(" in inspect.getsource(_handshake.handshake_response)
     and isinstance(_handshake.CookieJar, _NoJarForWsbridge)),
    ("websocket._socket.send(sock, data)",
     lambda: _params(socket_send) == ["sock", "data"]),
    ("ABNF.create_frame(data, opcode) and ABNF.format()",
     lambda: ABNF.create_frame(b"x", ABNF.OPCODE_TEXT).format()[:1] == b"\x81"),
    ("ABNF(fin, rsv1, rsv2, rsv3, opcode, mask, data).format() sets RSV1 (a compressed message)",
     lambda: ABNF(1, 1, 0, 0, ABNF.OPCODE_TEXT, 1, b"x").format()[:1] == b"\xc1"),
]
"""What wsbridge relies on, each with a check that it still holds."""
