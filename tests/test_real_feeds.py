"""Feeds shaped like real services, served by the ``websockets`` library on 127.0.0.1 (not
wsbridge's own test server): servers that restart while they deliver, retry rules of
the user's, and message types that are not a top-level ``"type"`` string (Phoenix
channels' arrays, Discord's numeric ``op``, a JSON-RPC channel in a nested field)."""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Callable, Iterator, List

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import Server, serve

import wsbridge
from wsbridge import Backoff, JsonCodec, Message, ReconnectPolicy
from wsbridge.runtime.policy import FATAL_CLOSE_CODES


@contextlib.contextmanager
def websockets_server(handler: Callable[[Any], None], port: int = 0, close_code: int = 1001,
                      **kwargs: Any) -> Iterator[Server]:
    """A ``websockets`` server in a thread; on exit it closes every connection with
    ``close_code`` (1012: a service restart) and stops listening."""
    with serve(handler, "127.0.0.1", port, **kwargs) as server:
        thread = threading.Thread(target=server.serve_forever, name="test-websockets-server", daemon=True)
        thread.start()
        try:
            yield server
        finally:
            server.shutdown(code=close_code)
            thread.join(10)


def url_of(server: Server) -> str:
    return f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"


def until_closed(ws: Any) -> None:
    """Hold a connection until the client or the server's shutdown closes it."""
    with contextlib.suppress(ConnectionClosed):
        for _ in ws:
            pass


def timeline(client: wsbridge.Client, collector: Any, *names: str) -> Any:
    """The named lifecycle signals of ``client``, in the order they came, as ``(name, kwargs)``."""
    events = collector()
    for name in names:
        getattr(client.signals, name).connect(lambda sender, name=name, **kw: events((name, kw)))
    return events


def after_each_disconnect(events: List[Any]) -> List[dict]:
    """The ``reconnecting`` that followed each ``disconnected``."""
    pairs = zip(events, events[1:], strict=False)
    return [kw for (first, _), (name, kw) in pairs if first == "disconnected" and name == "reconnecting"]


# -- the retry policy ---------------------------------------------------------------------------
def test_a_server_that_restarts_as_it_delivers_is_retried_after_initial_each_time(make_client, collector):
    """The issue's case: every connection delivers, then the server restarts (close 1012),
    sooner than ``reset_after``. Each reconnect waits ``initial``; before, the waits
    doubled with every restart (0.5, 0.5, 1.6, 3.0, 5.6, 10.1 s)."""

    def handler(ws: Any) -> None:
        for n in range(3):
            ws.send(json.dumps({"type": "tick", "n": n}))
        until_closed(ws)

    ticks = collector()
    backoff = Backoff(initial=0.05, factor=2.0, max_delay=5.0, jitter=0)  # reset_after: 10 s
    with websockets_server(handler, close_code=1012) as server:
        port = server.socket.getsockname()[1]
        client = make_client(url_of(server), backoff=backoff)
        client.on("tick", ticks)
        events = timeline(client, collector, "disconnected", "reconnecting")
        client.start()
        ticks.wait(3)
    for restart in range(1, 5):  # the same port, every time
        with websockets_server(handler, port, close_code=1012):
            ticks.wait(3 * (restart + 1))  # signals travel in line with messages: the last reconnect's are in
    retries = after_each_disconnect(events.items)
    assert len(retries) >= 4, events.items
    assert [(r["attempt"], r["delay"]) for r in retries] == [(1, 0.05)] * len(retries)
    assert client.stats.connects == 5


