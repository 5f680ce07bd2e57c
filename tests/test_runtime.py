"""The threaded runtime under what users do: calls from inside subscribers, at a
full queue, from other threads at once, while a peer does not read, across fork().

Every wait is bounded; a test that could hang has its own watchdog
(``pytest.mark.timeout``), so a deadlock fails the test instead of stalling CI.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from typing import Any, List

import pytest

import wsbridge
from wsbridge import RawCodec
from wsbridge.testing import Server
from wsbridge.testing.raw import RawServer, frame

from conftest import send_quietly, unread, wait_until

HOLD = 20.0  # how long a test lets a stuck thread stay stuck before it fails


def flood(raw: RawServer, count: int, size: int = 10) -> None:
    raw.wait_connection().sendall(b"".join(frame(b"%0*d" % (size, i)) for i in range(count)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["stop", "report_error", "send_drop_oldest"])
def test_a_subscriber_may_stop_report_or_send_at_a_full_queue(make_client, raw_server, call):
    """1: lifecycle and error signals never wait behind data."""
    client = make_client(raw_server.url, codec=RawCodec(), dispatch_queue=5, outbox_size=1, outbox_overflow="drop_oldest")
    done, result = threading.Event(), {}

    def subscriber(msg: wsbridge.Message) -> None:
        if done.is_set():
            return
        wait_until(lambda: client.stats.dispatch_pending >= 5, timeout=HOLD, what="a full queue")
        if call == "stop":
            result["stopped"] = client.stop(timeout=5)
        elif call == "report_error":
            for _ in range(50):
                client.report_error(ValueError("from a subscriber"), "view")
        else:
            raw_server.wait_connection().close()  # sends now fail, and frames go to the 1-slot buffer
            for i in range(2000):
                client.send(f"reply {i}")
                if client.stats.outbox_dropped >= 2:
                    break
            assert client.stats.dispatch_pending >= 5  # the drops were signalled at a full queue
        done.set()

    client.on_any(subscriber)
    client.start().wait_connected(timeout=10)
    flood(raw_server, 500)
    assert done.wait(HOLD)
    if call == "stop":
        assert result["stopped"] is True
    elif call == "send_drop_oldest":
        assert client.stats.outbox_dropped >= 2
    assert client.stop(timeout=10)


@pytest.fixture
def raw_server():
    with RawServer() as server:
        yield server


@pytest.mark.timeout(60)
def test_stop_returns_within_its_timeout_with_a_slow_subscriber(make_client, raw_server, caplog):
    """2: mid-batch. What it could not deliver is counted and logged (once the subscriber returned)."""
    client = make_client(raw_server.url, codec=RawCodec())
    started = threading.Event()

    def slow(msg: wsbridge.Message) -> None:
        started.set()
        time.sleep(0.3)

    client.on_any(slow)
    client.start().wait_connected(timeout=10)
    flood(raw_server, 100)
    assert started.wait(10)
    t0 = time.monotonic()
    client.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.5
    wait_until(lambda: not any(t.is_alive() for t in client.threads()), timeout=5, what="the threads to end")
    stats = client.stats
    assert stats.dispatched < 100  # it did not deliver the whole backlog first
    # (frames the dispatcher had no time to decode count as undelivered, undecoded)
    assert stats.undelivered > 0 and stats.dispatched + stats.undelivered == stats.frames, stats
    assert f"stop() ran out of time with {stats.undelivered} received message(s) not delivered" in caplog.text


@pytest.mark.timeout(60)
def test_stop_returns_within_its_timeout_while_a_send_is_stuck(make_client, raw_server):
    """2: mid-send to a peer that does not read (the write's own timeout is 30 s)."""
    client = make_client(raw_server.url, codec=RawCodec(), ping_interval=0)
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()  # the server never reads
    sender = threading.Thread(target=lambda: send_quietly(client, b"x" * (32 << 20)), name="test-sender", daemon=True)
    sender.start()
    wait_until(lambda: unread(conn) > 64 * 1024, timeout=10, what="a send stuck on a full socket")
    t0 = time.monotonic()
    client.stop(timeout=2.0)
    assert time.monotonic() - t0 < 2.5
    sender.join(10)
    assert not sender.is_alive()


@pytest.mark.timeout(60)
def test_stop_returns_within_its_timeout_mid_connect(make_client):
    from wsbridge.testing.blackhole import Blackhole

    with Blackhole() as hole:
        client = make_client(hole.url, connect_timeout=30)
        client.start()
        wait_until(lambda: client.stats.connect_attempts >= 1, what="an attempt under way")
        t0 = time.monotonic()
        assert client.stop(timeout=2.0)
        assert time.monotonic() - t0 < 2.5


@pytest.mark.timeout(60)
def test_stop_from_a_subscriber_finishes_once_it_returns(make_client, raw_server, tmp_path, caplog):
    """3: the store is closed, nothing is left open, no false warning."""
    store = wsbridge.SQLiteStore(str(tmp_path / "feed.db"))
    client = make_client(raw_server.url, codec=RawCodec(), store=store)
    result = {}
    client.on_any(lambda msg: result.setdefault("stopped", client.stop(timeout=5)))
    client.start().wait_connected(timeout=10)
    with caplog.at_level(logging.WARNING, logger="wsbridge"):
        flood(raw_server, 3)
        wait_until(lambda: not any(t.is_alive() for t in client.threads()), timeout=10, what="every thread to end")
    assert result["stopped"] is True
    assert store._db is None  # closed by the dispatcher thread as it ended
    assert not [r for r in caplog.records if "still running" in r.getMessage()]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "call", [lambda c: c.recv(timeout=5), lambda c: next(c.messages(timeout=5)), lambda c: c.wait_for("x", timeout=5)]
)
def test_the_pull_api_from_a_subscriber_raises_at_once(make_client, raw_server, collector, call):
    """4."""
    client = make_client(raw_server.url, codec=RawCodec())
    errors = collector()

    def subscriber(msg: wsbridge.Message) -> None:
        t0 = time.monotonic()
        try:
            call(client)
        except wsbridge.UsageError as exc:
            errors((exc, time.monotonic() - t0))

    client.on_any(subscriber)
    client.start().wait_connected(timeout=10)
    flood(raw_server, 1)
    exc, took = errors.wait(1)[0]
    assert took < 0.5 and "subscriber" in str(exc)


