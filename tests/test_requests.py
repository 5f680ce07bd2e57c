"""`Client.request`: a reply matched by its id as it is read, from any thread, never through
the pull buffer; a lost connection ends the wait at once (or the request is sent again).
Against a `websockets` server (`conftest.Feed`) that echoes, or answers as told."""

from __future__ import annotations

import json
import threading
from typing import Dict, List, Union

import pytest

import wsbridge

from conftest import Feed, Raised, from_a_subscriber, noise_then


def _json(data: Union[str, bytes]) -> dict:
    return json.loads(data)


def test_request_returns_the_reply_with_its_id_added_to_a_copy(make_client) -> None:
    with Feed() as feed:  # echoes: the echo carries the request's id
        client = make_client(feed.url).start()
        client.wait_connected(10)
        mine = {"type": "get", "what": "time"}
        reply = client.request(mine, timeout=10)
        assert reply.payload["what"] == "time" and reply.payload["id"]
        assert mine == {"type": "get", "what": "time"}  # the caller's dict is not changed
        assert _json(feed.wait_received(1)[0][1])["id"] == reply.payload["id"]
        assert client.request({"type": "get", "id": 7}, timeout=10).payload["id"] == 7  # its own id is kept


def test_request_id_field_is_an_option(make_client) -> None:
    with Feed() as feed:
        client = make_client(feed.url, request_id_field="cid").start()
        client.wait_connected(10)
        assert "cid" in client.request({"type": "get"}, timeout=10).payload


def test_reply_that_comes_at_once_and_is_followed_by_many_is_not_missed(make_client) -> None:
    """The reply comes in the same instant as the request goes out, and 3,000 messages
    follow it in front of a pull buffer of one: matched as it is read, it cannot be pushed out."""
    def respond(number: int, data: Union[str, bytes]) -> List[str]:
        rid = _json(data)["id"]
        return [json.dumps({"type": "reply", "id": rid})] + [json.dumps({"type": "noise", "n": i}) for i in range(3000)]

    with Feed(respond=respond) as feed:
        client = make_client(feed.url, pull_buffer=1).start()
        client.wait_connected(10)
        for _ in range(3):
            reply = client.request({"type": "get"}, timeout=20)
            assert reply.type == "reply"


def test_request_from_a_subscriber(make_client) -> None:
    """A subscriber (the dispatcher thread) can wait for a reply: it is matched on the reader."""
    got: Dict[str, object] = {}
    done = threading.Event()
    with Feed() as feed:
        client = make_client(feed.url)

        @client.on("tick")
        def on_tick(message: wsbridge.Message) -> None:
            try:
                got["reply"] = client.request({"type": "quote", "for": message.payload["n"]}, timeout=10)
            except Exception as exc:  # noqa: BLE001 - shown by the assertion below
                got["error"] = exc
            done.set()

        client.start().wait_connected(10)
        feed.send(json.dumps({"type": "tick", "n": 5}))
        assert done.wait(15)
        assert "error" not in got, got
        reply = got["reply"]
        assert isinstance(reply, wsbridge.Message) and reply.payload["for"] == 5


def test_request_from_a_connect_hook_goes_out_on_that_connection(make_client) -> None:
    """`client.request` from a hook is `Session.request` matched by id: it goes out during
    the handshake, before the send buffer, and gets its reply."""
    replies: List[wsbridge.Message] = []
    with Feed() as feed:
        client = make_client(feed.url)
        client.send({"type": "queued"})  # waits in the buffer until the hook is done
        client.on_connect(lambda session: replies.append(client.request({"type": "login"}, timeout=5)))
        client.start().wait_connected(10)
        assert replies and replies[0].payload["type"] == "login"
        sent = [_json(d)["type"] for _, d in feed.wait_received(2)]
        assert sent[:2] == ["login", "queued"]


def test_session_request_without_a_match_is_matched_by_id(make_client) -> None:
    replies: List[wsbridge.Message] = []
    with Feed() as feed:
        client = make_client(feed.url, on_connect=lambda s: replies.append(s.request({"type": "auth"})))
        client.start().wait_connected(10)
        assert replies[0].payload["type"] == "auth" and replies[0].payload["id"]


def test_requests_from_many_threads_each_get_their_own_reply(make_client) -> None:
    with Feed() as feed:
        client = make_client(feed.url).start()
        client.wait_connected(10)
        errors: List[BaseException] = []
        barrier = threading.Barrier(8)

        def worker(k: int) -> None:
            try:
                barrier.wait(10)
                for i in range(25):
                    reply = client.request({"type": "q", "k": k, "i": i}, timeout=10)
                    assert (reply.payload["k"], reply.payload["i"]) == (k, i)
            except BaseException as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(k,), name=f"requester-{k}") for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        assert not any(t.is_alive() for t in threads)


def _silent(number: int, data: Union[str, bytes]) -> List[str]:
    return []