@pytest.mark.parametrize("junk", [[], ["not json {"]], ids=["nothing", "frames_the_codec_refuses"])
def test_connections_that_deliver_nothing_still_back_off(make_client, collector, junk):
    """``reset_after`` keeps its meaning for a server that accepts and closes at once, or
    sends only frames the codec refuses (a hostile review: those frames counted as delivering
    once the dispatcher decoded them, so the backoff never grew: 30 connections in 6 s against
    5; the reader decodes a connection's frames until one gives a message)."""

    def handler(ws: Any) -> None:
        for frame in junk:
            ws.send(frame)
        ws.close(1012, "restarting")

    with websockets_server(handler) as server:
        client = make_client(url_of(server), backoff=Backoff(initial=0.01, factor=2.0, max_delay=0.04, jitter=0))
        events = timeline(client, collector, "disconnected", "reconnecting")
        client.start()
        events.wait(8)
        client.stop()
    retries = after_each_disconnect(events.items)
    assert [(r["attempt"], r["delay"]) for r in retries[:4]] == [(1, 0.01), (2, 0.02), (3, 0.04), (4, 0.04)]
    assert client.stats.protocol_errors >= (4 if junk else 0)


def test_retry_statuses_retries_a_404_of_a_server_between_deployments(make_client):
    refusals = iter(range(2))
    requests: List[str] = []

    def process_request(connection: Any, request: Any) -> Any:
        requests.append(request.path)
        if next(refusals, None) is not None:
            return connection.respond(404, "not deployed yet\n")
        return None

    with websockets_server(until_closed, process_request=process_request) as server:
        policy = ReconnectPolicy(Backoff(initial=0.01, jitter=0), retry_statuses={404})
        client = make_client(url_of(server), policy=policy)
        client.start().wait_connected(timeout=10)
        assert len(requests) == 3 and client.stats.connect_attempts == 3
        client.stop()


def test_fatal_close_codes_end_the_client_on_a_code_of_the_application(make_client, collector):
    connections = []

    def handler(ws: Any) -> None:
        connections.append(ws)
        ws.close(4001, "banned")

    with websockets_server(handler) as server:
        policy = ReconnectPolicy(Backoff(initial=0.01, jitter=0), fatal_close_codes=FATAL_CLOSE_CODES | {4001})
        client = make_client(url_of(server), policy=policy)
        gave_up = collector()
        client.signals.gave_up.connect(gave_up)
        client.start()
        error = gave_up.wait(1)[0]["error"]
        assert isinstance(error, wsbridge.ConnectError) and "code 4001 (banned)" in str(error)
        assert client.state == "gave_up" and len(connections) == 1


def test_a_subclass_of_the_policy_takes_the_delay_from_the_close_reason(make_client, collector):
    """A service that closes with its own code and says in the reason when to come back."""

    class ServerSaysWhen(ReconnectPolicy):
        def decide(self, ending: wsbridge.Ending, failures: int, rand: Any = None, **counts: int) -> wsbridge.Decision:
            decision = super().decide(ending, failures, rand, **counts)
            if ending.close_code == 4290 and not decision.give_up:
                return wsbridge.Decision(decision.failures, delay=float(ending.close_reason or 0))
            return decision

    connections = []

    def handler(ws: Any) -> None:
        connections.append(ws)
        if len(connections) == 1:
            ws.close(4290, "0.125")
        else:
            ws.send(json.dumps({"type": "welcome"}))
            until_closed(ws)

    with websockets_server(handler) as server:
        client = make_client(url_of(server), policy=ServerSaysWhen(Backoff(initial=5.0, jitter=0)))
        events = timeline(client, collector, "disconnected", "reconnecting")
        client.start()
        assert client.wait_for("welcome", timeout=10)
        assert after_each_disconnect(events.items)[0] == {"attempt": 1, "delay": 0.125}
        client.stop()


# -- message types of real feeds -------------------------------------------------------------------
def phoenix_event(frame: Any) -> Any:
    """Phoenix channels (v2 serializer): ``[join_ref, ref, topic, event, payload]``."""
    return frame[3]


