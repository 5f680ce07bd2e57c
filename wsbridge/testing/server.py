"""`Server`: a real WebSocket server on 127.0.0.1 for tests, samples and demos."""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
import threading
import time
from http import HTTPStatus
from typing import Any, Callable, Collection, Dict, Iterable, List, NamedTuple, Optional, Set, Tuple, Union

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ..codecs import Codec, JsonCodec
from ..errors import ProtocolError
from ..message import Message
from ..tracking.resume import parse_resume_request

log = logging.getLogger("wsbridge.testing")

Item = Union[Message, dict, str, bytes, Tuple[Union[str, bytes], bool]]


class Received(NamedTuple):
    """One frame the server received."""

    data: Union[str, bytes]
    binary: bool
    client: int


class Published(NamedTuple):
    """One entry of the server's feed history."""

    stream: Optional[str]
    seq: int
    data: Union[str, bytes]
    text: Optional[bool]


class _Peer:
    """A connected client and where it is in the feed history."""

    def __init__(self, ws: ServerConnection, number: int, cursor: int) -> None:
        self.ws = ws
        self.number = number
        self.cursor = cursor  # index of the next history entry to consider
        self.need: Dict[Optional[str], int] = {}  # stream -> first seq it lacks (absent: 1)
        self.force_until = 0  # entries before this index are sent even if old (the resend overlap)
        self.skipped: Set[Tuple[Optional[str], int]] = set()
        self.wake = asyncio.Event()
        self.resumes = 0


