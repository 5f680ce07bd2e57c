"""The runtime against a hostile server and a careless caller: messages queued at
give-up, a burst bigger than the pull buffer, a filtered take at a full buffer, a
peer that stops reading, interpreter exit with busy clients, sends before start.

Every server is built for the test on a raw socket on 127.0.0.1; every wait is
bounded, and a test that could hang has its own watchdog.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

import wsbridge
from wsbridge import RawCodec
from wsbridge.testing.raw import BINARY, CLOSE, TEXT, RawServer, frame, read_close, read_frame, read_frame_head

from conftest import Lines, unread, wait_until

HOLD = 20.0  # how long a test lets a stuck thread stay stuck before it fails


@pytest.fixture
def raw_server():
    with RawServer() as server:
        yield server


@pytest.mark.timeout(90)
def test_messages_queued_at_give_up_all_reach_the_pull_api(make_client, raw_server):
    """6: a normal close under NO_RETRY with a slow subscriber: the pull buffer closes
    only once everything received before the give-up has reached it."""
    count = 3000
    client = make_client(raw_server.url, codec=RawCodec(), backoff=wsbridge.NO_RETRY)
    client.on_any(lambda msg: time.sleep(0.0003))
    client.start().wait_connected(timeout=10)
    stream = client.messages(timeout=HOLD)  # before the feed: with a subscriber, only a window is kept until then
    conn = raw_server.wait_connection()
    conn.sendall(b"".join(frame(b"%d" % i) for i in range(count)) + frame((1000).to_bytes(2, "big"), CLOSE))
    assert read_close(conn) == 1000
    got = [msg.payload for msg in stream]  # ends when the client gave up and all are taken
    assert got == [str(i) for i in range(count)]
    assert client.state == "gave_up"


def json_frame(mtype: str, **fields: object) -> bytes:
    return frame(json.dumps({"type": mtype, **fields}).encode())


class Taker:
    """``call()`` on a thread of its own; its result or its error, once it returned."""

    def __init__(self, call: Callable[[], wsbridge.Message]) -> None:
        self.result: Dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(call,), name="test-taker", daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], wsbridge.Message]) -> None:
        try:
            self.result["message"] = call()
        except Exception as exc:
            self.result["error"] = exc

    def join(self) -> Dict[str, Any]:
        self._thread.join(HOLD + 10)
        assert not self._thread.is_alive(), "the take never returned"
        return self.result


@pytest.mark.timeout(60)
def test_a_waiting_take_gets_its_message_before_drop_oldest_trims(make_client, raw_server):
    """9: one burst brings the awaited message and more than pull_buffer others."""
    client = make_client(raw_server.url, pull_buffer=10)
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()
    conn.sendall(json_frame("ack", n=0))
    wait_until(lambda: client.stats.pull_buffered == 1, what="the first ack buffered")
    scanned = threading.Event()

    def second(msg: wsbridge.Message) -> bool:
        scanned.set()  # called on the buffered ack under the buffer's lock: the take is about to wait
        return msg.payload["n"] == 1

    taker = Taker(lambda: client.wait_for("ack", second, timeout=10))
    assert scanned.wait(HOLD)
    conn.sendall(json_frame("ack", n=1) + b"".join(json_frame("tick", n=i) for i in range(20)))
    result = taker.join()
    assert "error" not in result, result
    assert result["message"].payload == {"type": "ack", "n": 1}
    wait_until(lambda: client.stats.pull_dropped == 11, what="the trim")  # 21 buffered, 10 kept
    assert [m.payload["n"] for m in client.messages(timeout=0.2)] == list(range(10, 20))


@pytest.mark.timeout(60)
def test_block_hands_the_awaited_message_past_a_full_buffer(make_client, raw_server):
    """10: the buffer is full of what the take leaves; the awaited message still reaches it."""
    client = make_client(raw_server.url, pull_buffer=5, pull_overflow="block")
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()
    conn.sendall(b"".join(json_frame("tick", n=i) for i in range(5)))
    wait_until(lambda: client.stats.pull_buffered == 5, what="a full pull buffer")
    taker = Taker(lambda: client.wait_for("ack", timeout=10))
    conn.sendall(json_frame("ack", n=0) + json_frame("tick", n=5))
    result = taker.join()
    assert "error" not in result, result
    assert result["message"].type == "ack"
    assert [client.recv(timeout=10).payload["n"] for _ in range(6)] == list(range(6))  # lossless, in order


@pytest.mark.timeout(60)
def test_block_fails_a_filtered_take_starved_by_what_it_leaves_instead_of_stalling(make_client, raw_server):
    """10: what the take leaves fills the buffer before its message comes: the stream waits
    for room, so the take fails at once with a clear error; nothing is lost."""
    client = make_client(raw_server.url, pull_buffer=5, pull_overflow="block")
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()
    taker = Taker(lambda: client.wait_for("ack", timeout=HOLD))
    conn.sendall(b"".join(json_frame("tick", n=i) for i in range(10)) + json_frame("ack", n=0))
    result = taker.join()
    error = result.get("error")
    assert isinstance(error, wsbridge.UsageError) and "pull_overflow='block'" in str(error), result
    got = [client.recv(timeout=10) for _ in range(11)]
    assert [m.type for m in got] == ["tick"] * 10 + ["ack"]
    with pytest.raises(wsbridge.UsageError):  # starved again: the buffer is full of ticks
        conn.sendall(b"".join(json_frame("tick", n=i) for i in range(6)) + json_frame("ack", n=1))
        client.wait_for("ack", timeout=HOLD)
    assert [m.type for m in client.messages(timeout=1)] == ["tick"] * 6 + ["ack"]


def kept_frames(path: str) -> List[Any]:
    """The send buffer a store keeps on disk, read beside the client that writes it."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return [row[0] for row in db.execute("SELECT data FROM outbox ORDER BY key")]


