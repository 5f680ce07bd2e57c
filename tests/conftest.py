"""Shared fixtures: real servers on 127.0.0.1 and clients that are always stopped."""

from __future__ import annotations

import json
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple, Union

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Request, ServerConnection, serve

import wsbridge
from wsbridge.testing import Server


class Collector:
    """A subscriber / signal receiver that records what it gets and lets a
    test wait, on a condition, until enough arrived."""

    def __init__(self) -> None:
        self.items: List[Any] = []
        self.cond = threading.Condition()

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        item = kwargs if kwargs else args[0]
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, n: int = 1, timeout: float = 10.0) -> List[Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.items) >= n, timeout)
            assert ok, f"waited {timeout} s for {n} item(s), got {len(self.items)}: {self.items[:5]!r}"
            return list(self.items)

    def __len__(self) -> int:
        return len(self.items)


ROOT = Path(__file__).resolve().parent.parent


def documentation_files() -> List[Path]:
    """The README and every page of the documentation site (docs/), whose examples the tests run and type-check."""
    return [ROOT / "README.md", *sorted(path for path in (ROOT / "docs").rglob("*.md") if "_build" not in path.parts)]


def send_quietly(client: wsbridge.Client, data: Any) -> None:
    """``client.send(data)`` from a helper thread, for a test that stops the client under it."""
    try:
        client.send(data)
    except wsbridge.WsbridgeError:
        pass


def unread(sock: socket.socket) -> int:
    """Bytes waiting in ``sock``'s receive buffer (a peer that does not read fills it)."""
    import fcntl
    import struct
    import termios

    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Re-check ``predicate`` until it holds, for state that no event announces
    (a thread being alive, a file growing); bounded in time."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        pause.wait(0.005)


