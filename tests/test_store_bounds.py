"""Issue 23, 5: a store keeps its bound (all its files), says who holds it, and is four files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import wsbridge
from wsbridge import SQLiteStore, StoreFull, StoreInUse

from conftest import Feed, Lines, wait_until

HERE = Path(__file__).parent
BOUND = 256 * 1024
PAD = "x" * 1000  # a message of about 1 KiB


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def files_of(path: str) -> set:
    base = os.path.basename(path)
    return {name for name in os.listdir(os.path.dirname(path)) if name.startswith(base)}


# -- 1: max_size bounds the files on disk ----------------------------------------------------------
def test_offline_sends_stop_at_the_bound_with_store_full_and_the_accepted_ones_all_arrive(tmp_path, make_client,
                                                                                             down_server):
    """The issue: SQLiteStore(max_size=256 KiB) held 10.8 MB (file, WAL and SHM) after 5,000 offline
    sends of 1 KiB, none refused (the send buffer's connection had no page limit at all)."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path, max_size=BOUND)
    client = make_client(down_server.url, store=store)
    client.start()
    accepted, refused, largest = [], [], 0
    for i in range(5000):
        try:
            client.send({"type": "m", "i": i, "pad": PAD})
        except StoreFull:
            refused.append(i)  # the caller still has it
        else:
            accepted.append(i)
        largest = max(largest, store.size_on_disk())
    assert accepted and refused and len(accepted) + len(refused) == 5000
    assert largest <= BOUND, f"{largest} bytes on disk, bound {BOUND}"
    assert client.stats.store_errors == 0  # refused to the caller, not reported
    down_server.start()
    down_server.wait_until(lambda s: len(s.received) >= len(accepted), timeout=30)
    client.wait_connected(timeout=10)
    for i in refused:  # the buffer is flushed: they go straight out
        client.send({"type": "m", "i": i, "pad": PAD})
    down_server.wait_until(lambda s: len(s.received) >= 5000, timeout=30)
    got = [m.payload["i"] for m in down_server.received_messages()]
    assert got == accepted + refused, "lost, repeated or reordered"
    assert store.size_on_disk() <= BOUND


def test_received_messages_evict_the_oldest_handled_and_keep_within_the_bound(tmp_path, make_client, collector):
    """A `websockets` server (not ours) sends 3,000 messages of 1 KiB into a 256 KiB store:
    the oldest handled messages make room, none is refused, and the files stay within it."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path, max_size=BOUND)
    largest = [0]
    got = collector()

    def handle(message):
        largest[0] = max(largest[0], store.size_on_disk())  # the batch is stored before this runs
        got(message)

    with Feed() as feed:
        client = make_client(feed.url, store=store)
        client.on("m", handle)
        client.start().wait_connected(timeout=10)
        for start in range(0, 3000, 50):  # batches of at most 50 KiB: each fits once the handled ones go
            feed.send(*(json.dumps({"type": "m", "n": n, "pad": PAD}) for n in range(start, start + 50)))
            got.wait(start + 50, timeout=30)
        assert [m.payload["n"] for m in got.items] == list(range(3000))
        assert client.stop(10)
    assert largest[0] <= BOUND and store.size_on_disk() <= BOUND, (largest[0], store.size_on_disk())
    assert client.stats.store_errors == 0 and store.evicted > 2000
    kept = [m.payload["n"] for m in store.history()]
    assert kept and kept == list(range(3000 - len(kept), 3000)), "history is the newest messages, whole"


def test_messages_a_reader_has_not_handled_are_never_evicted_the_batch_is_refused_and_reported(
        tmp_path, make_client, collector):
    """A reader's mark that lags (a client of some types only, not running now) keeps what it has
    not handled: past the bound the batch is refused, reported on ``error``, and delivery goes on."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path, reader="trades"):
        pass  # its mark is at 0: nothing may be evicted
    store = SQLiteStore(path, max_size=BOUND)
    got, errors = collector(), collector()
    with Feed() as feed:
        client = make_client(feed.url, store=store)
        client.on("m", got)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        for start in range(0, 1000, 50):
            feed.send(*(json.dumps({"type": "m", "n": n, "pad": PAD}) for n in range(start, start + 50)))
            got.wait(start + 50, timeout=30)
        assert [m.payload["n"] for m in got.items] == list(range(1000))
        report = errors.wait(1)[0]
        assert report["context"] == "store" and isinstance(report["error"], StoreFull), report
        assert "max_size 262144" in str(report["error"])
        assert "nothing handled is left to evict" in str(report["error"]), report  # not "batch too large"
        assert "reader 'trades'" in str(report["error"]), report  # who keeps the space
        assert client.stop(10)
    assert store.evicted == 0 and store.size_on_disk() <= BOUND
    kept = [m.payload["n"] for m in store.history()]
    assert kept[:50] == list(range(50)) and kept == sorted(set(kept)) and len(kept) < 1000  # the first, in order


def test_while_a_reader_holds_the_wal_writes_past_the_bound_are_refused_then_go_on(tmp_path):
    """A reader's snapshot keeps the WAL from being truncated: past the bound, writes are
    refused (not grown into), and once it lets go the next write truncates it."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path, max_size=BOUND) as store:
        store.append([wsbridge.Message("m", {"n": 0}, None)], {})
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        reader.execute("SELECT COUNT(*) FROM messages").fetchone()  # holds its snapshot, so the WAL
        key = 1
        with pytest.raises(StoreFull, match="held by a reader"):
            for n in range(1, 200):
                key = store.append([wsbridge.Message("m", {"n": n, "pad": PAD}, None)], {})
                store.mark_handled(key)
        refused_at = store.size_on_disk()
        reader.execute("COMMIT")
        reader.close()
        store.append([wsbridge.Message("m", {"n": "after"}, None)], {})
        assert refused_at > BOUND >= store.size_on_disk(), (refused_at, store.size_on_disk())  # refused once past it


def test_a_burst_larger_than_the_store_is_stored_in_parts_each_before_its_subscribers_see_it(tmp_path, make_client,
                                                                                               collector):
    """A hostile review: 4,000 frames of 1 KiB in bursts of 400 into a 256 KiB store with a fast
    subscriber were all delivered but 80 stored: a batch larger than what fits was refused whole,
    although nearly everything in the store was handled. A `websockets` server sends 10 bursts;
    the subscriber holds the last message of each until the next burst is queued, so each burst
    (400 KiB, more than the whole store) is one batch: it is stored in parts, the handled part of
    it evicted for the next, and every message is stored before its subscribers see it."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path, max_size=BOUND)
    got, errors = collector(), collector()
    queued = [threading.Event() for _ in range(10)]  # burst k is all received: let burst k - 1 end
    unstored = []

    def handle(message):
        n = message.payload["n"]
        if n % 100 == 99:  # the store already has it (one history read every 100 messages)
            kept = store.history()
            if not kept or kept[-1].payload["n"] < n:
                unstored.append(n)
        if n % 400 == 399 and n < 3999:
            queued[n // 400 + 1].wait(30)
        got(message)

    with Feed() as feed:
        client = make_client(feed.url, store=store)
        client.on("m", handle)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        for k in range(10):
            feed.send(*(json.dumps({"type": "m", "n": n, "pad": PAD}) for n in range(400 * k, 400 * k + 400)))
            wait_until(lambda end=400 * k + 400: client.stats.frames >= end, timeout=30, what=f"burst {k} received")
            queued[k].set()
        assert [m.payload["n"] for m in got.wait(4000, timeout=60)] == list(range(4000))
        assert client.stop(10)
    stats = client.stats
    assert (stats.stored, stats.store_errors, errors.items) == (4000, 0, []), (stats.stored, stats.store_errors)
    assert unstored == [], "delivered before it was stored"
    assert store.evicted > 3000 and store.size_on_disk() <= BOUND
    kept = [m.payload["n"] for m in store.history()]
    assert kept and kept == list(range(4000 - len(kept), 4000)), "history is the newest messages, whole"


def test_what_does_not_fit_is_the_newest_of_the_batch_and_the_refusal_says_why(tmp_path):
    """With nothing handled, a batch is stored as far as it fits (its oldest messages, in
    order) and the rest refused: `StoreFull` says how many were stored and why the rest were
    not; once the stored ones are handled, the rest fits. A message larger than the whole
    store is refused as such."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path, max_size=BOUND) as store:
        batch = [wsbridge.Message("m", {"n": n, "pad": PAD}, None) for n in range(400)]
        with pytest.raises(StoreFull, match="nothing handled is left to evict") as info:
            store.append(batch, {})
        first, stored = info.value.first, info.value.stored
        assert first == 1 and 50 < stored < 400, (first, stored)
        assert [m.payload["n"] for m in store.history()] == list(range(stored)), "the oldest, in order"
        rest = batch[stored:]
        for _ in range(20):  # as the client does: the stored ones are handled, then the rest is offered again
            store.mark_handled(first + stored - 1)
            try:
                assert store.append(rest, {}) == first + stored  # the handled ones made room
                break
            except StoreFull as error:
                assert error.first == first + stored and error.stored > 50, (error.first, error.stored)
                stored += error.stored
                rest = rest[error.stored:]
        assert store.evicted > 0 and store.size_on_disk() <= BOUND
        assert [m.payload["n"] for m in store.history()][-1] == 399
        store.mark_handled(first + 399)
        huge = wsbridge.Message("m", {"pad": "y" * BOUND}, None)
        with pytest.raises(StoreFull, match="larger than the store can hold") as info:
            store.append([huge], {})
        assert info.value.stored == 0
        store.append([wsbridge.Message("m", {"n": "after"}, None)], {})
    assert store.size_on_disk() <= BOUND


def test_each_part_of_a_batch_writes_the_positions_it_reaches(tmp_path):
    """A batch stored in part (or cut by a crash between its parts) leaves the received
    positions at what is stored, not a whole batch behind: a resume then repeats nothing
    that was stored and handled. A stream with a message of another epoch in the part (a
    reset inside the batch) gets no position from it; the batch's last part says."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path, max_size=BOUND) as store:
        batch = [wsbridge.Message("m", {"pad": PAD}, n) for n in range(1, 401)]
        with pytest.raises(StoreFull) as info:
            store.append(batch, {None: 400})
        stored = info.value.stored
        assert 50 < stored < 400 and store.positions() == {None: stored}
        first = info.value.first
        for _ in range(20):  # the rest, offered again once the stored ones are handled (as the client does)
            store.mark_handled(first + stored - 1)
            try:
                store.append(batch[stored:], {None: 400})
                break
            except StoreFull as error:
                stored += error.stored
                assert store.positions() == {None: stored}
        assert store.positions() == {None: 400}
    other = str(tmp_path / "epochs.db")
    with SQLiteStore(other, max_size=BOUND) as store:
        old = [wsbridge.Message("m", {"pad": PAD}, n, epoch="A") for n in range(1, 301)]
        new = [wsbridge.Message("m", {"pad": PAD}, n, epoch="B") for n in range(1, 101)]
        with pytest.raises(StoreFull) as info:
            store.append(old + new, {None: 100}, epochs={None: "B"})
        assert info.value.stored < 300 and store.positions() == {}  # A's seqs are not B's position


def test_a_store_full_of_queued_sends_says_so_when_it_refuses_received_messages(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path, max_size=BOUND) as store:
        with pytest.raises(StoreFull):
            for _ in range(1000):
                store.outbox_add("y" * 1000, False)
        with pytest.raises(StoreFull, match=r"full of \d+ queued send\(s\), which are never evicted") as info:
            store.append([wsbridge.Message("m", {"pad": PAD * 20}, None)], {})  # 20 KB: the store could hold it
        assert info.value.stored == 0
    assert store.size_on_disk() <= BOUND


class Sampler:
    """A thread that reads the sizes of a store's files every millisecond and keeps the
    largest total it saw (with the files' sizes then); bounded in count and time."""

    def __init__(self, path: str) -> None:
        self.names = [path + suffix for suffix in ("", "-wal", "-shm", "-lock")]
        self.peak, self.files, self.samples = 0, {}, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sampler", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while self.samples < 200_000 and time.monotonic() < deadline and not self._stop.wait(0.001):
            files = {}
            for name in self.names:
                try:
                    files[os.path.basename(name)] = os.stat(name).st_size
                except OSError:
                    pass
            self.samples += 1
            if sum(files.values()) > self.peak:
                self.peak, self.files = sum(files.values()), files

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def test_the_files_stay_within_the_bound_at_every_moment_while_batches_evict(tmp_path, make_client, collector):
    """A hostile review: batches of about 20 KiB into a 256 KiB store peaked at 291,448 bytes
    (a WAL of 98,912): the eviction's deletes and the batch committed in one transaction took
    the WAL past its share, though no single write was larger than it. A sampler reads the
    files' sizes every millisecond while a `websockets` server sends 4,000 messages of 1 KiB
    in batches of 20 (then of 200): the total never passes the bound."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path, max_size=BOUND)
    got, errors = collector(), collector()
    with Feed() as feed, Sampler(path) as sampler:
        client = make_client(feed.url, store=store)
        client.on("m", got)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        sent = 0
        for size in (20,) * 150 + (200,) * 5:
            feed.send(*(json.dumps({"type": "m", "n": n, "pad": PAD}) for n in range(sent, sent + size)))
            sent += size
            got.wait(sent, timeout=30)
        assert client.stop(10)
    assert sampler.samples > 10
    assert sampler.peak <= BOUND, f"{sampler.peak} bytes on disk at one moment ({sampler.files}), bound {BOUND}"
    assert (client.stats.stored, client.stats.store_errors, errors.items) == (sent, 0, [])
    assert store.evicted > 0


def test_max_size_is_checked_at_construction():
    for bad in (0, 1000, 64 * 1024 - 1, 1.5e6, "256k", True):
        with pytest.raises(ValueError, match="max_size"):
            SQLiteStore("feed.db", max_size=bad)


# -- 2: StoreInUse names the holder ---------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, wsbridge
    client = wsbridge.Client(sys.argv[1], name="holder-A", store=wsbridge.SQLiteStore(sys.argv[2]))
    client.start()
    print("OPEN", flush=True)
    sys.stdin.readline()
""")


def test_store_in_use_names_a_holder_in_another_process_and_a_killed_one_blocks_nothing(tmp_path, server, make_client):
    path = str(tmp_path / "feed.db")
    before = time.time()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, server.url, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert Lines(proc.stdout).next(timeout=30) == "OPEN"
        with pytest.raises(StoreInUse) as info:
            SQLiteStore(path).open()
        error = info.value
        assert (error.pid, error.client, error.host) == (proc.pid, "holder-A", socket.gethostname())
        assert error.since is not None and before - 1 <= error.since <= time.time()
        assert f"pid {proc.pid}" in str(error) and "'holder-A'" in str(error), str(error)
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9: no close(), no cleanup
        proc.wait(10)
    client = make_client(server.url, store=SQLiteStore(path), name="next")
    client.start()  # the kernel released the lock with the process
    with pytest.raises(StoreInUse) as info:
        SQLiteStore(path).open()
    assert (info.value.pid, info.value.client) == (os.getpid(), "next")


def test_store_in_use_names_another_client_of_the_same_process(tmp_path, server, make_client):
    path = str(tmp_path / "feed.db")
    make_client(server.url, store=SQLiteStore(path), name="first").start()
    second = make_client(server.url, store=SQLiteStore(path), name="second")
    with pytest.raises(StoreInUse, match="client 'first'") as info:
        second.start()
    assert (info.value.pid, info.value.client) == (os.getpid(), "first")


# -- 3: four files, the marks in the database, the old layout migrated ------------------------------
def test_a_store_is_four_files_whatever_its_readers(tmp_path, make_client, collector):
    path = str(tmp_path / "feed.db")
    got = collector()
    with Feed() as feed:
        for n, reader in enumerate((None, "a", "b"), 1):
            client = make_client(feed.url, store=SQLiteStore(path, reader=reader), name=f"r-{reader}")
            client.on("tick", got)
            client.start().wait_connected(timeout=10)
            feed.send(json.dumps({"type": "tick", "n": n}))
            got.wait(n)
            assert files_of(path) == {"feed.db", "feed.db-wal", "feed.db-shm", "feed.db-lock"}
            assert client.stop(10)
    assert files_of(path) == {"feed.db", "feed.db-lock"}  # SQLite removes its journal files at the last close
    marks = dict(sqlite3.connect(path).execute("SELECT name, value FROM meta WHERE name LIKE 'handled%'").fetchall())
    assert set(marks) == {"handled", "handled:a", "handled:b"}


OLD_MARK = struct.Struct("<8sq")


def test_a_store_of_the_earlier_layout_is_migrated_once_its_marks_kept(tmp_path):
    """The earlier layout: a side file per mark, holding (token, key), ahead of the database's rows
    (a killed process saved them there only with each batch). Opening migrates them and removes them."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        store.append([wsbridge.Message("t", {"n": n}, n) for n in range(1, 7)], {None: 6})
    with SQLiteStore(path, reader="trades"):
        pass
    db = sqlite3.connect(path, isolation_level=None)
    token = db.execute("SELECT value FROM meta WHERE name = 'token'").fetchone()[0]
    db.execute("UPDATE meta SET value = 1 WHERE name LIKE 'handled%'")
    db.execute("DELETE FROM meta WHERE name = 'holder'")
    db.close()
    os.truncate(path + "-lock", 0)  # the earlier lock file held nothing
    Path(path + "-handled").write_bytes(OLD_MARK.pack(token, 5))
    Path(path + "-handled-" + hashlib.sha256(b"trades").hexdigest()[:16]).write_bytes(OLD_MARK.pack(token, 3))
    Path(path + "-handled-" + hashlib.sha256(b"gone").hexdigest()[:16]).write_bytes(OLD_MARK.pack(b"another!", 9))
    with SQLiteStore(path) as store:
        assert [k for k, _ in store.unhandled()] == [6]
        assert files_of(path) == {"feed.db", "feed.db-wal", "feed.db-shm", "feed.db-lock"}
    with SQLiteStore(path, reader="trades") as store:
        assert [k for k, _ in store.unhandled()] == [4, 5, 6]
    with SQLiteStore(path, reader="new") as store:  # starts at the main mark
        assert [k for k, _ in store.unhandled()] == [6]
    assert files_of(path) == {"feed.db", "feed.db-lock"}


def test_the_handled_mark_of_a_killed_writer_is_kept_to_the_message(tmp_path):
    """The live mark is in the lock file's slot: a killed writer's is folded in by the next one."""
    path = str(tmp_path / "feed.db")
    script = textwrap.dedent("""
        import os, sys, wsbridge
        store = wsbridge.SQLiteStore(sys.argv[1], reader="r")
        store.open()
        store.append([wsbridge.Message("t", None, n) for n in range(1, 11)], {None: 10})
        for key in range(1, 8):
            store.mark_handled(key)
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script, path], env=child_env(), timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with SQLiteStore(path, reader="r") as store:
        assert [k for k, _ in store.unhandled()] == [8, 9, 10]
    with SQLiteStore(path) as store:  # the main mark was not moved by the reader's
        assert [k for k, _ in store.unhandled()] == list(range(1, 11))


