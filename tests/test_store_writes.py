"""SQLiteStore keeping up with a feed: a batch is written in few statements, and the WAL is
checkpointed by the client's supervisor thread (`Store.idle`), not at the dispatcher's commits."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

from wsbridge import JsonCodec, Message, SQLiteStore
from wsbridge.testing import Server
from wsbridge.tracking import sqlite as store_module

from conftest import Feed, Lines, wait_until

HERE = Path(__file__).parent

TYPE = "tick"


def frames(first: int, count: int, pad: int = 0) -> List[str]:
    return [json.dumps({"type": TYPE, "seq": n, "pad": "x" * pad}) for n in range(first, first + count)]


def test_a_burst_is_stored_in_statements_of_many_rows_each(tmp_path, make_client):
    """The sqlite3 module lets go of the GIL around each statement's step and takes it back
    after, and ``executemany`` steps once per row: with the reader thread running, that was
    a GIL hand-off per stored message. Now one INSERT writes up to 512 rows (64 before SQLite 3.32)."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path)
    statements: List[str] = []
    release, got, done = threading.Event(), [], threading.Event()

    def subscriber(message: Message) -> None:
        if message.seq == 1:
            release.wait(10)  # the rest piles up meanwhile: it comes as one batch
        got.append(message.seq)
        if len(got) == 2000:
            done.set()

    with Feed() as feed:
        client = make_client(feed.url, store=store, codec=JsonCodec.conventions())
        client.on(TYPE, subscriber)
        client.start().wait_connected(timeout=10)
        store._db.set_trace_callback(statements.append)  # type: ignore[union-attr]  # the dispatcher's connection
        feed.send(*frames(1, 2000))
        release.set()
        assert done.wait(20), f"{len(got)} of 2000 delivered"
        client.stop(timeout=10)
    assert got == list(range(1, 2001))
    assert [m.seq for m in SQLiteStore(path).history()] == list(range(1, 2001))
    inserts = [s for s in statements if s.startswith("INSERT INTO messages")]
    commits = statements.count("COMMIT")
    # up to 64 rows a statement (512 with a recent SQLite), and one per power of two for the rest of a batch
    assert len(inserts) <= 2000 // 64 + 7 * commits, (len(inserts), commits)