def test_a_lost_connection_ends_the_request_at_once(make_client) -> None:
    """timeout=30, the connection is cut once the server has the request: ConnectionLost
    comes well within the test's own 10 s (an event, not a timing of speed)."""
    with Feed(respond=_silent) as feed:
        client = make_client(feed.url).start()
        client.wait_connected(10)
        request = Raised(lambda: client.request({"type": "slow"}, timeout=30), "requester")
        feed.wait_received(1)
        feed.drop()
        error = request.wait(10, "the request waited on after its connection ended")
        assert isinstance(error, wsbridge.ConnectionLost) and isinstance(error, ConnectionError), error


def test_resend_sends_the_request_again_after_the_reconnect(make_client) -> None:
    def respond(number: int, data: Union[str, bytes]) -> List[Union[str, bytes]]:
        return [data] if number >= 2 else []  # the first connection never answers

    with Feed(respond=respond) as feed:
        client = make_client(feed.url).start()
        client.wait_connected(10)
        result: Dict[str, object] = {}
        done = threading.Event()

        def ask() -> None:
            try:
                result["reply"] = client.request({"type": "order", "qty": 3}, timeout=30, resend=True)
            except BaseException as exc:  # noqa: BLE001 - examined below
                result["error"] = exc
            done.set()

        t = threading.Thread(target=ask, name="requester")
        t.start()
        feed.wait_received(1)
        feed.drop()
        assert done.wait(20)
        t.join(10)
        assert "error" not in result, result
        first, second = feed.on(1), feed.on(2)
        assert _json(first[0])["id"] == _json(second[0])["id"] == result["reply"].payload["id"]  # type: ignore[union-attr]


def test_request_timeout_and_what_cannot_carry_an_id(make_client) -> None:
    with Feed(respond=_silent) as feed:
        client = make_client(feed.url).start()
        client.wait_connected(10)
        with pytest.raises(TimeoutError):
            client.request({"type": "x"}, timeout=0.2)
        with pytest.raises(ValueError, match="mapping"):
            client.request("plain text", timeout=1)
        with pytest.raises(ValueError, match="timeout"):
            client.request({"type": "x"}, timeout=0)
    with pytest.raises(ValueError, match="request_id_field"):
        wsbridge.Client("ws://127.0.0.1:1/", request_id_field="")


def test_a_stopped_client_ends_a_waiting_request(make_client) -> None:
    with Feed(respond=_silent) as feed:
        client = make_client(feed.url).start()
        client.wait_connected(10)
        request = Raised(lambda: client.request({"type": "slow"}, timeout=30), "requester")
        feed.wait_received(1)
        client.stop(timeout=10)
        error = request.wait(10)
        assert isinstance(error, wsbridge.ClientClosed), error


def test_request_from_a_subscriber_behind_a_full_dispatch_queue(make_client, collector) -> None:
    """The subscriber waiting for its reply is the only one who drains the dispatch queue
    (10 messages): the 200 messages the server sends before the reply fill it, and the
    reader must still read on to the reply rather than wait for room."""
    with Feed(respond=noise_then(200, lambda m: m if m.get("type") == "quote" else None)) as feed:
        client = make_client(feed.url, dispatch_queue=10)
        noise = collector()
        client.on("noise")(noise)
        reply = from_a_subscriber(client, feed, lambda: client.request({"type": "quote"}, timeout=10))
        assert isinstance(reply, wsbridge.Message) and reply.type == "quote"
        # The noise is still delivered, in order, once the subscriber returned; the bound holds again.
        assert [m.payload["n"] for m in noise.wait(200, timeout=20)] == list(range(200))


def test_a_request_given_up_on_is_not_sent_later(make_client, down_server, tmp_path) -> None:
    """A request that timed out while its frame waited in the send buffer is taken out of
    the buffer and the store: neither this client's next connection nor the next run with
    the store sends it."""
    path = str(tmp_path / "s.db")
    client = make_client(down_server.url, store=wsbridge.SQLiteStore(path), name="orphan").start()
    with pytest.raises(TimeoutError):
        client.request({"type": "orphan"}, timeout=0.3)
    assert client.unsent() == []
    client.send({"type": "after"})
    with Feed(respond=_silent) as feed:
        client.reconnect(feed.url)
        client.wait_connected(10)
        feed.wait_received(1)
        assert [_json(d)["type"] for d in feed.on(1)] == ["after"]
        with pytest.raises(TimeoutError):  # the server never answers: a timeout once written
            client.request({"type": "late"}, timeout=0.2)
        assert client.stop(10)
    # And what the store kept: the next run sends nothing of it.
    client = make_client(down_server.url, store=wsbridge.SQLiteStore(path), name="orphan")
    client.send({"type": "second-run"})
    assert client.stop(10)  # never started: kept in the store
    store = wsbridge.SQLiteStore(path)
    store.open()
    try:
        assert [_json(data)["type"] for _, data, _, _ in store.outbox_items()] == ["second-run"]
    finally:
        store.close()
