"""Issue 25, points 1 and 2: the pull buffer costs nothing unless used, and the dispatch
queue's bounds hold what a stalled subscriber keeps (the batch in hand included).

Against a `websockets` server (`Feed`) and raw-frame servers; every wait bounded."""

from __future__ import annotations

import json
import threading
from typing import List

import pytest

import wsbridge
from wsbridge.testing.raw import BINARY, RawServer, frame

from conftest import Collector, Feed, wait_until


def ticks(kind: str, numbers: range) -> List[str]:
    return [json.dumps({"type": kind, "n": n}) for n in numbers]


@pytest.mark.timeout(60)
def test_a_callback_only_client_keeps_a_window_and_never_signals_dropped(make_client):
    """A subscriber and no pull call: 64 messages a type are kept, nothing is a drop."""
    got, dropped = Collector(), Collector()
    with Feed() as feed:
        client = make_client(feed.url)
        client.on_any(got)
        client.signals.dropped.connect(dropped)
        client.start().wait_connected(timeout=10)
        feed.send(*ticks("tick", range(1000)), *ticks("other", range(10)))
        got.wait(1010, timeout=30)
        stats = client.stats
    assert (stats.pull_buffered, stats.pull_dropped, len(dropped)) == (64 + 10, 0, 0)


@pytest.mark.timeout(60)
def test_a_reply_between_send_and_wait_for_is_found_behind_a_flood_of_other_types(make_client):
    """The reply comes first, then more noise than the whole buffer holds (10,000): the
    reply's type keeps its own window, so wait_for still finds it after the flood."""

    def respond(number: int, data: str) -> List[str]:
        return [json.dumps({"type": "reply", "to": json.loads(data)["id"]}), *ticks("noise", range(12_000))]

    noise = Collector()
    with Feed(respond=respond) as feed:
        client = make_client(feed.url)
        client.on("noise", noise)
        client.start().wait_connected(timeout=10)
        client.send({"type": "ask", "id": 7})
        noise.wait(12_000, timeout=40)  # the reply came before all of these
        reply = client.wait_for("reply", timeout=5)
    assert reply.payload == {"type": "reply", "to": 7}