@pytest.mark.timeout(120)
def test_on_and_off_from_another_thread_while_messages_flow(make_client, collector):
    """5: nothing a subscriber list does discards messages; on/off take effect at once."""
    count = 20_000
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        with Server() as server:
            client = make_client(server.url, resume=False)
            seen: List[int] = []
            client.on("n", lambda msg: seen.append(msg.payload["i"]))
            client.start().wait_connected(timeout=10)
            server.wait_clients(1)
            stop = threading.Event()
            checks: List[Any] = []

            def churn() -> None:
                for round_ in range(10_000):
                    if stop.is_set():
                        return
                    got: List[int] = []

                    def fn(msg: wsbridge.Message, got: List[int] = got) -> None:
                        got.append(msg.payload["i"])

                    client.on("n" if round_ % 2 else "other", lambda m: None)  # a new type mid-flow
                    client.on("n", fn)
                    added_at = len(seen)
                    while len(seen) < added_at + 3 and not stop.is_set():
                        time.sleep(0.0005)
                    before_off = len(seen)
                    client.off(fn)
                    after_off = len(seen)
                    checks.append((added_at, before_off, after_off, got))  # read once every message is in

            thread = threading.Thread(target=churn, name="test-churn", daemon=True)
            thread.start()
            server.send_many([{"type": "n", "i": i} for i in range(count)])
            wait_until(lambda: len(seen) >= count, timeout=60, what="every message")
            stop.set()
            thread.join(10)
            assert seen == list(range(count))  # none discarded, none reordered
            assert client.stats.subscriber_errors == 0
            assert len(checks) > 10
            for added_at, before_off, after_off, got in checks:
                # On: every message dispatched after on() returned, up to off() (one may be mid-delivery).
                assert [i for i in range(added_at + 1, before_off) if i not in got] == []
                # Off: none dispatched after off() returned (beyond the one in delivery).
                assert all(i <= after_off for i in got)
    finally:
        sys.setswitchinterval(old)


