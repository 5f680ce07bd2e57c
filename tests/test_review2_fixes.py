"""The second hostile review of issues 20 and 22, the runtime half: frames written after
the client's own close frame, what the errors of a failed handshake keep, the handshake's
inbox (its bounds, and a reply followed at once by a snapshot), user code that holds a
thread (a hook, a callable option), and a hook's send into a full send buffer.

Servers are built here on raw sockets (`wsbridge.testing.raw`: the frames on the wire
matter) or are the `websockets` library's own, all on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import tracemalloc
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve

import wsbridge
from wsbridge import ConnectHookError
from wsbridge.testing.raw import CLOSE, PING, PONG, TEXT, RawServer, frame, read_frame

from conftest import Collector, wait_until

FAST = wsbridge.Backoff(initial=0.05, max_delay=0.1, jitter=0)
TOKEN = "hook-TOKEN-5e5e5e"
SUBTOKEN = "sub-TOKEN-7f7f7f"


class Recorder:
    """A raw-socket server on 127.0.0.1 that records every frame of every connection with
    where it came: ``"data"``, ``"close"`` (the client's close frame), ``"after-close"``
    (a data frame after it: forbidden, RFC 6455 §5.5.1), ``"after-server-close"`` (one the
    client wrote before it read the server's close: in flight, accepted). It answers the
    client's close ``answer_after`` s later (a busy server), and with ``close_at`` it
    closes first (``code``) after that many data frames on each connection."""

    def __init__(self, answer_after: float = 0.1, close_at: Optional[int] = None, code: int = 1001) -> None:
        self.answer_after = answer_after
        self.close_at = close_at
        self.code = code
        self.raw = RawServer()
        self.url = self.raw.url
        self.conns: List[List[Tuple[str, bytes]]] = []
        self.counts: Dict[str, int] = {}
        self.cond = threading.Condition()
        self._done = threading.Event()
        self._threads: List[threading.Thread] = []
        self._watcher = threading.Thread(target=self._watch, name="test-recorder", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        n = 0
        while not self._done.is_set():
            try:
                conn = self.raw.wait_connections(n + 1, timeout=0.2)
            except TimeoutError:
                continue
            n += 1
            record: List[Tuple[str, bytes]] = []
            with self.cond:
                self.conns.append(record)
            reader = threading.Thread(target=self._read, args=(conn, record, n), name=f"test-recorder-{n}", daemon=True)
            self._threads.append(reader)
            reader.start()

    def _read(self, conn: Any, record: List[Tuple[str, bytes]], number: int) -> None:
        client_closed = server_closed = False
        data = 0
        try:
            while True:
                opcode, payload = read_frame(conn, timeout=10)
                with self.cond:
                    if opcode == TEXT:
                        data += 1
                        kind = "after-close" if client_closed else "after-server-close" if server_closed else "data"
                        record.append((kind, payload))
                        self.counts[kind] = self.counts.get(kind, 0) + 1
                    elif opcode == CLOSE:
                        client_closed = True
                        record.append(("close", payload))
                    self.cond.notify_all()
                if opcode == PING:
                    conn.sendall(frame(payload, PONG))
                elif opcode == CLOSE and not server_closed:
                    timer = threading.Timer(self.answer_after, self._answer, args=(conn, payload[:2]))
                    timer.daemon = True
                    timer.start()
                if self.close_at is not None and data == self.close_at and not server_closed:
                    server_closed = True
                    conn.sendall(frame(self.code.to_bytes(2, "big"), CLOSE))
        except (OSError, ConnectionError):
            pass  # the client closed TCP: every frame it wrote was read
        finally:
            conn.close()

    @staticmethod
    def _answer(conn: Any, code: bytes) -> None:
        try:
            conn.sendall(frame(code, CLOSE))
        except OSError:
            pass

    def count(self, *kinds: str) -> int:
        with self.cond:
            return sum(self.counts.get(kind, 0) for kind in kinds)

    def frames(self, *kinds: str) -> List[Dict[str, Any]]:
        with self.cond:
            return [json.loads(p) for record in self.conns for kind, p in record if kind in kinds]

    def close(self) -> None:
        self._done.set()
        self._watcher.join(5)
        self.raw.close()
        for thread in self._threads:
            thread.join(15)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Senders:
    """``threads`` threads that send numbered messages until `stop` (`sent`: per thread, each
    number once `send` returned)."""

    def __init__(self, client: wsbridge.Client, threads: int = 1, limit: int = 200_000) -> None:
        self.sent: Dict[int, List[int]] = {k: [] for k in range(threads)}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(client, k, limit), name=f"test-sender-{k}")
                         for k in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, client: wsbridge.Client, k: int, limit: int) -> None:
        for i in range(limit):
            if self._stop.is_set():
                return
            client.send({"type": "m", "t": k, "i": i})
            self.sent[k].append(i)
            if i % 50 == 0:
                time.sleep(0.001)  # pacing: the other threads get the GIL

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def total(self) -> int:
        return sum(len(v) for v in self.sent.values())


def check_every_send_arrived_once_in_order_or_waits(client: wsbridge.Client, server: Recorder, senders: Senders) -> None:
    got: Dict[int, List[int]] = {k: [] for k in senders.sent}
    for m in server.frames("data", "after-server-close") + [json.loads(data) for data, _ in client.unsent()]:
        got[m["t"]].append(m["i"])
    problems = {}
    for k, sent in senders.sent.items():
        seen = got[k]
        missing = sorted(set(sent) - set(seen))
        repeated = sorted({i for i in seen if seen.count(i) > 1}) if len(seen) != len(set(seen)) else []
        if missing or repeated or seen != sent:
            problems[k] = {"missing": missing[:10], "n_missing": len(missing), "repeated": repeated[:10],
                           "n_repeated": len(repeated), "in_order": seen == sorted(seen)}
    assert not problems, f"a send that returned was neither received (once, in order) nor kept: {problems}"


# -- F1: no data frame after a close frame ----------------------------------------------------------
def test_no_data_frame_follows_the_clients_close_frame_when_reconnect_closes(make_client):
    """reconnect() while a thread sends: frames written after the client's close frame (which
    any server discards) were counted as sent and lost, 6,557 of 19,000 in one run."""
    with Recorder(answer_after=0.1) as server:
        client = make_client(server.url, ping_interval=0, outbox_size=1_000_000)
        client.start().wait_connected(timeout=10)
        senders = Senders(client)
        try:
            for round in range(1, 4):
                least = 300 * round
                wait_until(lambda least=least: server.count("data") > least, timeout=20, what="frames flowing")
                client.reconnect(wait=10)
        finally:
            senders.stop()
        wait_until(lambda: server.count("data", "after-close") + len(client.unsent()) >= senders.total(), timeout=20,
                   what="the last sends out")
        client.stop(10)  # from here on nothing moves from the send buffer to the server
        wait_until(lambda: server.count("data", "after-close") + len(client.unsent()) >= senders.total(), timeout=20,
                   what="the server read what the client wrote")
        assert server.frames("after-close") == []
        check_every_send_arrived_once_in_order_or_waits(client, server, senders)
        assert client.stats.sent == server.count("data")
        assert client.stats.connects == 4


def test_no_data_frame_follows_the_clients_echo_of_the_servers_close(make_client):
    """The server closes (1001) after 300 frames of each connection and waits for the echo:
    frames went out after the client's echo too (2,660 in one run). Those written before
    the client read the server's close were in flight; the server here takes them."""
    with Recorder(close_at=300, code=1001) as server:
        client = make_client(server.url, outbox_size=1_000_000)  # its ping thread is joined after the echo
        client.start().wait_connected(timeout=10)
        senders = Senders(client, threads=3)
        try:
            wait_until(lambda: client.stats.connects >= 8, timeout=30, what="eight connections")
        finally:
            senders.stop()
        wait_until(lambda: server.count("data", "after-server-close", "after-close") + len(client.unsent())
                   >= senders.total(), timeout=20, what="the last sends out")
        client.stop(10)  # from here on nothing moves from the send buffer to the server
        wait_until(lambda: server.count("data", "after-server-close", "after-close") + len(client.unsent())
                   >= senders.total(), timeout=20, what="the server read what the client wrote")
        assert server.frames("after-close") == []
        check_every_send_arrived_once_in_order_or_waits(client, server, senders)


# -- F2: what a failed handshake's errors keep -------------------------------------------------------
def all_locals(error: BaseException) -> str:
    """What a tool that shows the locals of a traceback (Sentry, rich) would print."""
    return "".join(traceback.TracebackException.from_exception(error, capture_locals=True).format())


def chained(error: Optional[BaseException]) -> Iterator[BaseException]:
    seen = set()
    stack = [error]
    while stack:
        e = stack.pop()
        if e is not None and id(e) not in seen:
            seen.add(id(e))
            yield e
            stack += [e.__cause__, e.__context__]


def frames_of(error: BaseException) -> List[Tuple[str, str]]:
    """(module, function) of every frame in the tracebacks of ``error`` and its chain."""
    out = []
    for e in chained(error):
        tb = e.__traceback__
        while tb is not None:
            out.append((tb.tb_frame.f_globals.get("__name__", ""), tb.tb_frame.f_code.co_name))
            tb = tb.tb_next
    return out


def kept_errors(client: wsbridge.Client, errors: Collector, gave_up: Collector) -> List[BaseException]:
    """What a client keeps of a failed handshake: last_error, the error signal's, the give-up's (and its cause)."""
    kept = [client.last_error, errors.wait(1)[0]["error"], gave_up.wait(1)[0]["error"]]
    assert all(e is not None for e in kept)
    return kept  # type: ignore[return-value]


def cut_after_first_frame(server: RawServer) -> None:
    conn = server.wait_connection()
    read_frame(conn)
    conn.close()  # the server drops the connection while the handshake waits for its reply


@pytest.mark.parametrize("what", ["hook", "subscription"])
def test_a_handshake_cut_short_leaves_no_frame_whose_locals_show_the_token_or_the_message(make_client, what):
    """The server drops the connection while a hook (whose local holds the token) or a
    subscription waits for its reply: the tracebacks kept showed both."""

    def login(session: wsbridge.Session) -> None:
        token = TOKEN  # fetched from an auth service, say
        session.send({"type": "login", "token": token})
        session.wait_for("login")

    with RawServer() as server:
        client = make_client(server.url, backoff=wsbridge.NO_RETRY, ping_interval=0,
                             on_connect=login if what == "hook" else None)
        if what == "subscription":
            client.subscribe({"type": "subscribe", "auth": SUBTOKEN}, ack="subscribed")
        errors, gave_up = Collector(), Collector()
        client.signals.error.connect(errors)
        client.signals.gave_up.connect(gave_up)
        client.start()
        cut_after_first_frame(server)
        with pytest.raises(wsbridge.ConnectError):
            client.wait_connected(timeout=10)
        for error in kept_errors(client, errors, gave_up):
            assert TOKEN not in all_locals(error) and SUBTOKEN not in all_locals(error)
            assert not [f for f in frames_of(error) if f[0].startswith("wsbridge")], frames_of(error)
        assert isinstance(client.last_error, ConnectHookError)
        assert "the connection ended" in str(client.last_error)  # wsbridge's own words, kept


def test_a_hooks_own_exception_keeps_the_users_frames_only_and_no_text_of_it_is_shown(make_client, caplog):
    """The hook's exception stays the cause with the hook's frames (to debug it), but
    wsbridge's frames go, and its text (which may hold the token) is in no message or log."""

    def login(session: wsbridge.Session) -> None:
        token = TOKEN
        session.send({"type": "login", "token": token})
        raise PermissionError(f"login refused for {token}")

    with RawServer() as server:
        client = make_client(server.url, backoff=wsbridge.NO_RETRY, ping_interval=0, on_connect=login)
        gave_up = Collector()
        client.signals.gave_up.connect(gave_up)
        with caplog.at_level(logging.DEBUG):
            client.start()
            with pytest.raises(wsbridge.ConnectError) as raised:
                client.wait_connected(timeout=10)
            gave_up.wait(1)
        error = client.last_error
        assert isinstance(error, ConnectHookError) and error.__traceback__ is None
        assert "raised PermissionError" in str(error)
        cause = error.__cause__
        assert isinstance(cause, PermissionError) and TOKEN in str(cause)  # the user's, for the user
        assert frames_of(cause) == [(__name__, "login")]
        for shown in (str(error), str(raised.value), str(gave_up.items[0]["error"]), caplog.text):
            assert TOKEN not in shown


# -- F7: the log at DEBUG -------------------------------------------------------------------------
def test_a_callables_exception_text_reaches_no_log_at_debug(make_client, caplog):
    """The connection's error was logged at DEBUG with its traceback, which prints the
    chained cause: a token service's error text, with its client_secret."""
    secret = "client_secret=S3CR3T-9a9a"

    def headers() -> Dict[str, str]:
        raise RuntimeError(f"POST https://auth.example/token?{secret} failed")

    with RawServer() as server:
        client = make_client(server.url, headers=headers, backoff=wsbridge.NO_RETRY)
        with caplog.at_level(logging.DEBUG):
            client.start()
            with pytest.raises(wsbridge.ConnectError):
                client.wait_connected(timeout=10)
            assert client.stop(10)
        formatter = logging.Formatter("%(message)s")
        shown = "\n".join(formatter.format(record) for record in caplog.records)
        assert "headers: the callable raised RuntimeError" in str(client.last_error)
        assert "the connection's error" in shown and secret not in shown


# -- F8, F9: the handshake's inbox ----------------------------------------------------------------
def test_the_inbox_of_a_waiting_hook_is_bounded_by_the_dispatch_queues_bytes(make_client):
    """A hook waits while the server streams 64 messages of 256 KiB, with the queues bounded
    at 1 MiB: the inbox kept all of them (300 of 1 MiB took 606 MB)."""
    big = "a" * (256 << 10)

    def stream(ws: ServerConnection) -> None:
        try:
            for i in range(64):
                ws.send(json.dumps({"type": "big", "i": i, "p": big}))
            for _ in ws:
                pass
        except ConnectionClosed:
            pass

    delivered = threading.Event()
    count = [0]
    measured: List[int] = []

    def on_big(message: wsbridge.Message) -> None:
        count[0] += 1
        if count[0] == 64:
            delivered.set()

    def hook(session: wsbridge.Session) -> None:
        assert delivered.wait(30), "the subscriber did not get the 64 messages"
        measured.append(tracemalloc.get_traced_memory()[0])

    server = serve(stream, "127.0.0.1", 0, max_size=None, ping_interval=None, compression=None)
    thread = threading.Thread(target=server.serve_forever, name="test-stream", daemon=True)
    thread.start()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        client = make_client(f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", on_connect=hook, ping_interval=0,
                             connect_hook_timeout=40, dispatch_queue_bytes=1 << 20, pull_buffer_bytes=1 << 20)
        client.on("big", on_big)
        client.start().wait_connected(timeout=40)
        assert client.stop(10)
    finally:
        tracemalloc.stop()
        server.shutdown()
        thread.join(10)
    held = measured[0] - base
    assert held < 12 << 20, f"{held >> 20} MiB held while the hook waited (16 MiB of frames, queues bounded at 1 MiB)"


def ack_then_snapshot(count: int, reply: str) -> bytes:
    """``reply`` and then at once ``count`` more JSON frames, in one write."""
    return frame(json.dumps({"type": reply}).encode()) + b"".join(
        frame(b'{"type":"snap","i":%d}' % i) for i in range(count))


@pytest.mark.parametrize("how", ["subscription", "request"])
def test_a_reply_followed_at_once_by_a_snapshot_is_not_missed(make_client, how):
    """The ack, then at once 3,000 messages in one write: the 1,000-message inbox pushed the
    ack out before the handshake looked, and every attempt failed alike."""
    got: List[str] = []

    def hook(session: wsbridge.Session) -> None:
        got.append(session.request({"type": "login"}, "login_ok", timeout=5).type)

    with RawServer() as server:
        client = make_client(server.url, backoff=wsbridge.NO_RETRY, ping_interval=0, connect_hook_timeout=5,
                             on_connect=hook if how == "request" else None)
        if how == "subscription":
            client.subscribe({"type": "subscribe"}, ack="subscribed")
        snapshot = Collector()
        client.on("snap", snapshot)
        client.start()
        conn = server.wait_connection()
        assert read_frame(conn)[0] == TEXT
        conn.sendall(ack_then_snapshot(3000, "subscribed" if how == "subscription" else "login_ok"))
        client.wait_connected(timeout=10)
        assert client.stats.connect_attempts == 1
        assert [m.payload["i"] for m in snapshot.wait(3000)] == list(range(3000))
        assert got == (["login_ok"] if how == "request" else [])


# -- F10, F11: user code that does not return ---------------------------------------------------
def login_feed() -> Any:
    """A `websockets` server that answers a login with login_ok."""

    def handler(ws: ServerConnection) -> None:
        try:
            for text in ws:
                if json.loads(text).get("type") == "login":
                    ws.send(json.dumps({"type": "login_ok"}))
        except ConnectionClosed:
            pass

    server = serve(handler, "127.0.0.1", 0, ping_interval=None)
    thread = threading.Thread(target=server.serve_forever, name="test-login-feed", daemon=True)
    thread.start()
    return server, thread, f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"


@pytest.fixture
def feed() -> Iterator[str]:
    server, thread, url = login_feed()
    yield url
    server.shutdown()
    thread.join(10)


def test_a_hook_blocked_in_user_code_fails_the_attempt_and_never_runs_twice_at_once(make_client, feed):
    """connect_hook_timeout=0.5, the first call of the hook blocks: the supervisor was held
    (state `connecting`, the drop and reconnect() ignored). Now the attempt fails on time,
    the next one waits for the blocked call to return and then runs the hook again."""
    release = threading.Event()
    running, most, calls = [0], [0], [0]
    lock = threading.Lock()

    def hook(session: wsbridge.Session) -> None:
        with lock:
            calls[0] += 1
            running[0] += 1
            most[0] = max(most[0], running[0])
            first = calls[0] == 1
        try:
            if first:
                release.wait(30)  # an HTTP call without a timeout, say
            else:
                session.request({"type": "login"}, "login_ok")
        finally:
            with lock:
                running[0] -= 1

    errors, retries = Collector(), Collector()
    client = make_client(feed, on_connect=hook, connect_hook_timeout=0.5, connect_timeout=30, backoff=FAST)
    client.signals.error.connect(errors)
    client.signals.reconnecting.connect(retries)
    client.start()
    try:
        error = errors.wait(1, timeout=10)[0]["error"]
        assert isinstance(error, ConnectHookError)
        assert "the connect hook" in str(error) and "had not returned within connect_hook_timeout (0.5 s)" in str(error)
        retries.wait(1, timeout=10)  # the supervisor went on
        held = [t for t in client.threads() if "-handshake-" in t.name and t.is_alive()]
        assert len(held) == 1
        # The next attempt waits for the hook to return (up to connect_timeout); reconnect() is heard meanwhile.
        wait_until(lambda: client.stats.connect_attempts == 2 and client.state == "connecting", what="the next attempt")
        client.reconnect()
        wait_until(lambda: client.stats.connect_attempts == 3, what="the attempt reconnect() asked for")
        assert calls[0] == 1 and not client.connected
    finally:
        release.set()
    client.wait_connected(timeout=20)
    assert most[0] == 1 and calls[0] == 2


def test_stop_returns_within_its_timeout_while_a_hook_is_blocked(make_client, feed):
    release, blocked = threading.Event(), threading.Event()

    def hook(session: wsbridge.Session) -> None:
        blocked.set()
        release.wait(30)

    client = make_client(feed, on_connect=hook, connect_hook_timeout=30)
    client.start()
    assert blocked.wait(10)
    started = time.monotonic()
    assert client.stop(timeout=1) is False  # the hook's thread is still in user code
    assert time.monotonic() - started < 5
    alive = [t.name for t in client.threads() if t.is_alive()]
    assert len(alive) == 1 and "-handshake-" in alive[0], alive  # the supervisor and the dispatcher ended
    assert client.state == "stopped"
    release.set()
    wait_until(lambda: not any(t.is_alive() for t in client.threads()), what="the hook's thread ended")


def test_a_callable_that_hangs_is_not_called_again_until_it_returns(make_client, feed):
    """connect_timeout=0.3 and a headers callable that hangs: each retry started a new reader
    thread that called it again, 26 threads in the callable at once after 10 s."""
    release = threading.Event()
    calls = [0]

    def headers() -> Dict[str, str]:
        calls[0] += 1
        release.wait(30)
        return {"Authorization": "Bearer t"}

    client = make_client(feed, headers=headers, connect_timeout=0.3, backoff=FAST)
    client.start()
    wait_until(lambda: client.stats.connect_attempts >= 6, timeout=20, what="six attempts")
    readers = [t for t in client.threads() if "-reader-" in t.name and t.is_alive()]
    assert calls[0] == 1 and len(readers) == 1
    assert "the headers callable had not returned since an earlier attempt" in str(client.last_error)
    release.set()
    client.wait_connected(timeout=20)
    assert calls[0] == 2  # once more, for the attempt that connected


# -- F12: a hook's client.send into a full send buffer -------------------------------------------
@pytest.mark.parametrize("overflow", ["raise", "block"])
def test_a_hooks_send_into_a_full_send_buffer_does_not_fail_the_handshake(make_client, feed, overflow):
    """outbox_overflow="raise": OutboxFull failed the hook, and only a hook that passed could
    drain the buffer: 20 attempts in 2 s, never connected."""
    received: List[str] = []
    done = threading.Event()

    def handler(ws: ServerConnection) -> None:
        try:
            for text in ws:
                received.append(json.loads(text)["type"])
                if len(received) == 5:
                    done.set()
        except ConnectionClosed:
            pass

    def hook(session: wsbridge.Session) -> None:
        session.send({"type": "login"})
        client.send({"type": "after-login"})  # the buffer holds 3 of 3

    server = serve(handler, "127.0.0.1", 0, ping_interval=None)
    thread = threading.Thread(target=server.serve_forever, name="test-full", daemon=True)
    thread.start()
    try:
        client = make_client(f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", on_connect=hook, outbox_size=3,
                             outbox_overflow=overflow, outbox_timeout=0.5)
        for i in range(3):
            client.send({"type": f"early-{i}"})
        client.start().wait_connected(timeout=10)
        assert done.wait(10)
        assert received == ["login", "early-0", "early-1", "early-2", "after-login"]
        assert client.stats.connect_attempts == 1
    finally:
        server.shutdown()
        thread.join(10)


# -- third review, N1: a reply predicate that blocks ----------------------------------------------------
@pytest.mark.parametrize("how", ["request", "subscribe"])
def test_a_reply_predicate_that_blocks_holds_neither_the_reader_nor_reconnect_nor_the_supervisor(make_client, feed, how):
    """The predicate ran on the reader thread under the inbox's lock: a blocking one held
    the reader, Inbox.end (so reconnect() blocked its caller 8.5 s) and the supervisor
    (connect_hook_timeout ignored). It now runs on the handshake's thread, outside the lock."""
    release = threading.Event()

    def blocking(message: wsbridge.Message) -> bool:
        release.wait(30)  # user code that blocks
        return message.type == "login_ok"

    errors = Collector()
    if how == "request":
        client = make_client(feed, on_connect=lambda s: s.request({"type": "login"}, blocking, timeout=1),
                             connect_hook_timeout=1, backoff=FAST)
    else:
        client = make_client(feed, connect_hook_timeout=1, backoff=FAST)
        client.subscribe({"type": "login"}, ack=blocking)
    client.signals.error.connect(errors)
    client.start()
    try:
        error = errors.wait(1, timeout=10)[0]["error"]  # the attempt failed on time: the supervisor went on
        assert isinstance(error, ConnectHookError)
        asked = threading.Thread(target=client.reconnect, name="test-reconnect")
        asked.start()
        asked.join(5)
        assert not asked.is_alive(), "reconnect() was held by the user's predicate"
    finally:
        release.set()
    assert client.stop(10)
