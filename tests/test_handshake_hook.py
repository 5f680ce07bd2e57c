"""The handshake of every connection (issue 22, points 2-4): the connect hook, the recorded
subscriptions, the send buffer and the resume request, in that order, on every connect; and
`reconnect()`. Against a feed built here on the `websockets` library (not wsbridge.testing): it
wants a login first and closes otherwise, acks subscriptions, and records what it received, in
order, per connection."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import wsbridge
from wsbridge import Backoff, ConnectHookError, JsonCodec
from wsbridge.testing import RawServer
from wsbridge.testing.raw import read_close

from conftest import wait_until

FAST = Backoff(initial=0.05, factor=2, max_delay=0.2, jitter=0)
TOKEN = "s3cret-token"


class FeedServer:
    """A feed as exchanges and chat backends run one, on 127.0.0.1, in a thread of its own.

    The first frame must be ``{"op": "login", "token": TOKEN}``: anything else first is
    closed with 4001, a wrong token gets ``login_failed`` and 4003; a good one gets
    ``login_ok`` (``answer_login=False``: nothing). ``{"op": "subscribe", "channel": C}``
    is acked with ``subscribed`` (unless C is in ``no_ack``, or ``hold_acks``) and `publish` then sends the
    channel's ``tick``s, numbered per channel. Every frame received is kept in `frames` as
    ``(connection number, message)``, and the client's close code of each connection in
    `closes`."""

    def __init__(self, *, answer_login: bool = True, no_ack: Tuple[str, ...] = (), greet: bool = False) -> None:
        self.answer_login = answer_login
        self.no_ack = no_ack
        self.hold_acks = False
        self._held: List[Tuple[ServerConnection, str]] = []
        self.greet = greet
        self.token = TOKEN
        self.port = 0
        self.frames: List[Tuple[int, Dict[str, Any]]] = []
        self.closes: Dict[int, Optional[int]] = {}
        self.connections = 0
        self.seq: Dict[str, int] = {}
        self.cond = threading.Condition()
        self._subscribed: Dict[ServerConnection, Set[str]] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._stop: Optional[asyncio.Future] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    def start(self) -> "FeedServer":
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(ready),), name="test-feed", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the feed did not start"
        return self

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", self.port, ping_interval=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self._stop
            for ws in list(self._subscribed):
                ws.transport.abort()  # a crash: no close frame
            server.close(close_connections=False)

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(lambda: None if stop.done() else stop.set_result(None))
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "the feed did not stop"

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> "FeedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def _handler(self, ws: ServerConnection) -> None:
        with self.cond:
            self.connections += 1
            number = self.connections
        self._subscribed[ws] = set()
        logged_in = False
        try:
            if self.greet:
                await ws.send(json.dumps({"type": "hello"}))
            async for text in ws:
                message = json.loads(text)
                with self.cond:
                    self.frames.append((number, message))
                    self.cond.notify_all()
                op = message.get("op")
                if not logged_in:
                    if op != "login":
                        await ws.close(4001, "log in first")
                    elif message.get("token") != self.token:
                        await ws.send(json.dumps({"type": "login_failed"}))
                        await ws.close(4003, "bad token")
                    else:
                        logged_in = True
                        if self.answer_login:
                            await ws.send(json.dumps({"type": "login_ok"}))
                elif op == "subscribe":
                    self._subscribed[ws].add(message["channel"])
                    if self.hold_acks:
                        self._held.append((ws, message["channel"]))
                    elif message["channel"] not in self.no_ack:
                        await ws.send(json.dumps({"type": "subscribed", "channel": message["channel"]}))
                elif op == "unsubscribe":
                    self._subscribed[ws].discard(message["channel"])
                    await ws.send(json.dumps({"type": "unsubscribed", "channel": message["channel"]}))
        except ConnectionClosed:
            pass
        finally:
            del self._subscribed[ws]
            with self.cond:
                self.closes[number] = ws.close_code
                self.cond.notify_all()

    def publish(self, channel: str, count: int) -> None:
        """``count`` ticks of ``channel`` to every connection subscribed to it."""

        async def go() -> None:
            for _ in range(count):
                self.seq[channel] = seq = self.seq.get(channel, 0) + 1
                data = json.dumps({"type": "tick", "channel": channel, "seq": seq})
                for ws, channels in list(self._subscribed.items()):
                    if channel in channels:
                        await ws.send(data)

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def release_acks(self) -> None:
        """Send the acks ``hold_acks`` kept back, and hold no more."""

        async def go() -> None:
            self.hold_acks = False
            for ws, channel in self._held:
                await ws.send(json.dumps({"type": "subscribed", "channel": channel}))
            self._held.clear()

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(go(), self._loop).result(10)

    def on(self, connection: int) -> List[Dict[str, Any]]:
        """What connection number ``connection`` received, in order."""
        with self.cond:
            return [m for n, m in self.frames if n == connection]

    def wait(self, predicate: Any, what: str, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self), timeout), f"{what} not within {timeout} s: {self.frames}"


def ops(frames: List[Dict[str, Any]]) -> List[str]:
    """The frames as short labels: ``login``, ``subscribe:trades``, ``note:1``, ``resume``."""
    out = []
    for m in frames:
        op = m.get("op")
        out.append(f"{op}:{m.get('channel', m.get('n'))}" if op in ("subscribe", "unsubscribe", "note") else op)
    return out


def login(session: wsbridge.Session) -> None:
    session.send({"op": "login", "token": TOKEN})
    session.wait_for("login_ok", timeout=5)


def resume(positions: Dict[Optional[str], int]) -> Dict[str, Any]:
    return {"op": "resume", "positions": {str(k): v for k, v in sorted(positions.items(), key=str)}}


@pytest.fixture
def feed():
    with FeedServer() as server:
        yield server


def tracked(**kwargs: Any) -> Dict[str, Any]:
    """Client options for the feed: ticks numbered per channel, resumed with the feed's own request."""
    return dict(codec=JsonCodec(seq_field="seq", stream_field="channel"), resume=resume, backoff=FAST, **kwargs)


