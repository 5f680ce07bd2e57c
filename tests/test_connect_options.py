"""Credentials obtained for every attempt, and the connection options (issue 22, points 1 and 5).

The servers are `websockets`' own (`Feed`: the library's sync server, not ours, which
refuses a second Origin), raw-socket servers where the request's bytes matter
(`RawServer`), and proxies are pproxy from PyPI (`PProxy` in conftest.py: HTTP CONNECT
and SOCKS5, in a child process), all on 127.0.0.1. wss:// through proxies, an https://
proxy and client certificates are in test_tls.py, next to the test CA.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Callable, List, Optional

import pytest
from websockets.sync.server import Request, ServerConnection

import wsbridge
from wsbridge.runtime.policy import Ending, ReconnectPolicy
from wsbridge.testing import RawServer, Server
from wsbridge.testing.raw import accept_response
from wsbridge.wire.buffered import BufferedSocket

from conftest import Feed, PProxy, wait_until

FAST = wsbridge.Backoff(initial=0.05, max_delay=0.2, jitter=0)


@pytest.fixture
def endings(monkeypatch) -> List[Ending]:
    """Every `Ending` the supervisor hands the retry policy."""
    seen: List[Ending] = []
    decide = ReconnectPolicy.decide

    def spy(self: ReconnectPolicy, ending: Ending, failures: int, rand: Optional[float] = None, **counts: Any) -> Any:
        seen.append(ending)
        return decide(self, ending, failures, rand, **counts)

    monkeypatch.setattr(ReconnectPolicy, "decide", spy)
    return seen


@pytest.fixture(autouse=True)
def no_environment_proxy(monkeypatch) -> None:
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def counter() -> Callable[[], int]:
    """A thread-safe count of calls: each call returns the next number, from 1."""
    lock, count = threading.Lock(), [0]

    def next_number() -> int:
        with lock:
            count[0] += 1
            return count[0]

    return next_number


def echo_round_trip(client: wsbridge.Client) -> None:
    client.send({"type": "ping", "n": 1})
    assert client.wait_for("ping", timeout=10).payload["n"] == 1


# -- 1. credentials obtained for every attempt ------------------------------------------------------------


def test_callable_credentials_are_called_for_every_attempt_so_a_token_that_is_used_up_never_returns(make_client, collector):
    """The server takes each token once, as a feed whose tokens expire would: the
    reconnect gets in only because it asked for a new one."""
    used: set = set()

    def once_only(connection: ServerConnection, request: Request) -> Any:
        token = request.headers.get("Authorization", "")
        if not token or token in used:
            return connection.respond(HTTPStatus.UNAUTHORIZED, "token used up\n")
        used.add(token)
        return None

    number, cookie_number, url_number = counter(), counter(), counter()
    with Feed(once_only, subprotocols=["feed.v1", "feed.v2"]) as feed:
        client = make_client(
            lambda: f"{feed.url}?sig=s{url_number()}",
            headers=lambda: {"Authorization": f"Bearer t{number()}"},
            cookie=lambda: f"session=c{cookie_number()}",
            subprotocols=lambda: ["feed.v2"],
            backoff=FAST,  # a 401 is not retried: the reconnect had one chance
        )
        connected = collector()
        client.signals.connected.connect(connected)
        client.start().wait_connected(timeout=10)
        assert client.url == f"{feed.url}?sig=s1" and client.subprotocol == "feed.v2"
        feed.wait_opened(1)  # the server's handler runs: there is a connection to drop
        feed.drop()
        connected.wait(2)
        echo_round_trip(client)
        assert client.url == f"{feed.url}?sig=s2" and connected.items[1]["url"] == f"{feed.url}?sig=***"  # masked
        requests = feed.wait_requests(2)
    assert [r.headers["Authorization"] for r in requests] == ["Bearer t1", "Bearer t2"]
    assert [r.headers["Cookie"] for r in requests] == ["session=c1", "session=c2"]
    assert [r.path for r in requests] == ["/feed?sig=s1", "/feed?sig=s2"]
    assert "<callable>" in repr(client) and "<callable>" in repr(client.options)


def test_a_callable_that_raises_fails_the_attempt_naming_the_option_and_the_policy_retries(make_client, collector, caplog):
    caplog.set_level(logging.DEBUG)
    calls: List[int] = []

    def token_service_down() -> dict:
        calls.append(1)
        raise RuntimeError("token service unreachable at https://auth.example/token?client_secret=s3cr3t-xyz")

    with Feed() as feed:
        client = make_client(feed.url, headers=token_service_down,
                             backoff=wsbridge.Backoff(initial=0.01, max_delay=0.01, jitter=0, max_attempts=2))
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="retries exhausted") as raised:
            client.wait_connected(timeout=10)
        assert len(calls) == 3 and feed.requests == []  # three attempts (two retries), nothing sent
    error = client.last_error
    assert isinstance(error, wsbridge.ConnectError) and str(error).startswith("headers: the callable raised RuntimeError")
    assert isinstance(error.__cause__, RuntimeError)  # the user's own exception, for the user
    shown = "\n".join([str(raised.value), repr(client), *(r.getMessage() for r in caplog.records)])
    assert "headers: the callable raised RuntimeError" in shown and "s3cr3t-xyz" not in shown


@pytest.mark.parametrize(
    "option,value,refusal",
    [
        ("headers", lambda: {"Authorization": "Bearer x\r\nX-Admin: 1"}, "control characters are refused"),
        ("headers", lambda: [("Authorization", "Bearer x")], "headers are a mapping"),
        ("url", lambda: "http://127.0.0.1:9/", "starts with ws:// or wss://"),
        ("subprotocols", lambda: ["chat\r\nX-Admin: 1"], "a subprotocol is a token"),
        ("subprotocols", lambda: "chat", "subprotocols are a list"),
        ("cookie", lambda: "a=1\r\nX-Admin: 1", "control characters are refused"),
    ],
    ids=["header-injection", "headers-not-a-mapping", "url-not-ws", "subprotocol-injection", "subprotocols-a-str",
         "cookie-injection"],
)
def test_what_a_callable_returns_is_checked_as_a_value_given_up_front_and_nothing_is_sent(make_client, option, value,
                                                                                          refusal):
    with RawServer() as server:
        options = {} if option == "url" else {option: value}
        client = make_client(value if option == "url" else server.url, backoff=wsbridge.NO_RETRY, **options)
        client.start()
        with pytest.raises(wsbridge.ConnectError):
            client.wait_connected(timeout=10)
        assert server.accepted == 0
    assert isinstance(client.last_error, wsbridge.ConnectError)
    assert str(client.last_error).startswith(f"{option}: the callable returned a value that is refused")
    assert refusal in str(client.last_error)


def test_a_callable_that_hangs_is_bounded_by_connect_timeout_and_stop_still_returns(make_client, collector):
    release = threading.Event()
    calls: List[int] = []

    def slow_token() -> dict:
        calls.append(1)
        release.wait(30)
        return {"Authorization": "Bearer late"}

    with Feed() as feed:
        client = make_client(feed.url, headers=slow_token, connect_timeout=0.5, backoff=wsbridge.Backoff(initial=30, jitter=0))
        retrying = collector()
        client.signals.reconnecting.connect(retrying)
        client.start()
        retrying.wait(1, timeout=10)  # the attempt failed at connect_timeout, the reader still held
        error = client.last_error
        assert isinstance(error, TimeoutError) and "the headers callable had not returned" in str(error)
        reader = [t for t in client.threads() if "-reader-" in t.name]
        assert reader and reader[0].is_alive()
        started = time.monotonic()
        assert client.stop(timeout=1) is False  # within its timeout, saying the reader did not end
        assert time.monotonic() - started < 6
        release.set()
        wait_until(lambda: not any(t.is_alive() for t in client.threads()), what="the held reader ended")
        assert len(calls) == 1 and feed.requests == []  # the late answer was not used: its attempt was over


def test_stop_returns_within_its_timeout_while_a_callable_hangs(make_client):
    release, calling = threading.Event(), threading.Event()

    def slow_url() -> str:
        calling.set()
        release.wait(30)
        return "ws://127.0.0.1:9/"

    client = make_client(slow_url, connect_timeout=30)
    client.start()
    assert calling.wait(10)
    started = time.monotonic()
    assert client.stop(timeout=1) is False
    assert time.monotonic() - started < 6
    release.set()
    wait_until(lambda: not any(t.is_alive() for t in client.threads()), what="the held reader ended")


# -- 1. a refused upgrade: UpgradeRefused, with its status and Retry-After ------------------------------------


def test_a_refused_upgrade_is_upgrade_refused_with_status_reason_and_retry_after(make_client, endings):
    def busy(connection: ServerConnection, request: Request) -> Any:
        response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "come back later\n")
        response.headers["Retry-After"] = "7"
        return response

    with Feed(busy) as feed:
        client = make_client(feed.url, headers=lambda: {"Authorization": "Bearer t"}, backoff=wsbridge.NO_RETRY)
        client.start()
        with pytest.raises(wsbridge.ConnectError) as raised:
            client.wait_connected(timeout=10)
    refused = client.last_error
    assert isinstance(refused, wsbridge.UpgradeRefused) and isinstance(refused, wsbridge.ConnectError)
    assert (refused.status, refused.reason, refused.retry_after, refused.proxy) == (503, "Service Unavailable", 7.0, False)
    assert "handshake refused (HTTP 503): Service Unavailable; it asks to retry after 7 s" in str(raised.value)
    assert [(e.http_status, e.retry_after, e.fresh_credentials) for e in endings] == [(503, 7.0, True)]


def test_retry_after_as_an_http_date_and_a_401_that_gives_up(make_client, endings):
    later = formatdate(time.time() + 120, usegmt=True)
    answer = f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: {later}\r\nContent-Length: 0\r\n\r\n".encode()
    with RawServer(respond=lambda request: answer) as server:
        client = make_client(server.url, backoff=wsbridge.NO_RETRY)
        client.start()
        with pytest.raises(wsbridge.ConnectError):
            client.wait_connected(timeout=10)
    assert isinstance(client.last_error, wsbridge.UpgradeRefused) and client.last_error.status == 429
    assert 100 < (client.last_error.retry_after or 0) <= 120
    unauthorized = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
    with RawServer(respond=lambda request: unauthorized) as server:
        client = make_client(server.url, headers={"Authorization": "Bearer old"})
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="handshake refused with HTTP 401"):
            client.wait_connected(timeout=10)
        assert len(server.requests) == 1
    assert endings[-1].http_status == 401 and endings[-1].retry_after is None and endings[-1].fresh_credentials is False


# -- 5. Origin, Host, Cookie: websocket-client's meaning, each header sent once ------------------------------


def test_an_origin_given_in_headers_is_sent_once_and_a_websockets_server_accepts_it(make_client):
    with Server(echo=True) as server:  # websockets answers 400 to a second Origin
        client = make_client(server.url, headers={"Origin": "https://app.example"})
        client.start().wait_connected(timeout=10)
        echo_round_trip(client)
    with RawServer() as raw:
        client = make_client(raw.url, headers={"origin": "https://app.example", "X-Trace": "1"})
        client.start().wait_connected(timeout=10)
        request = raw.requests[0].lower()
    assert request.count(b"\r\norigin:") == 1 and b"\r\norigin: https://app.example\r\n" in request


def test_origin_host_cookie_and_suppress_origin_go_out_as_websocket_client_means_them(make_client):
    with Feed() as feed:
        client = make_client(feed.url, origin="https://o.example", host="feed.example", cookie="a=1; b=2",
                             headers={"Cookie": "c=3"})
        client.start().wait_connected(timeout=10)
        echo_round_trip(client)
        first = feed.wait_requests(1)[0]
        client.stop()
        client = make_client(feed.url, suppress_origin=True)
        client.start().wait_connected(timeout=10)
        second = feed.wait_requests(2)[1]
    assert first.headers.get_all("Origin") == ["https://o.example"] and first.headers.get_all("Host") == ["feed.example"]
    assert first.headers.get_all("Cookie") == ["a=1; b=2; c=3"]
    assert second.headers.get_all("Origin") == [] and second.headers.get_all("Host") == [f"127.0.0.1:{feed.port}"]


@pytest.mark.parametrize(
    "options,words",
    [
        ({"headers": {"Origin": "https://a.example"}, "origin": "https://b.example"}, "an Origin header and origin="),
        ({"headers": {"Origin": "https://a.example"}, "suppress_origin": True}, "suppress_origin=True"),
        ({"headers": {"Host": "a.example"}, "host": "b.example"}, "a Host header and host="),
        ({"headers": {"X-Token": "1", "x-token": "2"}}, "'x-token' is given twice"),
        ({"origin": "https://a.example\r\nX-Admin: 1"}, "control characters are refused"),
        ({"host": "a.example\nX-Admin: 1"}, "control characters are refused"),
        ({"cookie": "a=1\r\nX-Admin: 1"}, "control characters are refused"),
        ({"subprotocols": ["chat, admin"]}, "a subprotocol is a token"),
        ({"proxy": "ftp://127.0.0.1:21"}, "starts with http://, https://, socks5:// or socks5h://"),
        ({"proxy": "http://user:pa55@127.0.0.1:0"}, "no port 0"),
        ({"proxy": "http://127.0.0.1:3128/path"}, "no port 0, path or query"),
        ({"proxy": "socks5://127.0.0.1:99999"}, "a number from 1 to 65535"),
        ({"no_proxy": [""]}, "no_proxy is a list"),
    ],
    ids=["origin-twice", "origin-suppressed", "host-twice", "header-twice", "origin-injection", "host-injection",
         "cookie-injection", "subprotocol-not-a-token", "proxy-scheme", "proxy-port-0", "proxy-path", "proxy-port-range",
         "no-proxy-empty"],
)
def test_connection_options_are_checked_at_construction(options, words):
    with pytest.raises(ValueError, match=re.escape(words)) as raised:
        wsbridge.Client("ws://127.0.0.1:9/", **options)
    assert "pa55" not in str(raised.value)


# -- 5. proxies: pproxy (HTTP CONNECT, SOCKS5), with and without credentials --------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_through_a_proxy_without_credentials_on_the_fast_read_path(make_client, scheme):
    with PProxy(scheme) as proxy, Server(echo=True) as server:
        client = make_client(server.url, proxy=proxy.url(scheme))
        client.start().wait_connected(timeout=10)
        assert proxy.target() == f"127.0.0.1:{server.port}"
        echo_round_trip(client)
        conn = client._supervisor.conn
        assert conn is not None and isinstance(conn.app.sock.sock, BufferedSocket)  # wsbridge reads every frame


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_a_proxy_gets_its_credentials_and_the_server_never_does(make_client, scheme, caplog):
    caplog.set_level(logging.DEBUG)
    with PProxy(scheme, auth="proxyuser:pr0xy-pa55") as proxy, Feed() as feed:
        client = make_client(feed.url, proxy=proxy.url(scheme, "proxyuser:pr0xy-pa55"))
        client.start().wait_connected(timeout=10)
        echo_round_trip(client)
        request = feed.wait_requests(1)[0]
        shown = "\n".join([repr(client), repr(client.options), repr(client._supervisor.conn),
                           *(r.getMessage() for r in caplog.records if r.name.startswith("wsbridge") or r.name == "websocket")])
    assert "pr0xy-pa55" not in str(request.headers) and "Proxy-Authorization" not in request.headers
    assert "pr0xy-pa55" not in shown and "proxyuser:***@" in repr(client.options)


def test_a_proxy_that_refuses_the_credentials_is_a_clear_407_not_retried(make_client):
    with PProxy("http", auth="proxyuser:right") as proxy:
        client = make_client("ws://127.0.0.1:9/", proxy=proxy.url("http", "proxyuser:wrong"), backoff=FAST)
        client.start()
        with pytest.raises(wsbridge.ConnectError, match=r"refused CONNECT 127\.0\.0\.1:9 \(HTTP 407\)"):
            client.wait_connected(timeout=10)
        assert client.stats.connect_attempts == 1
    refused = client.last_error
    assert isinstance(refused, wsbridge.UpgradeRefused) and (refused.status, refused.proxy, refused.fatal) == (407, True, True)
    assert "wrong" not in str(refused)


def test_a_socks5_proxy_that_refuses_the_credentials_is_not_retried(make_client):
    with PProxy("socks5", auth="proxyuser:right") as proxy:
        client = make_client("ws://127.0.0.1:9/", proxy=proxy.url("socks5", "proxyuser:wrong"), backoff=FAST)
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="username and password"):
            client.wait_connected(timeout=10)
        assert client.stats.connect_attempts == 1
    assert isinstance(client.last_error, wsbridge.HandshakeError) and client.last_error.fatal
    assert "wrong" not in str(client.last_error)


def test_socks5h_has_the_proxy_resolve_the_name_and_socks5_resolves_it_here(make_client):
    address = socket.getaddrinfo("localhost", 0, 0, socket.SOCK_STREAM)[0][4][0]  # what socks5 sends: the first
    with PProxy("socks5") as proxy, Server(host=address, echo=True) as server:
        for scheme, target in (("socks5h", f"localhost:{server.port}"), ("socks5", f"{address}:{server.port}")):
            client = make_client(f"ws://localhost:{server.port}/", proxy=proxy.url(scheme))
            client.start().wait_connected(timeout=10)
            assert proxy.target() == target
            echo_round_trip(client)
            client.stop()


def test_no_proxy_goes_direct_and_the_environment_may_name_a_socks5_proxy(make_client, free_port, monkeypatch):
    with Server(echo=True) as server:
        client = make_client(server.url, proxy=f"http://127.0.0.1:{free_port}", no_proxy="localhost, 127.0.0.1")
        client.start().wait_connected(timeout=10)  # the proxy named is not listening: it was not used
        echo_round_trip(client)
        client.stop()
        with PProxy("socks5", auth="u:envpass") as proxy:
            monkeypatch.setenv("http_proxy", proxy.url("socks5", "u:envpass"))  # was taken for an HTTP proxy
            client = make_client(server.url)
            client.start().wait_connected(timeout=10)
            assert proxy.target() == f"127.0.0.1:{server.port}"
            echo_round_trip(client)


def test_the_upgrade_checks_apply_through_every_proxy(make_client):
    def wrong_accept(request: bytes) -> bytes:
        return accept_response(request).replace(b"Sec-WebSocket-Accept: ", b"Sec-WebSocket-Accept: x")

    with RawServer(respond=wrong_accept) as server:
        for scheme in ("http", "socks5"):
            with PProxy(scheme) as proxy:
                client = make_client(server.url, proxy=proxy.url(scheme), backoff=FAST)
                client.start()
                with pytest.raises(wsbridge.ConnectError, match="does not answer the key sent"):
                    client.wait_connected(timeout=10)
                assert isinstance(client.last_error, wsbridge.HandshakeError) and client.stats.connects == 0


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_stop_ends_an_attempt_waiting_for_a_proxy_and_connect_timeout_bounds_it(make_client, scheme):
    """A proxy that accepts the connection and never answers: the kernel completes the
    TCP handshake into the listening socket's backlog."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        proxy = f"{scheme}://127.0.0.1:{silent.getsockname()[1]}"
        client = make_client("ws://127.0.0.1:9/", proxy=proxy, connect_timeout=60)
        client.start()
        silent.settimeout(10)
        conn, _ = silent.accept()
        with conn:
            conn.settimeout(10)
            assert conn.recv(64)  # the client waits for the proxy's answer now
            assert client.stop(timeout=2)
            client = make_client("ws://127.0.0.1:9/", proxy=proxy, connect_timeout=0.5, backoff=wsbridge.NO_RETRY)
            client.start()
            with pytest.raises(wsbridge.ConnectError):
                client.wait_connected(timeout=10)
            assert isinstance(client.last_error, TimeoutError)


