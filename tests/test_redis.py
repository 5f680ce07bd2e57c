"""Redis Streams: the store, the lease, bridges with failover, consumer groups.

Every test talks to a real redis-server started on 127.0.0.1 (an ephemeral
port) by `wsbridge.testing.redis.RedisServer`; the feed is the bundled test
server, also on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from typing import Iterator, List

import pytest

redis = pytest.importorskip("redis")

import wsbridge  # noqa: E402
from wsbridge import Lease, LeaseLost, Message, RedisStreamStore, StreamConsumer  # noqa: E402
from wsbridge.testing import Server  # noqa: E402
from wsbridge.testing.redis import RedisServer  # noqa: E402

from conftest import Collector, Lines, wait_until  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


@pytest.fixture
def rs() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def r(rs: RedisServer) -> Iterator["redis.Redis"]:
    client = redis.Redis.from_url(rs.url)
    yield client
    client.close()


def msg(seq, stream=None, mtype="t", payload=None, id=None):
    return Message(mtype, payload if payload is not None else {"n": seq}, seq, id, stream, 1000.0 + seq)


def stream_seqs(r, feed: str) -> List[int]:
    return [int(fields[b"seq"]) for _id, fields in r.xrange(f"wsbridge:{feed}:messages")]


def no_wsbridge_threads() -> bool:
    return not [t.name for t in threading.enumerate() if t.name.startswith("wsbridge")]


# -- the store alone ------------------------------------------------------------------

def test_store_round_trip_positions_and_history(rs, r):
    with RedisStreamStore(rs.url, feed="f") as store:
        first = store.append([msg(1), msg(2, "b", "x", "text"), msg(3, None, "y", b"\x00\xff", id="k7")], {None: 3, "b": 2})
        assert first == 1
        assert store.append([msg(4)], {None: 4, "b": 2}) == 4
        assert store.positions() == {None: 4, "b": 2}
        got = store.history()
        assert [(m.type, m.payload, m.seq, m.stream, m.id) for m in got] == [
            ("t", {"n": 1}, 1, None, None), ("x", "text", 2, "b", None), ("y", b"\x00\xff", 3, None, "k7"),
            ("t", {"n": 4}, 4, None, None),
        ]
        assert got[0].received_at == 1001.0
        assert [m.seq for m in store.history(type="t")] == [1, 4]
        assert [m.seq for m in store.history(stream="b")] == [2]
        assert [m.seq for m in store.history(after_seq=2, limit=1)] == [3]
        store.mark_handled(2)
    # The entries are plain Redis: any reader sees the fields by name.
    entry = r.xrange("wsbridge:f:messages", count=1)[0]
    assert entry[0] == b"1-0" and entry[1][b"type"] == b"t" and entry[1][b"seq"] == b"1"
    with RedisStreamStore(rs.url, feed="f") as again:
        assert again.handled == 2
        assert [k for k, _m in again.unhandled()] == [3, 4]
        assert again.append([msg(5)], {None: 5}) == 5  # keys go on from the stored ones


def test_the_append_script_never_appends_a_seq_twice(rs, r):
    with RedisStreamStore(rs.url, feed="f") as a:
        a.append([msg(n) for n in range(1, 6)], {None: 5})
    with RedisStreamStore(rs.url, feed="f") as b:  # as a standby would, resuming too early
        b.append([msg(n) for n in range(3, 9)], {None: 8})
        assert (b.appended, b.skipped) == (3, 3)
    assert stream_seqs(r, "f") == [1, 2, 3, 4, 5, 6, 7, 8]


def test_large_sequence_ids_keep_every_digit(rs):
    big = 1_764_300_000_000_123  # microseconds since the epoch, as some feeds number their messages
    with RedisStreamStore(rs.url, feed="f") as store:
        store.append([msg(big), msg(big + 1)], {None: big + 1})
        store.append([msg(big + 1), msg(big + 2)], {None: big + 2})  # the first is a duplicate
        assert store.positions() == {None: big + 2}
        assert [m.seq for m in store.history()] == [big, big + 1, big + 2]


def test_maxlen_keeps_about_that_many(rs, r):
    with RedisStreamStore(rs.url, feed="f", maxlen=100) as store:
        for base in range(0, 2000, 200):
            store.append([msg(n) for n in range(base + 1, base + 201)], {None: base + 200})
    length = r.xlen("wsbridge:f:messages")
    assert 100 <= length < 400, length
    assert stream_seqs(r, "f")[-1] == 2000


def test_a_batch_costs_redis_one_xadd_a_message_with_the_fields_set_and_one_trim(rs, r):
    """The append script's work per message (issue 25): one XADD, an unset id and stream
    left out of the entry, the trim once a batch; every field reads back as it went in."""
    sent = [msg(n) for n in range(1, 101)] + [msg(101, "b", id="k"), msg(102, id=7), msg(1, "c", "x", "text")]
    with RedisStreamStore(rs.url, feed="f", maxlen=1000) as store:
        r.config_resetstat()
        store.append(sent, {None: 102, "b": 101, "c": 1})
        stats = r.info("commandstats")
        assert (stats["cmdstat_xadd"]["calls"], stats["cmdstat_xtrim"]["calls"]) == (103, 1)
        assert [(m.type, m.payload, m.seq, m.id, m.stream, m.received_at) for m in store.history()] == [
            (m.type, m.payload, m.seq, m.id, m.stream, m.received_at) for m in sent]
    entries = [fields for _id, fields in r.xrange("wsbridge:f:messages")]
    assert set(entries[0]) == {b"type", b"seq", b"kind", b"payload", b"at"}
    assert (entries[100][b"id"], entries[100][b"stream"]) == (b"k", b"b")
    assert entries[101][b"id"] == b"7" and b"stream" not in entries[101]
    assert entries[102][b"stream"] == b"c" and b"id" not in entries[102]


def test_rows_at_or_below_the_newest_stored_key_are_dropped_and_the_rest_appended(rs, r):
    """A writer whose keys fell behind the stored ones (it opened before another wrote)
    overwrites nothing: its rows up to the newest stored key are dropped, the rest appended."""
    with RedisStreamStore(rs.url, feed="f") as late, RedisStreamStore(rs.url, feed="f") as first:
        first.append([msg(n) for n in range(1, 6)], {None: 5})  # keys 1 to 5
        assert late.append([msg(n) for n in range(6, 14)], {None: 13}) == 1  # its keys 1 to 8
        assert (late.appended, late.skipped) == (3, 5)
    assert [int(i.split(b"-")[0]) for i, _f in r.xrange("wsbridge:f:messages")] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert stream_seqs(r, "f") == [1, 2, 3, 4, 5, 11, 12, 13]
    assert r.hget("wsbridge:f:meta", "last") == b"8"


def test_an_unopened_store_and_an_unreachable_redis_say_so(rs):
    with pytest.raises(wsbridge.StoreError, match="not open"):
        RedisStreamStore(rs.url).positions()
    rs.stop()
    with pytest.raises(wsbridge.StoreError, match="cannot open"):
        RedisStreamStore(rs.url).open()


# -- the lease ----------------------------------------------------------------------------

def test_one_holder_at_a_time_and_a_standby_takes_over_an_abandoned_lease(rs):
    lost = threading.Event()
    a = Lease(rs.url, "wsbridge:f:lease", ttl=0.6, on_lost=lost.set, owner="a")
    b = Lease(rs.url, "wsbridge:f:lease", ttl=0.6, owner="b")
    try:
        assert a.acquire(timeout=5)
        assert not b.try_acquire()
        assert not b.acquire(timeout=1.0)  # a keeps renewing: longer than the TTL and still a's
        assert b.holder() == a.token
        a._stop.set()  # a's renewals stop, as if its process had frozen
        a._thread.join(5)
        assert b.acquire(timeout=5)  # within about one TTL
        assert b.holder() == b.token
        # a wakes up: its next renewal finds b's token, and it reports the loss.
        a._stop.clear()
        a._thread = threading.Thread(target=a._keep, daemon=True)
        a._thread.start()
        assert lost.wait(5) and not a.held
    finally:
        a.close()
        b.close()
    assert no_wsbridge_threads()


def test_a_fenced_store_refuses_a_write_once_another_process_holds_the_lease(rs, r):
    lease = Lease(rs.url, "wsbridge:f:lease", ttl=5)
    assert lease.acquire(timeout=5)
    try:
        with RedisStreamStore(rs.url, feed="f", lease=lease) as store:
            store.append([msg(1)], {None: 1})
            r.set("wsbridge:f:lease", "someone-else", px=5000)  # a standby took over while we were paused
            with pytest.raises(LeaseLost, match="another process holds the lease"):
                store.append([msg(2)], {None: 2})
        assert stream_seqs(r, "f") == [1]
    finally:
        lease.close()


# -- a client with the store, and Redis going away -------------------------------------------

def test_redis_restarted_mid_stream_loses_nothing(rs, r):
    errors = Collector()
    with Server() as feed:
        store = RedisStreamStore(rs.url, feed="f")
        client = wsbridge.Client(feed.url, store=store, pull_buffer=0, **wsbridge.conventions())
        client.signals.error.connect(errors)
        got = Collector()
        client.on_any(got)
        client.start()
        try:
            feed.publish_many({"type": "tick", "n": i} for i in range(500))
            got.wait(500)
            assert stream_seqs(r, "f") == list(range(1, 501))
            rs.stop()
            feed.publish_many({"type": "tick", "n": i} for i in range(500))
            got.wait(1000)  # delivered while Redis is down ...
            assert store.backlog > 0  # ... and kept for it
            rs.start()
            feed.publish_many({"type": "tick", "n": i} for i in range(500))
            got.wait(1500)
            wait_until(lambda: store.backlog == 0 and r.xlen("wsbridge:f:messages") >= 1500, 20, "the backlog written")
        finally:
            client.stop()
    assert stream_seqs(r, "f") == list(range(1, 1501))
    assert [m.seq for m in got.items] == list(range(1, 1501))
    assert errors.items == []
    assert no_wsbridge_threads()


def test_a_full_local_buffer_is_reported_not_silent(rs):
    errors = Collector()
    with Server() as feed:
        client = wsbridge.Client(feed.url, store=RedisStreamStore(rs.url, feed="f", buffer_size=100), pull_buffer=0,
                                 **wsbridge.conventions())
        client.signals.error.connect(errors)
        got = Collector()
        client.on_any(got)
        client.start()
        try:
            client.wait_connected(10)
            rs.stop()
            feed.publish_many({"type": "tick", "n": i} for i in range(300))
            got.wait(300)  # every message still reaches the subscribers
            errors.wait(1)
        finally:
            client.stop()
    assert "local buffer is full" in str(errors.items[0]["error"])
    assert errors.items[0]["context"] == "store"


# -- bridges ------------------------------------------------------------------------------------

def start_bridge(feed_url: str, redis_url: str, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wsbridge", "bridge", feed_url, "--redis", redis_url, "--feed", name, "--lease-ttl", "1",
         "--codec", "wsbridge"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
    )


def test_two_bridges_the_leader_killed_mid_stream_the_standby_resumes_exactly_once(rs, r):
    total = 3000
    procs: List[subprocess.Popen] = []
    with Server() as feed:
        try:
            first = start_bridge(feed.url, rs.url, "f")
            procs.append(first)
            Lines(first.stderr).next("took the lease", timeout=60)
            second = start_bridge(feed.url, rs.url, "f")
            procs.append(second)
            standby = Lines(second.stderr)
            standby.next("waiting for the lease", timeout=60)

            published = threading.Event()
            pause = threading.Event()

            def publish() -> None:  # a steady feed: 100 messages every 10 ms
                for _ in range(total // 100):
                    feed.publish_many({"type": "tick", "px": 1.5} for _ in range(100))
                    pause.wait(0.01)
                published.set()

            publisher = threading.Thread(target=publish, name="test-publisher")
            publisher.start()
            wait_until(lambda: r.xlen("wsbridge:f:messages") >= 800, 30, "the leader appending")
            first.kill()  # SIGKILL: no goodbye, the lease is left to expire
            first.wait(10)
            standby.next("took the lease", timeout=30)
            publisher.join(60)
            assert published.is_set()
            wait_until(lambda: r.xlen("wsbridge:f:messages") >= total, 30, "every message in Redis")
            second.send_signal(signal.SIGTERM)
            summary = standby.next("stopped:", timeout=30)
            assert second.wait(30) == 0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(10)
        assert feed.resumes and feed.resumes[-1][None] >= 800  # the standby resumed from the stored position
    assert stream_seqs(r, "f") == list(range(1, total + 1))  # every seq, exactly once, in order
    assert "appended" in summary


# -- consumers ------------------------------------------------------------------------------------

def fill(rs: RedisServer, feed: str, count: int, mtype: str = "t") -> None:
    with RedisStreamStore(rs.url, feed=feed) as store:
        for base in range(0, count, 500):
            n = min(500, count - base)
            store.append([msg(s, mtype=mtype) for s in range(base + 1, base + n + 1)], {None: base + n})


def test_consumers_in_a_group_share_the_work_and_every_group_sees_everything(rs):
    fill(rs, "f", 1000)
    shares = {name: Collector() for name in ("a1", "a2", "b1")}
    consumers = [StreamConsumer(rs.url, "f", group=name[0], name=name, batch=20) for name in shares]
    for consumer, collector in zip(consumers, shares.values(), strict=True):
        consumer.on("t", collector)
    total_a = lambda: len(shares["a1"]) + len(shares["a2"])  # noqa: E731
    try:
        for consumer in consumers:
            consumer.start()
        wait_until(lambda: total_a() >= 1000 and len(shares["b1"]) >= 1000, 30, "every message handled")
    finally:
        for consumer in consumers:
            assert consumer.stop()
    a = sorted(m.seq for m in shares["a1"].items + shares["a2"].items)
    assert a == list(range(1, 1001))  # group a: each once, split between its two consumers
    assert [m.seq for m in shares["b1"].items] == list(range(1, 1001))  # group b: all of it, in order
    assert all(c.acked == c.handled for c in consumers)
    assert no_wsbridge_threads()


CHILD = """
import os, signal, sys
from wsbridge import StreamConsumer
c = StreamConsumer(sys.argv[1], "f", group="g", name="doomed", batch=50)
def handle(m):
    print(m.seq, flush=True)
    if m.seq == 120:
        os.kill(os.getpid(), signal.SIGKILL)  # dies mid-batch: 101..150 stay pending, unacknowledged