# -- 2: the hook ------------------------------------------------------------------------------------
def test_every_connect_runs_the_hook_then_the_subscriptions_then_the_send_buffer_then_the_resume(feed, make_client, collector):
    """Sends queued before start, from the hook, and from another thread while the hook
    waits, all go out after the login and the subscription; so on the next connection, with
    the resume request last; ``connected`` comes after the handshake."""
    events: List[str] = []
    during = threading.Event()
    sent_meanwhile = threading.Event()

    def hook(session: wsbridge.Session) -> None:
        events.append("hook")
        client.send({"op": "note", "n": f"from-hook-{len(events)}"})  # queued for after the handshake
        during.set()
        assert sent_meanwhile.wait(10)
        login(session)

    client = make_client(feed.url, on_connect=hook, **tracked())
    client.subscribe({"op": "subscribe", "channel": "trades"}, ack="subscribed")
    client.send({"op": "note", "n": 1})
    client.signals.connected.connect(lambda sender, **kw: events.append("connected"))

    def meanwhile() -> None:
        for round in (1, 2):
            assert during.wait(10)
            during.clear()
            client.send({"op": "note", "n": f"meanwhile-{round}"})
            sent_meanwhile.set()

    helper = threading.Thread(target=meanwhile, name="test-meanwhile")
    helper.start()
    client.start().wait_connected(timeout=10)
    feed.wait(lambda f: len(f.on(1)) >= 5, "the first connection's frames")
    assert ops(feed.on(1)) == ["login", "subscribe:trades", "note:1", "note:from-hook-1", "note:meanwhile-1"]

    feed.publish("trades", 3)
    wait_until(lambda: client.positions == {"trades": 3}, what="three ticks")
    sent_meanwhile.clear()
    feed.stop()
    wait_until(lambda: client.state == "backoff", what="the drop noticed")
    client.send({"op": "note", "n": 2})
    feed.start()
    helper.join(10)
    wait_until(lambda: client.stats.connects == 2 and client.connected, what="the second connection")
    feed.wait(lambda f: len(f.on(2)) >= 6, "the second connection's frames")
    assert ops(feed.on(2)) == ["login", "subscribe:trades", "note:2", "note:from-hook-3", "note:meanwhile-2", "resume"]
    assert feed.on(2)[-1]["positions"] == {"trades": 3}
    assert events == ["hook", "connected", "hook", "connected"]


