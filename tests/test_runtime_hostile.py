"""The runtime against a hostile server and a careless caller: messages queued at
give-up, a burst bigger than the pull buffer, a filtered take at a full buffer, a
peer that stops reading, interpreter exit with busy clients, sends before start.

Every server is built for the test on a raw socket on 127.0.0.1; every wait is
bounded, and a test that could hang has its own watchdog.
"""

from __future__ import annotations

import threading
import time

import pytest

import wsbridge
from wsbridge import RawCodec
from wsbridge.testing.raw import CLOSE, RawServer, frame, read_close

HOLD = 20.0  # how long a test lets a stuck thread stay stuck before it fails


@pytest.fixture
def raw_server():
    with RawServer() as server:
        yield server


@pytest.mark.timeout(90)
def test_messages_queued_at_give_up_all_reach_the_pull_api(make_client, raw_server):
    """6: a normal close under NO_RETRY with a slow subscriber: the pull buffer closes
    only once everything received before the give-up has reached it."""
    count = 3000
    client = make_client(raw_server.url, codec=RawCodec(), backoff=wsbridge.NO_RETRY)
    client.on_any(lambda msg: time.sleep(0.0003))
    client.start().wait_connected(timeout=10)
    conn = raw_server.wait_connection()
    conn.sendall(b"".join(frame(b"%d" % i) for i in range(count)) + frame((1000).to_bytes(2, "big"), CLOSE))
    assert read_close(conn) == 1000
    got = [msg.payload for msg in client.messages(timeout=HOLD)]  # ends when the client gave up and all are taken
    assert got == [str(i) for i in range(count)]
    assert client.state == "gave_up"
