"""Send outcomes (`SendHandle`: sent, acknowledged, dropped, expired) and acknowledged
sends: with an `AckRule`, a message stays buffered until the server acks its id and is sent
again after a reconnect. Against a `websockets` server (`conftest.Feed`) that acks by id
and cuts the connection repeatedly."""

from __future__ import annotations

import json
import threading
import time
from typing import List, Set, Tuple, Union

import pytest

import wsbridge
from wsbridge import AckRule, SendHandle

from conftest import Feed, Raised, from_a_subscriber, noise_then, wait_until

THREADS, EACH, CUTS = 4, 400, 10


def _ack(number: int, data: Union[str, bytes]) -> List[str]:
    """The server's ack: ``{"type": "ack", "id": <the message's id>}``."""
    return [json.dumps({"type": "ack", "id": json.loads(data)["id"]})]


def _silent(number: int, data: Union[str, bytes]) -> List[str]:
    return []


def _send_from_threads(client: wsbridge.Client, feed: Feed) -> List[SendHandle]:
    """THREADS threads send EACH numbered messages while the server cuts the connection
    CUTS times, each cut once it has read another share of them (and a connection is open)."""
    handles: List[List[SendHandle]] = [[] for _ in range(THREADS)]
    barrier = threading.Barrier(THREADS + 1)

    def worker(k: int) -> None:
        barrier.wait(timeout=10)
        for i in range(EACH):
            handles[k].append(client.send({"type": "m", "t": k, "i": i}))

    workers = [threading.Thread(target=worker, args=(k,), name=f"sender-{k}") for k in range(THREADS)]
    for t in workers:
        t.start()
    barrier.wait(timeout=10)
    total = THREADS * EACH
    for cut in range(1, CUTS + 1):
        feed.wait_received(min(total, cut * total // (CUTS + 2)), timeout=30)
        feed.wait_opened(cut, timeout=30)
        feed.drop()
    for t in workers:
        t.join(30)
    assert not any(t.is_alive() for t in workers)
    return [h for mine in handles for h in mine]


def _ids(feed: Feed) -> Tuple[Set[Tuple[int, int]], int]:
    """What the server read: the (thread, number) pairs, and how many frames in all."""
    frames = [json.loads(data) for _, data in feed.received]
    return {(f["t"], f["i"]) for f in frames}, len(frames)


def test_acked_sends_all_arrive_across_ten_cuts(make_client) -> None:
    # close_timeout: a cut while frames still pour in waits at most 1 s for the close handshake
    with Feed(respond=_ack, close_timeout=1) as feed:
        client = make_client(feed.url, ack=AckRule(type="ack", id_field="id"), outbox_overflow="block").start()
        client.wait_connected(10)
        handles = _send_from_threads(client, feed)
        states = [h.wait(60) for h in handles]
        assert states.count("acknowledged") == len(handles), {s: states.count(s) for s in set(states)}
        seen, frames = _ids(feed)
        assert seen == {(k, i) for k in range(THREADS) for i in range(EACH)}  # at least once each
        assert client.stats.acked == len(handles) and client.stats.unacked == 0
        feed.wait_opened(CUTS + 1)
        assert client.unsent() == []


def test_without_acks_the_handles_say_sent(make_client) -> None:
    """The same cuts without an ack rule: every handle resolves to sent (the socket took
    it), none is acknowledged; what the server read may be fewer (the loss window of docs/guide/queues.md)."""
    with Feed(respond=_silent, close_timeout=1) as feed:
        client = make_client(feed.url, outbox_overflow="block").start()
        client.wait_connected(10)
        handles = _send_from_threads(client, feed)
        states = [h.wait(60) for h in handles]
        assert set(states) == {"sent"}
        assert all(h.done for h in handles)
        seen, _ = _ids(feed)
        assert len(seen) <= len(handles)


def test_unacknowledged_messages_are_sent_again_in_order_after_a_reconnect(make_client) -> None:
    """A server that acks nothing: the window (3) bounds what is written; the rest waits in
    the send buffer; after a cut, the unacknowledged go first on the new connection, in order."""
    with Feed(respond=_silent) as feed:
        client = make_client(feed.url, ack=AckRule(), ack_window=3).start()
        client.wait_connected(10)
        handles = [client.send({"type": "m", "n": n}) for n in range(6)]
        feed.wait_received(3)
        assert [h.state for h in handles] == ["sent"] * 3 + ["queued"] * 3
        assert client.stats.unacked == 3 and len(client.unsent()) == 6
        assert not handles[0].done
        with pytest.raises(TimeoutError):
            handles[0].wait(0.2)
        feed.drop()
        feed.wait_received(6)
        assert [json.loads(d)["n"] for d in feed.on(2)][:3] == [0, 1, 2]
        assert [json.loads(d)["id"] for d in feed.on(2)][:3] == [h.ack_id for h in handles[:3]]
        assert client.stats.resent >= 3


def test_acks_release_the_window(make_client) -> None:
    """Acks that come make room: all of 50 messages get through a window of 2."""
    with Feed(respond=_ack) as feed:
        client = make_client(feed.url, ack=AckRule(), ack_window=2).start()
        client.wait_connected(10)
        handles = [client.send({"type": "m", "n": n}) for n in range(50)]
        assert [h.wait(20) for h in handles] == ["acknowledged"] * 50
        assert [json.loads(d)["n"] for d in feed.on(1)] == list(range(50))


def test_an_ack_field_other_than_the_id_field(make_client) -> None:
    def respond(number: int, data: Union[str, bytes]) -> List[str]:
        return [json.dumps({"type": "ok", "ref": json.loads(data)["msg_id"]})]

    with Feed(respond=respond) as feed:
        client = make_client(feed.url, ack=AckRule(type="ok", id_field="msg_id", ack_field="ref")).start()
        client.wait_connected(10)
        assert client.send({"type": "m", "msg_id": "a1"}).wait(10) == "acknowledged"


def test_acked_frames_stay_in_the_store_until_acknowledged(make_client, tmp_path) -> None:
    """Sent but never acknowledged: kept in the store, the next client with it sends them again."""
    path = str(tmp_path / "s.db")
    with Feed(respond=_silent) as feed:
        client = make_client(feed.url, ack=AckRule(), store=wsbridge.SQLiteStore(path), name="acked-store").start()
        client.wait_connected(10)
        handles = [client.send({"type": "m", "n": n}) for n in range(3)]
        feed.wait_received(3)
        assert [h.state for h in handles] == ["sent"] * 3
        assert client.stop(10)
    with Feed(respond=_ack) as feed:
        client = make_client(feed.url, ack=AckRule(), store=wsbridge.SQLiteStore(path), name="acked-store").start()
        client.wait_connected(10)
        got = feed.wait_received(3)
        assert [json.loads(d)["id"] for _, d in got] == [h.ack_id for h in handles]
        assert client.stop(10)
    store = wsbridge.SQLiteStore(path)
    store.open()
    try:
        assert store.outbox_items() == []  # acknowledged: forgotten
    finally:
        store.close()


def test_ttl_expires_in_the_buffer_and_is_never_written(make_client, down_server) -> None:
    client = make_client(down_server.url)
    expiring = client.send({"type": "m", "n": 1}, ttl=0.1)
    keeps = client.send({"type": "m", "n": 2})
    assert expiring.wait(10) == "expired"
    assert client.stats.outbox_expired == 1 and len(client.unsent()) == 1
    with Feed() as feed:
        client.reconnect(feed.url)
        client.start().wait_connected(10)
        assert keeps.wait(10) == "sent"
        feed.wait_received(1)
        assert [json.loads(d)["n"] for d in feed.on(1)] == [2]


def test_ttl_expiry_found_by_the_flush(make_client) -> None:
    """No one waits on the handle: the flush itself removes the expired frame."""
    with Feed() as feed:
        client = make_client(feed.url)
        expired = threading.Event()
        # ttl passes before start: the first flush finds it expired
        handle = client.send({"type": "m", "n": 1}, ttl=0.05)
        threading.Timer(0.1, expired.set).start()
        assert expired.wait(5)
        client.send({"type": "m", "n": 2})
        client.start().wait_connected(10)
        assert handle.state == "expired"
        feed.wait_received(1)
        assert [json.loads(d)["n"] for d in feed.on(1)] == [2]
        assert client.stats.outbox_expired == 1


def test_drop_oldest_says_dropped(make_client, down_server) -> None:
    client = make_client(down_server.url, outbox_size=2, outbox_overflow="drop_oldest")
    handles = [client.send({"type": "m", "n": n}) for n in range(3)]
    assert [h.state for h in handles] == ["dropped", "queued", "queued"]
    assert handles[0].wait(0) == "dropped" and client.stats.outbox_dropped == 1


def test_options_are_checked() -> None:
    url = "ws://127.0.0.1:1/"
    with pytest.raises(ValueError, match="AckRule"):
        wsbridge.Client(url, ack={"type": "ack"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="id_field"):
        wsbridge.Client(url, ack=AckRule(id_field=""))
    with pytest.raises(ValueError, match="ack_window"):
        wsbridge.Client(url, ack=AckRule(), ack_window=0)
    client = wsbridge.Client(url)
    with pytest.raises(ValueError, match="ttl"):
        client.send({"type": "m"}, ttl=0)
    assert client.unsent() == []


def test_a_stopped_client_ends_a_wait_on_a_queued_handle(make_client, down_server) -> None:
    client = make_client(down_server.url).start()
    handle = client.send({"type": "m"})
    waiter = Raised(lambda: handle.wait(30), "waiter")
    client.stop(10)
    assert isinstance(waiter.wait(10), wsbridge.ClientClosed)


def _past(seconds: float) -> None:
    """Let ``seconds`` of wall-clock time pass (a ttl's), bounded."""
    end = time.time() + seconds
    wait_until(lambda: time.time() > end, timeout=seconds + 10, what=f"{seconds} s to pass")


def test_ttl_is_kept_with_the_frame_in_the_store_across_a_restart(make_client, down_server, tmp_path) -> None:
    """Run 1, offline, sends with ttl=0.3 and stops: the frame is kept in the store with its
    deadline. Run 2 starts past it: the frame is removed unsent (counted), the one sent
    after it without a ttl goes out."""
    path = str(tmp_path / "s.db")
    first = make_client(down_server.url, store=wsbridge.SQLiteStore(path), name="ttl-store").start()
    first.send({"type": "m", "n": 1}, ttl=0.3)
    first.send({"type": "m", "n": 2})
    first.send({"type": "m", "n": 3}, ttl=600)  # not past: still written by run 2
    assert first.stop(10)
    _past(0.3)
    with Feed() as feed:
        second = make_client(feed.url, store=wsbridge.SQLiteStore(path), name="ttl-store").start()
        second.wait_connected(10)
        feed.wait_received(2)
        assert [json.loads(d)["n"] for d in feed.on(1)] == [2, 3]
        assert second.stats.outbox_expired == 1
        assert second.stop(10)


def test_a_written_frame_awaiting_its_ack_is_sent_again_past_its_ttl(make_client, tmp_path) -> None:
    """A ttl no longer applies once the frame was written: kept in the store for its ack,
    the next run sends it again, however long after."""
    path = str(tmp_path / "s.db")
    with Feed(respond=_silent) as feed:
        first = make_client(feed.url, ack=AckRule(), store=wsbridge.SQLiteStore(path), name="ttl-acked").start()
        first.wait_connected(10)
        handle = first.send({"type": "m", "n": 1}, ttl=0.3)
        feed.wait_received(1)
        assert handle.state == "sent"
        assert first.stop(10)
    _past(0.3)
    with Feed(respond=_ack) as feed:
        second = make_client(feed.url, ack=AckRule(), store=wsbridge.SQLiteStore(path), name="ttl-acked").start()
        second.wait_connected(10)
        assert [json.loads(d)["id"] for _, d in feed.wait_received(1)] == [handle.ack_id]
        assert second.stats.outbox_expired == 0
        assert second.stop(10)


def test_expiry_is_seen_while_offline_without_a_wait_or_a_flush(make_client, down_server) -> None:
    """Past its ttl, a frame in the buffer of a client that cannot connect: the supervisor's
    tick removes it (stats, unsent) and the handle says "expired" when read."""
    client = make_client(down_server.url).start()
    handle = client.send({"type": "m"}, ttl=0.1)
    wait_until(lambda: client.stats.outbox_expired == 1, timeout=10, what="the expiry counted")
    assert client.unsent() == [] and handle.state == "expired"
    # Never started (no supervisor): reading the state is enough.
    idle = make_client(down_server.url)
    other = idle.send({"type": "m"}, ttl=0.1)
    _past(0.1)
    assert other.state == "expired" and other.done
    assert idle.stats.outbox_expired == 1 and idle.unsent() == []


def test_an_id_awaiting_its_ack_cannot_be_sent_again(make_client, down_server) -> None:
    """Two sends with one id: the ack could not tell them apart and one handle would never
    resolve. The second is refused while the first awaits its ack, queued or written."""
    queued = make_client(down_server.url, ack=AckRule())
    queued.send({"type": "m", "id": "X"})
    with pytest.raises(ValueError, match="awaits its ack"):
        queued.send({"type": "m", "id": "X", "v": 2})
    assert len(queued.unsent()) == 1
    with Feed(respond=_silent) as feed:
        client = make_client(feed.url, ack=AckRule()).start()
        client.wait_connected(10)
        first = client.send({"type": "m", "id": "X", "v": 1})
        feed.wait_received(1)
        with pytest.raises(ValueError, match="awaits its ack"):
            client.send({"type": "m", "id": "X", "v": 2})
        feed.send(json.dumps({"type": "ack", "id": "X"}))
        assert first.wait(10) == "acknowledged"
        again = client.send({"type": "m", "id": "X", "v": 3})  # acknowledged: the id is free again
        assert [json.loads(d)["v"] for _, d in feed.wait_received(2)] == [1, 3]
        feed.send(json.dumps({"type": "ack", "id": "X"}))
        assert again.wait(10) == "acknowledged"


def test_a_store_holding_one_id_twice_is_emptied(make_client, tmp_path) -> None:
    """A store an earlier version filled with two frames of one id: both go out, and the
    second awaits no ack of its own, so neither lingers in the store for every later run."""
    path = str(tmp_path / "s.db")
    with wsbridge.SQLiteStore(path) as store:
        store.outbox_add(json.dumps({"type": "m", "id": "D", "v": 1}), False)
        store.outbox_add(json.dumps({"type": "m", "id": "D", "v": 2}), False)
    with Feed(respond=_ack) as feed:
        client = make_client(feed.url, ack=AckRule(), store=wsbridge.SQLiteStore(path)).start()
        client.wait_connected(10)
        assert [json.loads(d)["v"] for _, d in feed.wait_received(2)] == [1, 2]
        wait_until(lambda: client.stats.acked == 1 and client.stats.unacked == 0, what="the ack")
        assert client.stop(10)
    with wsbridge.SQLiteStore(path) as store:
        assert store.outbox_items() == []


def test_handle_wait_from_a_subscriber_behind_a_full_dispatch_queue(make_client) -> None:
    """A subscriber waits for its message's ack, which comes behind 200 other messages and
    a dispatch queue of 10 that only that subscriber drains: the reader still reads it."""
    with Feed(respond=noise_then(200, lambda m: {"type": "ack", "id": m["id"]})) as feed:
        client = make_client(feed.url, ack=AckRule(), dispatch_queue=10)
        assert from_a_subscriber(client, feed, lambda: client.send({"type": "order"}).wait(10)) == "acknowledged"


def test_a_send_blocked_for_room_in_a_subscriber_behind_a_full_dispatch_queue(make_client) -> None:
    """A subscriber sends under ``outbox_overflow="block"`` with a full ack window: room comes
    only with acks, each behind 50 other messages and a dispatch queue of 10 that only that
    subscriber drains; the reader still reads them, and all 12 go out and are acknowledged."""
    with Feed(respond=noise_then(50, lambda m: {"type": "ack", "id": m["id"]})) as feed:
        client = make_client(feed.url, ack=AckRule(), ack_window=2, outbox_size=3, outbox_overflow="block",
                             outbox_timeout=10, dispatch_queue=10)

        def send_twelve() -> list:
            handles = [client.send({"type": "m", "i": i}) for i in range(12)]
            return [handle.wait(10) for handle in handles]

        assert from_a_subscriber(client, feed, send_twelve, timeout=30) == ["acknowledged"] * 12


def test_reading_a_handle_after_stop_leaves_the_stopped_client_as_it_was(tmp_path, make_client) -> None:
    """Past its ttl after stop(), a handle says expired, and the stopped client's buffer and
    store are not touched (the next run expires it as it loads it)."""
    store = wsbridge.SQLiteStore(str(tmp_path / "s.db"))
    client = make_client("ws://127.0.0.1:9/", store=store, backoff=wsbridge.Backoff(initial=30))
    handle = client.send({"type": "late"}, ttl=0.2)
    client.start()
    assert client.stop(10)
    expired = threading.Event()
    expired.wait(0.3)  # past the ttl (nothing else can say so)
    assert handle.state == "expired"
    assert len(client.unsent()) == 1 and client.stats.store_errors == 0