@pytest.mark.parametrize("reply,fatal", [(5, False), (2, True)], ids=["connection-refused", "not-allowed-by-ruleset"])
def test_a_socks5_reply_that_the_server_cannot_be_reached_is_retried_unless_it_cannot_heal(make_client, reply, fatal):
    """RFC 1928 §6's reply codes, from a SOCKS5 peer that speaks just those bytes."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        client = make_client("ws://127.0.0.1:9/", proxy=f"socks5://127.0.0.1:{port}",
                             backoff=wsbridge.Backoff(initial=0.01, max_delay=0.01, jitter=0, max_attempts=1))
        client.start()
        for _ in range(1 if fatal else 2):
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(10)
                assert conn.recv(3) == b"\x05\x01\x00"
                conn.sendall(b"\x05\x00")
                request = b""
                while len(request) < 10:
                    request += conn.recv(10 - len(request))
                assert request == b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x09"  # CONNECT 127.0.0.1:9
                conn.sendall(bytes((5, reply, 0, 1, 0, 0, 0, 0, 0, 0)))
        with pytest.raises(wsbridge.ConnectError, match="could not connect to 127.0.0.1:9"):
            client.wait_connected(timeout=10)
    assert client.stats.connect_attempts == (1 if fatal else 2)
    assert isinstance(client.last_error, wsbridge.HandshakeError) == fatal
