"""Property tests: any input gives messages or a ProtocolError, never anything else; encodings round-trip."""

from __future__ import annotations

import gzip
import json
import zlib

import msgpack
from feed_proto.feed_pb2 import Envelope, Push, Quote, Trade
from hypothesis import given, settings
from hypothesis import strategies as st

from wsbridge import Inflate, JsonCodec, Message, MsgpackCodec, PipeCodec, ProtobufCodec, ProtocolError, RawCodec

PICKS = [Envelope, Push, Trade]
BINARY = [Inflate(JsonCodec.conventions()), Inflate(PipeCodec(), "deflate", max_size=1000), Inflate(RawCodec(), "gzip"),
          MsgpackCodec.conventions(epoch_field="e"), MsgpackCodec("d.t", seq_field="m.seq", id_field="i"),
          MsgpackCodec(lambda value: value[0], default_type="x"),
          ProtobufCodec(Envelope, payloads={"trade": Trade, "quote": Quote}, seq_field="seq", id_field="id",
                        stream_field="stream", epoch_field="epoch"),
          ProtobufCodec(Push, lambda push: push.WhichOneof("body"), seq_field="meta.seq", stream_field="channel"),
          ProtobufCodec(lambda data: PICKS[data[0] % 3] if data else Trade, "symbol", default_type="t")]
CODECS = [JsonCodec.conventions(), JsonCodec("d.t", seq_field="m.seq", stream_field="m.s", id_field="i"),
          JsonCodec(lambda value: value[0], seq_field="s"), PipeCodec(), PipeCodec(fixed={"px": 8}), RawCodec(), *BINARY]
settings.register_profile("wsbridge", max_examples=300, deadline=None)
settings.load_profile("wsbridge")

types = st.text(st.characters(blacklist_characters="|", blacklist_categories=("Cs",)), min_size=1, max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1) | st.floats(allow_nan=False)
    | st.text(), lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def decodes_or_refuses(codec, data: bytes, binary: bool) -> None:
    try:
        messages = codec.decode(data, binary, 1.0)
    except ProtocolError as exc:
        assert exc.frame is not None and len(str(exc)) < 400  # the offending bytes, truncated
        return
    assert isinstance(messages, list) and all(isinstance(m, Message) and isinstance(m.type, str) for m in messages)


@given(st.binary(max_size=300), st.booleans())
def test_any_bytes_decode_or_raise_protocol_error(data, binary):
    for codec in CODECS:
        decodes_or_refuses(codec, data, binary)


@given(st.lists(st.sampled_from([b"chat|", b"5|", b"|", b"hello", b"99999999999|", b"\xff\xfe", b"px|", b"12345678", b"0|"]),
                max_size=12))
def test_pipe_like_garbage_is_refused_cleanly(parts):
    decodes_or_refuses(PipeCodec(fixed={"px": 8}), b"".join(parts), False)


@given(st.integers(min_value=1, max_value=30))
def test_deep_json_nesting_is_a_protocol_error_not_a_crash(depth_thousands):
    data = b"[" * (depth_thousands * 1000) + b"]" * (depth_thousands * 1000)
    decodes_or_refuses(JsonCodec.conventions(), data, False)


def test_a_huge_pipe_length_is_refused_without_allocating():
    try:
        PipeCodec().decode(b"chat|99999999999|x", False)
    except ProtocolError as exc:
        assert "exceeds the limit" in str(exc) or "LENGTH" in str(exc)
    else:
        raise AssertionError("accepted a 100 GB length")


@given(types,
       st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("type", "seq", "id", "stream")), json_values, max_size=5),
       st.one_of(st.none(), st.integers()))
def test_json_round_trip(mtype, body, seq):
    codec = JsonCodec.conventions()
    message = Message(mtype, body, seq)
    data, binary = codec.encode(message)
    [back] = codec.decode(data.encode("utf-8"), binary, 1.0)
    assert back.type == mtype and back.seq == seq
    assert {k: v for k, v in back.payload.items() if k not in ("type", "seq")} == json.loads(json.dumps(body))


