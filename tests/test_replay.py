"""Replay (issue 23, point 6): a stored feed played back through the same codec,
subscribers and views as a live feed, at the recorded pace or faster, from the
library and the command line; the store is only read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, List, Tuple

import pytest

import wsbridge
from wsbridge import JsonCodec, SQLiteStore
from wsbridge.testing import Server

from conftest import Collector

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def feed(i: int) -> dict:
    """The i-th message of the recorded feed: a chat line every 5th, else a tick."""
    if i % 5 == 0:
        return {"type": "chat", "from": f"user{i % 3}", "text": f"hello {i}", "ts": 1_700_000_000 + i}
    return {"type": "tick", "sym": ("ACME", "GLOBEX")[i % 2], "px": i}


def record(make_client: Any, path: str, n: int, bursts: int = 1) -> List[wsbridge.Message]:
    """Record ``n`` messages from a real server into an SQLiteStore at ``path``, in
    ``bursts`` bursts a little apart (so the recorded times have gaps); what is stored."""
    pause = threading.Event()
    with Server() as server:
        client = make_client(server.url, store=SQLiteStore(path), **wsbridge.conventions())
        got = Collector()
        client.on_any(got)
        client.start().wait_connected(10)
        per = n // bursts
        for b in range(bursts):
            if b:
                pause.wait(0.1)  # only spreads the recorded times; nothing waits on it
            server.publish(*[feed(i) for i in range(b * per, (b + 1) * per)])
        got.wait(n, 30)
        assert client.stop(10)
    stored = SQLiteStore(path).history()
    assert [m.payload["seq"] for m in stored] == list(range(1, n + 1))
    return stored


def marks(path: str) -> Tuple[Any, ...]:
    """What a replay must leave as it found it: every row, the marks and the positions."""
    import sqlite3

    db = sqlite3.connect(path)
    try:
        return (db.execute("SELECT * FROM messages ORDER BY key").fetchall(),
                db.execute("SELECT * FROM meta ORDER BY name").fetchall(),
                db.execute("SELECT * FROM positions ORDER BY skey").fetchall(),
                open(path + "-lock", "rb").read())  # the live handled mark's slot
    finally:
        db.close()


def test_a_recorded_feed_replays_through_subscribers_a_view_and_the_pull_api(make_client, tmp_path):
    from wsbridge.views import ChatView

    path = str(tmp_path / "feed.db")
    stored = record(make_client, path, 200)
    before = marks(path)
    client = make_client("ws://127.0.0.1:9/", **wsbridge.conventions())
    ticks: List[wsbridge.Message] = []
    client.on("tick", ticks.append)
    chat = ChatView(client, type="chat")
    # Pulling starts before the replay: with subscribers, the pull buffer keeps only a window (the last
    # 64 messages a type) until the first recv()/messages() call, and a replay at full speed can be
    # far ahead of a later call. messages() turns the whole buffer on when called, not when iterated.
    stream = client.messages(timeout=30)
    replay = client.replay(SQLiteStore(path), speed=None)
    pulled = list(stream)  # ends with the replay: the client stops by itself
    assert replay.wait(30) and client.state == "stopped"
    assert [(m.type, m.payload) for m in pulled] == [(m.type, m.payload) for m in stored]  # all, in order
    assert [m.received_at for m in pulled] == [m.received_at for m in stored]  # the recorded times
    assert [m.payload["px"] for m in ticks] == [i for i in range(200) if i % 5]
    assert [line.text for line in chat.lines] == [f"hello {i}" for i in range(0, 200, 5)]
    assert client.stats.replayed == 200 and client.stats.dispatched == 200 and client.stats.connects == 0
    assert replay.fed == 200 and replay.error is None
    assert marks(path) == before  # nothing written, no mark moved


def test_replay_decodes_the_kept_frames_again_with_the_clients_codec(make_client, tmp_path):
    path = str(tmp_path / "feed.db")
    record(make_client, path, 20)
    client = make_client("ws://127.0.0.1:9/", codec=JsonCodec(type_field="sym", default_type="other"))
    client.replay(SQLiteStore(path), speed=None, types={"ACME"})
    got = list(client.messages(timeout=30))
    # Typed by this client's codec, not the recording one's: the ticks of ACME only.
    assert [m.payload["px"] for m in got] == [i for i in range(20) if i % 5 and i % 2 == 0]
    assert all(m.type == "ACME" for m in got)


class FailsOnSeven(JsonCodec):
    """A codec with a bug: anything but a ProtocolError on one frame."""

    def decode(self, data: Any, binary: bool, received_at: Any = None) -> List[wsbridge.Message]:
        messages = super().decode(data, binary, received_at)
        if any(m.seq == 7 for m in messages):
            raise KeyError("codec bug")
        return messages


def test_a_frame_the_codec_fails_on_is_reported_and_skipped_as_live(make_client, tmp_path):
    """A frame the codec fails on (a bug, not a ProtocolError) is reported with its bytes and
    skipped, as the live reader does; the replay goes on to the end. A send from a subscriber
    meanwhile says the client replays (it never connects), not that it stopped."""
    path = str(tmp_path / "feed.db")
    record(make_client, path, 20)
    client = make_client("ws://127.0.0.1:9/", codec=FailsOnSeven(seq_field="seq", id_field="id"))
    errors, refused, got = Collector(), [], []
    client.signals.error.connect(errors)

    def answer(message: wsbridge.Message) -> None:
        got.append(message.payload["seq"])
        if len(got) == 1:
            try:
                client.send({"type": "back"})
            except wsbridge.ClientClosed as exc:
                refused.append(str(exc))

    client.on_any(answer)
    replay = client.replay(SQLiteStore(path), speed=None)
    assert replay.wait(10) and replay.error is None
    assert got == [n for n in range(1, 21) if n != 7]
    report = errors.wait(1)[0]
    assert report["context"] == "decode" and b"7" in report["frame"] and "codec bug" in str(report["error"])
    assert refused and "replaying a stored feed" in refused[0]


def test_replay_at_ten_times_keeps_the_recorded_pace_and_order(make_client, tmp_path):
    path = str(tmp_path / "feed.db")
    stored = record(make_client, path, 60, bursts=3)
    spread = stored[-1].received_at - stored[0].received_at
    assert spread >= 0.2  # the bursts are apart
    client = make_client("ws://127.0.0.1:9/", **wsbridge.conventions())
    seen: List[Tuple[float, wsbridge.Message]] = []
    client.on_any(lambda m: seen.append((time.monotonic(), m)))
    replay = client.replay(SQLiteStore(path), speed=10)
    assert replay.wait(30)
    assert [m.payload for _, m in seen] == [m.payload for m in stored]
    assert replay.started is not None
    first = stored[0].received_at
    for at, m in seen:  # never before its time: the recorded gaps, a tenth as long
        assert at >= replay.started + (m.received_at - first) / 10, (m, at - replay.started)


def test_replay_reads_a_store_a_live_client_is_writing(make_client, tmp_path):
    """No writer lock taken (a second writer would get StoreInUse), nothing written: the
    live client goes on storing and marking, and replays see a prefix of its feed."""
    path = str(tmp_path / "feed.db")
    with Server() as server:
        live = make_client(server.url, store=SQLiteStore(path), **wsbridge.conventions())
        got = Collector()
        live.on_any(got)
        live.start().wait_connected(10)
        server.publish(*[feed(i) for i in range(300)])
        got.wait(300, 30)
        replays = []
        for _ in range(3):  # while the live client writes more
            server.publish(*[feed(i) for i in range(300, 400)])
            client = make_client("ws://127.0.0.1:9/", **wsbridge.conventions())
            client.replay(SQLiteStore(path), speed=None)
            replays.append([m.payload["seq"] for m in client.messages(timeout=30)])
        got.wait(600, 30)
        assert live.stats.store_errors == 0 and live.stats.stored == 600
        assert live.stop(10)
    for seqs in replays:
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 300
    with SQLiteStore(path) as store:  # the live client's marks: everything handled, as it left them
        assert list(store.unhandled()) == [] and store.positions() == {None: 600}


def test_replay_options_are_checked(make_client, tmp_path):
    path = str(tmp_path / "feed.db")
    record(make_client, path, 5)
    client = make_client("ws://127.0.0.1:9/")
    for bad in (0, -1, float("nan"), float("inf"), "10", True):
        with pytest.raises(ValueError, match="speed is a number"):
            client.replay(SQLiteStore(path), speed=bad)
    with pytest.raises(ValueError, match="types is a collection"):
        client.replay(SQLiteStore(path), types="chat")
    with pytest.raises(ValueError, match="since is a time"):
        client.replay(SQLiteStore(path), since="yesterday")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reads a wsbridge Store"):
        client.replay(path)  # type: ignore[arg-type]
    assert client.state == "new"  # nothing started
    client.replay(SQLiteStore(path), speed=None).wait(30)
    with pytest.raises(wsbridge.UsageError, match="replay"):
        client.replay(SQLiteStore(path))


def test_stop_ends_a_replay_at_the_recorded_pace(make_client, tmp_path):
    path = str(tmp_path / "feed.db")
    record(make_client, path, 40, bursts=2)
    client = make_client("ws://127.0.0.1:9/", **wsbridge.conventions())
    first = threading.Event()
    client.on_any(lambda m: first.set())
    replay = client.replay(SQLiteStore(path), speed=0.001)  # the second burst due in minutes
    assert first.wait(10)
    assert client.stop(10) and replay.wait(10)
    assert 1 <= client.stats.dispatched < 40


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "wsbridge", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_the_replay_command_prints_a_stored_feed(make_client, tmp_path):
    path = str(tmp_path / "feed.db")
    stored = record(make_client, path, 50, bursts=2)
    before = marks(path)
    done = run_cli("replay", path, "--speed", "max", "--json-lines")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["payload"] for line in lines] == [m.payload for m in stored]
    assert [line["received_at"] for line in lines] == [m.received_at for m in stored]
    assert "replayed 50 message(s)" in done.stderr
    done = run_cli("replay", path, "--speed", "10", "--type", "chat", "--codec", "wsbridge")
    assert done.returncode == 0, done.stderr
    assert [line.split(" chat ")[1].split(" ", 1)[0] for line in done.stdout.splitlines()] == \
        [f"[{i + 1}]" for i in range(0, 50, 5)]
    assert marks(path) == before
    bad = run_cli("replay", path, "--speed", "0")
    assert bad.returncode == 2 and "--speed" in bad.stderr
    missing = run_cli("replay", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "no store" in missing.stderr


def test_a_redis_store_replays_too(make_client):
    pytest.importorskip("redis")
    from wsbridge import RedisStreamStore
    from wsbridge.testing.redis import RedisServer, find_redis_server

    if find_redis_server() is None:
        pytest.skip("no redis-server")
    with RedisServer() as rs, Server() as server:
        live = make_client(server.url, store=RedisStreamStore(rs.url, feed="f"), **wsbridge.conventions())
        got = Collector()
        live.on_any(got)
        live.start().wait_connected(10)
        server.publish(*[feed(i) for i in range(100)])
        got.wait(100, 30)
        assert live.stop(10)
        client = make_client("ws://127.0.0.1:9/", codec=JsonCodec(type_field="type"))
        chats = Collector()
        client.on("chat", chats)
        replay = client.replay(RedisStreamStore(rs.url, feed="f"), speed=None, types={"chat"})
        assert replay.wait(30) and replay.error is None
        assert [m.payload["text"] for m in chats.items] == [f"hello {i}" for i in range(0, 100, 5)]
        done = run_cli("replay", rs.url, "--feed", "f", "--speed", "max", "--json-lines", "--type", "tick")
        assert done.returncode == 0, done.stderr
        assert [json.loads(line)["payload"]["px"] for line in done.stdout.splitlines()] == \
            [i for i in range(100) if i % 5]
