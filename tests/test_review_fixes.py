"""Issue 20's hostile review, the runtime, store and command-line half: messages held
behind a gap at give-up and at stop(), the store's files, sends before a start that
never comes, careless timeouts, what a tiny message weighs, a refused upgrade with a
body that never comes, and `wsbridge send` with bytes that are not UTF-8. Servers are
built for each test on raw sockets (`wsbridge.testing.raw`) on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import tracemalloc
from typing import List

import pytest

import wsbridge
from wsbridge import SQLiteStore, StoreError
from wsbridge.testing.raw import CLOSE, TEXT, RawServer, frame, read_frame

from conftest import Collector, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "wsbridge"]
CLOSE_1000 = frame(b"\x03\xe8", CLOSE)


def numbered(*seqs: int) -> bytes:
    """JSON frames ``{"type": "t", "seq": N}``, one per N."""
    return b"".join(frame(json.dumps({"type": "t", "seq": n}).encode()) for n in seqs)


def sequenced(**kwargs):
    return {"codec": wsbridge.JsonCodec(seq_field="seq"), **kwargs}


def pull_all(client: wsbridge.Client) -> List[int]:
    """What the pull API hands out until it says the client ended (bounded)."""
    seqs = []
    for _ in range(100):
        try:
            seqs.append(client.recv(timeout=10).seq)
        except wsbridge.ClientClosed:
            return seqs
    raise AssertionError(f"the pull API did not end: {seqs}")


def gap_news(client: wsbridge.Client) -> Collector:
    news = Collector()
    client.signals.gap.connect(lambda sender, **kw: news((kw["first"], kw["last"], kw["status"])))
    return news


# -- 5: what a gap holds when the stream ends ------------------------------------------------------
@pytest.mark.parametrize("stored", [False, True], ids=["no-store", "sqlite"])
def test_messages_held_behind_a_gap_reach_subscribers_the_pull_api_and_the_store_at_give_up(make_client, tmp_path, stored):
    """Issue 20 review, 5: seq 1, 2, 4, 5 then close 1000 under NO_RETRY: subscribers and recv()
    got [1, 2], then ClientClosed; no "lost" signal, lost=0; the store kept [1, 2]."""
    store = SQLiteStore(str(tmp_path / "feed.db")) if stored else None
    with RawServer() as server:
        client = make_client(server.url, **sequenced(backoff=wsbridge.NO_RETRY, store=store))
        seen = Collector()
        client.on_any(seen)
        news = gap_news(client)
        client.start()
        server.wait_connection().sendall(numbered(1, 2, 4, 5) + CLOSE_1000)
        assert pull_all(client) == [1, 2, 4, 5]
        assert client.state == "gave_up"
        assert [m.seq for m in seen.items] == [1, 2, 4, 5]
        assert news.items == [(3, 3, "open"), (3, 3, "lost")]
        stats = client.stats
        assert (stats.lost, stats.held, stats.dispatched) == (1, 0, 4)
        assert client.stop(10)
    if stored:
        assert [m.seq for m in store.history()] == [1, 2, 4, 5]


def test_stop_in_the_middle_of_a_gap_delivers_what_it_held_without_a_store(make_client):
    """Issue 20 review, 5: stop() while a gap was open: [1, 2] delivered, 4 and 5 gone, nothing said."""
    with RawServer() as server:
        client = make_client(server.url, **sequenced())
        seen = Collector()
        client.on_any(seen)
        news = gap_news(client)
        client.start()
        server.wait_connection().sendall(numbered(1, 2, 4, 5))
        wait_until(lambda: client.stats.held == 2, 10, "4 and 5 held behind the gap")
        assert client.stop(10)
        assert [m.seq for m in seen.items] == [1, 2, 4, 5]
        assert pull_all(client) == [1, 2, 4, 5]
        assert news.items == [(3, 3, "open"), (3, 3, "lost")] and client.stats.lost == 1


@pytest.mark.parametrize("answer,gap_timeout,delivered,lost", [
    ((3, 4, 5, 6), 30.0, [3, 4, 5, 6], 0),  # a server that resends from the position: once each, in order
    ((6,), 0.5, [4, 5, 6], 1),  # one that cannot: what the first run held still arrives
], ids=["server-resends", "server-cannot-resend"])
def test_stop_in_the_middle_of_a_gap_keeps_what_it_held_in_the_store_for_the_next_run(
        make_client, tmp_path, answer, gap_timeout, delivered, lost):
    """Issue 20 review, 5: with a store, the messages held at stop() were neither stored nor kept,
    so the next run had them only if the server could send them again."""
    path = str(tmp_path / "feed.db")
    with RawServer() as server:
        first = make_client(server.url, **sequenced(store=SQLiteStore(path), resume=True))
        seen = Collector()
        first.on_any(seen)
        news = gap_news(first)
        first.start()
        server.wait_connection().sendall(numbered(1, 2, 4, 5))
        wait_until(lambda: first.stats.held == 2, 10, "4 and 5 held behind the gap")
        assert first.stop(10)
    # Not lost: the next run with the store can still ask for the gap.
    assert [m.seq for m in seen.items] == [1, 2] and (3, 3, "lost") not in news.items and first.stats.lost == 0
    with RawServer() as server:
        second = make_client(server.url, **sequenced(store=SQLiteStore(path), resume=True, gap_timeout=gap_timeout))
        again = Collector()
        second.on_any(again)
        second.start()
        conn = server.wait_connection()
        opcode, request = read_frame(conn)
        assert (opcode, json.loads(request)) == (TEXT, {"type": "resume", "positions": [{"stream": None, "seq": 2}]})
        conn.sendall(numbered(*answer))
        again.wait(len(delivered))
        assert second.stop(10)
    assert [m.seq for m in again.items] == delivered
    assert second.stats.lost == lost
    assert [m.seq for m in SQLiteStore(path).history()] == [1, 2] + delivered


# -- 6: the store's files ----------------------------------------------------------------------
VICTIM = b"the first bytes of someone else's file, which the store must never write"


@pytest.mark.parametrize("side,reader", [("-handled", None), ("-lock", None), ("-handled-", "type:t")])
def test_a_hard_link_planted_at_a_side_file_is_refused_and_its_target_untouched(tmp_path, side, reader):
    """Issue 20 review, 6: a hard link at ``feed.db-handled`` had the target's first 16 bytes
    overwritten (O_NOFOLLOW and S_ISREG cannot tell a hard link from the file)."""
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path):
        pass
    name = path + side + (hashlib.sha256(reader.encode()).hexdigest()[:16] if reader else "")
    if os.path.exists(name):
        os.remove(name)
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    os.link(victim, name)
    with pytest.raises(StoreError, match="has 2 names"):
        SQLiteStore(path, reader=reader).open()
    assert victim.read_bytes() == VICTIM


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_side_file_of_another_user_is_refused(tmp_path):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path):
        pass
    os.chown(path + "-lock", 4242, -1)
    with pytest.raises(StoreError, match="belongs to another user"):
        SQLiteStore(path).open()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277])
def test_the_store_creates_its_files_private_whatever_the_umask(tmp_path, umask):
    """Issue 20 review, 6: the database, its journal and the side files were made 0644 (umask 022):
    messages and queued sends readable by every user of the machine."""
    path = str(tmp_path / "feed.db")
    before = os.umask(umask)
    try:
        with SQLiteStore(path) as store, SQLiteStore(path + "2", reader="r") as other:
            store.append([wsbridge.Message("t", {"secret": 1}, 1)], {None: 1})
            store.outbox_add('{"type": "auth"}', False)
            other.append([wsbridge.Message("t", None, 1)], {None: 1})
            modes = {name: oct(os.stat(tmp_path / name).st_mode & 0o777) for name in os.listdir(tmp_path)}
    finally:
        os.umask(before)
    names = {"feed.db", "feed.db-wal", "feed.db-shm", "feed.db-lock", "feed.db2", "feed.db2-wal", "feed.db2-shm",
             "feed.db2-lock"}
    assert names == set(modes), modes  # four files a store, whatever its readers
    assert {modes[name] for name in names} == {"0o600"}, modes


# -- 8: a send before a start that never comes ------------------------------------------------------
def test_a_send_before_a_start_that_never_comes_is_kept_in_the_store_for_the_next_client(make_client, tmp_path, caplog):
    """Issue 20 review, 8: the log said "kept in the store: the next client with it sends them",
    but nothing was stored, and the next client sent nothing."""
    path = str(tmp_path / "feed.db")
    with RawServer() as server:
        early = make_client(server.url, store=SQLiteStore(path))
        early.send({"type": "order", "n": 1})
        with caplog.at_level(logging.WARNING, logger="wsbridge"):
            assert early.stop(5)
        assert "1 message(s) not sent" in caplog.text and "kept in the store" in caplog.text
        later = make_client(server.url, store=SQLiteStore(path))
        later.start()
        assert read_frame(server.wait_connection()) == (TEXT, b'{"type":"order","n":1}')


def test_a_send_before_a_start_that_never_comes_says_when_the_store_cannot_keep_it(make_client, tmp_path, caplog):
    path = str(tmp_path / "feed.db")
    with SQLiteStore(path):  # another writer holds it
        early = make_client("ws://127.0.0.1:9/", store=SQLiteStore(path))
        early.send("x")
        with caplog.at_level(logging.WARNING, logger="wsbridge"):
            assert early.stop(5)
    assert "not kept in the store, which could not be opened" in caplog.text and "in use" in caplog.text
    assert early.unsent() == [("x", False)]


# -- 11a: timeouts a careless caller passes ------------------------------------------------------------
@pytest.mark.parametrize("timeout", [float("inf"), 1e10])
def test_a_send_with_an_endless_timeout_goes_out_on_the_same_connection(make_client, timeout):
    """Issue 20 review, 11a: Lock.acquire raised OverflowError, taken for a failed send: a
    healthy connection was cut and made again."""
    with RawServer() as server:
        client = make_client(server.url)
        client.start()
        client.wait_connected(10)
        client.send("x", timeout=timeout)
        assert read_frame(server.wait_connection()) == (TEXT, b"x")
        stats = client.stats
        assert (stats.connects, stats.disconnects, stats.sent) == (1, 0, 1)


def test_every_public_timeout_takes_inf_and_refuses_nan_and_negative_numbers(make_client):
    with RawServer() as server:
        client = make_client(server.url)
        client.start()
        assert client.wait_connected(float("inf")) is client
        conn = server.wait_connection()
        calls = {
            "send": lambda t: client.send("x", timeout=t),
            "recv": lambda t: client.recv(timeout=t),
            "wait_for": lambda t: client.wait_for("t", timeout=t),
            "messages": lambda t: next(client.messages(timeout=t)),
            "wait_connected": lambda t: client.wait_connected(t),
            "stop": lambda t: client.stop(t),
            "stop_all": lambda t: wsbridge.stop_all(t),
        }
        for call in calls.values():
            for bad in (float("nan"), -1.0):
                with pytest.raises(ValueError, match="timeout is a number of seconds >= 0"):
                    call(bad)
        for name in ("recv", "wait_for", "messages"):
            conn.sendall(frame(b'{"type": "t"}'))
            assert calls[name](float("inf")).type == "t", name
        calls["send"](float("inf"))
        assert read_frame(conn) == (TEXT, b"x")
        assert client.stop(float("inf")) and client.state == "stopped"


# -- 11b: what a message weighs against the byte bounds ----------------------------------------------
def test_the_record_overhead_covers_what_decoding_a_tiny_message_allocates():
    """Issue 20 review, 11b: one 4 MiB frame of 5-byte pipe messages took 142 MB, 36 times its
    size, while the byte bounds counted 5 bytes a message."""
    from wsbridge.message import OVERHEAD, weight

    data = b"a|1|x" * 20_000
    codec = wsbridge.PipeCodec()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        messages = codec.decode(data, False, 1.0)
        taken = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(messages) == 20_000
    assert taken / len(messages) <= weight(messages[0]) == OVERHEAD + 5


def tiny_frame(count: int) -> bytes:
    return frame(b"a|1|x" * count)


def test_a_small_dispatch_queue_bytes_holds_the_reader_back_for_a_frame_of_tiny_messages(make_client):
    bound = 64 * 1024  # 5,000 messages of 5 bytes: 25 KB as they came, 1.3 MB in memory
    with RawServer() as server:
        client = make_client(server.url, codec=wsbridge.PipeCodec(), dispatch_queue_bytes=bound, pull_buffer=0)
        release = threading.Event()
        seen = Collector()

        def slow(message: wsbridge.Message) -> None:
            release.wait(30)
            seen(message)

        client.on_any(slow)
        client.start()
        server.wait_connection().sendall(tiny_frame(5000))
        try:
            wait_until(lambda: client.stats.backpressure_waits >= 1, 10, "the reader waiting for room")
            from wsbridge.message import OVERHEAD

            assert client.stats.dispatch_bytes <= bound + OVERHEAD + 5
        finally:
            release.set()
        seen.wait(5000, timeout=60)


def test_a_small_pull_buffer_bytes_keeps_what_fits_of_a_frame_of_tiny_messages(make_client):
    bound = 64 * 1024
    with RawServer() as server:
        client = make_client(server.url, codec=wsbridge.PipeCodec(), pull_buffer_bytes=bound)  # no subscriber: all kept
        client.start()
        server.wait_connection().sendall(tiny_frame(5000))
        wait_until(lambda: client.stats.pull_buffered + client.stats.pull_dropped == 5000, 60, "every message buffered")
        stats = client.stats
        assert stats.pull_dropped > 0, "25 KB as they came, but 1.3 MB in memory: over the bound"
        from wsbridge.message import OVERHEAD

        kept = bound // (OVERHEAD + 5)
        assert (stats.pull_buffered, stats.pull_dropped) == (kept, 5000 - kept)


def test_the_default_bounds_take_5000_tiny_pipe_messages_of_one_frame_without_dropping(make_client):
    with RawServer() as server:
        client = make_client(server.url, codec=wsbridge.PipeCodec())
        client.start()
        server.wait_connection().sendall(tiny_frame(5000))
        got = [client.recv(timeout=10) for _ in range(5000)]
        stats = client.stats
    # (5,000 messages are over dispatch_queue's 4,096: the reader may wait for room, and loses nothing)
    assert len(got) == 5000 and stats.pull_dropped == 0


# -- 11c: a refused upgrade whose body never comes ---------------------------------------------------
@pytest.mark.parametrize("length", [b"999999999999999", b"1_0", b"+5", b"100"])
def test_a_refused_upgrade_is_decided_from_its_head_whatever_its_content_length(make_client, length):
    """Issue 20 review, 11c: a 401 whose Content-Length promised more than was sent became a
    TimeoutError (retried) instead of the fatal "HTTP 401"."""
    def refuse(request: bytes) -> bytes:
        return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: " + length + b"\r\n\r\nabc"

    with RawServer(refuse, keep_refused=True) as server:
        client = make_client(server.url, connect_timeout=5, backoff=wsbridge.Backoff(initial=0.05, max_attempts=1))
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="HTTP 401"):
            client.wait_connected(30)
        assert isinstance(client.last_error, wsbridge.UpgradeRefused) and client.last_error.status == 401
        assert server.accepted == 1  # fatal: not retried


# -- 7: `wsbridge send` with bytes that are not UTF-8, and a stdout that fails --------------------------
def run_send(url: str, *args: str, stdin: bytes = b"", locale: str = "C.UTF-8", stdout=subprocess.PIPE):
    env = {**os.environ, "LC_ALL": locale, "LANG": locale}
    env.pop("PYTHONUTF8", None)
    return subprocess.run([*CLI, "send", url, *args], cwd=ROOT, input=stdin, stdout=stdout, stderr=subprocess.PIPE,
                          env=env, timeout=60)


def frames_until_close(conn) -> List[bytes]:
    """The text frames a client sent before its close frame."""
    texts = []
    for _ in range(100):
        opcode, payload = read_frame(conn, 30)
        if opcode == CLOSE:
            return texts
        texts.append(payload)
    raise AssertionError("no close frame")


@pytest.mark.parametrize("locale", ["C.UTF-8", "C"])
def test_send_refuses_a_stdin_line_that_is_not_utf8_and_says_what_was_sent_before_it(locale):
    """Issue 20 review, 7: a ValueError traceback, exit 1, and the next line silently not sent."""
    with RawServer() as server:
        result = run_send(server.url, stdin=b'{"a": 1}\n\n{"b": "\xff"}\n{"c": 3}\n', locale=locale)
        sent = frames_until_close(server.wait_connection())
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert result.returncode == 1, err  # issue 26: the line is skipped, the rest still sent
    assert ("stdin line 3: not valid UTF-8 (byte 0xff at character 8); skipped" in err
            and "1 stdin line(s) were not sent" in err), err
    assert sent == [b'{"a": 1}', b'{"c": 3}']


def test_send_refuses_a_message_argument_that_is_not_utf8_before_connecting(free_port):
    result = run_send(f"ws://127.0.0.1:{free_port}/", b"a\xffb".decode("utf-8", "surrogateescape"), "--codec", "raw")
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err, err
    assert "MESSAGE 1: not valid UTF-8 (byte 0xff at character 2)" in err and "nothing was sent" in err, err


def test_send_says_how_many_messages_it_wrote_to_the_socket():
    """Also checked by the review: a server that closes with 1000 after reading 3 of 8 lines
    leaves exit 0 (the loss window of docs/guide/queues.md); the summary says "written", not "delivered"."""
    with RawServer() as server:
        result = run_send(server.url, '{"type": "a"}', '{"type": "b"}')
        assert frames_until_close(server.wait_connection()) == [b'{"type": "a"}', b'{"type": "b"}']
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().strip().splitlines()[-1] == "wsbridge: 2 message(s) written to the socket"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (a file every write to fails)")
def test_send_wait_for_into_a_full_stdout_says_so_in_one_line():
    """Issue 20 review, 7: ``send --wait-for pong > /dev/full`` ended in an OSError traceback."""
    with RawServer() as server, open("/dev/full", "wb") as full:
        proc = subprocess.Popen([*CLI, "send", server.url, '{"type": "ping"}', "--wait-for", "pong"], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=full, stderr=subprocess.PIPE)
        try:
            server.wait_connection(30).sendall(frame(b'{"type": "pong"}'))
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    text = err.decode()
    assert proc.returncode == 1 and "Traceback" not in text, text
    assert "the 'pong' reply came but could not be printed (OSError: [Errno 28]" in text, text