def test_the_hook_is_not_held_behind_a_backlog_of_slow_subscribers(feed, make_client):
    """The first tick's subscriber blocks until the feed has the login of the second
    connection (the others take 50 ms each): a hook run behind the subscribers could never
    log in. Messages the hook waited for still reach the subscribers."""
    logged_in_again = threading.Event()
    handled: List[int] = []
    handled_at_login: List[int] = []
    replies: List[str] = []

    def watch_feed() -> None:
        try:
            feed.wait(lambda f: any(m.get("op") == "login" for m in f.on(2)), "the second login", timeout=30)
            handled_at_login.append(len(handled))
        except AssertionError:
            pass  # no second login: the assertion below says so
        logged_in_again.set()

    def slow(message: wsbridge.Message) -> None:
        if not handled:
            logged_in_again.wait(30)
        else:
            time.sleep(0.05)
        handled.append(message.payload["seq"])

    client = make_client(feed.url, on_connect=login, **tracked())
    client.on("tick", slow)
    client.on("login_ok", lambda message: replies.append(message.type))
    client.subscribe({"op": "subscribe", "channel": "trades"}, ack="subscribed")
    client.start().wait_connected(timeout=10)
    feed.publish("trades", 40)
    wait_until(lambda: client.stats.frames >= 42, what="the ticks received")  # login_ok, subscribed, 40 ticks
    watcher = threading.Thread(target=watch_feed, name="test-watch-feed")
    watcher.start()
    feed.restart()
    watcher.join(35)
    assert handled_at_login == [0], "the login waited for the subscribers"
    wait_until(lambda: len(handled) == 40, timeout=30, what="every tick handled")
    assert handled == list(range(1, 41))
    wait_until(lambda: replies == ["login_ok", "login_ok"], what="the hook's replies delivered")


def test_a_reply_that_came_before_wait_for_is_found(make_client):
    """The feed greets first; the hook asks for the greeting only after its own send."""
    with FeedServer(greet=True) as feed:
        got: List[str] = []

        def hook(session: wsbridge.Session) -> None:
            session.send({"op": "login", "token": TOKEN})
            got.append(session.wait_for("login_ok").type)
            got.append(session.wait_for(lambda m: m.type == "hello").type)

        client = make_client(feed.url, on_connect=hook)
        client.start().wait_connected(timeout=10)
        assert got == ["login_ok", "hello"]


@pytest.mark.parametrize("failure", ["raises", "times out"])
def test_a_failing_hook_fails_the_attempt_closes_the_connection_and_is_retried(failure, make_client, collector):
    """Reported on ``error`` (context ``handshake``), the connection closed with 1000, a
    backoff wait (the attempt counts as a failure), then the next attempt works."""
    with FeedServer(answer_login=failure != "times out") as feed:
        attempts: List[int] = []

        def hook(session: wsbridge.Session) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                session.send({"op": "login", "token": TOKEN})
                if failure == "raises":
                    raise RuntimeError("no such channel")
                session.wait_for("login_ok")  # the feed never answers: the hook's time runs out
            feed.answer_login = True
            login(session)

        errors, retries = collector(), collector()
        client = make_client(feed.url, on_connect=hook, connect_hook_timeout=1.0, backoff=FAST)
        client.signals.error.connect(errors)
        client.signals.reconnecting.connect(retries)
        client.start().wait_connected(timeout=20)
        report = errors.wait(1)[0]
        assert report["context"] == "handshake" and isinstance(report["error"], ConnectHookError)
        assert isinstance(report["error"].__cause__, RuntimeError if failure == "raises" else TimeoutError)
        assert "hook" in str(report["error"])
        assert retries.wait(1)[0] == {"attempt": 1, "delay": FAST.delay(1)}
        feed.wait(lambda f: f.closes.get(1, -1) == 1000, "the first connection closed with 1000")
        assert ops(feed.on(2)) == ["login"] and len(attempts) == 2


def test_a_failing_hook_gives_up_under_no_retry(feed, make_client):
    def hook(session: wsbridge.Session) -> None:
        raise ValueError("refused")

    client = make_client(feed.url, on_connect=hook, backoff=wsbridge.NO_RETRY)
    client.start()
    with pytest.raises(wsbridge.ConnectError, match="raised ValueError") as raised:
        client.wait_connected(timeout=10)
    assert "refused" not in str(raised.value)  # the hook's text is its own: the type only, the exception the cause
    assert isinstance(client.last_error, ConnectHookError) and str(client.last_error.__cause__) == "refused"


