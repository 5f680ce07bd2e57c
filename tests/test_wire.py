"""RFC 6455 on the wire, against peers that are not ours: a raw-frame server that
sends what a normal server never does, and the `websockets` library's server.

Each case is a real socket on 127.0.0.1. The raw server reads the client's
frames back, so a test sees the close code the client sent, and whether the
client read on or refused at once.
"""

from __future__ import annotations

import logging
import socket
import threading
from typing import Any, Callable, Iterator, Tuple

import pytest

import wsbridge
from wsbridge import RawCodec
from wsbridge.testing import ConnectProxy
from wsbridge.testing.raw import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    RawServer,
    accept_response,
    fragments,
    frame,
    header,
    read_close,
    read_frame,
)

from conftest import send_quietly, unread, wait_until


@pytest.fixture
def raw() -> Iterator[RawServer]:
    with RawServer() as server:
        yield server


def start(make_client: Callable[..., wsbridge.Client], url: str, collector: Any,
          **kwargs: Any) -> Tuple[wsbridge.Client, Any, Any]:
    """A RawCodec client on ``url``: its messages and its error reports, collected."""
    kwargs.setdefault("codec", RawCodec())
    client = make_client(url, **kwargs)
    got, errors = collector(), collector()
    client.on_any(got)
    client.signals.error.connect(errors)
    client.start().wait_connected(timeout=10)
    return client, got, errors


# -- fragmented messages ------------------------------------------------------------


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_fragmented_messages_arrive_whole_in_order_and_counted(make_client, collector, raw, opcode):
    client, got, errors = start(make_client, raw.url, collector)
    conn = raw.wait_connection()
    body = "héllo wörld, ".encode() * 300  # multi-byte characters cut across fragments
    wire = (
        fragments(b"ab", 1, opcode)  # 2 fragments
        + fragments(body, 1, opcode)  # thousands of 1-byte fragments
        + frame(b"", opcode, fin=False) + frame(b"x", CONTINUATION, fin=False) + frame(b"", CONTINUATION)  # empty ones
        + frame(b"pi", opcode, fin=False) + frame(b"ping-1", PING) + frame(b"e", CONTINUATION, fin=False)
        + frame(b"pong?", PONG) + frame(b"ce", CONTINUATION)  # control frames between fragments
        + frame(b"plain", opcode)
    )
    conn.sendall(wire)
    text = opcode == TEXT
    expect = [b"ab", body, b"x", b"piece", b"plain"]
    items = got.wait(len(expect))
    assert [m.payload for m in items] == [e.decode() if text else e for e in expect]
    assert [m.type for m in items] == ["text" if text else "binary"] * len(expect)
    assert read_frame(conn) == (PONG, b"ping-1")  # the ping was answered mid-message
    assert client.stats.received == len(expect) and client.stats.protocol_errors == 0
    assert not errors.items


def test_a_fragmented_message_one_byte_per_tcp_segment(make_client, collector, raw):
    client, got, _ = start(make_client, raw.url, collector)
    conn = raw.wait_connection()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pace = threading.Event()
    for byte in fragments(b"slow and whole", 3, TEXT) + frame(b"next"):
        conn.sendall(bytes((byte,)))
        pace.wait(0.0005)  # paces the server's writes; the test waits on the collector
    assert [m.payload for m in got.wait(2)] == ["slow and whole", "next"]


def test_a_websockets_server_sending_fragmented_messages(make_client, collector):
    """The other library's server fragments a message sent as an iterable."""
    from websockets.sync.server import serve

    def handler(ws: Any) -> None:
        ws.send(["hel", "lo ", "world"])
        ws.send([b"\x00\x01", b"", b"\x02"])
        ws.send(["x" * 5000 for _ in range(20)])
        ws.send("plain")
        ws.recv()  # hold the connection until the client is done

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, name="test-websockets-server", daemon=True)
        thread.start()
        try:
            port = server.socket.getsockname()[1]
            client, got, errors = start(make_client, f"ws://127.0.0.1:{port}/", collector)
            payloads = [m.payload for m in got.wait(4)]
            assert payloads == ["hello world", b"\x00\x01\x02", "x" * 100_000, "plain"]
            assert not errors.items and client.stats.received == 4
            client.stop()
        finally:
            server.shutdown()
            thread.join(10)


