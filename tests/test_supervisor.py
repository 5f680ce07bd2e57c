"""Reconnects, dead peers and the send buffer, through real sockets on 127.0.0.1."""

from __future__ import annotations

import threading

import pytest

import wsbridge
from wsbridge import Backoff, OutboxFull
from wsbridge.testing import Blackhole, Proxy, Server
from wsbridge.testing.raw import RawServer, frame

from conftest import per_thread, send_from_threads, wait_until

FAST = Backoff(initial=0.05, factor=2, max_delay=0.2, jitter=0)


@pytest.fixture
def proxy(server):
    with Proxy(("127.0.0.1", server.port)) as p:
        yield p


def connected_count(client, collector):
    got = collector()
    client.signals.connected.connect(got)
    return got


def test_reconnects_after_the_server_restarts(make_client, collector):
    with Server() as server:
        client = make_client(server.url, backoff=FAST)
        connected = connected_count(client, collector)
        disconnected = collector()
        client.signals.disconnected.connect(disconnected)
        client.start().wait_connected(timeout=10)
        server.stop()
        disconnected.wait(1)
        server.start()
        connected.wait(2, timeout=10)
        client.wait_connected(timeout=10)
        server.wait_clients(1)
        server.send({"type": "after", "n": 1})
        assert client.wait_for("after", timeout=10).payload["n"] == 1
        assert client.stats.reconnects == 1


def test_reconnects_after_a_proxy_cut(proxy, server, make_client, collector):
    client = make_client(proxy.url, backoff=FAST)
    connected = connected_count(client, collector)
    client.start().wait_connected(timeout=10)
    assert proxy.cut() == 1
    connected.wait(2, timeout=10)
    client.wait_connected(timeout=10)
    server.wait_clients(1)
    server.send({"type": "ok"})
    assert client.wait_for("ok", timeout=10)


def test_a_half_open_peer_is_detected_by_ping_timeout(proxy, make_client, collector):
    ping_interval, ping_timeout = 0.5, 0.25
    client = make_client(proxy.url, backoff=FAST, ping_interval=ping_interval, ping_timeout=ping_timeout)
    connected = connected_count(client, collector)
    disconnected = collector()
    client.signals.disconnected.connect(disconnected)
    client.start().wait_connected(timeout=10)
    proxy.stall()
    # The contract: disconnected within ping_interval + ping_timeout + 1 s of the peer going silent.
    report = disconnected.wait(1, timeout=ping_interval + ping_timeout + 1)[0]
    assert "pong" in str(report["error"])  # ours ("no pong within") or websocket-client's ("ping/pong timed out")
    proxy.resume()
    connected.wait(2, timeout=10)


def test_a_peer_whose_pong_waits_behind_its_frames_is_alive(make_client, collector):
    """A server (raw: it never answers a ping) that keeps sending frames: the pong it owes
    would wait behind them (a resume's backlog on a slow link), so the connection stays
    while frames arrive, and is cut as a dead peer once they stop."""
    ping_interval, ping_timeout = 0.3, 0.25
    with RawServer() as server:
        client = make_client(server.url, backoff=Backoff(initial=30), ping_interval=ping_interval,
                             ping_timeout=ping_timeout)
        disconnected = collector()
        client.signals.disconnected.connect(disconnected)
        client.start().wait_connected(timeout=10)
        conn = server.wait_connection()
        stop = threading.Event()
        for n in range(150):  # about 3 s, ten ping intervals: a frame every 20 ms
            conn.sendall(frame(b'{"type": "tick", "n": %d}' % n))
            stop.wait(0.02)
        assert [client.wait_for("tick", timeout=10).payload["n"] for _ in range(150)] == list(range(150))
        assert not len(disconnected) and client.stats.connects == 1
        report = disconnected.wait(1, timeout=ping_interval + ping_timeout + 1)[0]  # silence: dead
        assert "no pong" in str(report["error"])


def test_an_idle_timeout_detects_a_silent_peer_without_pings(proxy, make_client, collector):
    client = make_client(proxy.url, backoff=FAST, ping_interval=0, idle_timeout=0.3)
    disconnected = collector()
    client.signals.disconnected.connect(disconnected)
    client.start().wait_connected(timeout=10)
    proxy.stall()
    report = disconnected.wait(1, timeout=0.3 + 1)[0]
    assert "no frame for 0.3 s" in str(report["error"])


