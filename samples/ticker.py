"""A live ticker: the latest price per symbol, with the stream's health below.

    python samples/ticker.py                        # a bundled local feed, about 3 s
    python samples/ticker.py ws://HOST/feed 30      # your feed, for 30 s

Messages ``{"type": "tick", "sym": ..., "px": ..., "qty": ...}`` update a
`TickerView` table; a `StatusView` line shows connected/reconnecting, msg/s,
the last sequence id and the send buffer. With no URL, it starts the
bundled test server and publishes ticks (numbered, so dedup and resume are
on). Needs the ``views`` extra (and ``server`` for the bundled feed).
"""

import random
import sys
import time

import wsbridge
from wsbridge.views import StatusView, TerminalRenderer, TickerView

SYMBOLS = {"ACME": 101.0, "GLOBEX": 42.0, "INITECH": 7.5}


def main(url=None, seconds=3.0):
    server = None
    if url is None:
        from wsbridge.testing import Server

        server = Server(feed_from="start").start()
        url = server.url
    client = wsbridge.Client(url, name="ticker", **wsbridge.conventions())  # a wsbridge feed: seq, resume
    ticker = TickerView(client, type="tick", key="sym", fields=["px", "qty"])
    ticks = [0]
    client.on("tick", lambda msg: ticks.__setitem__(0, ticks[0] + 1))
    status = StatusView(client)
    rng = random.Random(7)
    prices = dict(SYMBOLS)
    with client, TerminalRenderer([ticker, status], refresh_per_second=8):
        client.wait_connected(timeout=10)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if server is not None:
                batch = []
                for _ in range(20):
                    sym = rng.choice(list(prices))
                    prices[sym] = round(prices[sym] * (1 + rng.uniform(-0.002, 0.002)), 2)
                    batch.append({"type": "tick", "sym": sym, "px": prices[sym], "qty": rng.randrange(1, 10) * 100})
                server.publish_many(batch)
            time.sleep(0.05)
        if server is not None:
            server.publish({"type": "end"})
            client.wait_for("end", timeout=10)
        stats = client.stats
    print(f"{ticks[0]} ticks, {len(ticker.rows)} symbols, duplicates {stats.duplicates}, lost {stats.lost}")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)
