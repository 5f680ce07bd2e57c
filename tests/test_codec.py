"""The wire formats alone: no sockets, no threads."""

import json

import pytest

from wsbridge import JsonCodec, Message, PipeCodec, ProtocolError, RawCodec, codec_by_name


# -- pipe ---------------------------------------------------------------------
def test_pipe_decodes_one_message():
    [msg] = PipeCodec().decode(b"chat|5|hello", False, 12.5)
    assert (msg.type, msg.payload, msg.received_at, msg.raw) == ("chat", "hello", 12.5, b"chat|5|hello")


def test_pipe_payload_may_contain_pipes_and_multibyte_text():
    payload = "a|b|ünï|cödé"
    frame = f"chat|{len(payload.encode())}|{payload}".encode()
    assert PipeCodec().decode(frame, False)[0].payload == payload


def test_pipe_several_messages_in_one_frame():
    msgs = PipeCodec().decode(b"chat|2|hitick|0|news|3|a|b", False)
    assert [(m.type, m.payload) for m in msgs] == [("chat", "hi"), ("tick", ""), ("news", "a|b")]


def test_pipe_textbook_example_is_invalid():
    # '"Hello world!"' is 14 bytes, not 15.
    with pytest.raises(ProtocolError) as info:
        PipeCodec().decode(b'chat|15|"Hello world!"', False)
    text = str(info.value)
    assert "15" in text and "14" in text and "'chat'" in text


def test_pipe_length_too_short_leaves_garbage_that_is_reported():
    with pytest.raises(ProtocolError, match=r"after the 'chat' message .*length"):
        PipeCodec().decode(b"chat|3|hello", False)


