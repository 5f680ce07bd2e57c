"""Numbering that starts again is detected, never swallowed (issue 23, point 1).

The servers here are `websockets` servers (the library's, not ours) on 127.0.0.1 that
play one script per connection: a server restarted after a drop numbers from 1 again with
new messages; one that replays its history from 1 sends the same messages again.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

import wsbridge
from wsbridge import Backoff, JsonCodec, SQLiteStore

from conftest import wait_until

FAST = Backoff(initial=0.01, factor=2, max_delay=0.05, jitter=0)


def msgs(seqs: Sequence[int], text: str, **fields: Any) -> List[Dict[str, Any]]:
    return [{"type": "tick", "seq": n, "text": f"{text}{n}", **fields} for n in seqs]


class Script:
    """Connection number N (from 1) gets ``scripts[N-1]``: it first reads one frame if N
    is in ``reads`` (kept in `read`: the client's resume request), then sends the script's
    messages, then closes (1012) if N is in ``drops``, else waits for the client to close.
    Connections past the scripts get nothing."""

    def __init__(self, scripts: Sequence[Sequence[Dict[str, Any]]], drops: Sequence[int] = (),
                 reads: Sequence[int] = ()) -> None:
        self.scripts, self.drops, self.reads = list(scripts), set(drops), set(reads)
        self.read: Dict[int, Any] = {}
        self.opened = 0
        self._lock = threading.Lock()
        self._server = serve(self._handler, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.socket.getsockname()[1]}/"
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-script", daemon=True)
        self._thread.start()

    def _handler(self, ws: ServerConnection) -> None:
        with self._lock:
            self.opened += 1
            number = self.opened
        try:
            if number in self.reads:
                self.read[number] = json.loads(ws.recv(timeout=10))
            for obj in self.scripts[number - 1] if number <= len(self.scripts) else ():
                ws.send(json.dumps(obj))
            if number in self.drops:
                ws.close(1012, "service restart")
                return
            for _ in ws:  # until the client closes
                pass
        except (ConnectionClosed, TimeoutError):
            pass

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(10)


@pytest.fixture
def script() -> Iterator[Any]:
    made: List[Script] = []

    def make(*args: Any, **kwargs: Any) -> Script:
        made.append(Script(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def watch(client: wsbridge.Client, collector: Any) -> Any:
    """Collectors of the client's messages (``got``) and ``reset`` signals (``resets``)."""
    got, resets = collector(), collector()
    client.on_any(got)
    client.signals.reset.connect(resets)
    return got, resets


def seqs(got: Any, n: int) -> List[Optional[int]]:
    return [(m.seq, m.payload["text"]) for m in got.wait(n)]


def test_a_server_that_restarts_its_numbering_after_a_drop_is_heard_and_the_reset_signalled(script, make_client,
                                                                                          collector):
    server = script([msgs([1, 2, 3], "old"), msgs([1, 2], "new")], drops=[1])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions())
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 5) == [(1, "old1"), (2, "old2"), (3, "old3"), (1, "new1"), (2, "new2")]
    [reset] = resets.wait(1)
    assert reset == {"stream": None, "last": 3, "seq": 1, "epoch": None, "why": "content", "restarted": True, "identical": 0}
    stats = client.stats
    assert (stats.resets, stats.duplicates, client.positions) == (1, 0, {None: 2})


def test_a_server_that_replays_its_history_from_1_has_the_replay_dropped_and_new_ones_delivered_once(
        script, make_client, collector):
    server = script([msgs([1, 2, 3], "m"), msgs([1, 2, 3, 4], "m")], drops=[1])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions())
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 4) == [(1, "m1"), (2, "m2"), (3, "m3"), (4, "m4")]  # 4 came after the replayed 1..3
    assert (client.stats.duplicates, client.stats.resets, len(resets)) == (3, 0, 0)


def test_a_seq_back_to_before_what_the_client_saw_is_dropped_by_default_and_said_on_reset(script, make_client,
                                                                                        collector):
    # The client joined at 2000: nothing is known about seq 1 (a replay from the start, or a restart?).
    server = script([msgs([2000, 2001], "m"), msgs([1, 2], "m") + msgs([2002], "m")], drops=[1])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions())
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 3) == [(2000, "m2000"), (2001, "m2001"), (2002, "m2002")]
    assert resets.items == [{"stream": None, "last": 2001, "seq": 1, "epoch": None, "why": "unknown", "restarted": False,
                             "identical": 0}]
    assert (client.stats.duplicates, client.stats.resets) == (2, 0)  # said once per connection