def test_a_phoenix_channel_typed_by_a_function_of_its_arrays(make_client, collector):
    def handler(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in ws:
                join_ref, ref, topic, event, payload = json.loads(frame)
                if event == "phx_join":
                    ws.send(json.dumps([join_ref, ref, topic, "phx_reply", {"status": "ok", "response": {}}]))
                    ws.send(json.dumps([join_ref, None, topic, "new_msg", {"body": "hello " + payload["user"]}]))
                elif event == "heartbeat":
                    ws.send(json.dumps([None, ref, "phoenix", "phx_reply", {"status": "ok", "response": {}}]))

    with websockets_server(handler) as server:
        client = make_client(url_of(server), codec=JsonCodec(phoenix_event))
        replies, messages, errors = collector(), collector(), collector()
        client.on("phx_reply", replies)
        client.on("new_msg", messages)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        client.send(Message("phx_join", ["1", "1", "room:lobby", "phx_join", {"user": "ann"}]))
        client.send(["2", "2", "phoenix", "heartbeat", {}])  # a list goes out as given too
        [msg] = messages.wait(1)
        assert msg.payload == ["1", None, "room:lobby", "new_msg", {"body": "hello ann"}]
        assert [(m.payload[1], m.payload[2], m.payload[4]["status"]) for m in replies.wait(2)] == [
            ("1", "room:lobby", "ok"), ("2", "phoenix", "ok")]
        assert not errors.items and client.stats.protocol_errors == 0


def test_a_discord_style_gateway_typed_by_its_numeric_op(make_client, collector):
    """Hello (op 10), identify (op 2), dispatches (op 0, numbered by ``s``), heartbeat ack (op 11)."""

    def handler(ws: Any) -> None:
        ws.send(json.dumps({"op": 10, "d": {"heartbeat_interval": 41250}}))
        with contextlib.suppress(ConnectionClosed):
            for frame in ws:
                request = json.loads(frame)
                if request["op"] == 2:
                    ws.send(json.dumps({"op": 0, "t": "READY", "s": 1, "d": {"session_id": "s1"}}))
                    ws.send(json.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": 2, "d": {"content": "hi"}}))
                    ws.send(json.dumps({"op": 0, "t": "MESSAGE_CREATE", "s": 2, "d": {"content": "hi"}}))  # again
                elif request["op"] == 1:
                    ws.send(json.dumps({"op": 11}))

    with websockets_server(handler) as server:
        client = make_client(url_of(server), codec=JsonCodec("op", seq_field="s"))
        dispatches, acks = collector(), collector()

        @client.on("10")
        def identify(msg: Message) -> None:
            client.send({"op": 2, "d": {"token": "t", "intents": 513}})
            client.send({"op": 1, "d": None})

        client.on("0", dispatches)
        client.on("11", acks)
        client.start()
        got = dispatches.wait(2)
        assert [(m.type, m.seq, m.payload["t"]) for m in got] == [("0", 1, "READY"), ("0", 2, "MESSAGE_CREATE")]
        assert acks.wait(1)[0].type == "11"
        assert client.stats.duplicates == 1 and client.stats.protocol_errors == 0


def test_a_json_rpc_feed_typed_and_numbered_by_nested_fields(make_client, collector):
    """A subscription feed (JSON-RPC 2.0 notifications) whose channel and sequence number
    are inside ``params``; the replies to requests have no channel (``default_type``)."""

    def handler(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            for frame in ws:
                request = json.loads(frame)
                channels = request["params"]["channels"]
                ws.send(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": channels}))
                for seq in (1, 2, 2, 3):  # 2 twice: dropped as a duplicate by the nested seq
                    for channel in channels:
                        ws.send(json.dumps({"jsonrpc": "2.0", "method": "subscription",
                                            "params": {"channel": channel, "data": {"seq": seq, "px": 100 + seq}}}))

    codec = JsonCodec("params.channel", seq_field="params.data.seq", stream_field="params.channel", default_type="response")
    with websockets_server(handler) as server:
        client = make_client(url_of(server), codec=codec)
        trades, book, responses = collector(), collector(), collector()
        client.on("trades.BTC", trades)
        client.on("book.BTC", book)
        client.on("response", responses)
        client.start().wait_connected(timeout=10)
        client.send({"jsonrpc": "2.0", "id": 7, "method": "public/subscribe", "params": {"channels": ["trades.BTC", "book.BTC"]}})
        assert responses.wait(1)[0].payload["result"] == ["trades.BTC", "book.BTC"]
        assert [(m.seq, m.stream, m.payload["params"]["data"]["px"]) for m in trades.wait(3)] == [
            (1, "trades.BTC", 101), (2, "trades.BTC", 102), (3, "trades.BTC", 103)]
        assert [m.seq for m in book.wait(3)] == [1, 2, 3]
        assert client.positions == {"trades.BTC": 3, "book.BTC": 3}
        assert client.stats.duplicates == 2 and client.stats.protocol_errors == 0


# -- the policy and the credentials, end to end (issue 22, point 1's rule and point 6) ----------------
def refusing(statuses: List[bytes]):
    """A `RawServer` answer that refuses with each of ``statuses`` in turn (full status
    lines' tails, e.g. ``b"401 Unauthorized"``), then accepts."""
    from wsbridge.testing.raw import accept_response

    left = list(statuses)

    def respond(request: bytes) -> bytes:
        if left:
            return b"HTTP/1.1 " + left.pop(0) + b"\r\nContent-Length: 0\r\n\r\n"
        return accept_response(request)
    return respond


def test_a_401_right_after_fresh_credentials_is_retried_once_then_gives_up(make_client):
    """A token that expired between issue and use: with a callable header the policy tries
    once more with a new one; a second 401 in a row is fatal, as a 401 with static
    credentials is at once."""
    from wsbridge.testing import RawServer

    issued: List[str] = []

    def headers() -> dict:
        issued.append(f"token-{len(issued)}")
        return {"Authorization": f"Bearer {issued[-1]}"}

    backoff = Backoff(initial=0.01, jitter=0)
    with RawServer(respond=refusing([b"401 Unauthorized"])) as server:
        client = make_client(server.url, headers=headers, backoff=backoff).start()
        client.wait_connected(10)
        assert len(server.requests) == 2 and issued == ["token-0", "token-1"]
    with RawServer(respond=refusing([b"401 Unauthorized"] * 3)) as server:
        client = make_client(server.url, headers=headers, backoff=backoff).start()
        with contextlib.suppress(wsbridge.ConnectError), contextlib.suppress(TimeoutError):
            client.wait_connected(10)
        assert client.state == "gave_up" and len(server.requests) == 2
    with RawServer(respond=refusing([b"401 Unauthorized"])) as server:
        client = make_client(server.url, headers={"Authorization": "Bearer static"}, backoff=backoff).start()
        with contextlib.suppress(wsbridge.ConnectError):
            client.wait_connected(10)
        assert client.state == "gave_up" and len(server.requests) == 1


def test_retry_after_of_a_503_sets_the_delay(make_client, collector):
    from wsbridge.testing import RawServer

    with RawServer(respond=refusing([b"503 Service Unavailable\r\nRetry-After: 2"])) as server:
        client = make_client(server.url, backoff=Backoff(initial=0.01, jitter=0))
        events = timeline(client, collector, "reconnecting")
        client.start().wait_connected(10)
    [(_, reconnecting)] = events.wait(1)
    assert reconnecting["delay"] == 2.0


def test_a_connection_that_passed_the_hook_resets_the_backoff_though_it_delivered_nothing(make_client, collector):
    """A server that takes the client's login, then restarts before sending anything:
    every connection passed the hook, so each reconnect waits ``initial``."""

    def handler(ws: Any) -> None:
        assert json.loads(ws.recv(timeout=10))["type"] == "login"
        ws.close(1012)

    def login(session: Any) -> None:
        session.send({"type": "login"})

    with websockets_server(handler) as server:
        client = make_client(url_of(server), backoff=Backoff(initial=0.05, factor=2.0, max_delay=5.0, jitter=0),
                             on_connect=login)
        events = timeline(client, collector, "disconnected", "reconnecting")
        client.start()
        events.wait(8)
        client.stop()
    delays = [kw["delay"] for kw in after_each_disconnect(events.items)]
    assert len(delays) >= 3 and set(delays) == {0.05}, delays
