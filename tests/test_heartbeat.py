"""The heartbeat and the threads of a client, through real sockets on 127.0.0.1.

Pings are sent by the supervisor thread (not by a ping thread of websocket-client's):
a running client has its supervisor, its dispatcher and one reader, and no more."""

from __future__ import annotations

import threading
import time

import pytest

from wsbridge.testing import Server
from wsbridge.testing.raw import BINARY, PING, PONG, RawServer, frame, read_frame, read_frame_head

from conftest import send_quietly


@pytest.mark.timeout(30)
def test_a_running_client_has_at_most_three_threads(make_client):
    """A `websockets` server (asyncio, one thread of its own); the client pings every
    0.2 s: while it runs, it adds three threads to the process, each named after it."""
    with Server() as server:
        before = set(threading.enumerate())
        client = make_client(server.url, name="three", ping_interval=0.2, ping_timeout=0.1)
        client.start().wait_connected(timeout=10)
        server.send({"type": "x"})
        client.recv(timeout=10)
        quiet = threading.Event()
        quiet.wait(0.5)  # a few ping intervals: a ping thread, if any, runs by now
        added = sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())
        assert len(added) <= 3, added
        assert all(name.startswith("three-") for name in added), added
        assert client.stats.disconnects == 0  # the server's pongs came: the peer is alive
        assert client.stop(timeout=10)
    assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []


@pytest.mark.timeout(30)
def test_pings_go_out_every_ping_interval_and_pongs_keep_the_connection(make_client, collector):
    """A raw server answers each ping with a pong and sends nothing else: the client
    pings about every ``ping_interval`` from the supervisor, and stays connected."""
    ping_interval, ping_timeout = 0.3, 0.2
    with RawServer() as server:
        client = make_client(server.url, ping_interval=ping_interval, ping_timeout=ping_timeout)
        disconnected = collector()
        client.signals.disconnected.connect(disconnected)
        client.start().wait_connected(timeout=10)
        conn = server.wait_connection()
        started = time.monotonic()
        payloads = []
        for _ in range(5):
            opcode, payload = read_frame(conn, timeout=ping_interval + 5)
            assert opcode == PING
            payloads.append(payload)
            conn.sendall(frame(payload, PONG))
        elapsed = time.monotonic() - started
        assert elapsed >= 4 * ping_interval  # one every interval, not a burst
        assert not len(disconnected) and client.stats.connects == 1


@pytest.mark.timeout(60)
def test_pings_go_between_whole_data_frames(make_client, collector):
    """The client sends 64 KiB frames from two threads while pings fall due: the raw
    server reads every frame whole (a ping written inside a data frame would break the
    framing), with pings among them, and every data frame in order."""
    ping_interval, ping_timeout = 0.5, 0.4
    with RawServer() as server:
        client = make_client(server.url, ping_interval=ping_interval, ping_timeout=ping_timeout)
        disconnected = collector()
        client.signals.disconnected.connect(disconnected)
        client.start().wait_connected(timeout=10)
        conn = server.wait_connection()
        enough = threading.Event()
        deadline = time.monotonic() + 30

        def send(tag: bytes) -> None:
            for n in range(100_000):
                if enough.is_set() or time.monotonic() > deadline:
                    return
                send_quietly(client, tag + b"%06d" % n + b"x" * 65536)

        senders = [threading.Thread(target=send, args=(tag,), name=f"test-send-{tag!r}") for tag in (b"a", b"b")]
        for thread in senders:
            thread.start()
        pings_between = 0
        data_seen = {b"a": -1, b"b": -1}
        last_was_data = False
        try:
            for _ in range(200_000):
                opcode, length, head = read_frame_head(conn, 7, timeout=10)
                if opcode == PING:
                    conn.sendall(frame(head, PONG))
                    pings_between += last_was_data
                    last_was_data = False
                    if pings_between >= 3:
                        break
                    continue
                assert opcode == BINARY and length == 7 + 65536, (opcode, length)
                tag, n = head[:1], int(head[1:7])
                assert n == data_seen[tag] + 1  # whole, and in order
                data_seen[tag] = n
                last_was_data = True
            assert pings_between >= 3, data_seen
            assert not len(disconnected) and client.stats.connects == 1
        finally:
            enough.set()
            client.stop(timeout=10)  # a sender waiting for the socket returns
            for thread in senders:
                thread.join(10)