c.on("t", handle)
c.start()
c.join(60)
"""


def test_a_consumer_killed_with_messages_pending_another_claims_and_handles_them(rs, r):
    fill(rs, "f", 300)
    child = subprocess.run([sys.executable, "-c", CHILD, rs.url], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout.split()[-1] == "120"
    pending = r.xpending("wsbridge:f:messages", "g")
    assert pending["pending"] == 50 and pending["consumers"][0]["name"] == b"doomed"

    handled = Collector()
    survivor = StreamConsumer(rs.url, "f", group="g", name="survivor", claim_idle=0.3, batch=50)
    survivor.on("t", handled)
    survivor.start()
    try:
        handled.wait(200, timeout=30)  # 151..300 new, 101..150 claimed
        wait_until(lambda: r.xpending("wsbridge:f:messages", "g")["pending"] == 0, 30, "nothing pending")
    finally:
        assert survivor.stop()
    seqs = sorted(m.seq for m in handled.items)
    assert seqs == list(range(101, 301))  # none lost; 1..100 were acknowledged by the dead one
    assert survivor.claimed == 50


def test_a_subscriber_that_raises_is_reported_and_the_others_still_get_it(rs):
    fill(rs, "f", 10)
    errors, good = Collector(), Collector()
    consumer = StreamConsumer(rs.url, "f", group="g", name="c")
    consumer.on("t", lambda m: 1 / 0)
    consumer.on_any(good)
    consumer.signals.error.connect(errors)
    with consumer:
        good.wait(10)
        errors.wait(10)
    assert errors.items[0]["context"] == "subscriber" and isinstance(errors.items[0]["error"], ZeroDivisionError)
    assert consumer.acked == 10  # acknowledged: handled once; the failure is the subscriber's to report


def test_a_consumer_waits_out_a_redis_restart(rs):
    fill(rs, "f", 100)
    got = Collector()
    events = Collector()
    consumer = StreamConsumer(rs.url, "f", group="g", name="c", block=0.2,
                              backoff=wsbridge.Backoff(initial=0.05, max_delay=0.2))
    consumer.on("t", got)
    consumer.signals.disconnected.connect(events)
    with consumer:
        got.wait(100)
        rs.stop()
        events.wait(1, timeout=30)
        rs.start()
        with RedisStreamStore(rs.url, feed="f") as store:
            store.append([msg(n) for n in range(101, 201)], {None: 200})
        got.wait(200, timeout=30)
    assert [m.seq for m in got.items] == list(range(1, 201))


def test_a_bridge_that_finds_its_lease_taken_stands_by_and_takes_it_again_when_free(rs, r):
    events = Collector()
    with Server() as feed:
        bridge = wsbridge.Bridge(feed.url, rs.url, feed="f", lease_ttl=0.6, on_event=events, **wsbridge.conventions())
        runner = threading.Thread(target=bridge.run, name="test-bridge")
        runner.start()
        try:
            wait_until(lambda: any("took the lease" in e for e in events.items), 30, "the first term")
            feed.publish_many({"type": "tick"} for _ in range(100))
            wait_until(lambda: r.xlen("wsbridge:f:messages") == 100, 30, "the first 100 appended")
            r.set("wsbridge:f:lease", "other-bridge", px=60_000)  # another bridge took over meanwhile
            wait_until(lambda: any("lost the lease" in e for e in events.items), 30, "the loss noticed")
            feed.publish_many({"type": "tick"} for _ in range(100))  # the other bridge's to append, not ours
            r.delete("wsbridge:f:lease")  # ... until it goes away too
            wait_until(lambda: bridge.terms == 2 and bridge.lease.held, 30, "the second term")
            wait_until(lambda: r.xlen("wsbridge:f:messages") == 200, 30, "the second 100 appended")
        finally:
            bridge.stop()
            runner.join(30)
    assert not runner.is_alive()
    assert stream_seqs(r, "f") == list(range(1, 201))
    assert r.get("wsbridge:f:lease") is None  # released on stop
    assert no_wsbridge_threads()


def test_the_bridge_command_says_when_redis_is_unreachable_and_stops_on_sigterm(rs):
    url = rs.url
    rs.stop()  # nothing listens there now
    proc = subprocess.Popen([sys.executable, "-m", "wsbridge", "bridge", "ws://127.0.0.1:9/", "--redis", url],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    try:
        lines = Lines(proc.stderr)
        line = lines.next("cannot reach Redis", timeout=60)
        assert "retrying" in line and "127.0.0.1" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_bridge_help_and_a_missing_redis_option():
    out = subprocess.run([sys.executable, "-m", "wsbridge", "bridge", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0 and "lease" in out.stdout and "examples:" in out.stdout
    out = subprocess.run([sys.executable, "-m", "wsbridge", "bridge", "ws://127.0.0.1:9/"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert out.returncode == 2 and "--redis" in out.stderr


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsbridge", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_history_reads_a_redis_feed(rs):
    fill(rs, "f", 30)
    out = cli("history", rs.url, "--feed", "f", "--after-seq", "25", "--json-lines")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["seq"] for line in out.stdout.splitlines()] == [26, 27, 28, 29, 30]


def test_consume_prints_and_acknowledges_only_what_it_printed(rs, r):
    fill(rs, "f", 30)
    first = cli("consume", rs.url, "--feed", "f", "--group", "g", "--max", "5", "--json-lines")
    assert first.returncode == 0, first.stderr
    assert [json.loads(line)["seq"] for line in first.stdout.splitlines()] == [1, 2, 3, 4, 5]
    assert "5 printed" in first.stderr
    # The rest of the batch it had read stays pending under its name: the same name takes it up next.
    again = cli("consume", rs.url, "--feed", "f", "--group", "g", "--max", "25", "--json-lines")
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["seq"] for line in again.stdout.splitlines()] == list(range(6, 31))
    assert r.xpending("wsbridge:f:messages", "g")["pending"] == 0
    short = cli("consume", rs.url, "--feed", "f", "--group", "g", "--max", "1", "--timeout", "1")
    assert short.returncode == 1 and "0 of 1 messages" in short.stderr


def test_a_bridge_keeps_its_lease_and_loses_nothing_across_a_redis_restart(rs, r):
    events = Collector()
    with Server() as feed:
        bridge = wsbridge.Bridge(feed.url, rs.url, feed="f", lease_ttl=0.5, on_event=events, **wsbridge.conventions())
        runner = threading.Thread(target=bridge.run, name="test-bridge")
        runner.start()
        try:
            wait_until(lambda: bridge.client is not None and bridge.client.state == "connected", 30, "the bridge connected")
            feed.publish_many({"type": "tick"} for _ in range(300))
            wait_until(lambda: r.xlen("wsbridge:f:messages") == 300, 30, "the first 300 appended")
            rs.stop()
            feed.publish_many({"type": "tick"} for _ in range(300))
            wait_until(lambda: bridge.store.backlog == 300, 30, "300 kept locally")
            outage = threading.Event()  # never set: the wait is the outage's length, the fault under test
            outage.wait(1.0)  # Redis down for twice the lease's TTL, so the lease has expired when it returns
            rs.start()
            feed.publish_many({"type": "tick"} for _ in range(300))
            r2 = redis.Redis.from_url(rs.url)
            try:
                wait_until(lambda: r2.xlen("wsbridge:f:messages") == 900, 30, "all 900 appended")
                seqs = [int(fields[b"seq"]) for _id, fields in r2.xrange("wsbridge:f:messages")]
                holder = r2.get("wsbridge:f:lease")
            finally:
                r2.close()
        finally:
            bridge.stop()
            runner.join(30)
    assert seqs == list(range(1, 901))
    assert holder == bridge.lease.token.encode()  # taken again by the same bridge, which never stood by
    assert bridge.terms == 1 and not any("lost the lease" in e for e in events.items)
    assert no_wsbridge_threads()


def test_messages_held_behind_a_gap_reach_the_redis_stream_at_give_up(rs, r):
    """Issue 20 review, 5: seq 1, 3, 4 on one stream, then close 1000 under NO_RETRY: the
    stream kept [1], the held 3 and 4 neither appended nor delivered."""
    from wsbridge.testing.raw import CLOSE, RawServer, frame

    with RawServer() as server:
        client = wsbridge.Client(server.url, store=RedisStreamStore(rs.url, feed="held"), backoff=wsbridge.NO_RETRY,
                                 pull_buffer=0, **wsbridge.conventions())
        got = Collector()
        client.on_any(got)
        gave_up = Collector()
        client.signals.gave_up.connect(gave_up)
        client.start()
        try:
            server.wait_connection().sendall(b"".join(
                frame(json.dumps({"type": "t", "seq": n, "stream": "a"}).encode()) for n in (1, 3, 4)
            ) + frame(b"\x03\xe8", CLOSE))
            gave_up.wait()
            got.wait(3)
        finally:
            assert client.stop(10)
    assert [m.seq for m in got.items] == [1, 3, 4]
    assert stream_seqs(r, "held") == [1, 3, 4]
    assert client.stats.lost == 1