@given(types, st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("d", "m")), json_values, max_size=5),
       st.dictionaries(st.text(max_size=8), json_values, max_size=3), st.one_of(st.none(), st.integers()))
def test_json_round_trip_through_nested_fields(mtype, body, inner, seq):
    codec = JsonCodec("d.t", seq_field="m.seq")
    data, binary = codec.encode(Message(mtype, {**body, "d": inner}, seq))
    [back] = codec.decode(data.encode("utf-8"), binary, 1.0)
    assert back.type == mtype and back.seq == seq
    inner.pop("t", None)  # replaced by the type
    assert {k: v for k, v in back.payload["d"].items() if k != "t"} == json.loads(json.dumps(inner))


@given(st.lists(st.tuples(types, st.text(max_size=40)), min_size=1, max_size=6))
def test_pipe_round_trip_text(items):
    codec = PipeCodec()
    data, binary = codec.encode_many([Message(t, p) for t, p in items])
    assert not binary
    back = codec.decode(data.encode("utf-8"), False)
    assert [(m.type, m.payload) for m in back] == items


@given(st.lists(st.tuples(types, st.binary(max_size=40)), min_size=1, max_size=6))
def test_pipe_round_trip_binary(items):
    codec = PipeCodec()
    data, binary = codec.encode_many([Message(t, p) for t, p in items])
    assert binary
    assert [(m.type, m.payload) for m in codec.decode(data, True)] == items


@given(st.one_of(st.text(), st.binary()))
def test_raw_round_trip(payload):
    codec = RawCodec()
    data, binary = codec.encode(Message("x", payload))
    raw = data if binary else data.encode("utf-8")
    [back] = codec.decode(raw, binary)
    assert back.payload == payload and back.type == ("binary" if binary else "text")


@given(st.binary(max_size=300), st.sampled_from([gzip.compress, zlib.compress, lambda data: zlib.compress(data)[2:-4]]))
def test_any_compressed_bytes_decode_or_raise_protocol_error(data, compress):
    for codec in BINARY[:3]:
        decodes_or_refuses(codec, compress(data), True)


@given(json_values)
def test_any_msgpack_value_decodes_or_raises_protocol_error(value):
    try:
        data = msgpack.packb(value)
    except OverflowError:  # an integer past 64 bits has no MessagePack form
        return
    for codec in BINARY[3:6]:
        decodes_or_refuses(codec, data, True)


@given(types,
       st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("type", "seq", "id", "stream")),
                       msgpack_values | st.binary(max_size=8), max_size=5),
       st.one_of(st.none(), st.integers(min_value=-(2 ** 63), max_value=2 ** 64 - 1)))
def test_msgpack_and_compressed_round_trip(mtype, body, seq):
    for codec in (MsgpackCodec.conventions(), Inflate(MsgpackCodec.conventions(), compress_sends=True)):
        data, binary = codec.encode(Message(mtype, body, seq))
        [back] = codec.decode(data, binary, 1.0)
        assert binary and back.type == mtype and back.seq == seq
        assert {k: v for k, v in back.payload.items() if k not in ("type", "seq")} == body


@given(types, st.text(max_size=20), st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1),
       st.one_of(st.none(), st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1)), st.text(max_size=8))
def test_protobuf_envelope_round_trip(mtype, symbol, qty, seq, stream):
    codec = ProtobufCodec(Envelope, payloads={mtype: Trade}, seq_field="seq", stream_field="stream")
    trade = Trade(symbol=symbol, qty=qty)
    data, binary = codec.encode(Message(mtype, trade, seq, stream=stream or None))
    [back] = codec.decode(data, binary, 1.0)
    assert (back.type, back.payload, back.seq, back.stream) == (mtype, trade, seq, stream or None)