def test_a_fragmented_message_over_the_limit_is_refused_before_the_rest_is_read(make_client, collector, raw):
    client, got, errors = start(make_client, raw.url, collector, max_message_size=1000)
    conn = raw.wait_connection()
    # 600 bytes, then a fragment whose header says 600 more: over 1000. Its payload is never sent,
    # so a client that waited for it would never answer; this one refuses at the header.
    conn.sendall(frame(b"a" * 600, BINARY, fin=False) + bytes((CONTINUATION, 126)) + (600).to_bytes(2, "big"))
    assert read_close(conn) == 1009
    report = errors.wait(1)[0]
    assert report["context"] == "limit" and isinstance(report["error"], wsbridge.MessageTooLarge)
    assert "at least 1200 bytes exceeds max_message_size (1000 bytes)" in str(report["error"])
    raw.wait_connections(2).sendall(fragments(b"b" * 999, 100, BINARY))  # within the limit: whole
    assert got.wait(1)[0].payload == b"b" * 999
    assert client.stats.protocol_errors == 1


# -- what the RFC says MUST fail the connection -----------------------------------------

VIOLATIONS = [
    # (what the server sends, the close code the client must send, words of the report)
    (frame(b'{"x": "\xff\xfe"}', TEXT), 1007, "not valid UTF-8"),
    (frame(b"\xed\xa0\x80", TEXT), 1007, "not valid UTF-8"),  # an encoded surrogate (CESU-8)
    (frame(b"hi", TEXT, mask=b"\x01\x02\x03\x04"), 1002, "masked"),
    (frame(b"hi", TEXT, rsv=4), 1002, "RSV bits 100"),
    (frame(b"hi", TEXT, rsv=1), 1002, "RSV bits 001"),
    (frame(b"hi", 3), 1002, "reserved data opcode 0x3"),
    (frame(b"", 0xB), 1002, "reserved control opcode 0xb"),
    (frame(b"p" * 126, PING), 1002, "over 125 bytes"),
    (frame(b"p", PING, fin=False), 1002, "fragmented control"),
    (frame(b"tail", CONTINUATION), 1002, "no message to continue"),
    (frame(b"a", TEXT, fin=False) + frame(b"b", TEXT), 1002, "before the fragmented one ended"),
    (frame((999).to_bytes(2, "big"), CLOSE), 1002, "invalid code 999"),
    (frame((1005).to_bytes(2, "big"), CLOSE), 1002, "invalid code 1005"),
    (frame(b"\x03", CLOSE), 1002, "1-byte payload"),
    (frame((1000).to_bytes(2, "big") + b"\xff", CLOSE), 1007, "close reason that is not valid UTF-8"),
]


@pytest.mark.parametrize("wire,code,words", VIOLATIONS, ids=[f"{v[1]}-{v[2]}" for v in VIOLATIONS])
def test_a_protocol_violation_fails_the_connection_with_its_code_then_reconnects(make_client, collector, raw, wire, code, words):
    client, got, errors = start(make_client, raw.url, collector)
    conn = raw.wait_connection()
    conn.sendall(frame(b"before") + wire)
    assert read_close(conn) == code
    report = errors.wait(1)[0]
    error = report["error"]
    assert report["context"] == "protocol" and isinstance(error, wsbridge.WireError), report
    assert error.close_code == code and words in str(error)
    assert report["frame"] and report["frame"] == error.frame  # the offending bytes, for the log and the user
    # Reconnected as usual, and the stream goes on.
    raw.wait_connections(2).sendall(frame(b"after"))
    assert [m.payload for m in got.wait(2)] == ["before", "after"]
    wait_until(lambda: client.stats.connects == 2, what="the second connection counted")
    assert client.stats.protocol_errors == 1


def test_invalid_utf8_in_a_fragment_fails_at_once_not_at_the_end(make_client, collector, raw):
    client, got, errors = start(make_client, raw.url, collector)
    conn = raw.wait_connection()
    conn.sendall(frame(b"ok \xce", TEXT, fin=False))  # may still complete: a character cut in two
    conn.sendall(frame(b"\xbaok", CONTINUATION, fin=False))  # it did ("κ")
    conn.sendall(frame(b"\xff", CONTINUATION, fin=False))  # never valid, whatever follows
    assert read_close(conn) == 1007  # before the final fragment was sent
    report = errors.wait(1)[0]
    assert report["context"] == "protocol" and b"ok \xce\xbaok\xff" in report["frame"]
    assert not got.items


