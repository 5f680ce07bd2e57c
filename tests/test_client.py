"""The client end to end, against a real WebSocket server on 127.0.0.1."""

from __future__ import annotations

import logging
import threading

import pytest

import wsbridge
from wsbridge import Message, PipeCodec, RawCodec
from wsbridge.testing import Server

from conftest import per_thread, send_from_threads, wait_until


def test_connects_receives_in_order_and_stops_cleanly(server, make_client, collector):
    got = collector()
    client = make_client(server.url, **wsbridge.conventions())
    client.on("tick", got)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send_many({"type": "tick", "seq": i} for i in range(1, 2001))
    items = got.wait(2000)
    assert [m.seq for m in items] == list(range(1, 2001))
    assert all(isinstance(m, Message) and m.received_at for m in items)
    assert client.stop(timeout=10)
    assert all(not t.is_alive() for t in client.threads())
    assert client.state == "stopped"


def test_context_manager_starts_and_stops(server):
    with wsbridge.Client(server.url) as client:
        client.wait_connected(timeout=10)
        threads = client.threads()
        assert {t.name.rsplit("-", 1)[-1] for t in threads} >= {"supervisor", "dispatcher"}
        assert all(t.name.startswith(client.name) for t in threads)
    assert not any(t.is_alive() for t in threads)


def test_dispatch_by_type_and_on_any(server, make_client, collector):
    chats, trades, everything = collector(), collector(), collector()
    client = make_client(server.url)

    @client.on("chat")
    def on_chat(msg):
        chats(msg)

    client.on("trade", trades)
    client.on_any(everything)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send({"type": "chat", "body": "a"}, {"type": "trade", "px": 1}, {"type": "other"}, {"type": "chat", "body": "b"})
    everything.wait(4)
    assert [m.payload["body"] for m in chats.wait(2)] == ["a", "b"]
    assert [m.payload["px"] for m in trades.wait(1)] == [1]
    assert [m.type for m in everything.items] == ["chat", "trade", "other", "chat"]
    assert client.off(on_chat) == 1
    server.send({"type": "chat", "body": "c"})
    everything.wait(5)
    assert len(chats) == 2


def test_a_subscriber_that_raises_is_reported_and_others_still_get_the_message(server, make_client, collector):
    good, errors = collector(), collector()
    client = make_client(server.url)

    def broken(msg):
        raise RuntimeError(f"boom on {msg.payload['n']}")

    client.on("x", broken)
    client.on("x", good)
    client.signals.error.connect(errors)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send(*({"type": "x", "n": i} for i in range(3)))
    assert [m.payload["n"] for m in good.wait(3)] == [0, 1, 2]
    reports = errors.wait(3)
    assert [r["context"] for r in reports] == ["subscriber"] * 3
    assert str(reports[0]["error"]) == "boom on 0" and reports[0]["subscriber"] is broken
    assert client.stats.subscriber_errors == 3


def test_a_subscriber_error_without_error_receivers_is_logged(server, make_client, collector, caplog):
    done = collector()
    client = make_client(server.url)
    client.on("x", lambda msg: 1 / 0)
    client.on("x", done)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    with caplog.at_level(logging.ERROR, logger="wsbridge"):
        server.send({"type": "x"})
        done.wait(1)
        client.stop()
    assert any("ZeroDivisionError" in (r.exc_text or "") or r.exc_info for r in caplog.records)


def test_malformed_frames_are_reported_and_the_stream_goes_on(make_client, collector):
    with Server(codec=PipeCodec()) as server:
        good, errors = collector(), collector()
        client = make_client(server.url, codec=PipeCodec())
        client.on("chat", good)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.send(
            ("chat|2|ok", False),
            ('chat|15|"Hello world!"', False),
            ("chat|x|abc", False),  # no length: the application's format, not the wire's
            ("chat|5|again", False),
        )
        assert [m.payload for m in good.wait(2)] == ["ok", "again"]
        reports = errors.wait(2)
        assert [r["context"] for r in reports] == ["decode", "decode"]
        assert isinstance(reports[0]["error"], wsbridge.ProtocolError)
        assert "15" in str(reports[0]["error"]) and reports[0]["frame"] == b'chat|15|"Hello world!"'
        assert client.stats.protocol_errors == 2


def test_pipe_frames_with_several_messages_and_binary_frames(make_client, collector):
    codec = PipeCodec(fixed={"tick": 3})
    with Server(codec=codec) as server:
        got = collector()
        client = make_client(server.url, codec=codec)
        client.on_any(got)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.send(codec.encode_many([Message("chat", "a|b"), Message("tick", "123"), Message("chat", "é")]))
        server.send(codec.encode(Message("blob", b"\x00\x01|")))
        items = got.wait(4)
        assert [(m.type, m.payload) for m in items] == [("chat", "a|b"), ("tick", "123"), ("chat", "é"), ("blob", b"\x00\x01|")]