@pytest.mark.parametrize("again, expected, reset", [
    (msgs([1, 2], "new"), [(1, "new1"), (2, "new2")],
     {"stream": "s", "last": 3, "seq": 1, "epoch": None, "why": "content", "restarted": True, "identical": 0}),
    (msgs([1, 2, 3, 4], "old"), [(4, "old4")], None),
], ids=["restarted", "replayed"])
def test_across_a_process_restart_the_store_tells_a_restart_from_a_replay(tmp_path, script, make_client, collector,
                                                                          again, expected, reset):
    path = str(tmp_path / "feed.db")
    first = script([msgs([1, 2, 3], "old", stream="s")])
    client = make_client(first.url, backoff=FAST, codec=JsonCodec.conventions(), store=SQLiteStore(path))
    got, _ = watch(client, collector)
    client.start()
    assert len(got.wait(3)) == 3
    assert client.stop(timeout=10)
    # A new process (a new client on the same store) meets a server that restarted, or one that replays.
    second = script([[{**m, "stream": "s"} for m in again]])
    client = make_client(second.url, backoff=FAST, codec=JsonCodec.conventions(), store=SQLiteStore(path))
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, len(expected)) == expected
    if reset is None:
        assert (client.stats.duplicates, client.stats.resets, len(resets)) == (3, 0, 0)
    else:
        assert resets.wait(1) == [reset] and client.positions == {"s": 2}


@pytest.fixture(params=["sqlite", "redis"])
def store_of(request, tmp_path) -> Iterator[Any]:
    """A function that makes a new store object on the same storage (an SQLite file, or a
    feed of a real redis-server on loopback) each time it is called."""
    if request.param == "sqlite":
        path = str(tmp_path / "feed.db")
        yield lambda: SQLiteStore(path)
        return
    pytest.importorskip("redis")
    from wsbridge.testing.redis import RedisServer

    with RedisServer() as server:
        yield lambda: wsbridge.RedisStreamStore(server.url, feed="resets")


def test_an_epoch_change_starts_the_stream_afresh_and_resume_requests_carry_the_epoch(store_of, script, make_client,
                                                                                      collector):
    codec = JsonCodec.conventions(epoch_field="epoch")
    server = script([msgs([1, 2, 3], "a", epoch="e1"), msgs([1, 2], "b", epoch="e2")], drops=[1], reads=[2])
    client = make_client(server.url, backoff=FAST, codec=codec, resume=True, store=store_of())
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 5) == [(1, "a1"), (2, "a2"), (3, "a3"), (1, "b1"), (2, "b2")]
    assert server.read[2]["positions"] == [{"stream": None, "seq": 3, "epoch": "e1"}]
    assert resets.wait(1) == [{"stream": None, "last": 3, "seq": 1, "epoch": "e2", "why": "epoch", "restarted": True,
                               "identical": 0}]
    assert got.items[-1].epoch == "e2"
    wait_until(lambda: client.epochs == {None: "e2"} and client.positions == {None: 2}, what="the new epoch's position")
    assert client.stop(timeout=10)
    # The store kept the new epoch's messages and its position with the epoch: the next run asks to resume in it.
    later = script([msgs([3], "b", epoch="e2")], reads=[1])
    store = store_of()
    client = make_client(later.url, backoff=FAST, codec=codec, resume=True, store=store)
    got, _ = watch(client, collector)
    client.start()
    assert seqs(got, 1) == [(3, "b3")]
    assert later.read[1]["positions"] == [{"stream": None, "seq": 2, "epoch": "e2"}]
    assert client.stop(timeout=10)
    assert [(m.seq, m.payload["text"]) for m in store.history()] == [
        (1, "a1"), (2, "a2"), (3, "a3"), (1, "b1"), (2, "b2"), (3, "b3")]


def test_numbered_per_connection_every_connection_starts_afresh_and_nothing_is_resumed_or_stored(
        tmp_path, script, make_client, collector):
    path = str(tmp_path / "feed.db")
    same = msgs([1, 2], "m")  # even the very same messages: another connection's numbering
    server = script([same, same], drops=[1])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(), seq_scope="connection",
                         resume=True, store=SQLiteStore(path))
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 4) == [(1, "m1"), (2, "m2"), (1, "m1"), (2, "m2")]
    wait_until(lambda: client.positions == {None: 2}, what="the second connection's position")
    assert (client.stats.duplicates, client.stats.resets, client.stats.resumes, len(resets)) == (0, 0, 0, 0)
    assert client.stop(timeout=10)
    with SQLiteStore(path) as store:
        assert store.positions() == {} and len(store.history()) == 4