def test_invalid_utf8_mid_frame_fails_before_the_frame_ends(make_client, collector, raw):
    client, got, errors = start(make_client, raw.url, collector)
    conn = raw.wait_connection()
    whole = frame(b"fine so far \xf4\x90\x80\x80 and the rest" + b"." * 70_000, TEXT)  # U+110000: never valid
    conn.sendall(whole[:30])  # the rest of the frame is never sent
    assert read_close(conn) == 1007
    assert b"\xf4\x90" in errors.wait(1)[0]["frame"] and not got.items


def test_a_server_close_is_echoed_with_its_code(make_client, collector, raw):
    client, got, _ = start(make_client, raw.url, collector)
    disconnects = collector()
    client.signals.disconnected.connect(disconnects)
    conn = raw.wait_connection()
    conn.sendall(frame(b"last") + frame((4001).to_bytes(2, "big") + "bye ✓".encode(), CLOSE))
    assert read_close(conn) == 4001
    report = disconnects.wait(1)[0]
    assert report["code"] == 4001 and report["reason"] == "bye ✓" and report["error"] is None
    assert got.wait(1)[0].payload == "last"


def test_application_format_errors_leave_the_connection_open(make_client, collector, raw):
    client, got, errors = start(make_client, raw.url, collector, codec=wsbridge.JsonCodec())
    conn = raw.wait_connection()
    conn.sendall(frame(b"{not json") + frame(b'{"type": "ok"}'))
    assert got.wait(1)[0].type == "ok"
    assert errors.wait(1)[0]["context"] == "decode"
    assert client.stats.connects == 1


# -- the opening handshake -----------------------------------------------------------------


def gives_up(make_client: Callable[..., wsbridge.Client], url: str, collector: Any, **kwargs: Any) -> BaseException:
    """Start a client that must give up without ever connecting; return its error."""
    client = make_client(url, **kwargs)
    gave_up, connected = collector(), collector()
    client.signals.gave_up.connect(gave_up)
    client.signals.connected.connect(connected)
    client.start()
    error = gave_up.wait(1)[0]["error"]
    assert client.state == "gave_up" and not connected.items and client.stats.connects == 0
    with pytest.raises(wsbridge.ConnectError):
        client.wait_connected(timeout=1)
    return error


@pytest.mark.parametrize(
    "respond,words",
    [
        (lambda req: accept_response(req).replace(b"Accept: ", b"Accept: x", 1), "does not answer the key"),
        (lambda req: accept_response(req).swapcase().replace(b"http/1.1", b"HTTP/1.1", 1), "does not answer the key"),
        (lambda req: accept_response(req, b"Sec-WebSocket-Protocol: chat\r\n"), "subprotocol 'chat'"),
        (lambda req: accept_response(req, b"Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n"), "x-webkit-deflate-frame"),
        (lambda req: accept_response(req, b"X-Long: " + b"a" * 9000 + b"\r\n"), "exceeds 8192 bytes"),
        (lambda req: accept_response(req, b"".join(b"X-%d: %s\r\n" % (i, b"b" * 4000) for i in range(20))),
         "exceeds 65536 bytes"),
    ],
    ids=["accept-wrong", "accept-other-case", "unrequested-subprotocol", "unrequested-extension", "long-line", "long-head"],
)
def test_a_bad_upgrade_response_is_refused_with_a_clear_error(make_client, collector, respond, words):
    with RawServer(respond=respond) as server:
        error = gives_up(make_client, server.url, collector)
        assert isinstance(error, wsbridge.ConnectError) and words in str(error.__cause__ or error), repr(error)
        assert isinstance(error.__cause__, wsbridge.HandshakeError)


