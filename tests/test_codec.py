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
        (b"[1,2]", r"must be an object, found list \(for arrays, pass a function of the payload as type_field\)"),
        (b'"text"', "must be an object, found str"),
        (b'{"body":1}', "no 'type' field"),
        (b'{"type":5.5}', "'type' must be a string or an integer, found float"),
        (b'{"type":true}', "'type' must be a string or an integer, found bool"),
        (b'{"type":null}', "no 'type' field"),
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


# -- json: types of real feeds ----------------------------------------------------
PHOENIX_REPLY = b'["1","1","room:lobby","phx_reply",{"status":"ok","response":{}}]'


def phoenix_event(frame):
    """Phoenix channels: ``[join_ref, ref, topic, event, payload]``."""
    return frame[3]


def test_json_type_in_a_nested_field():
    codec = JsonCodec("data.type")
    [msg] = codec.decode(b'{"data":{"type":"trade","px":1},"ts":5}', False)
    assert (msg.type, msg.payload) == ("trade", {"data": {"type": "trade", "px": 1}, "ts": 5})
    [msg] = JsonCodec("params.channel").decode(b'{"method":"subscription","params":{"channel":"book.BTC","data":[]}}', False)
    assert msg.type == "book.BTC"
    [msg] = JsonCodec("a.b.c").decode(b'{"a":{"b":{"c":"deep"}}}', False)
    assert msg.type == "deep"


