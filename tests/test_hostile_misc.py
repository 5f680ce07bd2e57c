"""Issue 20, the store, the codecs, Redis and the command line: what a hostile
folder, a hostile server and a careless caller broke. Servers are built for each
test on raw sockets (`wsbridge.testing.raw`) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os

import pytest

import wsbridge
from wsbridge import Message, SQLiteStore, StoreError
from wsbridge.testing.raw import RawServer, frame

from conftest import Collector


def msg(seq, stream=None, mtype="t", payload=None):
    return Message(mtype, payload if payload is not None else {"n": seq}, seq, None, stream, 1000.0 + seq)


# -- 5: the store's side files follow no symbolic link ---------------------------------------
VICTIM = b"the first bytes of someone else's file, which the store must never write"


@pytest.mark.parametrize("side,reader", [("-handled", None), ("-lock", None), ("-handled-", "type:t")])
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_symbolic_link_planted_at_a_side_file_is_refused_and_its_target_untouched(tmp_path, side, reader, dangling):
    """Issue 20, 5: a link planted at ``feed.db-handled`` in a shared folder had its target's
    first 16 bytes overwritten (and a dangling one at ``-lock`` made the store create its target)."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:  # a store that exists, with its side files
        store.append([msg(1), msg(2)], {None: 2})
        store.mark_handled(2)
    name = path + side + (hashlib.sha256(reader.encode()).hexdigest()[:16] if reader else "")
    if os.path.exists(name):
        os.remove(name)
    victim = tmp_path / "elsewhere" / "victim"
    victim.parent.mkdir()
    if not dangling:
        victim.write_bytes(VICTIM)
    os.symlink(victim, name)
    with pytest.raises(StoreError, match="symbolic link"):
        SQLiteStore(path, reader=reader).open()
    if dangling:
        assert not victim.exists(), "the store created the link's target"
    else:
        assert victim.read_bytes() == VICTIM
    os.remove(name)  # once the link is gone, the store opens, its marks intact
    with SQLiteStore(path, reader=reader) as store:
        assert [k for k, _ in store.unhandled()] == []


def test_a_fifo_at_a_side_file_is_refused_without_waiting(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        store.append([msg(1)], {None: 1})
    os.remove(path + "-handled")
    os.mkfifo(path + "-handled")  # a new reader reads the main mark: opening a FIFO would wait for a writer
    with pytest.raises(StoreError, match="not a plain file"):
        SQLiteStore(path, reader="r").open()


@pytest.mark.parametrize("side", ["-wal", "-shm"])
def test_sqlite_follows_no_link_at_its_own_side_files_either(tmp_path, side):
    """Not wsbridge's code, but the same promise: SQLite opens its journal files without following links."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path) as store:
        store.append([msg(1)], {None: 1})
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    os.symlink(victim, path + side)
    try:
        with SQLiteStore(path) as store:
            store.append([msg(2)], {None: 2})
    except StoreError:
        pass  # refused: as good as unharmed
    assert victim.read_bytes() == VICTIM


# -- 7: a pipe message weighs its own bytes ------------------------------------------------------
def test_each_message_of_a_pipe_frame_weighs_its_own_bytes(make_client):
    """Issue 20, 7: one 38,890-byte frame of 5,000 messages counted 5,000 x 38,890 bytes against
    the pull buffer (4,569 of 5,000 dropped with the default bounds) and the dispatch queue."""
    parts = [b"px|%d|%d" % (len(str(i)), i) for i in range(5000)]
    data = b"".join(parts)
    with RawServer() as server:
        # 1 MiB: the frame is 4% of it, the old weighing 185 times it (the reader waited for room)
        client = make_client(server.url, codec=wsbridge.PipeCodec(), dispatch_queue_bytes=1024 * 1024)
        seen = Collector()
        client.on_any(seen)
        client.start()
        server.wait_connection().sendall(frame(data))
        seen.wait(5000, timeout=30)
        got = [client.recv(timeout=5) for _ in range(5000)]
        stats = client.stats
    assert [m.payload for m in got] == [str(i) for i in range(5000)]
    assert [m.raw for m in got] == parts  # each message's own bytes, which sum to the frame
    assert (stats.pull_dropped, stats.backpressure_waits) == (0, 0)