def test_a_header_line_that_never_ends_is_cut_at_the_limit(make_client, collector):
    """The server streams one header line forever: the client stops at 8 KiB, not at the timeout."""
    def respond(request: bytes) -> bytes:
        return b"HTTP/1.1 101 Switching Protocols\r\nX-Endless: " + b"z" * (4 << 20)

    with RawServer(respond=respond) as server:
        error = gives_up(make_client, server.url, collector, connect_timeout=30)
        assert "exceeds 8192 bytes" in str(error.__cause__)


def test_the_negotiated_subprotocol_is_readable(make_client, collector):
    def respond(request: bytes) -> bytes:
        offered = [p.strip() for p in (header(request, b"sec-websocket-protocol") or b"").split(b",")]
        return accept_response(request, b"Sec-WebSocket-Protocol: " + offered[-1] + b"\r\n")

    with RawServer(respond=respond) as server:
        client = make_client(server.url, subprotocols=["v1.feed", "v2.feed"])
        assert client.subprotocol is None
        client.start().wait_connected(timeout=10)
        assert client.subprotocol == "v2.feed"
    with RawServer() as server:
        client = make_client(server.url)
        client.start().wait_connected(timeout=10)
        assert client.subprotocol is None


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_naming_the_target_and_no_header_reaches_it(make_client, collector, status):
    """Never followed. A permanent redirect ends the client; a temporary one is retried
    with backoff (the server may be between deployments), never followed either."""
    with RawServer() as other:
        target = other.url + "feed?token=sekrit"

        def respond(request: bytes) -> bytes:
            return b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (status, target.encode())

        with RawServer(respond=respond) as server:
            error = gives_up(
                make_client, server.url, collector,
                headers={"Authorization": "Bearer s3cr3t", "Cookie": "session=c00kie"},
                backoff=wsbridge.Backoff(initial=0.01, max_delay=0.01, jitter=0, max_attempts=2),
            )
            text = str(error)
            assert other.url + "feed" in text and "redirect" in text and "sekrit" not in text
            assert isinstance(error.__cause__, wsbridge.HandshakeError)
            permanent = status in (301, 308)
            assert len(server.requests) == (1 if permanent else 3) and b"s3cr3t" in server.requests[0]
            assert ("retries exhausted" in text) is not permanent
        assert other.requests == []  # nothing ever went to the other origin


def test_a_3xx_that_is_no_redirect_is_a_refused_upgrade(make_client, collector):
    with RawServer(respond=lambda req: b"HTTP/1.1 304 Not Modified\r\n\r\n") as server:
        error = gives_up(make_client, server.url, collector, backoff=wsbridge.NO_RETRY)
        assert "304" in str(error) and "redirect" not in str(error)


@pytest.mark.parametrize(
    "respond",
    [
        lambda req: accept_response(req).replace(b"\r\n", b"\n"),  # bare LF line ends (RFC 7230 §3.5)
        lambda req: accept_response(req, b"X-Folded: one\r\n two\r\n"),  # obs-fold
        lambda req: accept_response(req, b"Sec-WebSocket-Accept: " + header(accept_response(req), b"sec-websocket-accept")
                                    + b"\r\n"),  # the same accept value twice
        lambda req: accept_response(req).replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"),
    ],
    ids=["bare-LF", "obs-fold", "accept-twice", "connection-list"],
)
def test_upgrade_responses_the_rfc_allows_are_accepted(make_client, collector, respond):
    with RawServer(respond=respond) as server:
        client, got, _ = start(make_client, server.url, collector)
        server.wait_connection().sendall(frame(b"hello"))
        assert got.wait(1)[0].payload == "hello"


def test_offered_subprotocols_none_chosen_is_a_clear_error(make_client, collector):
    with RawServer() as server:
        error = gives_up(make_client, server.url, collector, subprotocols=["v1.feed"])
        assert "none of the subprotocols offered ('v1.feed')" in str(error)


def test_header_values_reach_the_log_quoted(make_client, collector, caplog):
    """A bare LF in a header value starts a new (malformed) line; nothing the server
    sends is written to the log raw."""
    def respond(request: bytes) -> bytes:
        return accept_response(request, b"Sec-WebSocket-Extensions: x\nCRITICAL wsbridge: forged \x1b[2J\r\n")

    with RawServer(respond=respond) as server, caplog.at_level(logging.DEBUG):
        gives_up(make_client, server.url, collector)
    assert not any("\x1b" in r.getMessage() or r.getMessage().startswith("CRITICAL") for r in caplog.records)


