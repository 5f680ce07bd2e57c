"""The upgrade against a hostile server and a careless caller (issue 20, points 1-4 and 11):
status lines that ``int()`` reads differently, an environment proxy, secrets in reprs,
header injection (the command line's side is in test_cli.py), and a proxy that never
answers CONNECT.

Every server here is built for the test on raw sockets (`RawServer`, `ConnectProxy`), on
127.0.0.1. A second `RawServer` plays "the other origin" a redirect points at: it must
never see a connection.
"""

from __future__ import annotations

import base64
import os
import threading
from typing import Any, Callable, Iterator

import pytest

import wsbridge
from wsbridge.testing import ConnectProxy, RawServer
from wsbridge.testing.raw import accept_response, frame

from conftest import wait_until

SECRETS = ("s3cr3t-bearer", "c00kie-value", "pa55word-in-url", "tok3n-in-query", "x-key-value", "k3y-password")
HEADERS = {"Authorization": f"Bearer {SECRETS[0]}", "Cookie": f"session={SECRETS[1]}", "X-Tenant": SECRETS[4]}


def secret_url(url: str) -> str:
    """``url`` (``ws://127.0.0.1:PORT/``) with a password and a token in it."""
    return url.replace("ws://", f"ws://user:{SECRETS[2]}@") + f"feed?token={SECRETS[3]}&room=lobby"


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked into: {text[:400]}"


@pytest.fixture
def other() -> Iterator[RawServer]:
    """The other origin: a server a redirect points at, which must never be reached."""
    with RawServer() as server:
        yield server


def redirect_to(target: str, status: bytes = b"302") -> Callable[[bytes], bytes]:
    return lambda request: b"HTTP/1.1 " + status + b" Found\r\nLocation: " + target.encode() + b"\r\nContent-Length: 0\r\n\r\n"


def refused(make_client: Callable[..., wsbridge.Client], url: str, **kwargs: Any) -> BaseException:
    """Start a client (one attempt) that must give up without connecting; its connection's error."""
    client = make_client(url, headers=HEADERS, backoff=wsbridge.NO_RETRY, **kwargs)
    client.start()
    with pytest.raises(wsbridge.ConnectError):
        client.wait_connected(timeout=15)
    assert client.stats.connects == 0 and client.last_error is not None
    return client.last_error


# -- 1. the status line is read strictly; websocket-client never follows a redirect ---------------


@pytest.mark.parametrize(
    "status",
    ["+302", "3_02", "٣٠٢".encode().decode("latin-1"), "0302", "302\t"],
    ids=["plus", "underscore", "arabic-indic-digits", "four-digits", "trailing-tab"],
)
def test_a_status_that_int_reads_as_a_redirect_is_refused_and_the_other_origin_gets_nothing(make_client, other, status):
    """websocket-client reads the status with int(): each of these is a 302 to it, which it
    would follow to the other origin with every header."""
    respond = redirect_to(other.url + "stolen", status.encode("latin-1"))
    with RawServer(respond=respond) as server:
        error = refused(make_client, server.url)
        assert isinstance(error, wsbridge.HandshakeError) and "malformed status line" in str(error), error
        assert len(server.requests) == 1
    assert other.accepted == 0 and other.requests == []


def test_a_redirect_in_a_head_cut_short_is_not_followed(make_client, other):
    """A head that the end of the stream cuts before its blank line, but where a line of
    spaces ends it for websocket-client (which strips every line): never handed on."""
    head = b"HTTP/1.1 302 Found\r\nLocation: " + other.url.encode() + b"\r\n \r\n"
    with RawServer(respond=lambda request: head) as server:
        refused(make_client, server.url)
        assert len(server.requests) == 1
    assert other.accepted == 0 and other.requests == []


def test_a_101_that_int_reads_with_an_extension_never_offered_is_refused(make_client, collector):
    def respond(request: bytes) -> bytes:
        ok = accept_response(request, b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
        return ok.replace(b"HTTP/1.1 101", b"HTTP/1.1 +101", 1) + frame(b"delivered anyway")

    with RawServer(respond=respond) as server:
        got = collector()
        client = make_client(server.url, codec=wsbridge.RawCodec(), backoff=wsbridge.NO_RETRY)
        client.on_any(got)
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="malformed status line"):
            client.wait_connected(timeout=15)
        assert client.stop(timeout=10)
    assert got.items == [] and client.stats.connects == 0


@pytest.mark.parametrize(
    "respond",
    [
        lambda req: accept_response(req).replace(b" Switching Protocols", b"", 1),  # no reason, no space
        lambda req: accept_response(req).replace(b" Switching Protocols", b" ", 1),  # an empty reason
        lambda req: accept_response(req).replace(b"Switching Protocols", "Switching é Protocols\t!".encode(), 1),
    ],
    ids=["no-reason", "empty-reason", "reason-obs-text"],
)
def test_status_lines_rfc_9112_allows_are_accepted(make_client, collector, respond):
    with RawServer(respond=respond) as server:
        client = make_client(server.url, codec=wsbridge.RawCodec())
        got = collector()
        client.on_any(got)
        client.start().wait_connected(timeout=10)
        server.wait_connection().sendall(frame(b"hello"))
        assert got.wait(1)[0].payload == "hello"


