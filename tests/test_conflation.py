"""Conflation (issue 23, point 4): while the subscribers are behind, only the latest
message per type and key is delivered; the rest are counted, never signalled as dropped."""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List

import pytest

import wsbridge
from wsbridge import SQLiteStore
from wsbridge.testing import Server

from conftest import Feed, wait_until

SYMBOLS = ("ACME", "GLOBEX", "INITECH")


def ticks(n: int) -> List[str]:
    """``n`` ticks round the symbols, each with its own increasing number, and a chat
    line every 100 (a type that is not conflated)."""
    frames = []
    for i in range(n):
        frames.append(json.dumps({"type": "ticker", "symbol": {"name": SYMBOLS[i % 3]}, "n": i}))
        if i % 100 == 0:
            frames.append(json.dumps({"type": "chat", "text": f"line {i}"}))
    return frames


class Slow:
    """A subscriber that holds the dispatcher on its first message until released."""

    def __init__(self) -> None:
        self.got: List[wsbridge.Message] = []
        self.first = threading.Event()
        self.release = threading.Event()

    def __call__(self, message: wsbridge.Message) -> None:
        self.got.append(message)
        if not self.first.is_set():
            self.first.set()
            assert self.release.wait(30), "the test never released the subscriber"


def run_slow_feed(make_client: Any, n: int, key: Any = None, **options: Any) -> Dict[str, Any]:
    """A real server (`websockets`, not ours) sends ``n`` ticks to a client whose
    subscriber is blocked; what the subscriber saw once it was let go."""
    dropped: List[Any] = []
    with Feed() as feed:
        client = make_client(feed.url, **options)
        if key is not None:
            client.conflate("ticker", key)
        slow = Slow()
        client.on_any(slow)
        client.signals.dropped.connect(lambda sender, **kw: dropped.append(kw))
        client.start().wait_connected(10)
        frames = ticks(n)
        feed.send(frames[0])
        assert slow.first.wait(10)
        feed.send(*frames[1:])  # all of it reaches the client while the subscriber is held
        wait_until(lambda: client.stats.frames == len(frames), 30, "every frame received")
        slow.release.set()
        wait_until(lambda: client.stats.dispatched + client.stats.conflated == len(frames), 30, "all delivered")
        stats = client.stats
        client.stop(10)
    return {"got": slow.got, "stats": stats, "dropped": dropped, "sent": len(frames)}


def test_a_slow_subscriber_gets_the_latest_tick_per_symbol(make_client):
    result = run_slow_feed(make_client, 3000, "symbol.name")
    got, stats = result["got"], result["stats"]
    ticker = [m for m in got if m.type == "ticker"]
    latest = {m.payload["symbol"]["name"]: m.payload["n"] for m in ticker}
    assert latest == {"ACME": 2997, "GLOBEX": 2998, "INITECH": 2999}  # the last value of each symbol
    assert len(got) < result["sent"] / 10, f"{len(got)} of {result['sent']} delivered"
    assert stats.conflated == result["sent"] - len(got) and stats.dispatched == len(got)
    for symbol in SYMBOLS:  # each symbol's values in order
        values = [m.payload["n"] for m in ticker if m.payload["symbol"]["name"] == symbol]
        assert values == sorted(values) and len(values) == len(set(values))
    chats = [m.payload["text"] for m in got if m.type == "chat"]
    assert chats == [f"line {i}" for i in range(0, 3000, 100)]  # another type: untouched, in order
    assert result["dropped"] == []  # conflation is no overflow: no `dropped` signal


def test_conflation_by_function_from_the_constructor_and_turned_off(make_client):
    key = lambda m: m.payload["symbol"]["name"]  # noqa: E731
    on = run_slow_feed(make_client, 600, conflate={"ticker": key})
    assert on["stats"].conflated > 0 and len(on["got"]) < on["sent"] / 10
    client = make_client("ws://127.0.0.1:9/", conflate={"ticker": "symbol.name"})
    client.conflate("ticker", None)  # turned off again
    assert client._delivery.conflation.rules == {}
    off = run_slow_feed(make_client, 600)
    assert off["stats"].conflated == 0 and len(off["got"]) == off["sent"]  # without it, every message


def test_conflation_options_are_checked():
    client = wsbridge.Client("ws://127.0.0.1:9/")
    for bad in ("", "a..b", 5):
        with pytest.raises(ValueError, match="the key is a field name"):
            client.conflate("ticker", bad)
    with pytest.raises(ValueError, match="conflate is a mapping"):
        wsbridge.Client("ws://127.0.0.1:9/", conflate=["ticker"])  # type: ignore[arg-type]


def test_held_messages_are_not_conflated_and_the_store_keeps_every_message(make_client, tmp_path):
    """Sequence tracking runs first (a gap holds later ticks; they are delivered once the
    gap is filled, not lost to conflation), and the store records every tick."""
    path = str(tmp_path / "feed.db")
    n = 900
    with Server(skip={5}) as server:  # seq 5 missing until the resume asks for it
        client = make_client(server.url, store=SQLiteStore(path), **wsbridge.conventions())
        client.conflate("tick", "sym")
        slow = Slow()
        client.on_any(slow)
        client.start().wait_connected(10)
        server.publish(*[{"type": "tick", "sym": SYMBOLS[i % 3], "i": i} for i in range(n)])
        assert slow.first.wait(10)
        wait_until(lambda: client.stats.frames >= n - 1, 30, "every tick but the skipped one received")
        slow.release.set()
        wait_until(lambda: client.stats.dispatched + client.stats.conflated == n, 30, "all delivered")
        got = [m.seq for m in slow.got]
        assert client.stats.gaps == 1 and client.stats.lost == 0
        assert client.stats.conflated > 0 and len(got) < n
        assert sorted(got[-3:]) == [n - 2, n - 1, n]  # the latest of each symbol came last
        client.stop(10)
    assert [m.seq for m in SQLiteStore(path).history()] == list(range(1, n + 1))  # the store has them all
    with SQLiteStore(path) as store:
        assert list(store.unhandled()) == []  # superseded ticks count as handled
