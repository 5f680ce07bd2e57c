"""Issue 20, the store, the codecs, Redis and the command line: what a hostile
folder, a hostile server and a careless caller broke. Servers are built for each
test on raw sockets (`wsbridge.testing.raw`) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from typing import Iterator

import pytest

import wsbridge
from wsbridge import Message, SQLiteStore, StoreError
from wsbridge.testing.raw import TEXT, RawServer, frame, read_frame

from conftest import Collector, unread, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "wsbridge"]


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
    os.mkfifo(path + "-handled")  # a mark file of the earlier layout is read as the store opens: a FIFO would wait
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
        # 4 MiB: the 5,000 messages weigh 1.3 MB with their records' overhead (`message.OVERHEAD`),
        # the old weighing 46 times the bound (the reader waited for room)
        # No subscriber: the pull buffer keeps every message from the start (not only a window).
        client = make_client(server.url, codec=wsbridge.PipeCodec(), dispatch_queue=10_000,
                             dispatch_queue_bytes=4 * 1024 * 1024)
        client.start()
        server.wait_connection().sendall(frame(data))
        wait_until(lambda: client.stats.pull_buffered + client.stats.pull_dropped == 5000, 30, "every message buffered")
        got = [client.recv(timeout=5) for _ in range(5000)]
        stats = client.stats
    assert [m.payload for m in got] == [str(i) for i in range(5000)]
    assert [m.raw for m in got] == parts  # each message's own bytes, which sum to the frame
    assert (stats.pull_dropped, stats.backpressure_waits) == (0, 0)


# -- 8: RedisStreamStore keeps a late gap fill with one counter across streams -------------------
@pytest.fixture
def rs() -> Iterator["wsbridge.testing.redis.RedisServer"]:
    pytest.importorskip("redis")
    from wsbridge.testing.redis import RedisServer

    with RedisServer(appendonly=False) as server:
        yield server


def test_a_late_gap_fill_with_one_counter_across_streams_reaches_the_redis_stream(rs, make_client, tmp_path):
    """Issue 20, 8: with seq_scope="global" subscribers got 1, 2, 4, 5, 3; the Redis stream (what
    every StreamConsumer reads) kept 1, 2, 4, 5; SQLiteStore kept all five."""
    import redis

    order = [(1, "a"), (2, "b"), (4, "a"), (5, "b"), (3, "a")]
    stores = {"redis": wsbridge.RedisStreamStore(rs.url, feed="g"), "sqlite": SQLiteStore(str(tmp_path / "g.db"))}
    delivered = {}
    for name, store in stores.items():
        with RawServer() as server:
            client = make_client(server.url, store=store, seq_scope="global", gap_timeout=60, pull_buffer=0,
                                 **wsbridge.conventions())
            seen = Collector()
            client.on_any(seen)
            client.start()
            conn = server.wait_connection()
            for seq, stream in order[:4]:
                conn.sendall(frame(json.dumps({"type": "t", "seq": seq, "stream": stream}).encode()))
            seen.wait(4)
            if name == "redis":  # the gap is open: a restart must resume after 2 (the last contiguous id), not 5
                wait_until(lambda: stores["redis"].positions() == {None: 2}, 10, "position 2 stored")
            conn.sendall(frame(json.dumps({"type": "t", "seq": 3, "stream": "a"}).encode()))
            seen.wait(5)
            assert client.stop(10)
        delivered[name] = [m.seq for m in seen.items]
    r = redis.Redis.from_url(rs.url)
    try:
        entries = r.xrange("wsbridge:g:messages")
    finally:
        r.close()
    kept = [(int(fields[b"seq"]), fields[b"stream"].decode()) for _id, fields in entries]
    assert delivered == {"redis": [1, 2, 4, 5, 3], "sqlite": [1, 2, 4, 5, 3]}
    assert kept == order  # as subscribers saw them, as SQLite keeps them
    assert [(m.seq, m.stream) for m in stores["sqlite"].history()] == order
    with wsbridge.RedisStreamStore(rs.url, feed="g") as again:
        assert again.positions() == {None: 5}
        again.append([msg(4, "a"), msg(5, "b"), msg(6, "a")], {None: 6})  # a resume that resends: no twice
        assert (again.appended, again.skipped) == (1, 2)


# -- 14: `wsbridge send` when the connection ends while it reads stdin -----------------------------
def test_send_says_what_was_not_sent_when_the_connection_ends_while_it_reads_stdin():
    """Issue 20, 14: a ClientClosed traceback ("wsbridge-cli is gave_up") instead of a sentence and exit 1."""
    with RawServer() as server:
        proc = subprocess.Popen([*CLI, "send", server.url], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            proc.stdin.write('{"type": "m", "n": 1}\n')
            proc.stdin.flush()
            conn = server.wait_connection(30)
            assert read_frame(conn, 30) == (TEXT, b'{"type": "m", "n": 1}')
            conn.close()  # the server goes away while the command waits for more lines
            for n in range(2, 600):  # until the command sees that it cannot send (bounded: 600 x 0.05 s)
                try:
                    proc.stdin.write(f'{{"type": "m", "n": {n}}}\n')
                    proc.stdin.flush()
                except BrokenPipeError:
                    break
                try:
                    proc.wait(0.05)
                    break
                except subprocess.TimeoutExpired:
                    pass
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "Traceback" not in err, err
    assert proc.returncode == 1, err
    assert "message(s) were not sent (the connection ended first; the rest of stdin was not read)" in err, err


# -- 15: `wsbridge listen` prints what it cannot encode escaped, and counts what it cannot print ---
LONE = ['{"type": "t", "n": 1}', '{"type": "t", "s": "\\ud800 x"}', '{"type": "t", "n": 3}']  # valid JSON, all three


def listen_to(frames, *args, stdout=subprocess.PIPE):
    """``wsbridge listen`` against a raw server that sends ``frames`` once the command connected."""
    with RawServer() as server:
        proc = subprocess.Popen([*CLI, "listen", server.url, "--max", str(len(frames)), "--timeout", "30", *args],
                                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, text=True)
        try:
            conn = server.wait_connection(30)
            for text in frames:
                conn.sendall(frame(text.encode()))
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return proc.returncode, out, err


@pytest.mark.parametrize("mode", [["--json-lines"], []], ids=["json-lines", "lines"])
def test_listen_prints_a_lone_surrogate_escaped(mode, tmp_path):
    """Issue 20, 15: ``"\\ud800"`` was a subscriber error, marked handled in the store, and the
    summary said "received 3" before the exit message said "2 of 3 arrived"."""
    code, out, err = listen_to(LONE, *mode, "--store", str(tmp_path / "feed.db"))
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and "\\ud800 x" in lines[1], out
    if mode:
        assert [json.loads(line)["payload"] for line in lines][1] == {"type": "t", "s": "\ud800 x"}
    assert "received 3," in err and "subscriber error" not in err, err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a file every write to fails)")
def test_listen_counts_what_it_cannot_print_and_leaves_it_unhandled_in_the_store(tmp_path, free_port):
    db = str(tmp_path / "feed.db")
    with open("/dev/full", "w") as full:  # stdout on a full disk: nothing can be printed
        code, _out, err = listen_to(LONE, "--json-lines", "--store", db, stdout=full)
    assert code == 1, err
    assert "not printed 1" in err and "stopped: message 1 could not be printed (OSError:" in err, err
    assert "the next run with --store prints it" in err
    again = subprocess.run([*CLI, "listen", f"ws://127.0.0.1:{free_port}/", "--store", db, "--max", "3",
                            "--json-lines", "--timeout", "30"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["payload"] for line in again.stdout.splitlines()] == [json.loads(t) for t in LONE]


# -- 17: how much a lost connection takes with it ----------------------------------------------------
def test_the_guide_states_the_loss_window_with_the_flush_batch_the_code_uses():
    """Issue 20, 17: within the contract, but the README did not say how large the window is (now the
    guide's queues page does)."""
    from wsbridge.runtime.sender import FLUSH_BATCH, FLUSH_BATCH_BYTES

    readme = open(os.path.join(ROOT, "docs", "guide", "queues.md"), encoding="utf-8").read()
    heading = "## What a lost connection takes with it\n\n"
    start = readme.index(heading) + len(heading)
    end = readme.find("\n\n", start)
    paragraph = " ".join(readme[start:end if end >= 0 else None].split())
    assert f"batches of up to {FLUSH_BATCH} frames or {FLUSH_BATCH_BYTES // 1024} KiB" in paragraph
    assert "send buffer" in paragraph and "receive buffer" in paragraph and "Acknowledged sends" in paragraph


def test_whole_flush_batches_the_socket_took_are_lost_with_the_connection(make_client, collector):
    """What the guide says (docs/guide/queues.md), shown: frames the socket took count as sent and are not sent again
    after a reconnect, though the server never read them."""
    from wsbridge.runtime.sender import FLUSH_BATCH

    count = 2 * FLUSH_BATCH + 1
    with RawServer() as server:  # it reads the upgrade, never a frame
        client = make_client(server.url)
        for n in range(count):
            client.send({"type": "m", "n": n})  # before start(): they wait in the send buffer
        connected = collector()
        client.signals.connected.connect(connected)
        client.start()
        connected.wait(1)  # `connected` comes after the flush
        conn = server.wait_connection()
        assert (client.stats.sent, client.stats.flushed, client.unsent()) == (count, count, [])
        wait_until(lambda: unread(conn) > 0, 10, "the frames at the server")  # there, unread
        conn.close()  # the server cuts: what it had not read is gone
        connected.wait(2)  # reconnected, and flushed what the send buffer holds: nothing
        server.wait_connections(2)
        assert (client.stats.sent, client.stats.flushed, client.unsent()) == (count, count, [])