def test_numbered_per_connection_a_gap_open_at_stop_is_lost_and_what_it_held_delivered_not_kept(
        tmp_path, script, make_client, collector):
    path = str(tmp_path / "feed.db")
    server = script([msgs([1, 3], "m")])  # 2 never comes: 3 is held behind the gap
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(), seq_scope="connection",
                         store=SQLiteStore(path))
    got, _ = watch(client, collector)
    gaps = collector()
    client.signals.gap.connect(gaps)
    client.start()
    assert gaps.wait(1)[0]["status"] == "open"
    assert client.stop(timeout=10)
    assert [m.seq for m in got.items] == [1, 3]  # no later connection could fill the gap: it is not kept for one
    with SQLiteStore(path) as store:
        assert store.held_messages() == []


def test_the_options_are_checked_at_construction():
    with pytest.raises(ValueError, match="on_reset"):
        wsbridge.Client("ws://127.0.0.1:9/", on_reset="ignore")
    with pytest.raises(ValueError, match="connection"):
        wsbridge.Client("ws://127.0.0.1:9/", seq_scope="per-connection")
    with pytest.raises(ValueError, match="epoch"):
        JsonCodec(epoch_field="a..b")


def test_a_server_with_epochs_that_restarts_without_them_is_heard(script, make_client, collector):
    # The restarted server first sends no epoch at all, then messages of a new one: seq 1 of it is not lost.
    server = script([msgs([1, 2, 3], "a", epoch="A"), msgs([1, 2], "b"),
                     msgs([1], "c") + msgs([2, 3], "c", epoch="C")], drops=[1, 2])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(epoch_field="epoch"))
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 8) == [(1, "a1"), (2, "a2"), (3, "a3"), (1, "b1"), (2, "b2"), (1, "c1"), (2, "c2"), (3, "c3")]
    assert [(r["last"], r["seq"], r["why"], r["restarted"]) for r in resets.wait(2)] == [
        (3, 1, "content", True), (2, 1, "content", True)]
    wait_until(lambda: client.epochs == {None: "C"} and client.positions == {None: 3}, what="the new epoch")


def test_epochs_are_text_any_integer_is_stored_and_7_is_the_same_generation_as_quote_7(tmp_path, script, make_client,
                                                                                       collector):
    path = str(tmp_path / "feed.db")
    big = 2**63 + 5
    server = script([msgs([1, 2], "a", epoch=big) + msgs([3], "a", epoch=str(big)) + msgs([4], "a", epoch=big)])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(epoch_field="epoch"),
                         store=SQLiteStore(path))
    got, resets = watch(client, collector)
    client.start()
    assert [m.seq for m in got.wait(4)] == [1, 2, 3, 4] and {m.epoch for m in got.items} == {str(big)}
    assert client.stop(timeout=10)
    assert (client.stats.store_errors, client.stats.stored, client.stats.resets, resets.items) == (0, 4, 0, [])
    with SQLiteStore(path) as store:
        assert store.epochs() == {None: str(big)} and store.positions() == {None: 4}


def test_an_earlier_epoch_coming_back_is_stale_dropped_and_said(store_of, script, make_client, collector):
    server = script([msgs([1, 2, 3], "a", epoch="A"), msgs([1, 2], "b", epoch="B"),
                     msgs([1, 2], "a", epoch="A") + msgs([3], "b", epoch="B")], drops=[1, 2])
    store = store_of()
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(epoch_field="epoch"), store=store)
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 6) == [(1, "a1"), (2, "a2"), (3, "a3"), (1, "b1"), (2, "b2"), (3, "b3")]
    assert [(r["seq"], r["epoch"], r["why"], r["restarted"]) for r in resets.wait(2)] == [
        (1, "B", "epoch", True), (1, "A", "stale", False)]
    assert client.stop(timeout=10)
    assert (client.stats.duplicates, client.stats.resets) == (2, 1)
    with store_of() as again:  # the stale epoch's messages are not kept, nor its epoch
        assert [(m.seq, m.payload["text"]) for m in again.history()] == [
            (1, "a1"), (2, "a2"), (3, "a3"), (1, "b1"), (2, "b2"), (3, "b3")]
        assert again.epochs() == {None: "B"} and again.positions() == {None: 3}


