"""`wsbridge demo`: a bundled server, a client, several message types, a tally."""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Dict

from .client import Client
from .codec import JsonCodec
from .message import Message

CHAT = [
    ("alice", "hello, is the feed live?"),
    ("bob", "yes: prices, alerts and chat, all on one socket"),
    ("alice", "and my script never touched asyncio"),
]


def run_demo(out: Callable[[str], None], burst: int = 50_000, timeout: float = 60.0) -> Dict[str, object]:
    """Serve, connect, show messages of several types, then tally. Returns the summary."""
    from .testing import Server  # the server extra: imported only when the demo runs

    counts: Dict[str, int] = collections.Counter()
    last_price: Dict[str, float] = {}
    ticks_done = threading.Event()
    marks: Dict[str, float] = {}

    with Server(codec=JsonCodec(), echo=True) as server:
        client = Client(server.url, name="demo")

        @client.on("chat")
        def show_chat(msg: Message) -> None:
            out(f"  chat   {msg.payload['from']:>6}: {msg.payload['text']}")

        @client.on("alert")
        def show_alert(msg: Message) -> None:
            out(f"  ALERT  {msg.payload['text']}")

        @client.on("price")
        def track_price(msg: Message) -> None:
            last_price[msg.payload["symbol"]] = msg.payload["price"]

        @client.on("tick")
        def count_tick(msg: Message) -> None:
            if msg.seq == 1:
                marks["first"] = time.perf_counter()
            if msg.seq == burst:
                marks["last"] = time.perf_counter()
                ticks_done.set()

        client.on_any(lambda msg: counts.update((msg.type,)))

        with client:
            client.wait_connected(timeout=10)
            out(f"connected to the bundled server at {server.url}")
            server.wait_clients(1)
            server.send(*({"type": "chat", "from": who, "text": text} for who, text in CHAT))
            server.send(*({"type": "price", "symbol": s, "price": p} for s, p in (("ACME", 101.5), ("INIT", 42.0), ("ACME", 102.25))))
            server.send({"type": "alert", "text": "ACME up 0.7% in one tick"})

            client.send({"type": "hello", "from": "demo-script"})
            echo = client.wait_for("hello", timeout=10)
            out(f"  sent   hello, the server echoed it back: {echo.payload}")

            out(f"server now pushes a burst of {burst:,} sequenced 'tick' messages ...")
            server.send_many(({"type": "tick", "seq": i, "v": i % 97} for i in range(1, burst + 1)), timeout=timeout)
            if not ticks_done.wait(timeout):
                out("  the burst did not complete in time")
            stats = client.stats
        rate = burst / (marks["last"] - marks["first"]) if "last" in marks and marks["last"] > marks["first"] else 0.0

    out("")
    out("summary")
    for mtype in sorted(counts):
        out(f"  {mtype:<6} {counts[mtype]:>8,}")
    out(f"  prices {', '.join(f'{k} {v}' for k, v in sorted(last_price.items()))}")
    out(f"  total {stats.received:,} received, {stats.dispatched:,} dispatched, {stats.protocol_errors} protocol errors,"
        f" {stats.subscriber_errors} subscriber errors")
    out(f"  burst: {rate:,.0f} messages/s through decode + ordered dispatch")
    return {"counts": dict(counts), "rate": rate, "stats": stats.as_dict()}