def test_session_send_goes_on_its_connection_only_and_raises_once_it_is_gone(feed, make_client):
    """A wrong token: the feed closes; the hook's wait ends with the connection, and a send on
    the dead session raises instead of going to the next connection."""
    seen: List[str] = []

    def hook(session: wsbridge.Session) -> None:
        if not seen:
            session.send({"op": "login", "token": "expired"})
            with pytest.raises(ConnectionError):
                session.wait_for("login_ok", timeout=10)
            seen.append("ended")
            with pytest.raises(ConnectionError):
                session.send({"op": "stale"})
            seen.append("send refused")
            raise ConnectionError("token refused")
        login(session)

    client = make_client(feed.url, on_connect=hook)
    client.start().wait_connected(timeout=10)
    assert seen == ["ended", "send refused"]
    assert ops(feed.on(1)) == ["login"] and ops(feed.on(2)) == ["login"]


def test_stop_during_the_hook_returns_within_its_timeout(feed, make_client):
    """The hook waits for a reply that never comes (a 60 s hook time): stop() ends it."""
    waiting = threading.Event()
    ended: List[type] = []

    def hook(session: wsbridge.Session) -> None:
        waiting.set()
        try:
            session.wait_for("never")
        except Exception as exc:
            ended.append(type(exc))
            raise

    client = make_client(feed.url, on_connect=hook, connect_hook_timeout=60)
    client.start()
    assert waiting.wait(10)
    assert client.stop(timeout=5)
    assert ended and issubclass(ended[0], (ConnectionError, wsbridge.ClientClosed))
    assert client.state == "stopped"


def test_a_hook_may_stop_its_client(feed, make_client, collector):
    stopped = collector()

    def hook(session: wsbridge.Session) -> None:
        with pytest.raises(wsbridge.UsageError):
            client.wait_connected(timeout=1)
        client.stop()
        stopped("returned")

    client = make_client(feed.url, on_connect=hook)
    done = collector()
    client.signals.stopped.connect(done)
    client.start()
    assert stopped.wait(1) == ["returned"]
    done.wait(1)
    assert client.state == "stopped"
    with pytest.raises(wsbridge.ClientClosed):
        client.wait_connected(timeout=1)


# -- 3: recorded subscriptions ----------------------------------------------------------------------
def test_subscriptions_go_out_once_per_connection_in_order_with_other_sends(feed, make_client, collector):
    """Recorded before start, made while connected (between two sends: in order), from a
    subscriber, from the hook: each goes out once per connection, and again on the next;
    a callable subscription carries its own resume offset."""
    hooked: List[int] = []

    def hook(session: wsbridge.Session) -> None:
        login(session)
        if not hooked:
            client.subscribe({"op": "subscribe", "channel": "from-hook"})
        hooked.append(1)

    client = make_client(feed.url, on_connect=hook, **tracked())
    client.subscribe(lambda positions: {"op": "subscribe", "channel": "trades", "from": positions.get("trades")},
                     ack=lambda m: m.type == "subscribed" and m.payload["channel"] == "trades")
    client.on("tick", lambda m: client.subscribe({"op": "subscribe", "channel": "from-subscriber"}) if m.seq == 1 else None)
    client.start().wait_connected(timeout=10)
    client.send({"op": "note", "n": "a"})
    client.subscribe({"op": "subscribe", "channel": "live"}, ack="subscribed")
    client.send({"op": "note", "n": "b"})
    feed.publish("trades", 2)
    feed.wait(lambda f: "subscribe:from-subscriber" in ops(f.on(1)), "the subscriber's subscription")
    assert ops(feed.on(1)) == ["login", "subscribe:trades", "subscribe:from-hook", "note:a", "subscribe:live", "note:b",
                               "subscribe:from-subscriber"]
    assert feed.on(1)[1]["from"] is None
    wait_until(lambda: client.positions == {"trades": 2}, what="the ticks tracked")

    feed.restart()
    wait_until(lambda: client.stats.connects == 2 and client.connected, what="the second connection")
    feed.wait(lambda f: len(f.on(2)) >= 6, "the second connection's frames")
    assert ops(feed.on(2)) == ["login", "subscribe:trades", "subscribe:from-hook", "subscribe:live",
                               "subscribe:from-subscriber", "resume"]
    assert feed.on(2)[1]["from"] == 2
    assert len(client.subscriptions) == 4