# -- 4: a reader in another process while a bounded store is written ----------------------------
READER = textwrap.dedent("""
    import sys, wsbridge
    store = wsbridge.SQLiteStore(sys.argv[1])
    print("READING", flush=True)
    reads = 0
    while sys.stdin.readline().strip() != "stop" and reads < 10000:
        ns = [m.payload["n"] for m in store.history(type="m")]
        assert ns == list(range(ns[0], ns[0] + len(ns))) if ns else True, "a torn or reordered read"
        reads += 1
        print(len(ns), flush=True)
""")


def test_a_reader_in_another_process_sees_whole_batches_while_a_bounded_store_is_written(tmp_path, make_client,
                                                                                          collector):
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path, max_size=BOUND)
    got, errors = collector(), collector()
    with Feed() as feed:
        client = make_client(feed.url, store=store)
        client.on("m", got)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        feed.send(json.dumps({"type": "m", "n": 0, "pad": PAD}))
        got.wait(1)
        proc = subprocess.Popen([sys.executable, "-c", READER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=child_env())
        lines = Lines(proc.stdout)
        try:
            assert lines.next(timeout=30) == "READING"
            sent = 1
            for _ in range(40):  # a read while a batch of 50 is written
                proc.stdin.write("read\n")
                proc.stdin.flush()
                feed.send(*(json.dumps({"type": "m", "n": n, "pad": PAD}) for n in range(sent, sent + 50)))
                sent += 50
                assert int(lines.next(timeout=30)) > 0
                got.wait(sent, timeout=30)
            proc.stdin.write("stop\n")
            proc.stdin.flush()
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert [m.payload["n"] for m in got.wait(sent, timeout=60)] == list(range(sent))  # delivery went on
        feed.send(json.dumps({"type": "m", "n": sent, "pad": PAD}))  # a batch after the reader is gone
        got.wait(sent + 1)
        assert client.stop(10)
    assert store.size_on_disk() <= BOUND
    assert errors.items == [] and store.evicted > 0