@pytest.mark.parametrize(
    "frame, fragment",
    [
        (b"", "empty frame"),
        (b"chat", "truncated header"),
        (b"|5|hello", "empty message type"),
        (b"chat|x|hello", "decimal LENGTH"),
        (b"chat|-1|hello", "decimal LENGTH"),
        (b"chat|+5|hello", "decimal LENGTH"),
        (b"chat| 5|hello", "decimal LENGTH"),
        (b"chat|5hello", "decimal LENGTH"),
        (b"chat||hello", "decimal LENGTH"),
        (b"chat|99999999999|x", "decimal LENGTH"),
        (b"chat|99999999|x", "exceeds the limit"),
        (b"chat|10|hello", "length says 10 bytes but the frame has 5"),
        (b"\xff\xfe|1|x", "type is not valid UTF-8"),
    ],
)
def test_pipe_malformed_frames(frame, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        PipeCodec().decode(frame, False)


def test_pipe_length_that_cuts_a_character_is_an_error():
    with pytest.raises(ProtocolError, match="not valid UTF-8"):
        PipeCodec().decode("chat|1|é".encode(), False)


def test_pipe_error_preview_is_truncated():
    frame = b"chat|5|" + b"x" * 10_000
    with pytest.raises(ProtocolError) as info:
        PipeCodec().decode(frame, False)
    assert len(str(info.value)) < 300
    assert info.value.frame is frame


def test_pipe_fixed_size_types():
    codec = PipeCodec(fixed={"tick": 4})
    msgs = codec.decode(b"tick|1234tick|abcdchat|2|ok", False)
    assert [(m.type, m.payload) for m in msgs] == [("tick", "1234"), ("tick", "abcd"), ("chat", "ok")]
    with pytest.raises(ProtocolError, match="length says 4"):
        codec.decode(b"tick|12", False)


def test_pipe_binary_frames_keep_bytes():
    [msg] = PipeCodec().decode(b"blob|3|\x00\xff|", True)
    assert msg.payload == b"\x00\xff|"


def test_pipe_round_trip():
    codec = PipeCodec(fixed={"t": 2})
    messages = [Message("chat", "hé|llo"), Message("t", "ab"), Message("empty", "")]
    data, binary = codec.encode_many(messages)
    assert binary is False and isinstance(data, str)
    decoded = codec.decode(data.encode(), binary)
    assert [(m.type, m.payload) for m in decoded] == [(m.type, m.payload) for m in messages]
    data, binary = codec.encode({"type": "bin", "payload": b"\x00\x01"})
    assert binary is True and codec.decode(data, True)[0].payload == b"\x00\x01"


def test_pipe_encode_rejects_bad_input():
    codec = PipeCodec(fixed={"t": 2})
    with pytest.raises(ValueError):
        codec.encode(Message("a|b", "x"))
    with pytest.raises(ValueError, match="fixed at 2"):
        codec.encode(Message("t", "abc"))
    with pytest.raises(TypeError):
        codec.encode(Message("chat", {"not": "text"}))
    with pytest.raises(TypeError, match="'payload'"):
        codec.encode({"type": "chat"})


# -- json -----------------------------------------------------------------------
def test_json_decodes_fields():
    [msg] = JsonCodec.conventions().decode(b'{"type":"chat","seq":7,"id":"a1","stream":"room1","body":"hi"}', False, 1.0)
    assert (msg.type, msg.seq, msg.id, msg.stream, msg.payload["body"]) == ("chat", 7, "a1", "room1", "hi")


def test_json_type_field_is_configurable():
    [msg] = JsonCodec("event").decode(b'{"event":"trade","px":1}', False)
    assert msg.type == "trade"
    [msg] = JsonCodec(default_type="unknown").decode(b'{"px":1}', False)
    assert msg.type == "unknown"


@pytest.mark.parametrize(
    "frame, fragment",
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "must be an object, found list"),
        (b'"text"', "must be an object, found str"),
        (b'{"body":1}', "no 'type' field"),
        (b'{"type":5}', "must be a string"),
        (b'{"type":"x","seq":"7"}', "'seq' must be an integer"),
        (b'{"type":"x","seq":true}', "'seq' must be an integer"),
        (b'{"type":"x","s":"\xff"}', "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON"),
    ],
)
def test_json_malformed_frames(frame, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        JsonCodec.conventions().decode(frame, False)


def test_json_encode_and_round_trip():
    codec = JsonCodec.conventions()
    data, binary = codec.encode({"type": "chat", "body": "hé"})
    assert binary is False and json.loads(data) == {"type": "chat", "body": "hé"}
    data, _ = codec.encode(Message("chat", {"body": "x"}, seq=3))
    [msg] = codec.decode(data.encode(), False)
    assert (msg.type, msg.seq, msg.payload["body"]) == ("chat", 3, "x")
    data, _ = codec.encode(Message("note", "plain"))
    assert json.loads(data) == {"type": "note", "payload": "plain"}
    with pytest.raises(TypeError):
        codec.encode([1, 2])


# -- raw ----------------------------------------------------------------------
def test_raw_text_and_binary():
    codec = RawCodec()
    assert codec.decode("hé".encode(), False)[0] == Message("text", "hé", raw="hé".encode())
    assert codec.decode(b"\x00\xff", True)[0].payload == b"\x00\xff"
    with pytest.raises(ProtocolError, match="UTF-8"):
        codec.decode(b"\xff", False)
    assert codec.encode("x") == ("x", False)
    assert codec.encode(Message("binary", b"\x01")) == (b"\x01", True)
    with pytest.raises(TypeError):
        codec.encode(Message("x", 5))


def test_codec_by_name():
    assert isinstance(codec_by_name("pipe"), PipeCodec)
    with pytest.raises(ValueError, match="unknown codec"):
        codec_by_name("xml")


def test_message_is_immutable_and_short_in_repr():
    msg = Message("chat", "x" * 500, seq=1)
    with pytest.raises(AttributeError):
        msg.type = "other"  # type: ignore[misc]
    assert len(repr(msg)) < 150 and "seq=1" in repr(msg)