def test_a_subscription_made_while_disconnected_goes_out_once(make_client, free_port):
    """Not once from the record and again from the send buffer."""
    feed = FeedServer()
    feed.port = free_port
    client = make_client(feed.url, on_connect=login, backoff=FAST)
    client.start()
    client.subscribe({"op": "subscribe", "channel": "trades"}, ack="subscribed")
    client.send({"op": "note", "n": 1})
    wait_until(lambda: client.stats.connect_attempts >= 2, what="a refused attempt")
    with feed:
        client.wait_connected(timeout=10)
        feed.wait(lambda f: len(f.on(1)) >= 3, "the frames")
        client.send({"op": "note", "n": "last"})
        feed.wait(lambda f: len(f.on(1)) >= 4, "the last note")
        assert ops(feed.on(1)) == ["login", "subscribe:trades", "note:1", "note:last"]
    assert client.unsent() == []


@pytest.mark.parametrize("then", ["the ack comes", "the connection drops"])
def test_a_subscription_made_during_the_handshake_goes_out_once(then, feed, make_client):
    """Made while the handshake waits for another's ack, it waits in the send buffer for
    this connection, in order; if the connection drops first, the next one sends it from
    its record, and not again from the buffer."""
    feed.hold_acks = True
    client = make_client(feed.url, on_connect=login, backoff=FAST)
    client.subscribe({"op": "subscribe", "channel": "trades"}, ack="subscribed")
    client.start()
    feed.wait(lambda f: "subscribe:trades" in ops(f.on(1)), "the first subscription")
    client.send({"op": "note", "n": 1})
    client.subscribe({"op": "subscribe", "channel": "news"})
    if then == "the ack comes":
        feed.release_acks()
        connection = 1
        expected = ["login", "subscribe:trades", "note:1", "subscribe:news", "note:last"]
    else:
        feed.hold_acks = False
        feed.restart()
        connection = 2
        expected = ["login", "subscribe:trades", "subscribe:news", "note:1", "note:last"]
    client.wait_connected(timeout=10)
    client.send({"op": "note", "n": "last"})
    feed.wait(lambda f: "note:last" in ops(f.on(connection)), "the last note")
    assert ops(feed.on(connection)) == expected


def test_a_missing_ack_fails_the_attempt(make_client, collector):
    with FeedServer(no_ack=("quiet",)) as feed:
        errors = collector()
        client = make_client(feed.url, on_connect=login, backoff=wsbridge.NO_RETRY)
        client.signals.error.connect(errors)
        sub = client.subscribe({"op": "subscribe", "channel": "quiet"}, ack="subscribed", timeout=0.5)
        client.start()
        with pytest.raises(wsbridge.ConnectError):
            client.wait_connected(timeout=10)
        error = errors.wait(1)[0]["error"]
        assert isinstance(error, ConnectHookError) and f"#{sub.number}" in str(error)
        assert isinstance(error.__cause__, TimeoutError)
        feed.wait(lambda f: f.closes.get(1) == 1000, "the connection closed with 1000")


def test_unsubscribe_sends_now_and_the_next_connection_does_not_subscribe(feed, make_client):
    client = make_client(feed.url, on_connect=login, backoff=FAST)
    trades = client.subscribe({"op": "subscribe", "channel": "trades"}, ack="subscribed")
    client.subscribe({"op": "subscribe", "channel": "news"})
    client.start().wait_connected(timeout=10)
    assert client.unsubscribe(trades, {"op": "unsubscribe", "channel": "trades"})
    assert client.unsubscribe({"op": "subscribe", "channel": "news"})  # by its message, and nothing to send
    assert not client.unsubscribe(trades) and not client.unsubscribe({"op": "subscribe", "channel": "other"})
    feed.wait(lambda f: len(f.on(1)) >= 4, "the unsubscribe")
    assert ops(feed.on(1)) == ["login", "subscribe:trades", "subscribe:news", "unsubscribe:trades"]
    feed.restart()
    wait_until(lambda: client.stats.connects == 2 and client.connected, what="the second connection")
    client.send({"op": "note", "n": "end"})
    feed.wait(lambda f: len(f.on(2)) >= 2, "the note")
    assert ops(feed.on(2)) == ["login", "note:end"] and client.subscriptions == []