def test_raw_codec_text_and_binary_both_ways(make_client):
    with Server(codec=RawCodec(), echo=True) as server:
        client = make_client(server.url, codec=RawCodec())
        client.start().wait_connected(timeout=10)
        client.send("héllo")
        client.send(b"\x00\xffdata")
        first, second = client.recv(timeout=10), client.recv(timeout=10)
        assert (first.type, first.payload) == ("text", "héllo")
        assert (second.type, second.payload) == ("binary", b"\x00\xffdata")
        frames = server.wait_received(2)
        assert [(f.data, f.binary) for f in frames] == [("héllo", False), (b"\x00\xffdata", True)]


def test_send_encodes_dicts_and_messages_through_the_codec(server, make_client):
    client = make_client(server.url)
    client.start().wait_connected(timeout=10)
    client.send({"type": "chat", "body": "hi"})
    client.send(Message("chat", {"body": "there"}, seq=2))
    server.wait_received(2)
    assert [(m.type, m.payload.get("body"), m.seq) for m in server.received_messages()] == [
        ("chat", "hi", None),
        ("chat", "there", 2),
    ]
    with pytest.raises(TypeError):
        client.send(12345)  # type: ignore[arg-type]


def test_send_from_many_threads_keeps_each_threads_order(server, make_client):
    client = make_client(server.url)
    client.start().wait_connected(timeout=10)
    send_from_threads(client, threads=8, each=200)
    server.wait_received(1600)
    assert per_thread(server.received_messages()) == {k: list(range(200)) for k in range(8)}


def test_sends_before_start_are_buffered_and_flushed_in_order(server, make_client):
    client = make_client(server.url)
    for i in range(50):
        client.send({"type": "early", "i": i})
    assert client.stats.outbox == 50
    client.start().wait_connected(timeout=10)
    client.send({"type": "late"})
    server.wait_received(51)
    assert [m.payload.get("i") for m in server.received_messages()] == list(range(50)) + [None]
    assert client.stats.flushed == 50 and client.stats.outbox == 0


def test_pull_api_recv_timeout_and_order(server, make_client):
    client = make_client(server.url)
    client.start().wait_connected(timeout=10)
    with pytest.raises(TimeoutError):
        client.recv(timeout=0.05)
    server.send({"type": "a", "n": 1}, {"type": "b", "n": 2})
    assert [client.recv(timeout=10).payload["n"] for _ in range(2)] == [1, 2]


def test_wait_for_and_messages_leave_other_types_buffered(server, make_client):
    client = make_client(server.url)
    client.start().wait_connected(timeout=10)
    server.send(
        {"type": "chat", "n": 1}, {"type": "ack", "id": 7}, {"type": "chat", "n": 2}, {"type": "ack", "id": 8}, {"type": "done"}
    )
    ack = client.wait_for("ack", lambda m: m.payload["id"] == 8, timeout=10)
    assert ack.payload["id"] == 8
    assert client.wait_for("done", timeout=10).type == "done"
    chats = list(client.messages(types={"chat"}, timeout=0.2))
    assert [m.payload["n"] for m in chats] == [1, 2]
    assert client.recv(timeout=10).payload == {"type": "ack", "id": 7}
    with pytest.raises(TimeoutError, match="of type ack"):
        client.wait_for("ack", timeout=0.05)
    with pytest.raises(ValueError, match="a message type"):  # at once, not after the timeout
        client.wait_for(lambda m: m.type == "ack", timeout=30)


def test_pull_api_ends_when_the_client_stops(server, make_client):
    client = make_client(server.url)
    client.start().wait_connected(timeout=10)
    server.send({"type": "last"})
    client.wait_for("last", timeout=10)
    server.send({"type": "after"})
    server.ping()
    client.stop()
    assert [m.type for m in client.messages(timeout=5)] == ["after"]
    with pytest.raises(wsbridge.ClientClosed):
        client.recv(timeout=5)
    with pytest.raises(wsbridge.ClientClosed):
        client.send("too late")