# -- through an HTTP proxy: wsbridge dials it, upgrades and reads as without one ------------


def test_through_a_proxy_frames_are_read_and_checked_by_wsbridge(make_client, collector, raw, monkeypatch):
    with ConnectProxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        monkeypatch.setenv("no_proxy", "example.invalid")
        client, got, errors = start(make_client, raw.url, collector)
        assert proxy.requests and proxy.requests[0].startswith(b"CONNECT 127.0.0.1:")
        conn = raw.wait_connection()
        conn.sendall(fragments(b"via the proxy", 4, TEXT) + frame(b"bad", TEXT, rsv=2))
        assert got.wait(1)[0].payload == "via the proxy"
        assert read_close(conn) == 1002 and errors.wait(1)[0]["context"] == "protocol"
        client.stop()


# -- found by review: each of these once failed -------------------------------------------------


@pytest.mark.timeout(60)
def test_a_violation_while_a_send_is_stuck_fails_the_connection_at_once(make_client, collector, raw):
    """The close frame is a courtesy: with the send lock held by a write to a peer that
    does not read, the reader skips it and cuts, rather than wait for the write's timeout."""
    client, _, errors = start(make_client, raw.url, collector, ping_interval=0, idle_timeout=30)
    conn = raw.wait_connection()  # never reads
    sending = threading.Thread(target=lambda: send_quietly(client, b"x" * (8 << 20)), daemon=True)
    sending.start()
    wait_until(lambda: unread(conn) > 64 * 1024, what="a send stuck on a full socket")
    conn.sendall(frame(b"bad", TEXT, rsv=1))
    report = errors.wait(1, timeout=5)[0]  # the write's own timeout is 30 s
    assert report["context"] == "protocol"
    sending.join(10)


def test_control_frames_pass_whatever_max_message_size(make_client, collector, raw):
    client, got, errors = start(make_client, raw.url, collector, max_message_size=10)
    conn = raw.wait_connection()
    conn.sendall(frame(b"p" * 125, PING) + frame(b"", PING) + frame(b"0123456789"))
    assert read_frame(conn) == (PONG, b"p" * 125) and read_frame(conn) == (PONG, b"")
    assert got.wait(1)[0].payload == "0123456789"
    conn.sendall(frame((1000).to_bytes(2, "big") + b"a reason well over ten bytes", CLOSE))
    assert read_close(conn) == 1000 and not errors.items


def test_an_empty_close_frame_is_an_orderly_end(make_client, collector, raw):
    client, _, errors = start(make_client, raw.url, collector)
    disconnects = collector()
    client.signals.disconnected.connect(disconnects)
    raw.wait_connection().sendall(frame(b"", CLOSE))
    report = disconnects.wait(1)[0]
    assert report["code"] is None and report["error"] is None and not errors.items


def test_the_start_of_an_encoded_surrogate_fails_at_once(make_client, collector, raw):
    start(make_client, raw.url, collector)
    conn = raw.wait_connection()
    conn.sendall(frame(b"ok\xed\xa0", TEXT, fin=False))  # ED A0..BF can only be a surrogate
    assert read_close(conn, timeout=5) == 1007


def test_many_empty_fragments_cost_no_memory():
    import tracemalloc

    from wsbridge.wire.frames import BINARY as BIN
    from wsbridge.wire.frames import CONTINUATION as CONT
    from wsbridge.wire.frames import Reassembler

    assembler = Reassembler(1 << 20)
    tracemalloc.start()
    try:
        assembler.begin(BIN, 1)
        assembler.add(BIN, b"x")
        for _ in range(200_000):
            assembler.begin(CONT, 0)
            assembler.add(CONT, b"")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert assembler.size == 1 and peak < 64 * 1024
    assembler.begin(0x80 | CONT, 1)
    assert assembler.add(0x80 | CONT, b"y") == (b"xy", BIN)


def test_message_too_large_keeps_its_positional_arguments():
    error = wsbridge.MessageTooLarge("too big", b"abc")
    assert error.frame == b"abc" and error.close_code == 1009
