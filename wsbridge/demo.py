"""`wsbridge demo`: a feed through a chaos proxy, live views, and a tally that shows nothing was lost.

The bundled server publishes numbered price ticks and chat lines (a feed
with history, resending a few old messages on every resume, so there are
duplicates to drop). A `Proxy` between it and the client cuts the TCP
connection every ``cut_every`` seconds. The client reconnects, resumes
from its last sequence ids, drops the duplicates, and shows it all in a
ticker, a chat view and a status line. Then a timed burst, and the tally.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .client import Client
from .message import Message
from .presets import conventions
from .runtime.backoff import Backoff

CHAT = [
    ("alice", "hello, is the feed live?"),
    ("bob", "yes: prices, alerts and chat, all on one socket"),
    ("alice", "the network keeps dropping, and I have not missed a tick"),
    ("bob", "and my script never touched asyncio"),
]


def run_demo(
    out: Callable[[str], None],
    *,
    burst: int = 20_000,
    seconds: float = 6.0,
    cut_every: float = 1.0,
    rate: float = 1500.0,
    live: bool = False,
    timeout: float = 60.0,
) -> Dict[str, Any]:
    """Run the demo, writing lines with ``out`` (and, with ``live``, drawing the
    views in the terminal). Returns the tally."""
    from .testing import Proxy, Server  # the server extra: imported only when the demo runs
    from .views import ChatView, StatusView, TerminalRenderer, TickerView, render_text

    rng = random.Random(7)
    prices = {"ACME": 101.0, "GLOBEX": 42.0, "INITECH": 7.5}
    end = threading.Event()
    burst_marks: Dict[str, float] = {}
    seen: Dict[Optional[str], List[int]] = {}

    def ticks(n: int) -> List[dict]:
        batch = []
        for _ in range(n):
            sym = rng.choice(list(prices))
            prices[sym] = round(prices[sym] * (1 + rng.uniform(-0.002, 0.002)), 2)
            batch.append({"type": "tick", "sym": sym, "px": prices[sym], "qty": rng.randrange(1, 10) * 100})
        return batch

    with Server(feed_from="now", resend=5, broadcast=True) as server, Proxy(("127.0.0.1", server.port)) as proxy:
        client = Client(proxy.url, name="demo", backoff=Backoff(initial=0.05, max_delay=0.5), pull_buffer=0, **conventions())
        ticker = TickerView(client, type="tick", key="sym", fields=["px", "qty"])
        chat = ChatView(client, type="chat")
        status = StatusView(client)

        def track(msg: Message) -> None:
            if msg.seq is not None:
                seen.setdefault(msg.stream, []).append(msg.seq)
            if msg.type == "tick" and msg.payload.get("burst"):
                burst_marks.setdefault("first", time.perf_counter())
                burst_marks["last"] = time.perf_counter()
            if msg.type == "end":
                end.set()

        client.on_any(track)
        renderer = TerminalRenderer([ticker, chat, status], refresh_per_second=8) if live else None
        say = (lambda text: renderer.console.print(text)) if renderer is not None else out
        client.signals.disconnected.connect(
            lambda sender, **kw: client.state != "stopped" and say("  ~ connection cut by the chaos proxy")
        )
        opened = [0]

        def reconnected(sender: Any, **kw: Any) -> None:
            opened[0] += 1
            if opened[0] > 1:
                positions = sorted(client.positions.items(), key=lambda kv: str(kv[0]))
                where = ", ".join(f"{stream} {seq}" for stream, seq in positions)
                say(f"  ~ reconnected; resuming after {where or 'nothing yet'}")

        client.signals.connected.connect(reconnected)
        with client:
            client.wait_connected(timeout=10)
            server.wait_clients(1)
            out(f"connected to the bundled feed ({server.url})")
            out(f"  through a chaos proxy ({proxy.url})")
            out(f"{seconds:.0f} s of ticks at {rate:,.0f}/s with chat, the connection cut every {cut_every} s ...")
            if renderer is not None:
                renderer.start()
            try:
                start = time.monotonic()
                next_cut, next_chat, published = start + cut_every, start + 0.3, 0
                lines = iter(CHAT)
                while time.monotonic() - start < seconds:
                    now = time.monotonic()
                    due = int((now - start) * rate) - published
                    if due > 0:
                        server.publish_many(ticks(due), stream="ticks")
                        published += due
                    if now >= next_chat:
                        line = next(lines, None)
                        if line is not None:
                            server.publish({"type": "chat", "from": line[0], "text": line[1], "ts": time.time()}, stream="chat")
                        next_chat += seconds / (len(CHAT) + 1)
                    if now >= next_cut:
                        proxy.cut()
                        next_cut += cut_every
                    time.sleep(0.01)
                chat.say("sent from the demo script: buffered if offline, never lost", sender="me")
                say(f"now a burst of {burst:,} ticks, timed ...")
                server.publish_many([dict(t, burst=True) for t in ticks(burst)], stream="ticks")
                server.publish({"type": "end"}, stream="chat")
                end.wait(timeout)
                stats = client.stats
            finally:
                if renderer is not None:
                    renderer.stop()
        history = {stream: len([e for e in server.history if e.stream == stream]) for stream in ("ticks", "chat")}

    sent = sum(history.values())
    delivered = sum(len(ids) for ids in seen.values())
    in_order = all(ids == list(range(1, len(ids) + 1)) for ids in seen.values())
    lost = sent - delivered
    rate_burst = (burst - 1) / (burst_marks["last"] - burst_marks["first"]) if len(burst_marks) == 2 and burst > 1 else 0.0
    if not live:
        for row in render_text([ticker, chat], width=80).rstrip().splitlines():
            out(row)
    out("")
    out("tally")
    out(f"  sent {sent:,} sequenced messages, received {delivered:,}, lost {lost}")
    unnumbered = stats.dispatched - delivered  # the status line's "received" counts these too
    extra = f" (+{unnumbered:,} unnumbered: the chat line this script sent)" if unnumbered else ""
    out(f"  each once and in order: {in_order}{extra}")
    out(f"  duplicates dropped {stats.duplicates:,}, reconnects {stats.reconnects}, resume requests {stats.resumes}, "
        f"gaps {stats.gaps}")
    out(f"  {stats.protocol_errors} protocol errors, {stats.subscriber_errors} subscriber errors")
    out(f"  burst: {rate_burst:,.0f} messages/s through decode, dedup and ordered dispatch")
    return {"sent": sent, "delivered": delivered, "lost": lost, "in_order": in_order, "rate": rate_burst,
            "ended": end.is_set(), "stats": stats.as_dict()}