def test_a_stalled_handshake_hits_the_connect_timeout(proxy, make_client):
    proxy.stall()
    client = make_client(proxy.url, connect_timeout=0.3, backoff=Backoff(initial=30))
    client.start()
    with pytest.raises(TimeoutError, match="not open within 0.3 s"):
        client.wait_connected(timeout=1)


def test_an_unanswered_tcp_connect_hits_the_connect_timeout(make_client, collector):
    with Blackhole() as hole:
        client = make_client(hole.url, connect_timeout=0.3, backoff=wsbridge.NO_RETRY)
        gave_up = collector()
        client.signals.gave_up.connect(gave_up)
        client.start()
        # Without a bound of our own the kernel retries the SYN for about two minutes.
        error = gave_up.wait(1, timeout=5)[0]["error"]
        assert "not open within 0.3 s" in str(error)
        assert client.stats.connect_attempts == 1


def test_stop_interrupts_an_unanswered_tcp_connect(make_client, collector):
    with Blackhole() as hole:
        client = make_client(hole.url, connect_timeout=60)
        client.start()
        def readers():
            return [t for t in client.threads() if t.name.endswith("-reader-1") and t.is_alive()]

        wait_until(lambda: readers(), what="reader thread dialling")
        reader = readers()[0]
        assert client.stop(timeout=3)  # not 60 s: the pending connect() is cut
        assert not reader.is_alive()


def test_stop_during_a_backoff_wait_returns_at_once(make_client, free_port, collector):
    client = make_client(f"ws://127.0.0.1:{free_port}/", backoff=Backoff(initial=30, jitter=0))
    reconnecting = collector()
    client.signals.reconnecting.connect(reconnecting)
    client.start()
    assert reconnecting.wait(1)[0] == {"attempt": 1, "delay": 30}
    # The backoff wait is 30 s; stop() must interrupt it and join every thread.
    assert client.stop(timeout=5)


def test_backoff_delays_follow_the_policy(make_client, free_port, collector):
    client = make_client(f"ws://127.0.0.1:{free_port}/",
                         backoff=Backoff(initial=0.01, factor=2, max_delay=0.04, jitter=0, max_attempts=4))
    reconnecting, gave_up = collector(), collector()
    client.signals.reconnecting.connect(reconnecting)
    client.signals.gave_up.connect(gave_up)
    client.start()
    gave_up.wait(1)
    assert [(r["attempt"], r["delay"]) for r in reconnecting.items] == [(1, 0.01), (2, 0.02), (3, 0.04), (4, 0.04)]
    assert client.stats.connect_attempts == 5
    with pytest.raises(wsbridge.ConnectError, match="retries exhausted"):
        client.wait_connected(timeout=1)


def test_a_connection_that_stayed_up_resets_the_backoff(proxy, make_client, collector):
    client = make_client(proxy.url, backoff=Backoff(initial=0.05, jitter=0, reset_after=0))
    connected = connected_count(client, collector)
    reconnecting = collector()
    client.signals.reconnecting.connect(reconnecting)
    client.start().wait_connected(timeout=10)
    for n in (2, 3):
        proxy.cut()
        connected.wait(n, timeout=10)
    assert [r["attempt"] for r in reconnecting.wait(2)] == [1, 1]


def test_policy_close_codes_are_not_retried(proxy, make_client, collector):
    client = make_client(proxy.url, backoff=FAST)
    gave_up = collector()
    client.signals.gave_up.connect(gave_up)
    client.start().wait_connected(timeout=10)
    proxy.close_with(1008, "policy violation")
    assert "1008" in str(gave_up.wait(1)[0]["error"])
    assert proxy.accepted == 1 and client.state == "gave_up"


def test_going_away_is_retried(proxy, make_client, collector):
    client = make_client(proxy.url, backoff=FAST)
    connected = connected_count(client, collector)
    client.start().wait_connected(timeout=10)
    proxy.close_with(1001, "restarting")
    connected.wait(2, timeout=10)


def test_sends_from_8_threads_while_the_server_is_down_arrive_once_in_order(down_server, make_client):
    client = make_client(down_server.url, backoff=FAST)
    client.start()
    send_from_threads(client, threads=8, each=125)
    assert client.stats.outbox == 1000 and not client.connected
    down_server.start()
    client.wait_connected(timeout=10)
    server = down_server
    server.wait_received(1000)
    client.send({"type": "after"})
    server.wait_received(1001)
    messages = server.received_messages()
    assert len(messages) == 1001 and messages[-1].type == "after"
    assert per_thread(messages[:-1]) == {k: list(range(125)) for k in range(8)}
    assert client.stats.flushed == 1000