def test_what_the_client_stored_reaches_the_database_file_while_it_idles(tmp_path, make_client):
    """A checkpoint (the WAL copied into the database, both synced) took milliseconds at the
    commit that passed SQLite's threshold, holding up the messages behind it; below the
    threshold, what was stored stayed in the WAL however long the feed then idled. Now the
    supervisor copies it soon after the writes (`SQLiteStore.idle`), off the dispatcher, and
    without a thread more."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path)
    got, done = [], threading.Event()

    def subscriber(message: Message) -> None:
        got.append(message.seq)
        if len(got) == 300:
            done.set()

    with Feed() as feed:
        client = make_client(feed.url, store=store, codec=JsonCodec.conventions())
        client.on(TYPE, subscriber)
        client.start().wait_connected(timeout=10)
        feed.send(*frames(1, 300, pad=2048))  # about 300 pages of 4 KiB: far below the 1,000 of SQLite's threshold
        assert done.wait(20), f"{len(got)} of 300 delivered"

        def in_the_database_file() -> bool:  # read from the file alone, as a reader that ignores the WAL would
            with open(path, "rb") as f:
                return b'"seq": 300,' in f.read()

        wait_until(in_the_database_file, timeout=10, what="the last message checkpointed into the database file")
        assert len(client.threads()) == 3  # supervisor, dispatcher, reader
        client.stop(timeout=10)
    assert [m.seq for m in SQLiteStore(path).history()] == list(range(1, 301))


def test_a_store_opened_and_closed_without_a_client_leaves_no_wal(tmp_path):
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path)
    for _ in range(2):  # a store may be opened again after close
        with store:
            store.append([Message(TYPE, {"n": 1}, 1, None, None, 1.0)], {None: 1})
            store.idle()
        assert not os.path.exists(path + "-wal")  # the last connection closed emptied it
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT key FROM messages").fetchall() == [(1,), (2,)]


def test_a_client_killed_mid_stream_while_the_checkpointer_runs_loses_nothing(tmp_path):
    """SIGKILL while batches are written and checkpointed (no subscriber blocks: the kill
    lands mid-stream): the restarted client delivers every message, repeating at most the
    one in flight."""
    store, record = str(tmp_path / "feed.db"), tmp_path / "handled.txt"
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    total = 40_000

    def child() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(HERE / "delivery_child.py"), feed.url, store, str(record), "0",
                                 str(total)], stdout=subprocess.PIPE, text=True, env=env)

    def handled() -> int:
        return record.read_bytes().count(b"\n") if record.exists() else 0

    with Server() as feed:
        feed.publish_many({"type": "tick", "n": n} for n in range(1, total + 1))
        proc = child()
        try:
            wait_until(lambda: handled() >= 3000, timeout=60, what="3,000 messages handled")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        killed_at = handled()
        proc = child()
        try:
            line = Lines(proc.stdout).next(timeout=120)
            assert proc.wait(30) == 0, line
        finally:
            proc.kill()
            proc.wait(10)
    assert line.startswith("DONE"), line
    seqs = [int(x) for x in record.read_text().split()]
    assert killed_at < total, "the kill came after the stream ended: nothing was tested"
    assert sorted(set(seqs)) == list(range(1, total + 1))  # nothing lost
    assert len(seqs) - total <= 1 and seqs == sorted(seqs), seqs[killed_at - 3:killed_at + 3]  # at most one repeated


def test_the_wal_stays_bounded_when_the_checkpointer_falls_behind(tmp_path, monkeypatch):
    """The writer's backstop: past `WRITER_CHECKPOINT_PAGES` of WAL it checkpoints at its
    commit itself (here 64 pages, and no `idle` call: a store used without a client)."""
    monkeypatch.setattr(store_module, "WRITER_CHECKPOINT_PAGES", 64)
    path = str(tmp_path / "feed.db")
    peak, pad = 0, "x" * 1024
    with SQLiteStore(path) as store:
        for batch in range(40):  # 100 rows of 1 KiB a batch: about 30 pages each, 1,200 in all
            first = batch * 100 + 1
            store.append([Message(TYPE, {"pad": pad}, n, None, None, 1.0) for n in range(first, first + 100)],
                         {None: first + 99})
            peak = max(peak, os.path.getsize(path + "-wal"))
    page = 4096 + 24  # a WAL frame: a page and its header
    assert peak <= 32 + (64 + 40) * page, peak  # the threshold, and one batch past it


def test_a_batch_where_only_some_messages_have_a_stream_or_an_id_keeps_them(tmp_path, make_client):
    """A batch without streams and ids is written with NULL in the statement; one where a
    single message has either binds them all: each row keeps its own."""
    path = str(tmp_path / "feed.db")
    release, done, got = threading.Event(), threading.Event(), []

    def subscriber(message: Message) -> None:
        if not got:
            release.wait(10)  # the rest comes as one batch
        got.append(message)
        if len(got) == 301:
            done.set()

    plain = [json.dumps({"type": TYPE, "n": n}) for n in range(300)]
    odd = [json.dumps({"type": TYPE, "seq": 1, "stream": "s", "id": "x-1"})]
    with Feed() as feed:
        client = make_client(feed.url, store=SQLiteStore(path), codec=JsonCodec.conventions())
        client.on(TYPE, subscriber)
        client.start().wait_connected(timeout=10)
        feed.send(plain[0])
        feed.send(*plain[1:150], *odd, *plain[150:])
        release.set()
        assert done.wait(20), f"{len(got)} of 301 delivered"
        client.stop(timeout=10)
    stored = SQLiteStore(path).history()
    assert [(m.stream, m.id, m.seq) for m in stored] == [(m.stream, m.id, m.seq) for m in got]
    assert [(m.stream, m.id, m.seq) for m in stored if m.stream is not None or m.id is not None] == [("s", "x-1", 1)]
    assert [m.payload.get("n") for m in stored] == [*range(150), None, *range(150, 300)]