def test_a_restart_whose_first_messages_repeat_the_old_ones_says_how_many_were_dropped(script, make_client,
                                                                                     collector):
    hello = [{"type": "tick", "seq": 1, "text": "hello"}]
    server = script([hello + msgs([2, 3], "old"), hello + msgs([2], "new")], drops=[1])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions())
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 4) == [(1, "hello"), (2, "old2"), (3, "old3"), (2, "new2")]
    assert resets.wait(1) == [{"stream": None, "last": 3, "seq": 2, "epoch": None, "why": "content", "restarted": True,
                               "identical": 1}]


@pytest.mark.parametrize("again, delivered, reset", [
    # Restarted at 1: the old gap is given up first; the reset says the position before it (10).
    (range(1, 4), [(n, f"o{n}") for n in range(13, 21)] + [(n, f"n{n}") for n in range(1, 4)], (10, 1)),
    # Restarted at 11, inside the gap: its 11, 12 fill it (releasing the old 13..20); its 13 is found a restart.
    (range(11, 16), [(11, "n11"), (12, "n12")] + [(n, f"o{n}") for n in range(13, 21)] + [
        (n, f"n{n}") for n in range(13, 16)], (20, 13)),
], ids=["at-1", "inside-the-gap"])
def test_a_restart_while_a_gap_is_open_is_found(script, make_client, collector, again, delivered, reset):
    server = script([msgs(range(1, 11), "o") + msgs(range(13, 21), "o"), msgs(again, "n")], drops=[1])
    client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(), gap_timeout=30)
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 10 + len(delivered))[10:] == delivered
    assert [(r["last"], r["seq"], r["why"]) for r in resets.wait(1)] == [(*reset, "content")]


def test_a_redis_store_counts_as_stored_only_what_it_appended(script, make_client, collector):
    pytest.importorskip("redis")
    from wsbridge.testing.redis import RedisServer

    with RedisServer() as redis_server:
        # A restarted numbering without an epoch: its 1..3 are at or below the stored position, not appended again.
        server = script([msgs([1, 2, 3], "old"), msgs([1, 2, 3, 4], "new")], drops=[1])
        store = wsbridge.RedisStreamStore(redis_server.url, feed="counted")
        client = make_client(server.url, backoff=FAST, codec=JsonCodec.conventions(), store=store)
        got, _ = watch(client, collector)
        client.start()
        assert len(got.wait(7)) == 7
        assert client.stop(timeout=10)
        assert (store.appended, store.skipped, client.stats.stored) == (4, 3, 4)


def test_a_resend_of_what_a_stop_kept_behind_a_gap_is_a_replay_not_a_reset(tmp_path, script, make_client, collector):
    path = str(tmp_path / "feed.db")
    codec = JsonCodec.conventions()
    first = script([msgs([1, 2, 4, 5], "m")])  # 3 missing: 4, 5 held, then kept by the store at stop
    client = make_client(first.url, backoff=FAST, codec=codec, store=SQLiteStore(path), gap_timeout=30)
    client.start()
    wait_until(lambda: client.stats.held == 2, what="4 and 5 held behind the gap")
    assert client.stop(timeout=10)
    # The next run holds 4, 5 again; the server resends from its position: 3 fills the gap, 4, 5 again.
    second = script([msgs([3, 4, 5, 6], "m")])
    client = make_client(second.url, backoff=FAST, codec=codec, store=SQLiteStore(path), gap_timeout=30)
    got, resets = watch(client, collector)
    client.start()
    assert seqs(got, 4) == [(3, "m3"), (4, "m4"), (5, "m5"), (6, "m6")]
    assert client.stop(timeout=10)
    assert (resets.items, client.stats.duplicates, client.stats.resets) == ([], 2, 0)


def test_an_epoch_longer_than_max_epoch_is_a_protocol_error() -> None:
    """A stream keeps its last epochs: one of 100 KB from a hostile server would pin them."""
    from wsbridge.codecs.json import MAX_EPOCH

    codec = wsbridge.JsonCodec(seq_field="seq", epoch_field="epoch")
    assert codec.decode(json.dumps({"type": "t", "seq": 1, "epoch": "e" * MAX_EPOCH}).encode(), False)[0].epoch
    with pytest.raises(wsbridge.ProtocolError, match="at most 256 characters"):
        codec.decode(json.dumps({"type": "t", "seq": 1, "epoch": "e" * (MAX_EPOCH + 1)}).encode(), False)
