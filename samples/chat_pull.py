"""A chat listener with the pull API: no callbacks, just a loop.

    python samples/chat_pull.py                 # against a bundled local server
    python samples/chat_pull.py ws://HOST/chat  # against your own server
"""

import sys

import wsbridge


def main(url=None):
    server = None
    if url is None:
        from wsbridge.testing import Server

        script = [{"type": "chat", "from": "bot", "text": f"message {i}"} for i in range(1, 6)]
        script.append({"type": "presence", "who": "bot", "online": False})
        server = Server(script=script, echo=True).start()
        url = server.url

    with wsbridge.Client(url) as client:
        client.wait_connected(timeout=10)
        client.send({"type": "chat", "from": "me", "text": "hello?"})
        # Iterate over chat messages; stop when none came for 2 seconds.
        for msg in client.messages(types={"chat"}, timeout=2.0):
            print(f"{msg.payload['from']:>6}: {msg.payload['text']}")
        # Other types stayed buffered for us:
        presence = client.wait_for("presence", timeout=1.0)
        print(f"presence: {presence.payload}")
    if server is not None:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
