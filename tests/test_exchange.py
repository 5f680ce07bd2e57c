"""A feed that needs everything at once (issue 22, point 9): `wsbridge.testing.ExchangeServer`
wants a bearer token that expires, subscriptions it acks, and a resume request of its own
shape, numbers updates per channel, and is cut again and again. The client gets a fresh
token for every attempt (from the server's ``GET /token``, as exchanges hand out
WebSocket tokens over REST), subscribes on every connect (recorded subscriptions, or a
connect hook), and resumes each channel where it was: nothing lost, nothing twice, each
channel in order. The server's protocol is checked first with a client that is not ours
(the `websockets` library's)."""

from __future__ import annotations

import json
import logging
import urllib.request
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import wsbridge
from wsbridge import JsonCodec
from wsbridge.testing import ExchangeServer

from conftest import PProxy

CHANNELS = ("ticker.BTC", "ticker.ETH")
FAST = wsbridge.Backoff(initial=0.05, max_delay=0.2, jitter=0)
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the token endpoint, never through a proxy


def fetch_token(exchange: ExchangeServer) -> str:
    with DIRECT.open(exchange.token_url, timeout=10) as response:
        return json.load(response)["token"]


def fresh_headers(exchange: ExchangeServer) -> Callable[[], Dict[str, str]]:
    """``headers=`` for the client: a token fetched from the server for every attempt."""
    return lambda: {"Authorization": f"Bearer {fetch_token(exchange)}"}


def resume(positions: Dict[Optional[str], int]) -> Dict[str, Any]:
    """The exchange's resume request: each channel from the first update not received."""
    return {"op": "resume", "from": {channel: seq + 1 for channel, seq in positions.items()}}


def acked(channel: str) -> Callable[[wsbridge.Message], bool]:
    return lambda m: m.type == "subscribed" and m.payload.get("channel") == channel


def join_channels(session: wsbridge.Session) -> None:
    """A connect hook that subscribes to each channel and waits for its ack."""
    for channel in CHANNELS:
        session.send({"op": "subscribe", "channel": channel})
        session.wait_for(acked(channel), timeout=5)


def ops(exchange: ExchangeServer, connection: int) -> List[str]:
    """What connection number ``connection`` sent, as labels: ``subscribe:ticker.BTC``, ``resume``."""
    return [f"{m.type}:{m.payload['channel']}" if m.type == "subscribe" else m.type
            for frame in exchange.received if frame.client == connection
            for m in exchange.codec.decode(frame.data.encode() if isinstance(frame.data, str) else frame.data, False)]


# -- the server, through a client that is not ours ------------------------------------------------------------


def test_the_exchange_refuses_a_missing_or_expired_token_and_hands_out_fresh_ones():
    with ExchangeServer() as exchange:
        with pytest.raises(InvalidStatus) as missing:
            connect(exchange.url, open_timeout=10)
        token = fetch_token(exchange)
        with connect(exchange.url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10):
            pass
        exchange.expire_tokens()
        with pytest.raises(InvalidStatus) as expired:
            connect(exchange.url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10)
        short = exchange.issue_token(ttl=0.000001)
        with pytest.raises(InvalidStatus):
            connect(exchange.url, additional_headers={"Authorization": f"Bearer {short}"}, open_timeout=10)
    for refused in (missing.value, expired.value):
        assert refused.response.status_code == 401
        assert refused.response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert exchange.tokens_accepted == [token] and exchange.tokens_refused == 3
    with pytest.raises(ValueError, match="token_ttl"):
        ExchangeServer(token_ttl=0)


def test_the_exchange_acks_subscriptions_numbers_each_channel_and_resumes_in_its_own_shape():
    with ExchangeServer() as exchange:
        exchange.update("ticker.BTC", {"price": 1}, {"price": 2})
        headers = {"Authorization": f"Bearer {exchange.issue_token()}"}
        with connect(exchange.url, additional_headers=headers, open_timeout=10) as ws:
            def recv() -> Dict[str, Any]:
                return json.loads(ws.recv(timeout=10))

            ws.send(json.dumps({"op": "subscribe", "channel": "ticker.BTC"}))
            assert recv() == {"op": "subscribed", "channel": "ticker.BTC"}
            exchange.update("ticker.BTC", {"price": 3})
            exchange.update("ticker.ETH", {"price": 9})  # not subscribed: not sent
            assert recv() == {"op": "update", "channel": "ticker.BTC", "seq": 3, "data": {"price": 3}}
            ws.send(json.dumps({"op": "resume", "from": {"ticker.BTC": 2}}))
            assert [recv()["seq"] for _ in range(2)] == [2, 3]
            ws.send(json.dumps({"op": "subscribe", "channel": "ticker.ETH", "from": 1}))
            assert recv() == {"op": "subscribed", "channel": "ticker.ETH"}
            assert recv() == {"op": "update", "channel": "ticker.ETH", "seq": 1, "data": {"price": 9}}
            for bad in ('{"op": "resume", "from": {"ticker.SOL": 1}}', '{"op": "resume"}', '{"op": "hello"}', "[1]"):
                ws.send(bad)
                assert recv()["op"] == "error"
            ws.send(json.dumps({"op": "unsubscribe", "channel": "ticker.BTC"}))
            assert recv() == {"op": "unsubscribed", "channel": "ticker.BTC"}
            exchange.update("ticker.BTC", {"price": 4})
            exchange.update("ticker.ETH", {"price": 10})
            assert recv()["channel"] == "ticker.ETH"  # BTC's 4th went nowhere
            exchange.drop_clients()
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
    assert exchange.resume_requests == [{"ticker.BTC": 2}]


