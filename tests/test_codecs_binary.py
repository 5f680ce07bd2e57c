"""Compressed payloads (`Inflate`), MessagePack (`MsgpackCodec`) and Protocol Buffers
(`ProtobufCodec`): what they decode, what they refuse, and live against a `websockets`
server that sends them (and reads what the client sends back with msgpack's, protobuf's
and zlib's own decoders)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tracemalloc
import zlib
from typing import Any

import msgpack
import pytest
from feed_proto.feed_pb2 import Envelope, Meta, Push, Quote, Trade

import wsbridge
from wsbridge import Inflate, JsonCodec, Message, MsgpackCodec, PipeCodec, ProtobufCodec, ProtocolError

from conftest import Collector, Feed

TYPES = {"trade": Trade, "quote": Quote}


def envelope_codec(**options: Any) -> ProtobufCodec:
    return ProtobufCodec(Envelope, payloads=TYPES, seq_field="seq", stream_field="stream", id_field="id",
                         epoch_field="epoch", **options)


def push_codec() -> ProtobufCodec:
    return ProtobufCodec(Push, lambda push: push.WhichOneof("body"), seq_field="meta.seq", stream_field="channel")


def raw_deflate(data: bytes) -> bytes:
    deflater = zlib.compressobj(wbits=-15)
    return deflater.compress(data) + deflater.flush()


def bomb(megabytes: int) -> bytes:
    """A gzip stream of ``megabytes`` MiB of zeros (about 1,000 times smaller), made a MiB at a time."""
    deflater = zlib.compressobj(9, wbits=31)
    chunk = bytes(1 << 20)
    return b"".join(deflater.compress(chunk) for _ in range(megabytes)) + deflater.flush()


# -- Inflate ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, compress", [
    ("auto", gzip.compress), ("auto", zlib.compress), ("gzip", gzip.compress), ("zlib", zlib.compress),
    ("deflate", raw_deflate),
])
def test_inflate_reads_each_format_before_the_inner_codec(fmt, compress):
    frame = b'{"type":"trade","seq":7,"px":"101.5"}'
    [message] = Inflate(JsonCodec.conventions(), fmt).decode(compress(frame), True, 1.0)
    assert (message.type, message.seq, message.payload["px"], message.raw) == ("trade", 7, "101.5", frame)


def test_inflate_passes_text_frames_through_and_reads_sync_flushed_raw_deflate():
    codec = Inflate(JsonCodec(), "deflate")
    assert codec.decode(b'{"type":"pong"}', False)[0].type == "pong"  # servers answer pings in plain text
    deflater = zlib.compressobj(wbits=-15)
    flushed = deflater.compress(b'{"type":"book"}') + deflater.flush(zlib.Z_SYNC_FLUSH)  # no final block
    assert codec.decode(flushed, True)[0].type == "book"


@pytest.mark.parametrize("fmt, data, why", [
    ("auto", raw_deflate(b'{"type":"x"}'), "not a valid auto stream"),  # raw deflate is never guessed
    ("gzip", zlib.compress(b'{"type":"x"}'), "not a valid gzip stream"),
    ("auto", gzip.compress(b'{"type":"x"}')[:-6], "cut short"),
    ("auto", gzip.compress(b'{"type":"x"}') + b"tail", "4 bytes after the end"),
    ("zlib", b"", "cut short"),
])
def test_inflate_refuses_broken_streams_with_a_protocol_error(fmt, data, why):
    with pytest.raises(ProtocolError, match=why):
        Inflate(JsonCodec(), fmt).decode(data, True)


def test_a_decompression_bomb_is_refused_before_it_is_allocated():
    data = bomb(256)  # 256 MiB of zeros in about 260 KB
    codec = Inflate(JsonCodec(), max_size=1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match="inflates to more than max_size=1048576 bytes"):
            codec.decode(data, True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated to refuse a 1 MiB bound"
    assert codec.decode(gzip.compress(b'{"type":"%s"}' % (b"x" * ((1 << 20) - 11))), True)  # exactly the bound: read


@pytest.mark.parametrize("fmt, inflate", [("auto", gzip.decompress), ("zlib", zlib.decompress),
                                          ("deflate", lambda data: zlib.decompress(data, -15))])
def test_compressed_sends_are_what_zlib_reads(fmt, inflate):
    data, binary = Inflate(JsonCodec(), fmt, compress_sends=True).encode(Message("sub", {"ch": "trades"}))
    assert binary and inflate(data) == b'{"ch":"trades","type":"sub"}'
    assert Inflate(JsonCodec()).encode({"type": "sub"}) == ('{"type":"sub"}', False)  # plain unless asked


@pytest.mark.parametrize("options, why", [
    (dict(codec=JsonCodec, format="auto"), "wraps a codec"),
    (dict(codec=JsonCodec(), format="brotli"), "format is one of auto, gzip, zlib, deflate"),
    (dict(codec=JsonCodec(), max_size=0), "max_size is a positive number"),
    (dict(codec=JsonCodec(), max_size=1.5), "max_size is a positive number"),
])
def test_inflate_options_are_checked_at_construction(options, why):
    with pytest.raises(ValueError, match=why):
        Inflate(**options)


# -- MessagePack --------------------------------------------------------------------------------

def test_msgpack_reads_json_codecs_field_options():
    codec = MsgpackCodec("d.t", seq_field="m.seq", stream_field="ch", id_field="i", epoch_field="m.e")
    frame = msgpack.packb({"d": {"t": "trade", "px": b"\x00\x01"}, "m": {"seq": 3, "e": 9}, "ch": "BTC", "i": "a1"})
    [message] = codec.decode(frame, True)
    assert (message.type, message.seq, message.stream, message.id, message.epoch) == ("trade", 3, "BTC", "a1", "9")
    assert message.payload["d"]["px"] == b"\x00\x01" and message.raw == frame
    assert MsgpackCodec(lambda value: value[0]).decode(msgpack.packb(["join", 1]), True)[0].type == "join"
    assert MsgpackCodec(default_type="tick").decode(msgpack.packb({"p": 1}), True)[0].type == "tick"


@pytest.mark.parametrize("frame, why", [
    (msgpack.packb({1: "x"}), "not valid MessagePack"),  # a key that is not a string (strict_map_key)
    (msgpack.packb({"type": "x"}) + b"\x00", "not valid MessagePack"),
    (b"\x91" * 5000 + b"\x90", "not valid MessagePack"),  # nested deeper than msgpack's stack
    (msgpack.packb([1, 2]), "MessagePack frame must be an object, found list"),
    (msgpack.packb({"seq": 1}), "MessagePack map has no 'type' field"),
    (msgpack.packb({"type": b"x"}), "must be a string or an integer"),
])
def test_msgpack_refuses_what_is_not_a_message(frame, why):
    with pytest.raises(ProtocolError, match=why):
        MsgpackCodec.conventions().decode(frame, True)


def test_msgpack_options_are_checked_at_construction():
    with pytest.raises(ValueError, match="MsgpackCodec seq_field='a..b': a dotted path with an empty part"):
        MsgpackCodec(seq_field="a..b")


# -- Protocol Buffers ---------------------------------------------------------------------------

def test_protobuf_envelope_maps_types_to_classes():
    trade = Trade(symbol="BTC", price=101.5, qty=3)
    frame = Envelope(type="trade", seq=0, stream="BTC", id="t1", epoch="e2", payload=trade.SerializeToString())
    [message] = envelope_codec().decode(frame.SerializeToString(), True, 1.0)
    assert (message.type, message.seq, message.stream, message.id, message.epoch) == ("trade", 0, "BTC", "t1", "e2")
    assert message.payload == trade and message.raw == frame.SerializeToString()
    [plain] = envelope_codec().decode(Envelope(type="quote").SerializeToString(), True)
    assert plain.seq is None and plain.id is None and plain.stream is None and plain.payload == Quote()


def test_protobuf_one_class_typed_by_a_function_and_a_picked_class():
    frame = Push(channel="BTC", meta=Meta(seq=5), quote=Quote(bid=1.0, ask=2.0)).SerializeToString()
    [message] = push_codec().decode(frame, True)
    assert (message.type, message.seq, message.stream, message.payload.quote.ask) == ("quote", 5, "BTC", 2.0)
    picked = ProtobufCodec(lambda data: Trade, default_type="trade")  # a function of the bytes picks the class
    assert picked.decode(Trade(symbol="ETH").SerializeToString(), True)[0].payload.symbol == "ETH"


@pytest.mark.parametrize("codec, frame, why", [
    (envelope_codec(), b"\xff\xff", "not a valid Envelope"),
    (envelope_codec(), Envelope(type="order").SerializeToString(), "no class for type 'order' in payloads"),
    (envelope_codec(), Envelope(type="trade", payload=b"\x0a\x05ab").SerializeToString(), "not a valid Trade"),
    (envelope_codec(), Envelope(stream="x").SerializeToString(), "protobuf message has no 'type' field"),
    (push_codec(), Push(channel="x").SerializeToString(), "type_field .* found no type"),
    (ProtobufCodec(lambda data: 1 / 0), b"", "the class picker failed: ZeroDivisionError"),
    (ProtobufCodec(lambda data: dict), b"", "not a generated protobuf class"),
])
def test_protobuf_refuses_what_is_not_a_message(codec, frame, why):
    with pytest.raises(ProtocolError, match=why):
        codec.decode(frame, True)


@pytest.mark.parametrize("options, why", [
    (dict(message=dict), "a generated protobuf class or a function"),
    (dict(message="Envelope"), "a generated protobuf class or a function"),
    (dict(message=Envelope, seq_field="sequence"), "seq_field='sequence': wsbridge.test.Envelope has no field 'sequence'"),
    (dict(message=Push, type_field="meta.kind"), "type_field='meta.kind': wsbridge.test.Meta has no field 'kind'"),
    (dict(message=Push, type_field="channel.x"), "type_field='channel.x': channel has no field 'x'"),
    (dict(message=Envelope, payloads={"trade": dict}), "payloads maps a type"),
    (dict(message=Envelope, payloads=TYPES, payload_field="body"), "payload_field='body'"),
])
def test_protobuf_options_are_checked_at_construction(options, why):
    with pytest.raises(ValueError, match=why):
        ProtobufCodec(**options)


def test_protobuf_encode_writes_the_type_and_fields_into_an_envelope_or_a_copy():
    trade = Trade(symbol="BTC", qty=2)
    data, binary = envelope_codec().encode(Message("trade", trade, 4, "t9", "BTC"))
    sent = Envelope.FromString(data)
    assert binary and (sent.type, sent.seq, sent.id, sent.stream) == ("trade", 4, "t9", "BTC")
    assert Trade.FromString(sent.payload) == trade
    typed = ProtobufCodec(Envelope, seq_field="seq")
    data, _ = typed.encode(Message("ping", Envelope(stream="s"), 2))
    assert Envelope.FromString(data) == Envelope(type="ping", stream="s", seq=2)
    with pytest.raises(TypeError, match="not dict"):
        typed.encode({"type": "x"})


# -- live, against a websockets server ----------------------------------------------------------

def live(make_client, feed: Feed, codec: wsbridge.Codec, frames: list, expected: int) -> tuple:
    """The messages ``codec`` reads from ``frames`` (sent by the server) and the errors it reports."""
    client = make_client(feed.url, codec=codec)
    errors = Collector()
    client.signals.error.connect(errors)
    client.start().wait_connected(timeout=10)
    feed.wait_opened(1)
    feed.send(*frames)
    return [client.recv(timeout=10) for _ in range(expected)], client, errors


def test_live_gzip_json_with_a_bomb_between_and_compressed_sends(make_client):
    with Feed() as feed:
        frames = [gzip.compress(b'{"type":"trade","seq":1}'), bomb(64), zlib.compress(b'{"type":"trade","seq":2}'),
                  '{"type":"pong"}']  # a text frame: passed through
        codec = Inflate(JsonCodec.conventions(), max_size=1 << 20, compress_sends=True)
        messages, client, errors = live(make_client, feed, codec, frames, 3)
        assert [(m.type, m.seq) for m in messages] == [("trade", 1), ("trade", 2), ("pong", None)]
        [report] = errors.wait(1)
        assert report["context"] == "decode" and "inflates to more than max_size" in str(report["error"])
        assert client.connected  # the bomb cost one frame, not the connection
        client.send(Message("sub", {"ch": "trades"}, 3)).wait(timeout=10)
        [(_, data)] = feed.wait_received(1)
        assert isinstance(data, bytes) and gzip.decompress(data) == b'{"ch":"trades","type":"sub","seq":3}'
        echoed = client.recv(timeout=10)  # the server echoes it: it comes back through Inflate
        assert (echoed.type, echoed.seq, echoed.payload["ch"]) == ("sub", 3, "trades")


def test_live_raw_deflate_pipe_frames(make_client):
    with Feed() as feed:
        messages, _, _ = live(make_client, feed, Inflate(PipeCodec(), "deflate"), [raw_deflate(b"px|3|1.5tx|2|ok")], 2)
        assert [(m.type, m.payload) for m in messages] == [("px", b"1.5"), ("tx", b"ok")]


def test_live_msgpack_feed_and_round_trip(make_client):
    with Feed() as feed:
        frames = [msgpack.packb({"type": "trade", "seq": n, "stream": "BTC", "px": n * 1.5}) for n in (1, 2)]
        messages, client, _ = live(make_client, feed, MsgpackCodec.conventions(), frames, 2)
        assert [(m.type, m.seq, m.stream, m.payload["px"]) for m in messages] == [("trade", 1, "BTC", 1.5),
                                                                                  ("trade", 2, "BTC", 3.0)]
        client.send(Message("order", {"qty": 5, "tag": b"\x01"}, 3, stream="BTC")).wait(timeout=10)
        [(_, data)] = feed.wait_received(1)
        assert msgpack.unpackb(data) == {"qty": 5, "tag": b"\x01", "type": "order", "seq": 3, "stream": "BTC"}
        echoed = client.recv(timeout=10)
        assert (echoed.type, echoed.seq, echoed.payload["tag"]) == ("order", 3, b"\x01")


def test_live_protobuf_feed_and_round_trip(make_client):
    with Feed() as feed:
        frames = [Envelope(type="trade", seq=n, stream="BTC", payload=Trade(symbol="BTC", qty=n).SerializeToString())
                  .SerializeToString() for n in (1, 2)]
        messages, client, _ = live(make_client, feed, envelope_codec(), frames, 2)
        assert [(m.type, m.seq, m.payload.qty) for m in messages] == [("trade", 1, 1), ("trade", 2, 2)]
        client.send(Message("quote", Quote(symbol="BTC", bid=1.25), 3, stream="BTC")).wait(timeout=10)
        [(_, data)] = feed.wait_received(1)
        sent = Envelope.FromString(data)
        assert (sent.type, sent.seq, sent.stream, Quote.FromString(sent.payload).bid) == ("quote", 3, "BTC", 1.25)
        echoed = client.recv(timeout=10)
        assert (echoed.type, echoed.seq, echoed.payload) == ("quote", 3, Quote(symbol="BTC", bid=1.25))


def test_live_protobuf_oneof_feed(make_client):
    with Feed() as feed:
        frames = [Push(channel="BTC", meta=Meta(seq=1), trade=Trade(qty=4)).SerializeToString(),
                  Push(channel="BTC", meta=Meta(seq=2), quote=Quote(ask=9.5)).SerializeToString()]
        messages, _, _ = live(make_client, feed, push_codec(), frames, 2)
        assert [(m.type, m.seq, m.stream) for m in messages] == [("trade", 1, "BTC"), ("quote", 2, "BTC")]


# -- the command line ---------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def listen(feed: Feed, frames: list, *options: str) -> str:
    """What ``wsbridge listen`` prints of ``frames`` (sent once it connected) with ``options``."""
    proc = subprocess.Popen([sys.executable, "-m", "wsbridge", "listen", feed.url, "--json-lines", "--max", str(len(frames)),
                             "--timeout", "30", *options], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)
    try:
        feed.wait_opened(1, timeout=30)
        feed.send(*frames)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == 0, err
    return out


def test_the_command_line_reads_gzipped_msgpack_and_protobuf():
    with Feed() as feed:
        frames = [gzip.compress(msgpack.packb({"kind": "trade", "n": n})) for n in (1, 2)]
        out = listen(feed, frames, "--codec", "msgpack", "--inflate", "auto", "--type-field", "kind")
        assert [json.loads(line)["payload"]["n"] for line in out.splitlines()] == [1, 2]
    with Feed() as feed:
        frames = [Push(channel=name, trade=Trade(qty=3)).SerializeToString() for name in ("BTC", "ETH")]
        out = listen(feed, frames, "--codec", "protobuf", "--proto-class", "tests.feed_proto.feed_pb2:Push",
                     "--type-field", "channel")
        assert [json.loads(line)["type"] for line in out.splitlines()] == ["BTC", "ETH"]


@pytest.mark.parametrize("options, why", [
    (["--codec", "protobuf"], "--codec protobuf and --proto-class MODULE:CLASS go together"),
    (["--proto-class", "tests.feed_proto.feed_pb2:Push"], "go together"),
    (["--codec", "protobuf", "--proto-class", "feed_pb2"], "write MODULE:CLASS"),
    (["--codec", "protobuf", "--proto-class", "no_such_module:Push"], "cannot import 'no_such_module'"),
    (["--codec", "protobuf", "--proto-class", "tests.feed_proto.feed_pb2:Nope"], "has no 'Nope'"),
    (["--codec", "protobuf", "--proto-class", "tests.feed_proto.feed_pb2:Push", "--type-field", "kind"],
     "Push has no field 'kind'"),
    (["--codec", "pipe", "--type-field", "kind"], "go with --codec json, wsbridge, msgpack or protobuf"),
])
def test_the_command_line_refuses_codec_options_that_cannot_work(options, why):
    result = subprocess.run([sys.executable, "-m", "wsbridge", "listen", "ws://127.0.0.1:9/", *options], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and why in result.stderr, result.stderr