class Lines:
    """The lines a child process writes to ``stream``, read by a thread of their
    own (select() and a buffered readline() together can miss a line)."""

    def __init__(self, stream: Any) -> None:
        self._queue: "queue.Queue[str]" = queue.Queue()
        self.seen: List[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), name="test-lines", daemon=True)
        self._thread.start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # type: ignore[arg-type]

    def next(self, contains: str = "", timeout: float = 30.0) -> str:
        """The next line that contains ``contains``; AssertionError after ``timeout`` s or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {contains!r} within {timeout} s; seen: {self.seen[-5:]}") from None
            if line is None:
                raise AssertionError(f"the stream ended before a line with {contains!r}; seen: {self.seen[-5:]}")
            self.seen.append(line)
            if contains in line:
                return line

    def rest(self, timeout: float = 30.0) -> List[str]:
        """Every further line, up to EOF (the process has ended or is ending)."""
        self._thread.join(timeout)
        out = []
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            out.append(line)
        self.seen.extend(out)
        return out


class PProxy:
    """pproxy (PyPI; not ours) in a child process on 127.0.0.1, on a port it picks:
    ``scheme`` is ``http``, ``socks5`` or ``http+ssl`` (with ``ssl_files``: certificate
    and key), ``auth`` a ``user:password`` it requires (asked again on every
    connection: ``--auth 0``). `target` is where it next said it connected to."""

    def __init__(self, scheme: str, auth: Optional[str] = None, ssl_files: Optional[List[str]] = None) -> None:
        listen = f"{scheme}://127.0.0.1:0" + (f"#{auth}" if auth else "")
        command = [sys.executable, "-u", "-m", "pproxy", "-l", listen, "-v", "--auth", "0"]
        if ssl_files:
            command += ["--ssl", ",".join(ssl_files)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = Lines(self.process.stdout)
        try:
            serving = self.lines.next("Serving on", timeout=30)
            found = re.search(r"127\.0\.0\.1:(\d+) ", serving)
            assert found, serving
            self.port = int(found.group(1))
        except BaseException:
            self.close()
            raise

    def url(self, scheme: str, auth: str = "") -> str:
        return f"{scheme}://{auth + '@' if auth else ''}127.0.0.1:{self.port}"

    def target(self, timeout: float = 10.0) -> str:
        """The ``host:port`` of the next connection pproxy reports relaying."""
        return self.lines.next(" -> ", timeout).rsplit(" -> ", 1)[1].strip()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.lines.rest(10)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> "PProxy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Feed:
    """A `websockets` sync server on 127.0.0.1 (the library's, not ours) that keeps every
    upgrade request (`requests`), answers it with ``answer(connection, request)`` (None:
    accept), keeps every frame received as ``(connection number, data)`` (`received`;
    connections are numbered from 1 as they open), and echoes it to its connection (or
    sends what ``respond(connection number, data)`` returns instead, in order).
    `send` sends to every open connection; `drop` closes them (1012). Other keyword
    arguments go to `websockets.sync.server.serve` (``ssl``, ``subprotocols``,
    ``origins``, ...)."""

    def __init__(self, answer: Optional[Callable[[ServerConnection, Request], Any]] = None,
                 respond: Optional[Callable[[int, Union[str, bytes]], Iterable[Union[str, bytes]]]] = None,
                 **kwargs: Any) -> None:
        self._respond = respond
        self.requests: List[Request] = []
        self.received: List[Tuple[int, Union[str, bytes]]] = []
        self.opened = 0
        self._answer = answer
        self._conns: set = set()
        self._cond = threading.Condition()
        self._server = serve(self._handler, "127.0.0.1", 0, process_request=self._process, **kwargs)
        self.port = self._server.socket.getsockname()[1]
        self.scheme = "wss" if kwargs.get("ssl") else "ws"
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-feed", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/feed"

    def _process(self, connection: ServerConnection, request: Request) -> Any:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()
        return self._answer(connection, request) if self._answer else None

    def _handler(self, ws: ServerConnection) -> None:
        with self._cond:
            self.opened += 1
            number = self.opened
            self._conns.add(ws)
            self._cond.notify_all()
        try:
            for message in ws:
                with self._cond:
                    self.received.append((number, message))
                    self._cond.notify_all()
                for reply in (message,) if self._respond is None else self._respond(number, message):
                    ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                self._conns.discard(ws)
                self._cond.notify_all()

    def wait_opened(self, n: int, timeout: float = 10.0) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.opened >= n, timeout), f"{n} connection(s) did not open: {self.opened}"

    def wait_requests(self, n: int, timeout: float = 10.0) -> List[Request]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.requests) >= n, timeout), f"{len(self.requests)} of {n} requests"
            return list(self.requests)

    def wait_received(self, n: int, timeout: float = 10.0) -> List[Tuple[int, Union[str, bytes]]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.received) >= n, timeout), \
                f"{len(self.received)} of {n} frames: {self.received}"
            return list(self.received)

    def on(self, connection: int) -> List[Union[str, bytes]]:
        """What connection number ``connection`` sent, in order."""
        with self._cond:
            return [data for number, data in self.received if number == connection]

    def send(self, *messages: Union[str, bytes]) -> None:
        """Send ``messages`` to every open connection (waits until one is open)."""
        with self._cond:
            assert self._cond.wait_for(lambda: self._conns, 10), "no connection is open"
            conns = list(self._conns)
        for ws in conns:
            for message in messages:
                ws.send(message)

    def drop(self) -> None:
        with self._cond:
            conns = list(self._conns)
        for ws in conns:
            ws.close(1012, "service restart")

    def __enter__(self) -> "Feed":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.drop()
        self._server.shutdown()
        self._thread.join(10)


class Raised:
    """``fn()`` on a thread of its own (named ``name``), started at once: `wait` for its
    end and get what it raised (None: it returned)."""

    def __init__(self, fn: Callable[[], Any], name: str) -> None:
        self.error: Optional[BaseException] = None
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(fn,), name=name)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        self._ended.set()

    def wait(self, timeout: float = 10.0, why: str = "the call did not end") -> Optional[BaseException]:
        assert self._ended.wait(timeout), why
        self._thread.join(timeout)
        return self.error


def noise_then(n: int, answer: Callable[[dict], Optional[dict]]) -> Callable[[int, Union[str, bytes]], List[str]]:
    """A `Feed` ``respond``: to each JSON message, ``n`` messages of type ``noise`` and then
    ``answer(message)`` (None: nothing at all)."""
    def respond(number: int, data: Union[str, bytes]) -> List[str]:
        reply = answer(json.loads(data))
        if reply is None:
            return []
        return [json.dumps({"type": "noise", "n": i}) for i in range(n)] + [json.dumps(reply)]
    return respond


def from_a_subscriber(client: wsbridge.Client, feed: "Feed", call: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Start ``client``, have ``feed`` send a ``tick`` and run ``call()`` in its subscriber
    (the dispatcher thread); what it returned (what it raised is raised here)."""
    got: dict = {}
    done = threading.Event()

    def on_tick(message: wsbridge.Message) -> None:
        try:
            got["result"] = call()
        except Exception as exc:  # noqa: BLE001 - raised in the test's thread below
            got["error"] = exc
        done.set()

    client.on("tick")(on_tick)
    client.start().wait_connected(10)
    feed.send(json.dumps({"type": "tick"}))
    assert done.wait(timeout), "the subscriber's call did not end"
    if "error" in got:
        raise got["error"]
    return got["result"]


def send_from_threads(client: wsbridge.Client, threads: int, each: int) -> None:
    """``threads`` threads, started together, each sending ``each`` numbered messages."""
    barrier = threading.Barrier(threads)

    def worker(k: int) -> None:
        barrier.wait(timeout=10)
        for i in range(each):
            client.send({"type": "m", "t": k, "i": i})

    workers = [threading.Thread(target=worker, args=(k,), name=f"sender-{k}") for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)


def per_thread(messages: List[wsbridge.Message]) -> dict:
    """What `send_from_threads` sent, as received: thread -> its message numbers in order."""
    out: dict = {}
    for m in messages:
        out.setdefault(m.payload["t"], []).append(m.payload["i"])
    return out


@pytest.fixture
def down_server() -> Iterator[Server]:
    """A server that has a port but is not listening yet: call ``start()``."""
    srv = Server().start()
    srv.stop()
    yield srv
    srv.stop()


@pytest.fixture
def collector() -> Callable[[], Collector]:
    return Collector


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as srv:
        yield srv


@pytest.fixture
def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def make_client() -> Iterator[Callable[..., wsbridge.Client]]:
    """Build clients; every one is stopped at teardown and must leave no thread behind."""
    clients: List[wsbridge.Client] = []

    def make(url: str, **kwargs: Any) -> wsbridge.Client:
        if "policy" not in kwargs:  # a policy holds its own backoff
            kwargs.setdefault("backoff", wsbridge.Backoff(initial=0.05, max_delay=0.2, jitter=0))
        client = wsbridge.Client(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:  # all of them first: clients may share a name
        assert client.stop(timeout=10), f"{client.name} left threads running"
    for client in clients:
        leftovers = [t.name for t in threading.enumerate() if t.name.startswith(client.name + "-")]
        assert not leftovers, f"threads outlived {client.name}: {leftovers}"