@pytest.mark.timeout(60)
def test_a_send_before_start_is_kept_in_the_store_once_it_opens(make_client, free_port, tmp_path, collector):
    """16: no spurious "store not open" error, and the frame is on disk until it is sent."""
    path = str(tmp_path / "feed.db")
    client = make_client(f"ws://127.0.0.1:{free_port}/", codec=RawCodec(), store=wsbridge.SQLiteStore(path))
    errors = collector()
    client.signals.error.connect(errors)
    client.send("early")
    client.send(b"early bytes")
    assert client.stats.store_errors == 0
    client.start()
    wait_until(lambda: client.stats.connect_attempts >= 1, what="a connection attempt (the store is open by then)")
    assert kept_frames(path) == ["early", b"early bytes"]
    client.send("later")
    assert kept_frames(path) == ["early", b"early bytes", "later"]
    assert client.stop(timeout=5)
    assert not errors.items and client.stats.store_errors == 0
    with RawServer() as server:  # the next client with the store sends them, in order
        again = make_client(server.url, codec=RawCodec(), store=wsbridge.SQLiteStore(path))
        again.start().wait_connected(timeout=10)
        conn = server.wait_connection()
        assert [read_frame(conn) for _ in range(3)] == [(TEXT, b"early"), (BINARY, b"early bytes"), (TEXT, b"later")]
        wait_until(lambda: kept_frames(path) == [], what="the sent frames forgotten by the store")


EXIT_DEADLINE = 2.0  # wsbridge.runtime.registry.EXIT_TIMEOUT

BUSY_AT_EXIT = """
import threading
import wsbridge
from wsbridge.testing.raw import RawServer, frame

server = RawServer()
entered, never = threading.Semaphore(0), threading.Event()

def busy(msg):
    entered.release()
    never.wait()  # a subscriber that never returns

for i in range(5):
    client = wsbridge.Client(server.url, codec=wsbridge.RawCodec(), name=f"busy-{i}")
    client.on_any(busy)
    client.start().wait_connected(timeout=10)
    server.wait_connections(i + 1).sendall(frame(b"x"))
print("ready", all(entered.acquire(timeout=10) for _ in range(5)), flush=True)
"""