@pytest.mark.timeout(60)
def test_the_first_recv_starts_the_whole_buffer_with_the_window_in_arrival_order(make_client):
    seen = Collector()
    with Feed() as feed:
        client = make_client(feed.url)
        client.on("a", seen)
        client.start().wait_connected(timeout=10)
        sent = []
        for n in range(100):
            sent.append(("a", n))
            if n % 10 == 9:
                sent.append(("b", n // 10))
        feed.send(*(json.dumps({"type": t, "n": n}) for t, n in sent))
        seen.wait(100, timeout=30)
        wait_until(lambda: client.stats.pull_buffered == 64 + 10, what="the windows filled")
        first = client.recv(timeout=5)  # the whole buffer from now on, starting with the windows
        feed.send(*ticks("a", range(100, 300)))  # more than a window: all kept now
        rest = [client.recv(timeout=10) for _ in range(64 + 10 - 1 + 200)]
    window = [(t, n) for t, n in sent if t == "b" or n >= 36]
    assert [(m.type, m.payload["n"]) for m in [first, *rest]] == window + [("a", n) for n in range(100, 300)]
    assert client.stats.pull_dropped == 0


@pytest.mark.timeout(60)
def test_drops_before_the_first_recv_are_signalled_once_at_it(make_client):
    """No subscriber: every message is buffered from the start, within the bounds; what the
    bound drops before anyone pulls is counted, and signalled as one count at the first recv."""
    dropped, disconnected = Collector(), Collector()
    with Feed() as feed:
        client = make_client(feed.url, pull_buffer=10, backoff=wsbridge.NO_RETRY)
        client.signals.dropped.connect(dropped)
        client.signals.disconnected.connect(disconnected)
        client.start().wait_connected(timeout=10)
        feed.send(*ticks("n", range(25)))
        wait_until(lambda: client.stats.pull_buffered + client.stats.pull_dropped == 25, what="25 messages pulled")
        feed.drop()
        disconnected.wait(1, timeout=10)  # signals travel in order: every message was handed over before it
        assert len(dropped) == 0 and client.stats.pull_dropped == 15
        assert client.recv(timeout=5).payload["n"] == 15
        signalled = dropped.wait(1, timeout=10)
    assert signalled == [{"what": "pull", "count": 15}]


@pytest.mark.timeout(60)
def test_the_dispatch_bound_holds_the_batch_in_hand_of_a_stalled_subscriber(make_client):
    """dispatch_queue_bytes counts what the dispatcher took and has not delivered: a
    subscriber stalled on the first of a burst holds at most the bound (it held the bound
    and the batch in hand, which the dispatcher had counted off as it took it)."""
    release = threading.Event()
    blob = bytes(range(256)) * 256  # 64 KiB
    bound = 1 << 20
    with RawServer() as server:
        client = make_client(server.url, codec=wsbridge.RawCodec(), dispatch_queue_bytes=bound)
        client.on_any(lambda message: release.wait(30))
        client.start()
        conn = server.wait_connection()
        sender = threading.Thread(target=lambda: conn.sendall(frame(blob, BINARY) * 200), daemon=True)
        sender.start()
        try:
            wait_until(lambda: client.stats.backpressure_waits >= 1, 20, "the reader waiting for room")
            stats = client.stats  # the reader waits: it reads nothing more until there is room
            # 16 frames (with their 256 B records) reach the bound; the 17th, read, waits for room
            assert stats.frames <= 17 and stats.dispatch_bytes <= bound + len(blob) + 256, stats
        finally:
            release.set()
        wait_until(lambda: client.stats.dispatched == 200, 30, "all 200 delivered once released")
        sender.join(10)


class WhereDecoded(wsbridge.JsonCodec):
    """Notes the thread that decodes each frame."""

    def __init__(self, one_per_frame: bool) -> None:
        super().__init__()
        self.one_per_frame = one_per_frame
        self.threads: List[str] = []

    def decode(self, data, binary, received_at=None):
        self.threads.append(threading.current_thread().name)
        return super().decode(data, binary, received_at)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("one_per_frame", [True, False])
def test_the_dispatcher_decodes_a_frame_unless_the_codec_may_split_it(make_client, one_per_frame):
    """One message per frame: the dispatcher thread decodes it, just before delivery (its
    objects die young), from a connection's first message on; a codec that may split a frame
    is run by the reader, so the dispatch queue's bounds weigh each message. A frame the codec
    refuses is reported in order."""
    codec = WhereDecoded(one_per_frame)
    events = Collector()
    with Feed() as feed:
        client = make_client(feed.url, codec=codec)
        client.on_any(lambda message: events(message.payload["n"]))
        client.signals.error.connect(lambda _client, **kw: events((kw["context"], kw["frame"])))
        client.start().wait_connected(timeout=10)
        feed.send('{"type": "m", "n": 1}', "not json{", '{"type": "m", "n": 2}')
        got = events.wait(3, timeout=10)
    assert got == [1, ("decode", b"not json{"), 2]
    # (the reader decodes a connection's frames until one gives a message: the policy's "delivered")
    reader, dispatcher = client.name + "-reader-1", client.name + "-dispatcher"
    assert codec.threads == [reader] + [dispatcher if one_per_frame else reader] * 2


@pytest.mark.timeout(60)
def test_a_pull_script_that_subscribes_later_keeps_what_it_buffered(make_client):
    """A hostile review: 500 buffered without subscribers, then `on()`: the buffer was cut to
    the window (65 left), silently. Once the whole buffer kept a message, it stays on."""
    with Feed() as feed:
        client = make_client(feed.url)
        client.start().wait_connected(timeout=10)
        feed.send(*ticks("tick", range(500)))
        wait_until(lambda: client.stats.pull_buffered == 500, what="500 buffered")
        other = Collector()
        client.on("other", other)
        feed.send(*ticks("other", range(1)))
        other.wait(1, timeout=10)
        got = [client.recv(timeout=5) for _ in range(501)]
    assert [(m.type, m.payload["n"]) for m in got] == [("tick", n) for n in range(500)] + [("other", 0)]
    assert client.stats.pull_dropped == 0


@pytest.mark.timeout(60)
def test_wait_for_finds_a_reply_behind_hundreds_of_other_types(make_client):
    """A hostile review: types taken from the data (one per symbol); 300 types after the reply
    evicted its window (256 types at most, the first created first)."""

    def respond(number: int, data: str) -> List[str]:
        return [json.dumps({"type": "reply"}), *(json.dumps({"type": f"sym{k}", "n": k}) for k in range(300))]

    seen = Collector()
    with Feed(respond=respond) as feed:
        client = make_client(feed.url)
        client.on_any(seen)
        client.start().wait_connected(timeout=10)
        client.send({"type": "ask"})
        seen.wait(301, timeout=30)
        assert client.wait_for("reply", timeout=5).type == "reply"


@pytest.mark.timeout(60)
def test_stop_does_not_decode_a_backlog_it_has_no_time_to_deliver(make_client):
    """A hostile review: a stalled subscriber and 4,096 frames queued; stop(timeout=1) left the
    dispatcher decoding every queued frame (slowly) after its time, for nothing."""
    release = threading.Event()

    never = threading.Event()

    def slow_loads(text: str):
        never.wait(0.002)  # a slow decoder: 2 ms a frame
        return json.loads(text)

    with Feed() as feed:
        client = make_client(feed.url, codec=wsbridge.JsonCodec(loads=slow_loads))
        client.on_any(lambda message: release.wait(30))
        client.start().wait_connected(timeout=10)
        feed.send(*ticks("tick", range(6000)))
        wait_until(lambda: client.stats.backpressure_waits >= 1, 20, "a full dispatch queue")
        stopper = threading.Timer(0.5, release.set)  # the subscriber returns once stop() has begun
        stopper.start()
        assert client.stop(timeout=1), "threads left running"
        stopper.join(5)
    stats = client.stats
    assert stats.undelivered > 0 and stats.received < 1000, stats