@pytest.mark.timeout(90)
def test_a_stalled_subscriber_is_not_taken_for_a_dead_peer(make_client, collector):
    """6: backpressure pauses the heartbeat's deadlines; nothing lost, no reconnect."""
    with Server() as server:
        client = make_client(server.url, resume=False, ping_interval=0.6, ping_timeout=0.5, idle_timeout=1.0, dispatch_queue=50)
        got: List[int] = []
        stalled = threading.Event()

        def subscriber(msg: wsbridge.Message) -> None:
            if not stalled.is_set():
                stalled.set()
                time.sleep(4.0)  # 8 ping timeouts, 4 idle timeouts
            got.append(msg.payload["i"])

        client.on("n", subscriber)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.send_many([{"type": "n", "i": i} for i in range(3000)])
        wait_until(lambda: len(got) >= 3000, timeout=60, what="every message")
        assert got == list(range(3000))
        stats = client.stats
        assert stats.backpressure_waits >= 1 and stats.connects == 1 and stats.disconnects == 0


@pytest.mark.timeout(60)
def test_the_dispatch_queue_is_bounded_in_bytes(make_client, raw_server):
    """7: 64 KiB messages to a slow subscriber: the queue stops at its byte bound."""
    client = make_client(raw_server.url, codec=RawCodec(), dispatch_queue_bytes=1 << 20)
    release = threading.Event()
    client.on_any(lambda msg: release.wait(HOLD))
    client.start().wait_connected(timeout=10)
    sender = threading.Thread(target=lambda: _send_quietly(raw_server, [frame(b"y" * 65536, 2)] * 200), daemon=True)
    sender.start()
    wait_until(lambda: client.stats.backpressure_waits >= 1, timeout=10, what="backpressure")
    peak = client.stats.dispatch_bytes
    assert peak <= (1 << 20) + 65536 and client.stats.dispatch_pending <= 17
    release.set()
    wait_until(lambda: client.stats.dispatched == 200, timeout=30, what="every message")
    sender.join(10)


def _send_quietly(raw: RawServer, frames: List[bytes]) -> None:
    try:
        raw.wait_connection().sendall(b"".join(frames))
    except OSError:
        pass


FORK_CHILD = r"""
import os, sys, time, wsbridge
url, db = sys.argv[1], sys.argv[2]
client = wsbridge.Client(url, store=wsbridge.SQLiteStore(db), resume=False).start()
client.wait_connected(timeout=10)
client.send({"type": "from-parent"})
pid = os.fork()
if pid == 0:
    try:
        client.send({"type": "from-child"})
        print("child: send did not raise", flush=True)
    except wsbridge.UsageError as exc:
        print("child: send raised UsageError:", "fork" in str(exc), flush=True)
    try:
        client.recv(timeout=1)
    except wsbridge.UsageError:
        print("child: recv raised UsageError", flush=True)
    for name, call in (("unsent", client.unsent), ("on_any", lambda: client.on_any(print))):
        try:
            call()
        except wsbridge.UsageError:
            print("child:", name, "raised UsageError", flush=True)
    print("child: stop", client.stop(timeout=2), flush=True)
    sys.exit(0)  # a normal exit: atexit handlers and finalizers run
t0 = time.monotonic()
while time.monotonic() - t0 < 20:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
print("parent: child exited", bool(done), os.waitstatus_to_exitcode(status) if done else None, flush=True)
client.send({"type": "after-fork"})
print("parent: still works", client.stop(timeout=5), flush=True)
"""


@pytest.mark.timeout(60)
def test_a_client_inherited_through_fork_is_inert_in_the_child(tmp_path):
    """8."""
    with Server() as server:
        out = subprocess.run(
            [sys.executable, "-c", FORK_CHILD, server.url, str(tmp_path / "f.db")],
            capture_output=True, text=True, timeout=45,
        )
        lines = out.stdout.splitlines()
        assert "child: send raised UsageError: True" in lines, out
        assert "child: recv raised UsageError" in lines and "child: stop True" in lines, out
        assert "child: unsent raised UsageError" in lines and "child: on_any raised UsageError" in lines, out
        assert "parent: child exited True 0" in lines and "parent: still works True" in lines, out
        types = [m.type for m in server.received_messages()]
        assert types == ["from-parent", "after-fork"], types  # the child never wrote on the parent's socket


@pytest.mark.timeout(60)
def test_send_refuses_what_cannot_be_encoded_at_once(make_client, server):
    """9: nothing queued, no reconnect loop."""
    client = make_client(server.url)
    client.start().wait_connected(timeout=10)
    for bad in ("\ud800", {"type": "x", "text": "\udcff"}):
        with pytest.raises(ValueError, match="UTF-8"):
            client.send(bad)
    assert client.unsent() == [] and client.stats.queued == 0
    client.send({"type": "ok"})
    server.wait_until(lambda s: any(m.type == "ok" for m in s.received_messages()), what="the good message")
    assert client.stats.connects == 1