# -- 4: reconnect() ---------------------------------------------------------------------------------
def test_reconnect_closes_with_1000_and_connects_again_at_once(make_client, collector):
    """A raw-socket peer reads the close code; the reconnect is no failure and waits no backoff."""
    with RawServer() as raw:
        retries = collector()
        client = make_client(raw.url, backoff=Backoff(initial=60, jitter=0), ping_interval=0)
        client.signals.reconnecting.connect(retries)
        client.start().wait_connected(timeout=10)
        first = raw.wait_connection()
        client.reconnect()
        assert read_close(first) == 1000
        first.sendall(b"\x88\x02\x03\xe8")  # the close frame back
        raw.wait_connections(2)
        client.wait_connected(timeout=10)
        assert retries.wait(1) == [{"attempt": 0, "delay": 0.0}]
        assert client.stats.connects == 2


def test_reconnect_keeps_subscriptions_positions_and_the_send_buffer_and_may_switch_url(feed, make_client, collector):
    client = make_client(feed.url, on_connect=login, **tracked())
    client.subscribe(lambda positions: {"op": "subscribe", "channel": "trades", "from": positions.get("trades")},
                     ack="subscribed")
    client.start().wait_connected(timeout=10)
    feed.publish("trades", 3)
    wait_until(lambda: client.positions == {"trades": 3}, what="three ticks")
    with FeedServer() as other:
        with pytest.raises(ValueError):
            client.reconnect(url="http://127.0.0.1/")
        assert client.url == feed.url
        client.reconnect(url=other.url, wait=10)
        assert client.url == other.url
        client.send({"op": "note", "n": 1})
        other.wait(lambda f: len(f.on(1)) >= 4, "the frames on the new URL")
        assert ops(other.on(1)) == ["login", "subscribe:trades", "resume", "note:1"]
        assert other.on(1)[1]["from"] == 3 and other.on(1)[2]["positions"] == {"trades": 3}
        feed.wait(lambda f: f.closes.get(1) == 1000, "the first connection closed with 1000")
        assert feed.connections == 1


def test_reconnect_cuts_a_backoff_wait_short(make_client, free_port):
    """A 60 s backoff after a refused attempt: reconnect() connects now."""
    feed = FeedServer()
    feed.port = free_port
    client = make_client(feed.url, backoff=Backoff(initial=60, jitter=0))
    client.start()
    wait_until(lambda: client.state == "backoff", what="the backoff wait")
    with feed:
        client.reconnect(wait=10)
        assert client.connected and client.stats.connect_attempts == 2


def test_reconnect_from_a_subscriber_returns_at_once(feed, make_client):
    client = make_client(feed.url, on_connect=login, backoff=FAST)
    client.on("login_ok", lambda m: client.reconnect() if client.stats.connects == 1 else None)
    client.start()
    wait_until(lambda: client.stats.connects == 2 and client.connected, what="the connection made again")
    feed.wait(lambda f: f.closes.get(1) == 1000, "the first connection closed")


def test_the_options_are_checked_at_construction(feed):
    with pytest.raises(ValueError, match="on_connect"):
        wsbridge.Client(feed.url, on_connect="login")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="connect_hook_timeout"):
        wsbridge.Client(feed.url, connect_hook_timeout=0)
    client = wsbridge.Client(feed.url)
    with pytest.raises(ValueError):
        client.subscribe({"op": "subscribe"}, ack=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        client.subscribe({"op": "subscribe"}, timeout=0)
    with pytest.raises(ValueError):
        client.subscribe("\ud800")
    with pytest.raises(ValueError):
        client.on_connect(None)  # type: ignore[arg-type]
    sub = client.subscribe({"op": "subscribe", "token": TOKEN}, ack="subscribed")
    assert TOKEN not in repr(sub) and client.subscriptions == [sub]
    client.reconnect(url=feed.url.replace("/feed", "/other"))  # before start: the URL only
    assert client.url.endswith("/other") and client.state == "new"
    client.stop()