def test_pull_buffer_drop_oldest_is_counted(server, make_client):
    client = make_client(server.url, pull_buffer=10)
    client.start().wait_connected(timeout=10)
    server.send_many({"type": "n", "i": i} for i in range(25))
    server.ping()
    # All 25 in the pull buffer's hands before the take: a take already waiting would be
    # handed message 24 directly, and only 14 would be dropped.
    wait_until(lambda: client.stats.pull_buffered + client.stats.pull_dropped == 25, what="25 messages pulled")
    client.wait_for("n", lambda m: m.payload["i"] == 24, timeout=10)
    assert client.stats.pull_dropped == 15
    assert [m.payload["i"] for m in client.messages(timeout=0.1)] == list(range(15, 24))


def test_a_slow_subscriber_does_not_stall_the_socket(server, make_client):
    release = threading.Event()
    client = make_client(server.url)
    client.on("slow", lambda msg: release.wait(30))
    client.start().wait_connected(timeout=10)
    server.send({"type": "slow"})
    server.send_many({"type": "fast", "i": i} for i in range(500))
    # The client answers pings on its reader thread: once this returns,
    # every frame sent before the ping has been read (the dispatcher decodes them later).
    server.ping(timeout=10)
    stats = client.stats
    assert stats.frames == 501 and stats.dispatched <= 1
    release.set()
    client.wait_for("fast", lambda m: m.payload["i"] == 499, timeout=10)


def test_stop_delivers_what_was_already_received(server, make_client, collector):
    got = collector()
    gate = threading.Event()
    client = make_client(server.url)
    client.on("m", lambda msg: gate.wait(30))
    client.on("m", got)
    client.start().wait_connected(timeout=10)
    server.send_many({"type": "m", "i": i} for i in range(100))
    server.ping()
    threading.Timer(0.05, gate.set).start()
    assert client.stop(timeout=10)
    assert [m.payload["i"] for m in got.items] == list(range(100))


def test_wait_connected_times_out_with_the_last_error(make_client, free_port):
    client = make_client(f"ws://127.0.0.1:{free_port}/")
    client.start()
    with pytest.raises(TimeoutError, match="ConnectionRefused"):
        client.wait_connected(timeout=0.5)
    assert client.stats.connect_attempts >= 1


def test_a_refused_handshake_gives_up_at_once(make_client, collector):
    with Server(reject_status=401) as server:
        gave_up = collector()
        client = make_client(server.url)
        client.signals.gave_up.connect(gave_up)
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="401"):
            client.wait_connected(timeout=10)
        gave_up.wait(1)
        assert server.handshakes_refused == 1
        assert client.state == "gave_up"
        with pytest.raises(wsbridge.ClientClosed):
            client.recv(timeout=1)


def test_lifecycle_signals(server, make_client, collector):
    connected, disconnected = collector(), collector()
    client = make_client(server.url)
    client.signals.connected.connect(connected)
    client.signals.disconnected.connect(disconnected)
    client.start().wait_connected(timeout=10)
    connected.wait(1)
    server.close_clients(code=1001, reason="going away")
    report = disconnected.wait(1)[0]
    assert (report["code"], report["reason"]) == (1001, "going away")


def test_invalid_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match="ping_interval .* greater than ping_timeout"):
        wsbridge.Client("ws://127.0.0.1:1/", ping_interval=5, ping_timeout=10)
    with pytest.raises(ValueError, match="ws:// or wss://"):
        wsbridge.Client("http://127.0.0.1:1/?token=secret")
    try:
        wsbridge.Client("http://u:pw@127.0.0.1:1/?token=secret")
    except ValueError as exc:
        assert "secret" not in str(exc) and "pw" not in str(exc)
    with pytest.raises(ValueError, match="sslopt\\['ca_certs'\\]: there is no file"):  # it retried for ever
        wsbridge.Client("wss://127.0.0.1:1/", sslopt={"ca_certs": "/no/such/ca.pem"})
    with pytest.raises(ValueError, match="there is no folder"):
        wsbridge.Client("wss://127.0.0.1:1/", sslopt={"ca_cert_path": "/no/such/folder"})


def test_stats_and_repr_hide_secrets(server, make_client):
    client = make_client(server.url + "?token=s3cr3t&room=1", headers={"Authorization": "Bearer s3cr3t"})
    client.start().wait_connected(timeout=10)
    assert "s3cr3t" not in repr(client) and "room=***" in repr(client)  # every query value is masked; keys stay
    assert "s3cr3t" not in repr(client.stats)


def test_a_message_is_delivered_while_the_next_frame_is_still_arriving(make_client):
    """The reader defers waking the dispatcher only while the next frame is
    complete in the kernel; half a frame must not hold back the one before."""
    from wsbridge.testing.raw import BINARY, RawServer, frame

    with RawServer() as raw:
        client = make_client(raw.url, codec=RawCodec())
        client.start().wait_connected(timeout=10)
        big = frame(b"x" * 100_000, BINARY)
        raw.sendall(frame(b"first") + big[:50_000])
        assert client.recv(timeout=10).payload == "first"
        raw.sendall(big[50_000:])
        assert client.recv(timeout=10).payload == b"x" * 100_000