@pytest.mark.timeout(60)
def test_a_stream_name_the_server_sent_never_breaks_the_resume_request(make_client, collector):
    with Server() as server:
        client = make_client(server.url, **wsbridge.conventions())
        got = collector()
        client.on_any(got)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.send('{"type": "x", "stream": "\\ud800", "seq": 1}')
        got.wait(1)
        server.drop_clients()
        wait_until(lambda: client.stats.connects == 2 and client.stats.resumes == 1, what="one reconnect and a resume")
        assert client.state == "connected" and client.stats.connect_attempts == 2


@pytest.mark.timeout(60)
def test_connected_fires_once_the_send_buffer_is_flushed(make_client, raw_server, collector):
    """10: the server reads nothing at first, so the flush cannot finish; ``connected``
    must wait for it (and find the buffer empty), not fire when the socket opens."""
    client = make_client(raw_server.url, codec=RawCodec(), ping_interval=0)
    for _ in range(200):
        client.send(b"q" * 65536)
    seen = collector()
    client.signals.connected.connect(lambda sender, **kw: seen((sender.stats.outbox, sender.stats.flushed)))
    client.start()
    conn = raw_server.wait_connection()
    wait_until(lambda: unread(conn) > 64 * 1024, timeout=10, what="the flush under way and stuck")
    drained = threading.Thread(target=_drain, args=(conn,), name="test-drain", daemon=True)
    drained.start()
    assert seen.wait(1, timeout=20)[0] == (0, 200)
    client.stop(timeout=5)
    drained.join(10)


def _drain(sock: socket.socket) -> None:
    sock.settimeout(20)
    try:
        while sock.recv(1 << 20):
            pass
    except OSError:
        pass


def test_lifecycle_signals_come_in_the_documented_order(make_client, collector):
    with Server() as server:
        client = make_client(server.url, backoff=wsbridge.Backoff(initial=0.05, max_delay=0.05, jitter=0, max_attempts=1))
        order = collector()
        for name in ("connecting", "connected", "disconnected", "reconnecting", "gave_up", "stopped"):
            getattr(client.signals, name).connect(lambda sender, _n=name, **kw: order(_n))
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.stop()
        order.wait(6)
        client.stop()
        assert order.wait(7) == ["connecting", "connected", "disconnected", "reconnecting", "connecting", "gave_up", "stopped"]


