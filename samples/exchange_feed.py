"""A market-data feed as exchanges run them, through a proxy, cut again and again.

    python samples/exchange_feed.py                 # 30 s
    python samples/exchange_feed.py --seconds 8

The feed (`wsbridge.testing.ExchangeServer`, extra ``server``) wants a bearer token
that expires every 2 s, fetched over HTTP (``GET /token``); a subscribe per
channel, which it acks; and its own resume request (``{"op": "resume", "from":
{channel: seq}}``). Its updates are numbered per channel. The client reaches it
through an HTTP CONNECT proxy: pproxy (PyPI) in a child process if installed, else
wsbridge.testing's own. Every 1.5 s the feed drops its connections or restarts.

The client fetches a token for every attempt (``headers=`` a function), subscribes
on every connect (``client.subscribe`` with the ack), and resumes each channel where
it was (``resume=`` in the feed's shape). The tally at the end shows every update of
each channel arrived once, in order.
"""

import argparse
import json
import re
import subprocess
import sys
import time
import urllib.request

import wsbridge
from wsbridge.testing import ConnectProxy, ExchangeServer

CHANNELS = ["ticker.BTC", "ticker.ETH"]


def start_proxy():
    """An HTTP CONNECT proxy on 127.0.0.1: (its URL, how to stop it, its name)."""
    try:
        import pproxy  # noqa: F401
    except ImportError:
        proxy = ConnectProxy()
        return proxy.url, proxy.close, "wsbridge.testing.ConnectProxy"
    child = subprocess.Popen([sys.executable, "-u", "-m", "pproxy", "-l", "http://127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    serving = child.stdout.readline()  # "Serving on ipv? 127.0.0.1:PORT by http"
    port = re.search(r"127\.0\.0\.1:(\d+)", serving).group(1)
    return f"http://127.0.0.1:{port}", lambda: (child.terminate(), child.wait(10)), "pproxy"


def fetch_token(token_url):
    """A WebSocket token from the exchange's REST side, as exchanges hand them out."""
    with urllib.request.urlopen(token_url, timeout=5) as response:
        return json.load(response)["token"]


def main(seconds):
    exchange = ExchangeServer(token_ttl=2.0).start()
    proxy_url, stop_proxy, proxy_name = start_proxy()
    client = wsbridge.Client(
        exchange.url,
        headers=lambda: {"Authorization": f"Bearer {fetch_token(exchange.token_url)}"},  # fresh for every attempt
        proxy=proxy_url,
        codec=wsbridge.JsonCodec(type_field="op", seq_field="seq", stream_field="channel"),
        resume=lambda positions: {"op": "resume", "from": {channel: seq + 1 for channel, seq in positions.items()}},
        backoff=wsbridge.Backoff(initial=0.1, max_delay=1.0),
    )
    for channel in CHANNELS:
        client.subscribe({"op": "subscribe", "channel": channel},
                         ack=lambda m, c=channel: m.type == "subscribed" and m.payload["channel"] == c)
    received = {channel: [] for channel in CHANNELS}
    client.on("update", lambda m: received[m.stream].append(m.seq))
    try:
        with client:
            client.wait_connected(timeout=10)
            start = time.monotonic()
            cuts, next_cut, price = 0, start + 1.5, 100.0
            while time.monotonic() < start + seconds:
                price += 0.01
                for channel in CHANNELS:
                    exchange.update(channel, {"price": round(price, 2)})
                if time.monotonic() >= next_cut:
                    cuts += 1
                    kind = "restart" if cuts % 2 == 0 else "drop"
                    exchange.restart() if kind == "restart" else exchange.drop_clients()
                    print(f"{time.monotonic() - start:5.1f} s  cut {cuts} ({kind}); "
                          f"{sum(map(len, received.values()))} updates received so far")
                    next_cut += 1.5
                time.sleep(0.01)
            for channel in CHANNELS:  # the last update of each channel: once it came, the run is over
                last = exchange.update(channel, "end")[0]
                client.wait_for("update", lambda m, c=channel, n=last: m.stream == c and m.seq == n, timeout=30)
            stats = client.stats
    finally:
        stop_proxy()
        exchange.stop()
    for channel in CHANNELS:
        published = len(exchange.updates[channel])
        print(f"{channel}: {published} updates published, {len(received[channel])} received, "
              f"each once and in order: {received[channel] == list(range(1, published + 1))}")
    tokens = exchange.tokens_accepted
    print(f"{cuts} cuts, {len(tokens)} connections through {proxy_name}, a token of its own each: "
          f"{len(set(tokens)) == len(tokens)}, refused: {exchange.tokens_refused}")
    print(f"duplicates dropped {stats.duplicates}, lost {stats.lost}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the feed runs (default 30)")
    main(parser.parse_args().seconds)