@pytest.mark.timeout(60)
def test_interpreter_exit_stops_busy_clients_within_one_shared_deadline():
    """13: five clients whose subscribers never return: the exit gives them one deadline
    together (2 s), not 2 s each."""
    proc = subprocess.Popen([sys.executable, "-c", BUSY_AT_EXIT], stdout=subprocess.PIPE, text=True)
    try:
        lines = Lines(proc.stdout)
        assert lines.next("ready", timeout=HOLD) == "ready True"
        proc.wait(timeout=EXIT_DEADLINE + 4)  # was 5 x 2 s: TimeoutExpired
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == 0


def read_big_frame(conn: socket.socket, timeout: float = HOLD) -> Tuple[int, int, bytes]:
    """One (large) frame the client sent: ``(opcode, length, its first 16 bytes unmasked)``."""
    return read_frame_head(conn, 16, timeout)


class Call:
    """``call()`` on a thread of its own, for a test to see whether it returned in time."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.error: Optional[BaseException] = None

        def run() -> None:
            try:
                call()
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, name="test-call", daemon=True).start()


BIG = 32 << 20  # more than any loopback socket buffers: a write of it to a peer that does not read is stuck


@pytest.mark.timeout(90)
def test_a_timed_send_is_not_held_by_another_callers_stuck_write(make_client, raw_server):
    """12: another thread's write is stuck on a peer that stopped reading: send(timeout=0.2)
    returns in time, its frame kept in the send buffer and sent, in order, once the peer reads."""
    client = make_client(raw_server.url, codec=RawCodec(), ping_interval=0)  # the write's own timeout: 30 s
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()  # the server does not read (yet)
    stuck = Call(lambda: client.send(b"x" * BIG))
    wait_until(lambda: unread(conn) > 64 * 1024, what="a write stuck on a full socket")
    timed = Call(lambda: client.send("small", timeout=0.2))
    assert timed.done.wait(5), "send(timeout=0.2) was held by another caller's stuck write"
    assert timed.error is None and client.unsent() == [("small", False)]
    assert read_big_frame(conn)[:2] == (BINARY, BIG)  # the peer reads again
    assert read_frame(conn) == (TEXT, b"small")
    assert stuck.done.wait(HOLD) and stuck.error is None
    wait_until(lambda: client.unsent() == [], what="the send buffer flushed")
    client.send("direct again", timeout=5)
    assert read_frame(conn) == (TEXT, b"direct again")


@pytest.mark.timeout(90)
def test_a_timed_send_bounds_its_own_write_and_the_connection_finishes_the_frame(make_client, raw_server):
    """12: the caller's own write to a peer that stopped reading ends with its timeout; the
    socket had taken part of the frame, so the connection writes the rest, whole, in order."""
    client = make_client(raw_server.url, codec=RawCodec(), ping_interval=0)
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()
    big = Call(lambda: client.send(b"y" * BIG, timeout=0.5))
    assert big.done.wait(5), "send(timeout=0.5) blocked on its own write"
    assert big.error is None and client.unsent() == []  # taken: the rest is being written
    client.send("after", timeout=0.2)  # the send lock is the rest's until it is out: buffered
    assert client.unsent() == [("after", False)]
    assert read_big_frame(conn) == (BINARY, BIG, b"y" * 16)
    assert read_frame(conn) == (TEXT, b"after")


@pytest.mark.timeout(90)
def test_a_frame_half_written_when_the_connection_fails_is_sent_whole_on_the_next(make_client, raw_server):
    """12: nothing handed to send is dropped: the half-written frame goes first, whole, after the reconnect."""
    client = make_client(raw_server.url, codec=RawCodec(), ping_interval=0)
    client.start().wait_connected(timeout=10)
    first = raw_server.wait_connection()
    big = Call(lambda: client.send(b"z" * BIG, timeout=0.5))
    assert big.done.wait(5) and big.error is None
    client.send("after", timeout=0.2)
    first.close()  # the connection fails with the rest of the frame unwritten
    second = raw_server.wait_connections(2)
    assert read_big_frame(second) == (BINARY, BIG, b"z" * 16)
    assert read_frame(second) == (TEXT, b"after")
    wait_until(lambda: client.unsent() == [], what="the send buffer flushed")