# -- the client against it --------------------------------------------------------------------------------------


@pytest.mark.parametrize("joins, proxy", [("subscribe", None), ("hook", "socks5"), ("subscribe", "http")],
                         ids=["recorded-subscriptions", "connect-hook-through-pproxy-socks5", "through-pproxy-http"])
def test_through_repeated_cuts_and_expired_tokens_nothing_is_lost_or_repeated_and_each_channel_stays_in_order(
        joins, proxy, make_client, collector, caplog):
    """Every round: updates on both channels, every token expires, then a cut (TCP, a
    close frame, or a restart with updates published while the server is down). Each
    reconnect gets in with a token of its own (never logged), subscribes before anything
    else, then asks for each channel from where it was, in the server's shape."""
    caplog.set_level(logging.DEBUG)
    with ExchangeServer() as exchange, (PProxy(proxy) if proxy else nullcontext()) as pproxy:
        options: Dict[str, Any] = dict(
            codec=JsonCodec(type_field="op", seq_field="seq", stream_field="channel"), resume=resume,
            headers=fresh_headers(exchange), backoff=FAST)
        if pproxy is not None:
            options["proxy"] = pproxy.url(proxy)
        if joins == "hook":
            options["on_connect"] = join_channels
        client = make_client(exchange.url, **options)
        if joins == "subscribe":
            for channel in CHANNELS:
                client.subscribe({"op": "subscribe", "channel": channel}, ack=acked(channel))
        updates, connected, errors = collector(), collector(), collector()
        client.on("update", updates)
        client.on("error", errors)  # the exchange's complaints
        client.signals.error.connect(errors)
        client.signals.connected.connect(connected)
        client.start().wait_connected(timeout=10)

        rounds = 6
        for n in range(rounds):
            for channel in CHANNELS:
                exchange.update(channel, *({"round": n, "i": i} for i in range(20)))
            exchange.expire_tokens()
            cut = n % 3
            if cut == 0:
                exchange.drop_clients()
            elif cut == 1:
                exchange.close_clients(1012, "restarting")
            else:
                exchange.stop()
                for channel in CHANNELS:
                    exchange.update(channel, *({"round": n, "down": i} for i in range(5)))
                exchange.start()
            connected.wait(n + 2, timeout=20)
            # before the next cut, the server has read the new connection's handshake
            exchange.wait_until(lambda s, k=n + 2: len(ops(s, k)) >= 3, what=f"connection {n + 2}'s handshake")
        for channel in CHANNELS:
            exchange.update(channel, {"last": True})
        total = sum(len(exchange.updates[c]) for c in CHANNELS)
        updates.wait(total, timeout=30)

    for channel in CHANNELS:
        seqs = [m.seq for m in updates.items if m.stream == channel]
        assert seqs == list(range(1, len(exchange.updates[channel]) + 1)), channel
    assert len(updates.items) == total and not errors.items
    assert client.stats.lost == 0 and client.stats.connects == rounds + 1
    accepted = exchange.tokens_accepted
    assert len(accepted) == len(set(accepted)) == exchange.connections_total == rounds + 1 and exchange.tokens_refused == 0
    subscribes = [f"subscribe:{c}" for c in CHANNELS]
    assert ops(exchange, 1)[:2] == subscribes
    for connection in range(2, rounds + 2):
        assert ops(exchange, connection)[:3] == [*subscribes, "resume"], connection
    assert len(exchange.resume_requests) >= rounds
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("wsbridge") or r.name == "websocket")
    assert logged and not [token for token in accepted if token in logged]


def test_a_token_given_once_expires_and_the_reconnect_is_refused_with_401(make_client, collector):
    """Why the token must be a callable: a fixed one is sent again after it expired."""
    with ExchangeServer() as exchange:
        client = make_client(exchange.url, headers={"Authorization": f"Bearer {fetch_token(exchange)}"},
                             codec=JsonCodec(type_field="op"))
        gave_up = collector()
        client.signals.gave_up.connect(gave_up)
        client.start().wait_connected(timeout=10)
        exchange.expire_tokens()
        exchange.drop_clients()
        gave_up.wait(1, timeout=20)
    refused = client.last_error
    assert isinstance(refused, wsbridge.UpgradeRefused) and refused.status == 401
    assert exchange.tokens_refused >= 1 and len(exchange.tokens_accepted) == 1

