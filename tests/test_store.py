"""SQLiteStore alone: positions, the handled mark, history, errors."""

from __future__ import annotations

import os
import select
import sqlite3
import subprocess
import sys

import pytest

from wsbridge import JsonCodec, Message, SQLiteStore, StoreError


def msg(seq, stream=None, mtype="t", payload=None, id=None):
    return Message(mtype, payload if payload is not None else {"n": seq}, seq, id, stream, 1000.0 + seq)


def test_append_positions_and_history_round_trip(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        first = store.append([msg(1), msg(2, "b", "x", "text"), msg(3, None, "y", b"\x00\xff", id=["k"])], {None: 3, "b": 2})
        assert first == 1
        assert store.append([msg(4)], {None: 4, "b": 2}) == 4
        assert store.positions() == {None: 4, "b": 2}
        got = store.history()
        assert [(m.type, m.payload, m.seq, m.stream) for m in got] == [
            ("t", {"n": 1}, 1, None), ("x", "text", 2, "b"), ("y", b"\x00\xff", 3, None), ("t", {"n": 4}, 4, None),
        ]
        assert got[2].id == '["k"]' and got[0].received_at == 1001.0
        assert [m.seq for m in store.history(type="t")] == [1, 4]
        assert [m.seq for m in store.history(stream="b")] == [2]
        assert [m.seq for m in store.history(since=1003.0)] == [3, 4]
        assert [m.seq for m in store.history(after_seq=2, limit=1)] == [3]


def crash_after(path, appended, handled):
    """A process writes the store, marks ``handled`` and dies without close(): what only
    the side file knows, and the writer's lock released by the kernel."""
    code = (
        "import os, sys; from wsbridge import SQLiteStore, Message\n"
        "s = SQLiteStore(sys.argv[1]); s.open()\n"
        f"batch = [Message('t', {{'n': n}}, n, None, None, 1000.0 + n) for n in range(1, {appended + 1})]\n"
        f"s.append(batch, {{None: {appended}}})\n"
        f"s.mark_handled({handled})\n"
        "os._exit(0)"
    )
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_handled_mark_survives_a_crash_to_the_message(tmp_path):
    path = str(tmp_path / "feed.db")
    crash_after(path, 10, handled=6)  # no batch written after the mark: only the side file knows
    with SQLiteStore(path) as store:
        assert [k for k, _ in store.unhandled()] == [7, 8, 9, 10]
        assert store.positions() == {None: 10} and store.handled_positions() == {None: 6}


def test_one_client_writes_a_store_at_a_time(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as first:
        first.append([msg(1)], {None: 1})
        with pytest.raises(StoreError, match="in use by another client"):
            SQLiteStore(path, reader="other").open()
        assert [m.seq for m in first.history()] == [1]  # reading is free meanwhile
    with SQLiteStore(path) as again:  # close() let go
        assert again.positions() == {None: 1}


def test_a_missing_lock_file_falls_back_to_the_marks_in_the_database(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        store.append([msg(1), msg(2)], {None: 2})
        store.mark_handled(1)
        store.append([msg(3)], {None: 3})  # saves handled=1 in the database too
    os.remove(path + "-lock")  # its slot held the live mark
    with SQLiteStore(path) as store:
        assert [k for k, _ in store.unhandled()] == [2, 3]


def test_a_forked_child_does_not_keep_the_writer_lock(tmp_path):
    """Found in review: a worker pool forked while a client ran kept the store locked after
    the client stopped, until the workers exited."""
    path = str(tmp_path / "feed.db")
    store = SQLiteStore(path)
    store.open()
    hold_r, hold_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: says it runs (the fork hooks ran), waits for the parent (bounded), exits
        try:
            os.close(hold_w)
            os.write(ready_w, b"!")
            select.select([hold_r], [], [], 30)
        finally:
            os._exit(0)
    os.close(hold_r)
    os.close(ready_w)
    try:
        assert select.select([ready_r], [], [], 30)[0] and os.read(ready_r, 1) == b"!"
        store.close()
        with SQLiteStore(path) as again:  # the child is alive and holds its copy of the files
            assert again.positions() == {}
    finally:
        os.close(hold_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def test_a_named_reader_keeps_its_own_mark_and_starts_at_the_main_one(tmp_path):
    path = str(tmp_path / "feed.db")
    crash_after(path, 10, handled=3)  # only in the side file: a new reader must read it there
    with SQLiteStore(path, reader="type:t") as filtered:
        assert [k for k, _ in filtered.unhandled()] == [4, 5, 6, 7, 8, 9, 10]
        filtered.mark_handled(9)
    with SQLiteStore(path, reader="type:t") as filtered:  # its own mark, kept
        assert [k for k, _ in filtered.unhandled()] == [10]
    with SQLiteStore(path) as main:  # the main mark did not move
        assert [k for k, _ in main.unhandled()] == [4, 5, 6, 7, 8, 9, 10]
    assert repr(SQLiteStore(path, reader="x")) == f"SQLiteStore({path!r}, reader='x')"
    with SQLiteStore(path, reader="/../\x00 ✓") as odd:  # any text names a reader
        assert [k for k, _ in odd.unhandled()] == [4, 5, 6, 7, 8, 9, 10]
    with pytest.raises(ValueError, match="UTF-8"):
        SQLiteStore(path, reader="\ud800")


def test_a_corrupt_file_a_folder_or_a_missing_folder_is_a_clear_error_at_open(tmp_path):
    path = tmp_path / "feed.db"
    path.write_bytes(b"this is not an SQLite database at all" * 100)
    for _ in range(2):  # the failed open let go of its lock: the same error again, not "in use"
        with pytest.raises(StoreError, match="cannot open the store"):
            SQLiteStore(str(path)).open()
    with pytest.raises(StoreError, match="it is a folder, not a store"):
        SQLiteStore(str(tmp_path)).open()
    with pytest.raises(StoreError, match="there is no folder"):
        SQLiteStore(str(tmp_path / "nowhere" / "feed.db")).open()


def test_a_full_store_raises_store_error_and_keeps_what_it_had(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path, max_size=64 * 1024) as store:
        store.append([msg(1)], {None: 1})
        big = [msg(n, payload="x" * 4000) for n in range(2, 40)]
        with pytest.raises(StoreError, match="cannot write 38 message.*full"):
            store.append(big, {None: 39})
        assert [m.seq for m in store.history()] == [1] and store.positions() == {None: 1}
        assert store.append([msg(2)], {None: 2}) == 2  # the failed batch used no keys


def test_history_reads_beside_a_writer_from_another_connection(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        store.append([msg(n) for n in range(1, 101)], {None: 100})
        db = sqlite3.connect(path)
        db.execute("BEGIN IMMEDIATE")  # another writer holds the write lock; WAL readers go on
        assert len(store.history()) == 100
        db.rollback()
        db.close()


def test_history_of_a_missing_store_is_an_error(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        SQLiteStore(str(tmp_path / "nope.db")).history()


def test_the_send_buffer_is_kept_in_order_and_forgotten_once_sent(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        keys = [store.outbox_add(f"m{i}", False) for i in range(5)] + [store.outbox_add(b"\x00\x01", True)]
        store.outbox_remove(keys[1])  # dropped by the overflow policy
        store.outbox_remove_through(keys[2])  # the socket took m0 (and m2)
    with SQLiteStore(path) as store:
        assert [(d, b) for _, d, b, _ in store.outbox_items()] == [("m3", False), ("m4", False), (b"\x00\x01", True)]


def test_json_frames_are_kept_as_they_came(tmp_path):
    codec = JsonCodec.conventions()
    frame = '{"type":"t","seq":1,"text":"caf\u00e9","n":1.50}'.encode()
    [message] = codec.decode(frame, False, 5.0)
    with SQLiteStore(str(tmp_path / "feed.db")) as store:
        store.append([message], {None: 1}, raw_is_payload=codec.raw_is_payload)
        [back] = store.history()
        assert back.payload == message.payload and back.seq == 1
        raw = sqlite3.connect(store.path).execute("SELECT payload FROM messages").fetchone()[0]
        assert bytes(raw) == frame  # byte for byte, not re-encoded


def test_another_process_reads_history_while_the_store_is_written(tmp_path):
    path = str(tmp_path / "feed.db")
    reader = (
        "import sys, time\n"
        "from wsbridge import SQLiteStore\n"
        "store = SQLiteStore(sys.argv[1])\n"
        "print('READY', flush=True)\n"
        "counts = []\n"
        "deadline = time.monotonic() + 60\n"
        "while time.monotonic() < deadline:\n"
        "    counts.append(len(store.history()))\n"
        "    if counts[-1] >= 5001:\n"
        "        break\n"
        "print(' '.join(map(str, counts)), flush=True)\n"
    )
    with SQLiteStore(path) as store:
        store.append([msg(0)], {None: 0})
        proc = subprocess.Popen([sys.executable, "-c", reader, path], stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout.readline().strip() == "READY"
            for start in range(1, 5000, 100):  # batches, as a client writes them, while the other process reads
                store.append([msg(n) for n in range(start, start + 100)], {None: start + 99})
            out, _ = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait(10)
    counts = [int(c) for c in out.split()]
    assert counts == sorted(counts) and counts[-1] == 5001  # never an error, never going back
    assert all(c % 100 == 1 for c in counts)  # whole batches only: a transaction is seen whole or not at all
