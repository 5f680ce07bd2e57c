"""A live fuzz run: a real server sends thousands of good and bad frames, mixed."""

from __future__ import annotations

import random

from wsbridge import JsonCodec, PipeCodec
from wsbridge.testing import Server

from conftest import wait_until


def bad_json_frames(rng: random.Random):
    # Invalid UTF-8 in a *text* frame breaks RFC 6455 and fails the connection
    # (tests/test_wire.py); in a binary frame it is the JSON codec's to refuse.
    yield (b'{"type": "x", "bad": "\xff\xfe"}', True)
    yield "[1, 2, 3]"  # JSON, not an object
    yield '{"no_type": 1}'
    yield '{"type": 5.5}'  # neither a string nor an integer (an integer is a type: "5")
    yield '{"type": "t", "seq": "one"}'
    yield "{" * 50_000  # deep and unfinished
    yield "[" * 100_000 + "]" * 100_000  # deep nesting
    yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))  # a binary frame of noise
    yield "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 100)))  # text, mostly not JSON


def feed_through(make_client, collector, codec, mtype, frames, bad):
    """Send ``frames`` to a fresh client; wait for every ``bad`` one to be reported.
    Returns the good messages (of ``mtype``), in order, the error reports and the client."""
    with Server(codec=codec) as server:
        client = make_client(server.url, codec=codec)
        got, errors = collector(), collector()
        client.on(mtype, got)
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.send_many(frames)
        good = got.wait(len(frames) - bad, timeout=60)
        wait_until(lambda: len(errors) >= bad, what="every bad frame reported")
        return good, errors.items, client


def test_json_client_survives_thousands_of_bad_frames_and_keeps_every_good_one(make_client, collector):
    rng = random.Random(11)
    frames, good = [], 0
    bad_kinds = list(bad_json_frames(rng))
    for _ in range(3000):
        if rng.random() < 0.4:
            frames.append(rng.choice(bad_kinds))
        else:
            good += 1
            frames.append({"type": "good", "n": good})
    got, errors, client = feed_through(make_client, collector, JsonCodec.conventions(), "good", frames, len(frames) - good)
    assert [m.payload["n"] for m in got] == list(range(1, good + 1))
    stats = client.stats
    assert stats.protocol_errors == len(frames) - good and stats.connects == 1  # the stream went on
    for report in errors:
        assert report["context"] == "decode" and len(str(report["error"])) < 500  # the frame, truncated


def test_pipe_client_survives_malformed_pipe_frames(make_client, collector):
    bad = ["chat|99999999999|x", "chat|15|\"Hello world!\"", "chat|", "|5|hello", "chat|abc|x", "chat|3|ab", "chat|1|é"]
    frames = []
    for i in range(500):
        frames.append(bad[i % len(bad)])
        frames.append(f"chat|{len(str(i))}|{i}")
    got, errors, client = feed_through(make_client, collector, PipeCodec(), "chat", frames, 500)
    assert [m.payload for m in got] == [str(i) for i in range(500)]
    assert client.stats.protocol_errors == 500 and client.stats.connects == 1
