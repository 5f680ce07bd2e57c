"""Safe defaults for servers we do not control: nothing is sent that the user did not
ask for, and no message is dropped by a field the user did not name."""

from __future__ import annotations

import json
import logging
import socket

import pytest

import wsbridge
from wsbridge.testing.raw import RawServer, frame
from wsbridge.tracking.sequence import SequenceTracker

from conftest import wait_until


def jframes(*objs: dict) -> bytes:
    return b"".join(frame(json.dumps(o).encode()) for o in objs)


@pytest.fixture
def raw():
    with RawServer() as server:
        yield server


def test_a_feed_numbered_per_connection_loses_nothing_by_default(make_client, collector, raw):
    client = make_client(raw.url)
    got = collector()
    client.on_any(got)
    client.start().wait_connected(timeout=10)
    raw.wait_connection().sendall(jframes(*({"type": "t", "seq": i} for i in range(1, 6))))
    got.wait(5)
    raw.wait_connection().close()  # the server restarts its numbering on the next connection
    raw.wait_connections(2).sendall(jframes(*({"type": "t", "seq": i} for i in range(1, 6))))
    assert [m.payload["seq"] for m in got.wait(10)] == [1, 2, 3, 4, 5] * 2
    assert client.stats.duplicates == 0


def test_an_id_reused_for_the_updates_of_one_order_loses_nothing_by_default(make_client, collector, raw):
    client = make_client(raw.url)
    got = collector()
    client.on_any(got)
    client.start().wait_connected(timeout=10)
    states = ["new", "partially_filled", "partially_filled", "partially_filled", "filled"]
    raw.wait_connection().sendall(jframes(*({"type": "order", "id": "A1", "state": s} for s in states)))
    assert [m.payload["state"] for m in got.wait(5)] == states


def test_nothing_is_sent_that_the_user_did_not_ask_for(make_client, collector, raw):
    client = make_client(raw.url)
    client.start().wait_connected(timeout=10)
    raw.wait_connection().sendall(jframes({"type": "t", "seq": 7, "stream": "a"}))
    wait_until(lambda: client.stats.received == 1, what="the message")
    raw.wait_connection().close()
    conn = raw.wait_connections(2)  # after a reconnect a resume request would come now
    conn.settimeout(0.5)
    with pytest.raises(socket.timeout):
        conn.recv(1)  # a bounded wait for bytes that must not come
    assert client.stats.resumes == 0