@pytest.mark.parametrize("frame, fragment", [
    (b'{"type":"x"}', "no 'data.type' field"),
    (b'{"data":"flat"}', "no 'data.type' field"),
    (b'{"data":[{"type":"x"}]}', "no 'data.type' field"),
    (b'{"data":{"type":1.5}}', "'data.type' must be a string or an integer, found float"),
    (b'[{"data":{"type":"x"}}]', "must be an object, found list .*pass a function"),
])
def test_json_nested_type_missing_or_wrong(frame, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        JsonCodec("data.type").decode(frame, False)


def test_json_nested_type_default():
    [msg] = JsonCodec("data.type", default_type="other").decode(b'{"data":{}}', False)
    assert msg.type == "other"


def test_json_a_numeric_type_is_its_text():
    codec = JsonCodec("op")
    [msg] = codec.decode(b'{"op":5,"d":{"since":null}}', False)
    assert (msg.type, msg.payload["op"]) == ("5", 5)
    assert codec.decode(b'{"op":-1}', False)[0].type == "-1"
    assert JsonCodec("d.op").decode(b'{"d":{"op":0}}', False)[0].type == "0"
    assert JsonCodec(lambda v: v["op"]).decode(b'{"op":10}', False)[0].type == "10"
    with pytest.raises(ProtocolError, match="'op' must be a string or an integer, found bool"):
        codec.decode(b'{"op":true}', False)


def test_json_type_by_a_function_of_an_array():
    codec = JsonCodec(phoenix_event)
    [msg] = codec.decode(PHOENIX_REPLY, False, 3.0)
    assert (msg.type, msg.payload[4], msg.received_at) == ("phx_reply", {"status": "ok", "response": {}}, 3.0)
    assert msg.raw == PHOENIX_REPLY


def test_json_type_by_a_function_of_an_object():
    codec = JsonCodec(lambda v: v.get("t") or v["op"])
    assert codec.decode(b'{"op":0,"t":"READY","d":{}}', False)[0].type == "READY"
    assert codec.decode(b'{"op":11}', False)[0].type == "11"


@pytest.mark.parametrize("frame, fragment", [
    (b'["1","1","room:lobby"]', "type_field phoenix_event failed: IndexError: list index out of range"),
    (b'{"event":"x"}', "type_field phoenix_event failed: KeyError: 3"),
    (b'[null,null,"t",null,{}]', "type_field phoenix_event found no type"),
    (b'[null,null,"t",{"e":1},{}]', "phoenix_event must be a string or an integer, found dict"),
    (b'5', "type_field phoenix_event failed: TypeError: 'int' object is not subscriptable"),
])
def test_json_a_type_function_that_fails_is_a_protocol_error(frame, fragment):
    with pytest.raises(ProtocolError, match=fragment) as info:
        JsonCodec(phoenix_event).decode(frame, False)
    assert info.value.frame == frame


def test_json_a_type_function_that_finds_none_uses_the_default_type():
    [msg] = JsonCodec(phoenix_event, default_type="event").decode(b'[null,null,"t",null,{}]', False)
    assert msg.type == "event"


def test_json_tracking_fields_may_be_dotted_paths():
    codec = JsonCodec("params.channel", seq_field="params.data.seq", id_field="params.data.id", stream_field="params.channel")
    [msg] = codec.decode(b'{"params":{"channel":"trades","data":{"seq":7,"id":"t7"}}}', False)
    assert (msg.type, msg.seq, msg.id, msg.stream) == ("trades", 7, "t7", "trades")
    [msg] = codec.decode(b'{"params":{"channel":"trades","data":{}}}', False)
    assert (msg.seq, msg.id) == (None, None)
    with pytest.raises(ProtocolError, match="'params.data.seq' must be an integer"):
        codec.decode(b'{"params":{"channel":"trades","data":{"seq":"7"}}}', False)
    # Plain tracking fields with a dotted type, and a function typing arrays: fields of arrays are None.
    [msg] = JsonCodec("d.t", seq_field="s", stream_field="n").decode(b'{"d":{"t":"x"},"s":3,"n":4}', False)
    assert (msg.type, msg.seq, msg.stream) == ("x", 3, "4")
    [msg] = JsonCodec(phoenix_event, seq_field="seq", stream_field="x.y").decode(PHOENIX_REPLY, False)
    assert (msg.seq, msg.stream) == (None, None)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"type_field": 5}, "type_field is a field name or a dotted path, not 5"),
    ({"type_field": None}, "type_field is a field name or a dotted path, not None"),
    ({"type_field": "data..type"}, "a dotted path with an empty part"),
    ({"type_field": ".type"}, "a dotted path with an empty part"),
    ({"seq_field": "seq."}, "seq_field='seq.': a dotted path with an empty part"),
    ({"stream_field": 3}, "stream_field is a field name or a dotted path"),
])
def test_json_bad_fields_are_a_value_error(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        JsonCodec(**kwargs)


def test_json_encode_writes_a_nested_type():
    codec = JsonCodec("data.type", seq_field="meta.seq")
    inner = {"px": 1}
    data, binary = codec.encode(Message("trade", {"data": inner, "ts": 5}, seq=3))
    assert binary is False
    assert json.loads(data) == {"data": {"px": 1, "type": "trade"}, "ts": 5, "meta": {"seq": 3}}
    assert inner == {"px": 1}  # the caller's objects are copied, not changed
    assert json.loads(codec.encode(Message("note", "plain"))[0]) == {"payload": "plain", "data": {"type": "note"}}
    [back] = codec.decode(codec.encode(Message("trade", {"px": 2}, seq=4))[0].encode(), False)
    assert (back.type, back.seq, back.payload["px"]) == ("trade", 4, 2)
    assert json.loads(codec.encode({"data": {"type": "x"}})[0]) == {"data": {"type": "x"}}  # a dict: as given
    with pytest.raises(TypeError, match="cannot set 'data.type': 'data' holds a list"):
        codec.encode(Message("trade", {"data": [1]}))


def test_json_encode_with_a_type_function_sends_as_given():
    codec = JsonCodec(phoenix_event)
    join = ["1", "1", "room:lobby", "phx_join", {}]
    assert json.loads(codec.encode(Message("phx_join", join, seq=5))[0]) == join  # the payload alone
    assert json.loads(codec.encode(join)[0]) == join  # type: ignore[arg-type]
    assert json.loads(codec.encode({"op": 1, "d": None})[0]) == {"op": 1, "d": None}
    assert codec.decode(codec.encode(join)[0].encode(), False)[0].type == "phx_join"  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dicts, lists or Messages"):
        codec.encode(5)  # type: ignore[arg-type]


def test_the_default_resume_request_puts_the_type_where_the_codec_reads_it():
    from wsbridge.tracking.resume import default_resume_request

    positions = {None: 3}
    assert json.loads(default_resume_request(JsonCodec("data.type"), positions)) == {  # type: ignore[arg-type]
        "data": {"type": "resume"}, "positions": [{"stream": None, "seq": 3}]}
    assert json.loads(default_resume_request(JsonCodec("kind"), positions))["kind"] == "resume"  # type: ignore[arg-type]
    assert json.loads(default_resume_request(JsonCodec(phoenix_event), positions))["type"] == "resume"  # type: ignore[arg-type]


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
