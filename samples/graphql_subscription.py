"""A GraphQL subscription over graphql-transport-ws, restored after the server restarts.

    python samples/graphql_subscription.py

The server is a real one: a strawberry-graphql schema under uvicorn (both from PyPI:
``pip install 'strawberry-graphql[asgi]' uvicorn``), on 127.0.0.1, whose
``ticks`` subscription counts from 1. It wants a token in ``connection_init``.

The client speaks the protocol with wsbridge's handshake: its connect hook sends
``connection_init`` with the token and waits for ``connection_ack``; the
subscription is recorded (``client.subscribe``), so it goes out after the ack on
every connection. The server is stopped (it closes with 1012) and started again on
the same port: the client reconnects, and the hook and the subscription run again
by themselves.
"""

import asyncio
import itertools
import socket
import threading
from typing import AsyncGenerator

import strawberry
import uvicorn
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError

import wsbridge

TOKEN = "s3cret"


@strawberry.type
class Query:
    hello: str = "world"


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def ticks(self) -> AsyncGenerator[int, None]:
        n = 0
        while True:
            n += 1
            yield n
            await asyncio.sleep(0.05)


class App(GraphQL):
    async def on_ws_connect(self, context):
        """``connection_init``: no valid token, no ``connection_ack`` (closed with 4403)."""
        if context["connection_params"].get("token") != TOKEN:
            raise ConnectionRejectionError()
        return {"welcome": True}


def serve(port):
    """uvicorn with the schema on 127.0.0.1:``port`` in a thread: (server, thread)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(16)  # connections wait in the backlog until uvicorn takes them
    app = App(strawberry.Schema(query=Query, subscription=Subscription))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn")
    thread.start()
    return server, thread


def stop(server, thread):
    server.should_exit = True  # uvicorn closes every WebSocket with 1012 (service restart)
    thread.join(10)


def init(session: wsbridge.Session):
    """On every connect, first: the protocol's handshake."""
    ack = session.request({"type": "connection_init", "payload": {"token": TOKEN}}, "connection_ack", timeout=5)
    print("connection_init sent, connection_ack received:", ack.payload.get("payload"))


def ticks(client, operation, count=5):
    """The first ``count`` ticks of subscription ``operation`` (its id), from the pull API."""
    take = [client.wait_for("next", lambda m: m.payload["id"] == operation, timeout=20) for _ in range(count)]
    return [m.payload["payload"]["data"]["ticks"] for m in take]


def main():
    with socket.socket() as probe:  # a free port, for both runs of the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server, thread = serve(port)
    client = wsbridge.Client(f"ws://127.0.0.1:{port}/graphql", subprotocols=["graphql-transport-ws"],
                             on_connect=init, backoff=wsbridge.Backoff(initial=0.1, max_delay=1.0))
    numbers = itertools.count(1)  # each connection's subscribe gets an id of its own, as graphql-ws clients do
    client.subscribe(lambda positions: {"id": str(next(numbers)), "type": "subscribe",
                                        "payload": {"query": "subscription { ticks }"}})
    client.on("ping", lambda m: client.send({"type": "pong"}))  # the protocol's keep-alive, if the server asks
    client.signals.disconnected.connect(lambda sender, code, **kw: print("disconnected, close code", code))
    try:
        with client:
            client.wait_connected(timeout=10)
            print("subprotocol:", client.subprotocol)
            print("subscription 1, ticks:", ticks(client, "1"))
            stop(server, thread)
            print("server stopped; starting it again on the same port")
            server, thread = serve(port)
            print("subscription 2, ticks:", ticks(client, "2"))  # sent again by the handshake, after the ack
            print(f"{client.stats.connects} connections; the subscription restored by the handshake, no code of ours")
    finally:
        stop(server, thread)


if __name__ == "__main__":
    main()