def test_outbox_raise_policy(make_client, free_port):
    client = make_client(f"ws://127.0.0.1:{free_port}/", outbox_size=3, outbox_overflow="raise")
    for i in range(3):
        client.send(f"m{i}")
    with pytest.raises(OutboxFull):
        client.send("m3")
    assert [data for data, _ in client.unsent()] == ["m0", "m1", "m2"]


def test_outbox_drop_oldest_policy_counts_and_signals(down_server, make_client, collector):
    client = make_client(down_server.url, backoff=FAST, outbox_size=5, outbox_overflow="drop_oldest")
    dropped = collector()
    client.signals.dropped.connect(dropped)
    client.start()
    for i in range(8):
        client.send(f"m{i}")
    assert client.stats.outbox_dropped == 3
    assert [d["what"] for d in dropped.wait(3)] == ["outbox"] * 3
    down_server.start()
    client.wait_connected(timeout=10)
    assert [f.data for f in down_server.wait_received(5)] == [f"m{i}" for i in range(3, 8)]


def test_outbox_block_policy_waits_for_room_then_times_out(down_server, make_client):
    client = make_client(down_server.url, backoff=FAST, outbox_size=2, outbox_overflow="block")
    client.start()
    client.send("a")
    client.send("b")
    with pytest.raises(OutboxFull, match="after 0.05 s"):
        client.send("c", timeout=0.05)
    sent = threading.Event()

    def blocked_sender():
        client.send("c", timeout=30)
        sent.set()

    thread = threading.Thread(target=blocked_sender, name="blocked-sender")
    thread.start()
    down_server.start()  # the flush makes room; the blocked send goes through
    assert sent.wait(10)
    thread.join(10)
    assert [f.data for f in down_server.wait_received(3)] == ["a", "b", "c"]
    client.wait_connected(timeout=10)  # connected = flushed: the outbox is empty
    assert client.unsent() == []


def test_refused_connections_are_retried_until_the_port_listens_again(proxy, make_client, collector):
    client = make_client(proxy.url, backoff=FAST)
    connected = connected_count(client, collector)
    reconnecting = collector()
    client.signals.reconnecting.connect(reconnecting)
    client.start().wait_connected(timeout=10)
    proxy.refuse()
    proxy.cut()
    reconnecting.wait(3, timeout=10)  # at least two refused attempts after the cut
    assert connected.items and len(connected.items) == 1
    proxy.accept()
    connected.wait(2, timeout=10)
    client.wait_connected(timeout=10)


def test_a_connection_lost_in_the_middle_of_a_flush_resumes_it_in_order(server, make_client, collector):
    """A frame leaves the send buffer once the socket took it; what the network
    then loses with the connection (bytes in the kernel or in the proxy) is the
    one run that was in flight. Nothing else is skipped, nothing reordered."""
    with Proxy(("127.0.0.1", server.port)) as proxy:
        client = make_client(proxy.url, backoff=FAST, outbox_size=20_000)
        for i in range(20_000):
            client.send({"type": "m", "i": i})  # not started: all of it waits in the send buffer
        attempts = collector()
        client.signals.connecting.connect(attempts)
        client.start()
        server.wait_received(1000)  # the flush is under way
        proxy.cut()
        attempts.wait(2, timeout=10)  # `connected` comes only once a flush is done: the second one
        client.wait_connected(timeout=30)  # the second flush is done
        client.send({"type": "end"})  # behind the flushed frames on the same connection
        server.wait_until(lambda s: bool(s.received) and '"end"' in s.received[-1].data, timeout=30, what="the end marker")
        firsts = []
        seen = set()
        for m in server.received_messages()[:-1]:
            if m.payload["i"] not in seen:
                seen.add(m.payload["i"])
                firsts.append(m.payload["i"])
        assert firsts == sorted(firsts)  # resent batches repeat, never reorder
        missing = sorted(set(range(20_000)) - seen)
        assert missing == list(range(missing[0], missing[0] + len(missing))) if missing else True, missing[:3]
        assert firsts[-1] == 19_999 and client.stats.flushed >= 20_000