class Server:
    """A WebSocket server in a background thread, bound to 127.0.0.1.

    ``port=0`` picks a free port; `url` tells it. ``script`` is sent to every
    client as soon as it connects. ``echo`` sends every received frame back
    to its sender; ``broadcast`` sends it to every client (a chat room).
    ``reject_status`` refuses handshakes with that HTTP status. ``ssl`` (a
    server-side `ssl.SSLContext`) serves ``wss://``. Every frame received is
    recorded in `received`.

    Items to send are `Message` objects or dicts (encoded with ``codec``),
    ``str`` (a text frame), ``bytes`` (a binary frame), or ``(data, binary)``
    tuples, which send ``data`` exactly as given (a text frame may then carry
    invalid UTF-8, for testing).

    **Feed with history.** `publish` numbers messages per stream (``seq``,
    and ``stream`` when given), keeps them, and streams them to every
    client: from the first one (``feed_from="start"``) or from those
    published after it connected (``"now"``). A client's resume request (the
    default shape of `wsbridge.tracking.resume`) moves it to just after the positions
    it names. Faults for the client's dedup and gap handling: ``resend``
    earlier messages again on every resume (duplicates), ``skip`` the
    sequence ids given the first time they are sent to a client (gaps that
    a resume fills), ``reorder`` sends every pair of messages swapped.
    """

    def __init__(
        self,
        *,
        codec: Optional[Codec] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/",
        echo: bool = False,
        broadcast: bool = False,
        script: Iterable[Item] = (),
        reject_status: Optional[int] = None,
        ssl: Optional["ssl_module.SSLContext"] = None,
        feed_from: str = "start",
        resend: int = 0,
        skip: Collection[int] = (),
        reorder: bool = False,
        name: str = "wsbridge-testserver",
    ) -> None:
        if feed_from not in ("start", "now"):
            raise ValueError("feed_from is 'start' or 'now'")
        self.codec = codec if codec is not None else JsonCodec.conventions()
        self.host = host
        self.port = port
        self.path = path
        self.echo = echo
        self.broadcast = broadcast
        self.script: List[Item] = list(script)
        self.reject_status = reject_status
        self.ssl = ssl
        self.feed_from = feed_from
        self.resend = resend
        self.skip = frozenset(skip)
        self.reorder = reorder
        self.history: List[Published] = []
        self.resumes: List[Dict[Optional[str], int]] = []
        self._next_seq: Dict[Optional[str], int] = {}
        self._peers: Dict[ServerConnection, _Peer] = {}
        self.name = name
        self.received: List[Received] = []
        self.connections_total = 0
        self.handshakes_refused = 0
        self._clients: Set[ServerConnection] = set()
        self._ids: dict = {}
        self._cond = threading.Condition()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Future] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    # -- lifecycle ---------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl else 'ws'}://{self.host}:{self.port}{self.path}"

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, timeout: float = 10.0) -> "Server":
        """Start listening; returns once the port is bound."""
        if self._thread is not None and self._thread.is_alive():
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("test server did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (abruptly) and stop listening."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(lambda: None if stop.done() else stop.set_result(None))
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def restart(self, timeout: float = 10.0) -> "Server":
        """Stop, then listen again on the same port."""
        self.stop(timeout)
        return self.start(timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(
            self._handler,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=None,
            max_queue=None,
            ssl=self.ssl,
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop
            for ws in list(self._clients):
                ws.transport.abort()
            server.close(close_connections=False)
        self._loop = None

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        if self.reject_status is not None:
            self.handshakes_refused += 1
            return connection.respond(HTTPStatus(self.reject_status), "refused by the test server\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        with self._cond:
            self.connections_total += 1
            self._ids[ws] = self.connections_total
            self._clients.add(ws)
            self._cond.notify_all()
        peer = self._peers[ws] = _Peer(ws, self._ids[ws], len(self.history) if self.feed_from == "now" else 0)
        feeder: Optional[asyncio.Task] = None
        try:
            await self.on_connect(ws)
            feeder = asyncio.create_task(self._feed(peer))
            async for data in ws:
                await self.on_frame(ws, data)
        except ConnectionClosed:
            pass
        finally:
            if feeder is not None:
                feeder.cancel()
                await asyncio.gather(feeder, return_exceptions=True)
            self._peers.pop(ws, None)
            self.on_disconnect(ws)
            with self._cond:
                self._clients.discard(ws)
                self._cond.notify_all()

    async def on_connect(self, ws: ServerConnection) -> None:
        """Greet a new client: send the script. Subclasses add their own greeting."""
        for item in self.script:
            await self._send_item(ws, item)

    def on_disconnect(self, ws: ServerConnection) -> None:
        """A connection is over (on the server's loop): subclasses let go of its state."""

    async def on_frame(self, ws: ServerConnection, data: Union[str, bytes]) -> None:
        """Handle one received frame: record, resume the feed, echo or broadcast."""
        with self._cond:
            self.received.append(Received(data, isinstance(data, bytes), self._ids.get(ws, 0)))
            self._cond.notify_all()
        positions = self._resume_request(data)
        if positions is not None:
            self._rewind(self._peers[ws], positions)
            return
        if self.echo:
            await ws.send(data)
        if self.broadcast:
            await self.send_to_all(data)

    # -- the feed ----------------------------------------------------------------
    def _resume_request(self, data: Union[str, bytes]) -> Optional[Dict[Optional[str], int]]:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        try:
            messages = self.codec.decode(raw, isinstance(data, bytes))
        except ProtocolError:
            return None
        for msg in messages:
            positions = parse_resume_request(msg)
            if positions is not None:
                return positions
        return None

    def _rewind(self, peer: _Peer, positions: Dict[Optional[str], int]) -> None:
        """Move ``peer`` to just after ``positions``, ``resend`` entries earlier."""
        need = {stream: seq + 1 for stream, seq in positions.items()}
        first = next((i for i, e in enumerate(self.history) if e.seq >= need.get(e.stream, 1)), len(self.history))
        peer.need = need
        peer.force_until = first
        peer.cursor = max(0, first - self.resend)
        peer.resumes += 1
        with self._cond:
            self.resumes.append(dict(positions))
            self._cond.notify_all()
        peer.wake.set()

    async def _feed(self, peer: _Peer) -> None:
        history = self.history
        while True:
            while peer.cursor < len(history):
                i = peer.cursor
                batch = [i]
                if self.reorder and i + 1 < len(history):
                    batch = [i + 1, i]
                peer.cursor = i + len(batch)
                for k in batch:
                    entry = history[k]
                    if k >= peer.force_until and entry.seq < peer.need.get(entry.stream, 1):
                        continue  # the client has it
                    if entry.seq in self.skip and (entry.stream, entry.seq) not in peer.skipped:
                        peer.skipped.add((entry.stream, entry.seq))
                        continue
                    await peer.ws.send(entry.data, text=entry.text)
            peer.wake.clear()
            await peer.wake.wait()

    def publish(self, *items: Union[Message, dict], stream: Optional[str] = None, timeout: float = 30.0) -> List[int]:
        """Number ``items`` in ``stream`` (``seq`` and, if given, ``stream``
        fields), keep them in the history and feed them to every client;
        returns their sequence ids. Works while stopped, too."""
        return self.publish_many(items, stream=stream, timeout=timeout)

    def publish_many(self, items: Iterable[Union[Message, dict]], stream: Optional[str] = None,
                     timeout: float = 60.0) -> List[int]:
        entries: List[Published] = []
        with self._cond:
            seq = self._next_seq.get(stream, 1)
            for item in items:
                if isinstance(item, Message):
                    item = item._replace(seq=seq, stream=stream if stream is not None else item.stream)
                else:
                    item = dict(item, seq=seq)
                    if stream is not None:
                        item["stream"] = stream
                data, text = self._frame(item)
                entries.append(Published(stream, seq, data, text))
                seq += 1
            self._next_seq[stream] = seq

        async def go() -> None:
            self.history.extend(entries)
            for peer in self._peers.values():
                peer.wake.set()

        if self._loop is None:
            self.history.extend(entries)
        else:
            self._call(go, timeout)
        return [e.seq for e in entries]

    def _frame(self, item: Item) -> Tuple[Union[str, bytes], Optional[bool]]:
        if isinstance(item, (str, bytes)):
            return item, None
        if isinstance(item, tuple) and not isinstance(item, Message):  # (data, binary): a Message is a tuple too
            data, binary = item
            return data, not binary
        data, binary = self.codec.encode(item)
        return data, not binary

    async def _send_item(self, ws: ServerConnection, item: Item) -> None:
        data, text = self._frame(item)
        await ws.send(data, text=text)

    async def send_to_all(self, *items: Item) -> None:
        """From the server's own loop (a handler): send ``items`` to every client."""
        frames = [self._frame(item) for item in items]
        for ws in list(self._clients):
            try:
                for data, text in frames:
                    await ws.send(data, text=text)
            except ConnectionClosed:
                pass

    # -- control from any thread -------------------------------------------------
    def _call(self, coro_fn: Callable[[], Any], timeout: float) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("test server is not running")
        return asyncio.run_coroutine_threadsafe(coro_fn(), loop).result(timeout)

    def send(self, *items: Item, timeout: float = 30.0) -> int:
        """Send items, in order, to every connected client; returns the client count."""
        return self.send_many(items, timeout=timeout)

    def send_many(self, items: Iterable[Item], timeout: float = 60.0) -> int:

        items = list(items)

        async def go() -> int:
            clients = len(self._clients)
            await self.send_to_all(*items)
            return clients

        return self._call(go, timeout)

    def close_clients(self, code: int = 1000, reason: str = "", timeout: float = 10.0) -> None:
        """Close every connection with a close frame of ``code``."""

        async def go() -> None:
            await asyncio.gather(*(ws.close(code, reason) for ws in list(self._clients)), return_exceptions=True)

        self._call(go, timeout)

    def drop_clients(self, timeout: float = 10.0) -> None:
        """Cut every connection at the TCP level, with no close frame."""

        async def go() -> None:
            for ws in list(self._clients):
                ws.transport.abort()

        self._call(go, timeout)

    def ping(self, timeout: float = 10.0) -> int:
        """Ping every client and wait for every pong. Frames sent before the
        ping have been read by each client once this returns."""

        async def go() -> int:
            waiters = [await ws.ping() for ws in list(self._clients)]
            await asyncio.gather(*waiters)
            return len(waiters)

        return self._call(go, timeout)

    # -- observation -------------------------------------------------------------
    @property
    def clients(self) -> int:
        return len(self._clients)

    def wait_until(self, predicate: Callable[["Server"], bool], timeout: float = 10.0, what: str = "condition") -> None:
        """Block until ``predicate(server)`` holds, re-checked on every event; `TimeoutError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"test server: {what} not reached within {timeout} s")
                self._cond.wait(remaining)

    def wait_clients(self, n: int = 1, timeout: float = 10.0) -> None:
        self.wait_until(lambda s: len(s._clients) >= n, timeout, f"{n} client(s) connected")

    def wait_received(self, n: int, timeout: float = 10.0) -> List[Received]:
        self.wait_until(lambda s: len(s.received) >= n, timeout, f"{n} frame(s) received")
        return list(self.received)

    def received_messages(self) -> List[Message]:
        """Every received frame decoded with the server's codec."""
        out: List[Message] = []
        for frame in list(self.received):
            data = frame.data.encode("utf-8") if isinstance(frame.data, str) else frame.data
            out.extend(self.codec.decode(data, frame.binary))
        return out
