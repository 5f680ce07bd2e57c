"""A chat listener with callbacks: subscribe by message type, then just wait.

    python samples/chat_callbacks.py                 # against a bundled local server
    python samples/chat_callbacks.py ws://HOST/chat  # against your own server

With no URL, it starts wsbridge's bundled test server (needs the ``server``
extra) and plays a short scripted conversation.
"""

import sys
import threading

import wsbridge

done = threading.Event()


def main(url=None):
    server = None
    if url is None:
        from wsbridge.testing import Server

        server = Server(broadcast=True).start()
        url = server.url

    client = wsbridge.Client(url)

    @client.on("chat")
    def show(msg: wsbridge.Message) -> None:
        print(f"{msg.payload.get('from', '?'):>8}: {msg.payload.get('text', '')}")
        if msg.payload.get("text") == "bye":
            done.set()

    @client.on("join")
    def joined(msg: wsbridge.Message) -> None:
        print(f"    *** {msg.payload['who']} joined")

    client.signals.disconnected.connect(lambda sender, **kw: print(f"    (disconnected: {kw['code']} {kw['reason'] or ''})"))
    client.signals.error.connect(lambda sender, **kw: print(f"    (error: {kw['error']})", file=sys.stderr))

    with client:
        client.wait_connected(timeout=10)
        if server is not None:
            # The bundled server is a chat room: what one client says, everyone hears.
            client.send({"type": "join", "who": "ada"})
            for text in ("hi all", "this runs in a plain script", "bye"):
                client.send({"type": "chat", "from": "ada", "text": text})
        done.wait(timeout=None if server is None else 10)
        print(f"received {client.stats.received} messages")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
