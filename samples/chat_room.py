"""A chat room: three clients, each sending and receiving, each with a chat view.

    python samples/chat_room.py                 # against a bundled local chat room
    python samples/chat_room.py ws://HOST/chat  # against your own broadcast server

Every client shows the room in a `ChatView`; the terminal redraws them live
(a few times a second, however fast the messages come). With no URL, it
starts wsbridge's bundled test server as the room (needs the ``server``
and ``views`` extras). On a terminal the people type at a pace you can
follow (about 4 s in all); piped, as fast as the room takes it. Exits by itself.
"""

import sys
import time

import wsbridge
from wsbridge.views import ChatView, StatusView, TerminalRenderer

PEOPLE = ("ann", "bob", "cy")
LINES = ("hello!", "anyone reading the feed?", "all good here", "bye")


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)


def main(url=None, pace=None):
    if pace is None:  # seconds between two lines: a person watches a terminal, a pipe does not
        pace = 0.3 if sys.stdout.isatty() else 0.0
    server = None
    if url is None:
        from wsbridge.testing import Server

        server = Server(broadcast=True).start()
        url = server.url
    clients = {name: wsbridge.Client(url, name=f"chat-{name}") for name in PEOPLE}
    views = {name: ChatView(client) for name, client in clients.items()}
    for client in clients.values():
        client.start()
    try:
        for client in clients.values():
            client.wait_connected(timeout=10)
        expected = len(PEOPLE) * len(LINES)
        with TerminalRenderer([StatusView(clients["ann"]), views["ann"]], refresh_per_second=8) as screen:
            sent = 0
            for text in LINES:
                for name in PEOPLE:
                    views[name].say(text, sender=name)
                    sent += 1
                    if pace:  # each line on the screen before the next is typed
                        wait(lambda n=sent: len(views["ann"].lines) >= n)
                        screen.refresh()
                        time.sleep(pace)
            wait(lambda: all(len(v.lines) >= expected for v in views.values()))
        orders = {tuple((line.sender, line.text) for line in v.lines) for v in views.values()}
        print(f"{len(PEOPLE)} clients, {min(len(v.lines) for v in views.values())} of {expected} lines each, "
              f"same order everywhere: {len(orders) == 1}")
    finally:
        for client in clients.values():
            client.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