def test_no_thread_outlives_the_client_including_websocket_clients_own(server):
    before = set(threading.enumerate())
    for _ in range(3):
        client = wsbridge.Client(server.url, ping_interval=2, ping_timeout=1)
        client.start().wait_connected(timeout=10)
        server.send({"type": "x"})
        client.recv(timeout=10)
        assert client.stop(timeout=10)
    # The pings come from the supervisor (no ping thread of websocket-client's); every thread is joined.
    assert set(threading.enumerate()) - before == set()


def test_lambdas_connected_to_signals_stay_connected(server, make_client):
    seen = []
    done = threading.Event()
    client = make_client(server.url)
    client.signals.connected.connect(lambda sender, **kw: seen.append(("connected", kw["url"])))
    client.signals.message.connect(lambda sender, message: (seen.append(message.type), done.set()))
    import gc

    gc.collect()
    client.start().wait_connected(timeout=10)
    server.send({"type": "x"})
    assert done.wait(10)
    assert seen == [("connected", server.url), "x"]


def test_a_frame_over_max_message_size_is_refused_from_its_header(make_client, collector):
    from wsbridge.testing import RawServer
    from wsbridge.testing.raw import BINARY, TEXT, frame

    with RawServer() as raw:
        client = make_client(raw.url, max_message_size=1000)
        errors, got = collector(), collector()
        client.signals.error.connect(errors)
        client.on_any(got)
        client.start().wait_connected(timeout=10)
        # A header that claims a terabyte: refused before anything is allocated or read.
        raw.sendall(bytes((0x80 | BINARY, 127)) + (1 << 40).to_bytes(8, "big") + b"x" * 100)
        report = errors.wait(1)[0]
        assert report["context"] == "limit" and isinstance(report["error"], wsbridge.MessageTooLarge)
        assert "1099511627776 bytes exceeds max_message_size (1000 bytes)" in str(report["error"])
        # The stream goes on, on a new connection; a whole frame over the limit is refused too.
        raw.wait_connections(2).sendall(frame(b'{"type": "ok"}', TEXT) + frame(b"y" * 2000, TEXT))
        assert got.wait(1)[0].type == "ok"
        assert "a message of 2000 bytes exceeds" in str(errors.wait(2)[1]["error"])
        raw.wait_connections(3)
        assert client.stats.protocol_errors == 2


def test_a_slow_subscriber_bounds_memory_by_stopping_the_reader(server, make_client, collector):
    """The dispatch queue is bounded: when it is full the reader stops reading,
    TCP pushes back on the server, and nothing is dropped."""
    release = threading.Event()
    got = collector()

    def slow(msg):
        release.wait(30)
        got(msg)

    client = make_client(server.url, dispatch_queue=100, pull_buffer=0, **wsbridge.conventions())
    client.on("tick", slow)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send_many(({"type": "tick", "seq": i, "pad": "x" * 200} for i in range(1, 5001)), timeout=60)
    wait_until(lambda: client.stats.backpressure_waits >= 1, what="the reader waiting for room")
    assert client.stats.dispatch_pending <= 100 + 1  # bounded, whatever the server sent
    assert client.stats.frames < 5000  # the rest waits in TCP buffers, not in our memory
    release.set()
    assert [m.seq for m in got.wait(5000, timeout=60)] == list(range(1, 5001))


def test_pull_buffer_block_policy_loses_nothing(server, make_client):
    client = make_client(server.url, pull_buffer=10, pull_overflow="block", **wsbridge.conventions())
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send_many({"type": "tick", "seq": i} for i in range(1, 101))
    wait_until(lambda: client.stats.pull_buffered == 10, what="a full pull buffer")
    assert client.stats.pull_buffered == 10  # bounded: the dispatcher waits for the pull API's reader
    assert [client.recv(timeout=10).seq for _ in range(100)] == list(range(1, 101))
    assert client.stats.pull_dropped == 0


def test_the_test_server_publishes_a_message_record():
    """`Server.publish` takes `Message` records as well as dicts (a Message is a tuple,
    which the server once took for a ``(data, binary)`` pair)."""
    server = Server()
    assert server.publish(Message("tick", {"px": 1}), {"type": "tick", "px": 2}) == [1, 2]
    assert [e.seq for e in server.history] == [1, 2] and '"px":1' in server.history[0].data