# -- 2. through an environment proxy: the same checks, the same refusals -------------------------------


@pytest.fixture
def env_proxy(monkeypatch) -> Iterator[ConnectProxy]:
    """An HTTP CONNECT proxy on 127.0.0.1, named by ``http_proxy``."""
    with ConnectProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        yield proxy


@pytest.mark.parametrize("status", [b"302", b"+302"], ids=["302", "plus-302"])
def test_through_a_proxy_a_redirect_is_refused_and_the_other_origin_gets_nothing(make_client, env_proxy, other, status):
    with RawServer(respond=redirect_to(other.url + "stolen", status)) as server:
        error = refused(make_client, server.url)
        assert isinstance(error, wsbridge.HandshakeError), error
        assert ("redirect" if status == b"302" else "malformed status line") in str(error), error
        assert len(server.requests) == 1 and SECRETS[0].encode() in server.requests[0]
    assert [r.split(b"\r\n")[0] for r in env_proxy.requests] == [f"CONNECT 127.0.0.1:{server.port} HTTP/1.1".encode()]
    assert other.accepted == 0 and other.requests == []


@pytest.mark.parametrize(
    "respond,words",
    [
        (lambda req: accept_response(req).replace(b"Accept: ", b"Accept: x", 1), "does not answer the key"),
        (lambda req: accept_response(req).replace(  # websocket-client compares it case-insensitively
            b"Accept: " + accept_response(req).split(b"Accept: ")[1][:28],
            b"Accept: " + accept_response(req).split(b"Accept: ")[1][:28].swapcase(), 1), "does not answer the key"),
        (lambda req: accept_response(req, b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"), "x-webkit-deflate-frame"),
        (lambda req: accept_response(req, b"Sec-WebSocket-Protocol: chat\r\n"), "subprotocol 'chat'"),
    ],
    ids=["accept-wrong", "accept-other-case", "unrequested-extension", "unrequested-subprotocol"],
)
def test_through_a_proxy_the_upgrade_checks_apply(make_client, env_proxy, respond, words):
    with RawServer(respond=respond) as server:
        error = refused(make_client, server.url)
        assert isinstance(error, wsbridge.HandshakeError) and words in str(error), error
    assert len(env_proxy.requests) == 1


def test_the_proxy_gets_its_credentials_and_the_server_never_does(make_client, collector, monkeypatch):
    """As websocket-client does: Basic credentials from the proxy's URL, in CONNECT only."""
    with ConnectProxy() as proxy, RawServer() as server:
        monkeypatch.setenv("http_proxy", proxy.url.replace("http://", "http://proxyuser:pr0xy-pass@"))
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        client = make_client(server.url)
        client.start().wait_connected(timeout=10)
        connect = proxy.wait_requests(1)[0]
        expected = base64.b64encode(b"proxyuser:pr0xy-pass")
        assert b"\r\nProxy-Authorization: Basic " + expected + b"\r\n" in connect
        assert b"pr0xy-pass" not in server.requests[0] and expected not in server.requests[0]


def test_no_proxy_is_honoured(make_client, env_proxy, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    with RawServer() as server:
        client = make_client(server.url)
        client.start().wait_connected(timeout=10)
    assert env_proxy.requests == []


def test_a_proxy_that_refuses_connect_is_retried_not_followed(make_client, collector, monkeypatch):
    """The proxy relays to 127.0.0.1 only; it answers 403 for any other host."""
    with ConnectProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        client = make_client("ws://localhost:9/", backoff=wsbridge.Backoff(initial=0.01, max_delay=0.01, jitter=0,
                                                                            max_attempts=1))
        client.start()
        with pytest.raises(wsbridge.ConnectError, match=r"refused CONNECT localhost:9 \(HTTP 403\)"):
            client.wait_connected(timeout=15)
        assert len(proxy.requests) == 2  # retried: a proxy's refusal may heal


# -- 3. no repr shows a secret --------------------------------------------------------------------------


def test_no_repr_shows_a_secret(make_client, tmp_path):
    key_file = tmp_path / "key.pem"
    key_file.write_text("not read")
    with RawServer() as server:
        client = make_client(secret_url(server.url), headers=HEADERS, sslopt={"password": SECRETS[5]})
        client.start().wait_connected(timeout=10)
        conn = client._supervisor.conn
        assert conn is not None and SECRETS[0].encode() in conn.handshake.request  # they were sent, and are held
        objects = [client, client.options, conn, conn.handshake, conn.app, conn.app.sock, conn.options]
        texts = [repr(o) for o in objects] + [str(o) for o in objects]
    assert "user:***@" in repr(client.options) and "'Authorization': '***'" in repr(client.options)
    for text in texts:
        assert_clean(text)


def test_no_repr_of_the_redis_wing_or_the_command_line_shows_a_secret():
    pytest.importorskip("redis")
    from wsbridge.cli import Arguments, build_parser
    from wsbridge.redis.bridge import Bridge
    from wsbridge.redis.conn import connect
    from wsbridge.redis.consumer import StreamConsumer
    from wsbridge.redis.lease import Lease
    from wsbridge.redis.store import RedisStreamStore

    redis_url = f"redis://user:{SECRETS[2]}@127.0.0.1:1/0?password={SECRETS[3]}"
    ws_url = f"ws://user:{SECRETS[2]}@127.0.0.1:1/feed?token={SECRETS[3]}"
    objects = [
        connect(redis_url), RedisStreamStore(redis_url, feed="f"), StreamConsumer(redis_url, "f", "g", "n"),
        Lease(redis_url, "k"), Bridge(ws_url, redis_url, feed="f", headers=HEADERS),
        build_parser().parse_args(["listen", ws_url, "--header", f"Authorization: {HEADERS['Authorization']}",
                                   "--header", SECRETS[4]], namespace=Arguments()),
        build_parser().parse_args(["bridge", ws_url, "--redis", redis_url, "--feed", "f"], namespace=Arguments()),
    ]
    for o in objects:
        assert_clean(repr(o))


# -- 4. a header that would inject others is refused, and nothing is sent -----------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {SECRETS[0]}\r\nCookie: admin=1"},
        {"Authorization": f"Bearer {SECRETS[0]}\nCookie: admin=1"},
        {"Authorization": f"Bearer {SECRETS[0]}\rCookie: admin=1"},
        {"Authorization": f"Bearer \x00{SECRETS[0]}"},
        {"X-Trace": "a\x1bb"},
        {f"Authorization: Bearer {SECRETS[0]}": ""},
        {"X-Evil\r\nCookie": "admin=1"},
        {"Bad Name": "x"},
        {"": "x"},
    ],
    ids=["crlf", "lf", "cr", "nul", "escape", "colon-in-name", "crlf-in-name", "space-in-name", "empty-name"],
)
def test_a_header_that_is_not_one_header_line_is_refused_at_construction(headers):
    with RawServer() as server:
        with pytest.raises(ValueError, match="header") as raised:
            wsbridge.Client(server.url, headers=headers)
        assert server.accepted == 0
    assert_clean(str(raised.value))


def test_tabs_and_non_ascii_in_a_header_value_are_sent(make_client):
    with RawServer() as server:
        client = make_client(server.url, headers={"X-Note": "a\tb é"})
        client.start().wait_connected(timeout=10)
        assert b"\r\nX-Note: a\tb \xc3\xa9\r\n" in server.requests[0]


# -- 11. a proxy that never answers CONNECT: bounded by connect_timeout, ended by stop() -------------------


@pytest.fixture
def silent_proxy(monkeypatch) -> Iterator[ConnectProxy]:
    """A proxy that reads each CONNECT and never answers, named by ``http_proxy``."""
    with ConnectProxy(answer=False) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        yield proxy


@pytest.mark.timeout(60)
def test_an_unanswered_connect_is_bounded_by_connect_timeout_and_leaks_nothing(make_client, silent_proxy, collector):
    with RawServer() as server:
        client = make_client(server.url, connect_timeout=0.5)
        reconnecting = collector()
        client.signals.reconnecting.connect(reconnecting)
        fds = len(os.listdir("/proc/self/fd"))
        client.start()

        def readers() -> list:
            prefix = f"{client.name}-reader-"
            return [t for t in threading.enumerate() if t.name.startswith(prefix)]

        for n in range(1, 5):  # one attempt after another, each ended by the timeout: never piled up
            silent_proxy.wait_requests(n, timeout=15)
            assert len(readers()) <= 1, [t.name for t in readers()]
        reconnecting.wait(1)
        error = client.last_error
        assert isinstance(error, TimeoutError) and "not open within 0.5 s" in str(error), error
        assert client.stop(timeout=5)
        assert readers() == [] and not any(t.is_alive() for t in client.threads())
        wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds + len(silent_proxy.requests),  # + the proxy's ends
                   what="the client's sockets closed")
        assert server.accepted == 0


@pytest.mark.timeout(60)
def test_stop_ends_an_attempt_waiting_for_the_proxy(make_client, silent_proxy):
    with RawServer() as server:
        client = make_client(server.url, connect_timeout=30)
        client.start()
        silent_proxy.wait_requests(1)
        wait_until(lambda: client.stats.connect_attempts == 1, what="the attempt under way")
        assert client.stop(timeout=2)  # not 30 s: the read of the proxy's answer is cut
        assert not any(t.is_alive() for t in client.threads())
