"""Delivery that loses nothing: resume, dedup, gaps and the store, over real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import wsbridge
from wsbridge import Backoff, SQLiteStore, StoreError
from wsbridge.testing import Proxy, Server
from wsbridge.testing.chaos import run_chaos

from conftest import Lines

FAST = Backoff(initial=0.01, factor=2, max_delay=0.05, jitter=0)
HERE = Path(__file__).parent


def ticks(n, start=1):
    return [{"type": "tick", "n": i} for i in range(start, start + n)]


@pytest.fixture
def feed():
    """A feed server that sends only what is published after a client connects
    (so whatever a reconnected client gets of the downtime, a resume got it)."""
    with Server(feed_from="now") as srv:
        yield srv


def start_through(proxy, make_client, collector, **options):
    """A client of the feed through ``proxy``, connected, with collectors of
    its ticks and of its ``connected`` signals."""
    got, connected = collector(), collector()
    client = make_client(proxy.url, backoff=FAST, **{**wsbridge.conventions(), **options})
    client.on("tick", got)
    client.signals.connected.connect(connected)
    client.start().wait_connected(timeout=10)
    return client, got, connected


def cut_and_publish(proxy, server, client, items, connected):
    """Take the client offline, publish ``items`` meanwhile, let it back in."""
    proxy.refuse()
    proxy.cut()
    server.wait_until(lambda s: s.clients == 0)
    server.publish_many(items)
    proxy.accept()
    connected.wait(2, timeout=10)


def test_a_reconnected_client_resumes_after_its_last_message(feed, make_client, collector):
    with Proxy(("127.0.0.1", feed.port)) as proxy:
        client, got, connected = start_through(proxy, make_client, collector)
        feed.wait_clients(1)
        feed.publish_many(ticks(10))
        got.wait(10)
        cut_and_publish(proxy, feed, client, ticks(10, 11), connected)
        assert [m.seq for m in got.wait(20)] == list(range(1, 21))
        assert feed.resumes == [{None: 10}] and client.stats.resumes == 1


def test_messages_resent_on_resume_are_dropped_as_duplicates(make_client, collector):
    with Server(feed_from="now", resend=5) as feed, Proxy(("127.0.0.1", feed.port)) as proxy:
        client, got, connected = start_through(proxy, make_client, collector)
        dups = collector()
        client.signals.duplicate.connect(dups)
        feed.wait_clients(1)
        feed.publish_many(ticks(10))
        got.wait(10)
        cut_and_publish(proxy, feed, client, ticks(5, 11), connected)
        got.wait(15)
        assert [d["message"].seq for d in dups.wait(5)] == [6, 7, 8, 9, 10]
        assert [m.seq for m in got.items] == list(range(1, 16))
        assert client.stats.duplicates == 5


def test_a_gap_is_filled_by_a_resume_and_delivered_in_order(make_client, collector):
    with Server(skip={5}) as feed:
        got, gaps = collector(), collector()
        client = make_client(feed.url, **wsbridge.conventions())
        client.on("tick", got)
        client.signals.gap.connect(gaps)
        client.start().wait_connected(timeout=10)
        feed.publish_many(ticks(10))
        assert [m.seq for m in got.wait(10)] == list(range(1, 11))
        assert [(g["first"], g["last"], g["status"]) for g in gaps.wait(2)] == [(5, 5, "open"), (5, 10, "filled")]
        assert feed.resumes == [{None: 4}]
        feed.publish({"type": "end"})  # behind every resent message: once it is in, the counts are final
        client.wait_for("end", timeout=10)
        stats = client.stats  # how many of 6..10 went out before the resume arrived is the server's race
        assert stats.gaps == 1 and stats.lost == 0 and stats.duplicates == stats.received - 11


def test_reordered_messages_are_delivered_in_order(make_client, collector):
    with Server(reorder=True) as feed:
        got = collector()
        client = make_client(feed.url, **wsbridge.conventions())
        client.on("tick", got)
        client.start().wait_connected(timeout=10)
        feed.publish_many(ticks(1))  # the first message of a stream sets where it starts
        got.wait(1)
        feed.publish_many(ticks(100, 2))
        assert [m.seq for m in got.wait(101)] == list(range(1, 102))


def test_a_gap_nobody_fills_is_lost_after_gap_timeout_and_the_stream_goes_on(make_client, collector):
    with Server(skip={5}) as feed:
        got, gaps = collector(), collector()
        client = make_client(feed.url, resume=False, gap_timeout=0.2, codec=wsbridge.JsonCodec.conventions())
        client.on("tick", got)
        client.signals.gap.connect(gaps)
        client.start().wait_connected(timeout=10)
        feed.publish_many(ticks(10))
        assert [m.seq for m in got.wait(9)] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        assert [(g["first"], g["last"], g["status"]) for g in gaps.wait(2)] == [(5, 5, "open"), (5, 5, "lost")]
        assert client.stats.lost == 1 and feed.resumes == []


def test_a_custom_resume_request(make_client):
    with Server() as feed:
        feed.publish_many(ticks(3))
        client = make_client(
            feed.url, resume=lambda positions: {"type": "hello", "from": positions[None]}, codec=wsbridge.JsonCodec.conventions()
        )
        client.start()
        client.wait_for("tick", lambda m: m.seq == 3, timeout=10)
        feed.drop_clients()
        feed.wait_received(1)
        assert feed.received_messages()[0].payload == {"type": "hello", "from": 3}


def test_chaos_20000_messages_over_25_cuts_arrive_once_each_in_order(make_client):
    """Two streams, 20,000 messages, the connection cut mid-flow 25 times, the
    server resending an overlap on every resume."""
    with Server(feed_from="now", resend=7) as feed, Proxy(("127.0.0.1", feed.port)) as proxy:
        report = run_chaos(
            make_client, proxy, lambda n, stream: feed.publish_many(({"type": "tick"} for _ in range(n)), stream=stream),
            messages=20_000, cuts=25, seed=4, backoff=FAST, **wsbridge.conventions(),
        )
    assert report.in_order and report.delivered == report.sent == 20_000, report
    assert report.cuts == 25 and report.reconnects >= 25, report
    assert report.lost == 0 and report.duplicates > 0, report


def test_with_a_store_a_new_client_continues_from_the_stored_position(tmp_path, make_client, collector):
    path = str(tmp_path / "feed.db")
    with Server(feed_from="now") as feed:  # what a client missed, only a resume brings
        first = collector()
        client = make_client(feed.url, store=SQLiteStore(path), **wsbridge.conventions())
        client.on("tick", first)
        client.start().wait_connected(timeout=10)
        feed.wait_clients(1)
        feed.publish_many(ticks(50))
        first.wait(50)
        client.stop()
        feed.publish_many(ticks(25, 51))
        second = collector()
        client = make_client(feed.url, store=SQLiteStore(path), **wsbridge.conventions())
        client.on("tick", second)
        client.start()
        assert [m.seq for m in second.wait(25)] == list(range(51, 76))
        assert feed.resumes == [{None: 50}]
        client.stop()
        assert [m.seq for m in SQLiteStore(path).history()] == list(range(1, 76))
        assert [m.payload["n"] for m in SQLiteStore(path).history(after_seq=70)] == [71, 72, 73, 74, 75]


def test_a_store_that_cannot_be_written_is_reported_and_delivery_goes_on(tmp_path, make_client, collector):
    with Server() as feed:
        got, errors = collector(), collector()
        client = make_client(
            feed.url, store=SQLiteStore(str(tmp_path / "tiny.db"), max_size=64 * 1024), **wsbridge.conventions()
        )
        client.on("tick", got)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        # messages larger than the whole store (smaller ones evict those handled: all are stored)
        feed.publish_many({"type": "tick", "pad": "x" * 20_000} for _ in range(100))
        assert [m.seq for m in got.wait(100)] == list(range(1, 101))
        report = errors.wait(1)[0]
        assert report["context"] == "store" and isinstance(report["error"], StoreError), report
        assert "larger than the store can hold" in str(report["error"]), report
        assert client.stats.store_errors >= 1 and client.stats.stored < 100


def test_a_corrupt_store_is_a_clear_error_at_start(tmp_path, make_client):
    path = tmp_path / "feed.db"
    path.write_bytes(b"\x00garbage" * 1000)
    client = make_client("ws://127.0.0.1:9/", store=SQLiteStore(str(path)), **wsbridge.conventions())
    with pytest.raises(StoreError, match="cannot open the store"):
        client.start()
    assert client.state == "new" and client.threads() == []


def test_a_killed_client_restarted_with_its_store_loses_and_repeats_nothing(tmp_path):
    store, record = str(tmp_path / "feed.db"), tmp_path / "handled.txt"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def child(block_at, total):
        return subprocess.Popen(
            [sys.executable, str(HERE / "delivery_child.py"), feed.url, store, str(record), str(block_at), str(total)],
            stdout=subprocess.PIPE, text=True, env=env,
        )

    with Server() as feed:
        feed.publish_many(ticks(2000))
        proc = child(block_at=700, total=3000)
        try:
            assert Lines(proc.stdout).next(timeout=30) == "BLOCKED"  # inside the subscriber of seq 700
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        feed.publish_many(ticks(1000, 2001))  # more arrives while the client is dead
        proc = child(block_at=0, total=3000)
        try:
            line = Lines(proc.stdout).next(timeout=60)
            assert proc.wait(30) == 0, line
        finally:
            proc.kill()
            proc.wait(10)
    done, replayed, resumes = line.split()
    assert done == "DONE" and int(replayed) >= 1 and int(resumes) >= 1
    handled = [int(x) for x in record.read_text().split()]
    assert handled == list(range(1, 3001))  # nothing lost, nothing repeated


def test_sends_queued_by_a_killed_process_are_sent_by_the_next_client_with_the_store(tmp_path, down_server, make_client):
    path = str(tmp_path / "feed.db")
    code = (
        "import sys, threading, wsbridge\n"
        "client = wsbridge.Client(sys.argv[1], store=wsbridge.SQLiteStore(sys.argv[2]), **wsbridge.conventions()).start()\n"
        "for i in range(300):\n"
        "    client.send({'type': 'order', 'i': i})\n"
        "print('QUEUED', client.stats.outbox, flush=True)\n"
        "threading.Event().wait()\n"
    )
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", code, down_server.url, path], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert Lines(proc.stdout).next(timeout=30) == "QUEUED 300"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    down_server.start()
    client = make_client(down_server.url, store=SQLiteStore(path), **wsbridge.conventions())
    assert client.start().stats.outbox == 300
    client.wait_connected(timeout=10)  # connected = flushed
    down_server.wait_received(300)
    assert [m.payload["i"] for m in down_server.received_messages()] == list(range(300))
    client.stop()
    with SQLiteStore(path) as store:
        assert store.outbox_items() == []