def test_the_conventions_preset_dedups_and_says_how_to_turn_it_off(make_client, collector, raw, caplog):
    client = make_client(raw.url, **wsbridge.conventions())
    got = collector()
    client.on_any(got)
    client.start().wait_connected(timeout=10)
    with caplog.at_level(logging.WARNING, logger="wsbridge"):
        raw.wait_connection().sendall(jframes(*({"type": "t", "seq": i} for i in (1, 2, 2, 3, 3))))
        got.wait(3)
        wait_until(lambda: client.stats.duplicates == 2, what="both duplicates counted")
    warnings = [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(warnings) == 1 and "name neither" in warnings[0], warnings  # once per stream


def test_one_counter_across_streams_never_holds_a_stream_back(make_client, collector, raw):
    codec = wsbridge.JsonCodec(seq_field="seq", stream_field="ch")
    client = make_client(raw.url, codec=codec, seq_scope="global", gap_timeout=30)
    got, gaps = collector(), collector()
    client.on_any(got)
    client.signals.gap.connect(gaps)
    client.start().wait_connected(timeout=10)
    # One counter over two channels: 3 is late, 6 never comes, 4 comes twice.
    order = [(1, "a"), (2, "b"), (4, "a"), (5, "b"), (4, "a"), (3, "b"), (7, "a")]
    raw.wait_connection().sendall(jframes(*({"type": "t", "seq": s, "ch": c} for s, c in order)))
    assert [m.seq for m in got.wait(6, timeout=5)] == [1, 2, 4, 5, 3, 7]  # nothing waited for the gaps
    assert client.stats.duplicates == 1 and client.stats.held == 0
    assert {(g["first"], g["last"], g["status"]) for g in gaps.wait(3)} >= {(3, 3, "open"), (3, 3, "filled"), (6, 6, "open")}


def test_a_global_tracker_in_a_table():
    t = SequenceTracker(global_seq=True, gap_timeout=1.0)
    msg = lambda seq, stream=None: wsbridge.Message("t", None, seq, None, stream)  # noqa: E731
    assert t.offer(msg(10, "a"), 0).ready and t.positions() == {None: 10}
    gap = t.offer(msg(13, "b"), 0)
    assert gap.ready and gap.opened == wsbridge.Gap(None, 11, 12) and t.positions() == {None: 10}
    assert t.offer(msg(12, "a"), 0).filled == wsbridge.Gap(None, 12, 12)
    assert t.offer(msg(12, "a"), 0).duplicate and t.offer(msg(9), 0).duplicate
    [lost] = t.expire(2.0)
    assert lost.lost == wsbridge.Gap(None, 11, 11) and t.positions() == {None: 13}
    with pytest.raises(ValueError, match="seq_scope"):
        wsbridge.Client("ws://127.0.0.1:1/", seq_scope="per-channel")


# -- quiet logs ------------------------------------------------------------------------------

LIBRARY_USE = r"""
import time, wsbridge
from wsbridge.testing.raw import RawServer, frame
with RawServer() as server:
    client = wsbridge.Client(server.url, codec=wsbridge.RawCodec())
    client.on_any(lambda msg: 1 / 0)  # fails on every message
    client.start().wait_connected(timeout=10)
    server.wait_connection().sendall(frame(b"x") * 50 + frame(b"bad", 1, rsv=1))
    deadline = time.monotonic() + 10
    while client.stats.protocol_errors < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    client.stop()
refused = wsbridge.Client("ws://127.0.0.1:1/", backoff=wsbridge.NO_RETRY).start()
try:
    refused.wait_connected(timeout=10)
except wsbridge.ConnectError:
    pass
refused.stop()
print("done")
"""


def test_the_library_prints_nothing_unless_logging_is_configured():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", LIBRARY_USE], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "done" and out.stderr == "", out


def test_a_failing_subscriber_is_logged_once_and_reported_every_time(make_client, collector, raw, caplog):
    client = make_client(raw.url, codec=wsbridge.RawCodec())
    client.on_any(lambda msg: 1 / 0)
    client.start().wait_connected(timeout=10)
    with caplog.at_level(logging.DEBUG, logger="wsbridge"):
        raw.wait_connection().sendall(frame(b"x") * 300)
        wait_until(lambda: client.stats.subscriber_errors == 300, what="every failure counted")
    logged = [r for r in caplog.records if "raised" in r.getMessage()]
    assert 1 <= len(logged) <= 2 and logged[0].exc_info, [r.getMessage() for r in logged]
    errors = collector()
    client.signals.error.connect(errors)
    raw.wait_connection().sendall(frame(b"y") * 20)
    assert len(errors.wait(20)) == 20  # the error signal is never rate-limited


def test_the_cli_says_a_refusal_once_in_its_own_words():
    import subprocess
    import sys

    with RawServer(respond=lambda req: b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n") as server:
        out = subprocess.run([sys.executable, "-m", "wsbridge", "listen", server.url, "--timeout", "10"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stderr.count("\n") == 1 and "HTTP 401" in out.stderr, out.stderr


def test_global_gaps_expire_each_on_its_own_clock():
    t = SequenceTracker(global_seq=True, gap_timeout=5.0)
    msg = lambda seq: wsbridge.Message("t", None, seq)  # noqa: E731
    t.offer(msg(1), 0.0)
    t.offer(msg(4), 0.0)  # 2, 3 missing since t=0
    t.offer(msg(7), 4.99)  # 5, 6 missing since t=4.99
    assert t.waiting
    assert [o.lost for o in t.expire(5.0)] == [wsbridge.Gap(None, 2, 3)]  # the newer gap keeps waiting
    assert t.offer(msg(6), 5.0).ready  # so 6 still arrives, and is not taken for a duplicate
    assert [o.lost for o in t.expire(10.0)] == [wsbridge.Gap(None, 5, 5)]
    assert not t.waiting and t.positions() == {None: 7}


def test_a_running_global_client_gives_gaps_up_and_moves_on(make_client, collector, raw):
    codec = wsbridge.JsonCodec(seq_field="seq")
    client = make_client(raw.url, codec=codec, seq_scope="global", gap_timeout=0.2)
    gaps = collector()
    client.signals.gap.connect(gaps)
    client.start().wait_connected(timeout=10)
    raw.wait_connection().sendall(jframes(*({"type": "t", "seq": s} for s in (1, 3, 5))))
    # (positions are those of the last batch, replaced once the batch is tracked: after the counters)
    wait_until(lambda: client.stats.lost == 2 and client.positions == {None: 5}, what="both gaps given up, position 5")


def test_a_named_client_with_a_store_replaced_mid_feed_repeats_nothing(tmp_path, collector):
    """The earlier client is stopped before the new one opens the store they share."""
    from wsbridge.testing import Server

    path = str(tmp_path / "feed.db")
    seen: list = []
    with Server(feed_from="start") as server:
        clients = []
        for _ in range(3):  # a notebook cell run three times
            client = wsbridge.Client(server.url, name="feed", store=wsbridge.SQLiteStore(path), **wsbridge.conventions())
            client.on("tick", lambda msg: seen.append(msg.seq))
            clients.append(client.start())
            client.wait_connected(timeout=10)
            server.publish_many({"type": "tick"} for _ in range(500))
            wait_until(lambda: len(set(seen)) >= 500 * len(clients), what="this run's ticks")
        assert [c.name for c in wsbridge.clients()] == ["feed"]
        assert wsbridge.stop_all(timeout=10)
    assert sorted(seen) == list(range(1, 1501)), [s for s in set(seen) if seen.count(s) > 1][:5]