def test_no_thread_is_left_after_many_clients_stop_at_once(server):
    clients = [wsbridge.Client(server.url).start() for _ in range(8)]
    for c in clients:
        c.wait_connected(timeout=10)
    results: List[bool] = []
    threads = [threading.Thread(target=lambda c=c: results.append(c.stop(timeout=10))) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [True] * 8
    assert not [t for t in threading.enumerate() if any(t.name.startswith(c.name + "-") for c in clients)]


# -- found by review: each of these once failed ---------------------------------------------


@pytest.mark.timeout(60)
def test_frames_the_codec_refuses_are_bounded_like_data(make_client, raw_server):
    client = make_client(raw_server.url, dispatch_queue=100, dispatch_queue_bytes=1 << 20)
    release = threading.Event()
    client.on_any(lambda msg: release.wait(HOLD))
    client.signals.error.connect(lambda sender, **kw: None)
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()
    conn.sendall(frame(b'{"type": "first"}'))
    sender = threading.Thread(target=lambda: _send_quietly(raw_server, [frame(b"not json" * 8192)] * 2000), daemon=True)
    sender.start()
    wait_until(lambda: client.stats.backpressure_waits >= 1, timeout=20, what="backpressure from bad frames")
    stats = client.stats
    assert stats.dispatch_bytes <= (1 << 20) + 65536 and stats.dispatch_pending <= 101
    release.set()
    client.stop(timeout=5)
    sender.join(10)


@pytest.mark.timeout(60)
def test_stop_ends_a_flush_and_nothing_it_leaves_unsent_goes_out_later(make_client, raw_server):
    client = make_client(raw_server.url, codec=RawCodec(), outbox_size=20_000)
    for i in range(20_000):
        client.send(b"%05d" % i + b"." * 1019)
    client.start()
    conn = raw_server.wait_connection()
    reading = threading.Thread(target=_read_slowly, args=(conn,), name="test-slow-reader", daemon=True)
    reading.start()  # the flush goes on, slowly
    wait_until(lambda: client.stats.flushed > 0, timeout=10, what="the flush under way")
    client.stop(timeout=1.0)  # the supervisor may still be ending: nothing it does may send more
    left = client.unsent()
    wait_until(lambda: not any(t.is_alive() for t in client.threads()), timeout=15, what="every thread to end")
    assert client.unsent() == left and client.stats.flushed + len(left) == 20_000
    reading.join(10)


def _read_slowly(sock: socket.socket) -> None:
    sock.settimeout(20)
    pace = threading.Event()
    try:
        while sock.recv(65536):
            pace.wait(0.01)  # the peer's pace, not a synchronisation
    except OSError:
        pass


@pytest.mark.timeout(60)
def test_stopped_is_the_last_signal_even_when_stop_runs_out_of_time(make_client, raw_server, collector):
    client = make_client(raw_server.url, codec=RawCodec())
    order = collector()
    client.on_any(lambda msg: time.sleep(0.2))
    for name in ("disconnected", "stopped"):
        getattr(client.signals, name).connect(lambda sender, _n=name, **kw: order(_n))
    client.start().wait_connected(timeout=10)
    flood(raw_server, 50)
    wait_until(lambda: client.stats.dispatched >= 1, what="delivery under way")
    client.stop(timeout=0.5)
    assert order.wait(2, timeout=10) == ["disconnected", "stopped"]
    assert client.stats.dispatched < 50


@pytest.mark.timeout(60)
def test_stop_from_a_subscriber_keeps_its_timeout(make_client, raw_server):
    client = make_client(raw_server.url, codec=RawCodec())
    calls = []

    def subscriber(msg: wsbridge.Message) -> None:
        calls.append(msg)
        if len(calls) == 1:
            client.stop(timeout=0.5)
        time.sleep(0.1)

    client.on_any(subscriber)
    client.start().wait_connected(timeout=10)
    flood(raw_server, 100)
    dispatcher = next(t for t in client.threads() if t.name.endswith("-dispatcher"))
    wait_until(lambda: not dispatcher.is_alive(), timeout=10, what="the dispatcher to end")
    assert len(calls) <= 10


@pytest.mark.timeout(30)
def test_a_messages_iterator_advanced_in_a_subscriber_raises(make_client, raw_server, collector):
    client = make_client(raw_server.url, codec=RawCodec())
    iterator = client.messages(timeout=5)  # made outside
    errors = collector()

    def subscriber(msg: wsbridge.Message) -> None:
        try:
            next(iterator)
        except wsbridge.UsageError as exc:
            errors(exc)

    client.on_any(subscriber)
    client.start().wait_connected(timeout=10)
    flood(raw_server, 1)
    assert isinstance(errors.wait(1, timeout=3)[0], wsbridge.UsageError)


def test_a_codec_that_hands_text_over_as_bytes_is_checked_too(make_client, server):
    class BytesText(wsbridge.JsonCodec):
        def encode(self, obj):
            return b"\xff\xfe", False  # a text frame that is not UTF-8

    client = make_client(server.url, codec=BytesText())
    with pytest.raises(ValueError, match="UTF-8"):
        client.send({"type": "x"})
    assert client.unsent() == []


@pytest.mark.timeout(60)
def test_stop_from_the_supervisor_thread_completes(make_client, collector):
    with Server() as server:
        stopped = collector()
        box = {}
        client = make_client(
            server.url, resume=lambda positions: box["client"].stop(timeout=2), codec=wsbridge.JsonCodec.conventions()
        )
        box["client"] = client
        client.signals.stopped.connect(stopped)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.send({"type": "x", "seq": 1})
        server.drop_clients()  # the reconnect builds a resume request: the builder stops the client
        stopped.wait(1, timeout=20)
        wait_until(lambda: not any(t.is_alive() for t in client.threads()), timeout=15, what="every thread to end")


@pytest.mark.timeout(60)
def test_a_flood_of_bad_frames_is_logged_once_then_counted(make_client, raw_server, caplog):
    client = make_client(raw_server.url)
    client.start().wait_connected(timeout=10)
    with caplog.at_level(logging.WARNING, logger="wsbridge"):
        flood(raw_server, 500)  # digits only: valid JSON, but not an object
        wait_until(lambda: client.stats.protocol_errors == 500, what="every bad frame reported")
    decode = [r for r in caplog.records if "decode" in r.getMessage()]
    assert 1 <= len(decode) <= 2, [r.getMessage() for r in decode]
