"""Wire formats: pure functions from frames to `Message` records and back.

No sockets, no threads, no clocks: a codec turns the bytes of one WebSocket
frame into a list of messages (or raises `ProtocolError`), and a message into
the data of one frame. Text frames reach `decode` as their raw UTF-8 bytes;
each codec validates UTF-8 strictly itself, which is both correct and much
faster than websocket-client's pure-Python check.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..errors import ProtocolError, preview
from ..message import Message

Frame = Tuple[Union[str, bytes], bool]
"""What `Codec.encode` returns: the frame data and whether it is a binary frame."""

DEFAULT_MAX_LENGTH = 16 * 1024 * 1024


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"text is not valid UTF-8 ({exc.reason})", data, exc.start) from None


class Codec:
    """Base class of wire formats. Subclass it to add your own.

    ``decode(data, binary, received_at)`` gets the bytes of one complete frame
    (``binary`` tells a binary frame from a text frame) and returns the
    messages it holds; ``encode(obj)`` returns ``(data, binary)`` for one frame.
    """

    name = "codec"
    raw_is_payload = False
    """True when a message's ``raw`` frame, parsed as JSON, is its payload (a
    store may then keep the frame as it came instead of encoding the payload)."""

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        raise NotImplementedError

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RawCodec(Codec):
    """Frames as they came: text frames become type ``text`` with a `str`
    payload, binary frames type ``binary`` with a `bytes` payload."""

    name = "raw"

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        if binary:
            return [Message("binary", data, None, None, None, received_at, data)]
        return [Message("text", _text(data), None, None, None, received_at, data)]

    def encode(self, obj: Union[Message, Mapping[str, Any], str, bytes]) -> Frame:
        payload = obj.payload if isinstance(obj, Message) else obj
        if isinstance(payload, str):
            return payload, False
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return bytes(payload), True
        raise TypeError(f"RawCodec sends str or bytes payloads, not {type(payload).__name__}")


class JsonCodec(Codec):
    """One JSON object per frame; ``type_field`` names the message type.

    ``seq_field``, ``id_field`` and ``stream_field`` name the fields that carry
    a message's sequence id (an integer), its id and its stream; each is off
    (None) unless named, because a field the user did not name must never make
    the client drop a message as a duplicate. `conventions` names all three as
    wsbridge's own servers use them. The payload is the whole object.
    ``default_type`` types objects that lack the type field; without it such
    an object is a `ProtocolError`. ``loads``/``dumps`` may be swapped for a
    faster JSON library with the same contract (e.g. ``orjson.loads``).
    """

    name = "json"
    raw_is_payload = True

    def __init__(
        self,
        type_field: str = "type",
        *,
        seq_field: Optional[str] = None,
        id_field: Optional[str] = None,
        stream_field: Optional[str] = None,
        default_type: Optional[str] = None,
        loads: Callable[[str], Any] = json.loads,
        dumps: Optional[Callable[[Any], str]] = None,
    ) -> None:
        self.type_field = type_field
        self.seq_field = seq_field
        self.id_field = id_field
        self.stream_field = stream_field
        self.default_type = default_type
        self._loads = loads
        self._dumps = dumps or (lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False))

    @classmethod
    def conventions(cls, **kwargs: Any) -> "JsonCodec":
        """The codec of servers that speak wsbridge's conventions (the bundled test
        server, `wsbridge serve`): ``seq``, ``id`` and ``stream`` fields."""
        return cls(**{"seq_field": "seq", "id_field": "id", "stream_field": "stream", **kwargs})

    def __repr__(self) -> str:
        fields = "".join(f", {n}={v!r}" for n, v in (("seq_field", self.seq_field), ("id_field", self.id_field),
                                                      ("stream_field", self.stream_field)) if v)
        return f"JsonCodec(type_field={self.type_field!r}{fields})"

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        text = _text(data)
        try:
            obj = self._loads(text)
        except RecursionError:
            raise ProtocolError("JSON nested too deeply", data) from None
        except ValueError as exc:
            raise ProtocolError(f"not valid JSON ({exc})", data) from None
        if type(obj) is not dict:
            raise ProtocolError(f"JSON frame must be an object, found {type(obj).__name__}", data)
        mtype = obj.get(self.type_field, self.default_type)
        if type(mtype) is not str:
            if mtype is None:
                raise ProtocolError(f"JSON object has no {self.type_field!r} field", data)
            raise ProtocolError(f"{self.type_field!r} must be a string, found {type(mtype).__name__}", data)
        seq = stream = mid = None
        if self.seq_field is not None:
            seq = obj.get(self.seq_field)
            if seq is not None and type(seq) is not int:
                raise ProtocolError(f"{self.seq_field!r} must be an integer, found {preview(repr(seq), 20)}", data)
        if self.stream_field is not None:
            stream = obj.get(self.stream_field)
            if stream is not None and type(stream) is not str:
                stream = str(stream)
        if self.id_field is not None:
            mid = obj.get(self.id_field)
        return [Message(mtype, obj, seq, mid, stream, received_at, data)]

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        if isinstance(obj, Message):
            body: Dict[str, Any]
            if isinstance(obj.payload, Mapping):
                body = dict(obj.payload)
            else:
                body = {"payload": obj.payload}
            body[self.type_field] = obj.type
            named = ((self.seq_field or "seq", obj.seq), (self.id_field or "id", obj.id),
                     (self.stream_field or "stream", obj.stream))
            for field, value in named:
                if value is not None:
                    body.setdefault(field, value)
            obj = body
        if not isinstance(obj, Mapping):
            raise TypeError(f"JsonCodec sends dicts or Messages, not {type(obj).__name__}")
        return self._dumps(obj), False


class PipeCodec(Codec):
    """The ``TYPE|LENGTH|PAYLOAD`` format.

    LENGTH is the decimal count of the UTF-8 bytes of PAYLOAD, which may
    itself contain ``|``. Several messages may follow one another in one
    frame with nothing between them. Types given in ``fixed`` (type -> byte
    size) are written ``TYPE|PAYLOAD`` with no length. Decoding is strict: a
    length that does not match the frame is a `ProtocolError` naming what was
    declared and what was found, and the whole frame is rejected (the
    messages before the error cannot be trusted either). Payloads are `str`
    in text frames and `bytes` in binary frames; a message's ``raw`` is its
    own ``TYPE|LENGTH|PAYLOAD`` bytes, not the whole frame.
    """

    name = "pipe"

    def __init__(self, fixed: Optional[Mapping[str, int]] = None, *, max_length: int = DEFAULT_MAX_LENGTH) -> None:
        self.fixed: Dict[str, int] = dict(fixed or {})
        for mtype, size in self.fixed.items():
            self._check_type(mtype)
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"fixed size of {mtype!r} must be a non-negative int, not {size!r}")
        self.max_length = max_length
        self._max_digits = len(str(max_length))

    def __repr__(self) -> str:
        return f"PipeCodec(fixed={self.fixed!r})" if self.fixed else "PipeCodec()"

    @staticmethod
    def _check_type(mtype: Any) -> None:
        if not isinstance(mtype, str) or not mtype or "|" in mtype:
            raise ValueError(f"a pipe message type is a non-empty str without '|', not {mtype!r}")

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        if not data:
            raise ProtocolError("empty frame", data)
        out: List[Message] = []
        fixed = self.fixed
        end_of_frame = len(data)
        pos = 0
        while pos < end_of_frame:
            bar = data.find(b"|", pos, pos + 256)
            if bar < 0:
                if out:
                    last = out[-1]
                    raise ProtocolError(
                        f"{end_of_frame - pos} bytes after the {last.type!r} message do not start a message "
                        f"(is its length right?)",
                        data,
                        pos,
                    )
                raise ProtocolError("no '|' after the type: truncated header", data, pos)
            if bar == pos:
                raise ProtocolError("empty message type", data, pos)
            try:
                mtype = data[pos:bar].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("message type is not valid UTF-8", data, pos) from None
            size = fixed.get(mtype)
            if size is None:
                start = data.find(b"|", bar + 1, bar + 2 + self._max_digits)
                digits = data[bar + 1 : start]
                if start < 0 or not digits.isdigit():
                    found = data[bar + 1 : bar + 1 + self._max_digits + 1]
                    raise ProtocolError(
                        f"{mtype!r}: expected a decimal LENGTH and '|' after the type, found {found!r}", data, bar + 1
                    )
                size = int(digits)
                if size > self.max_length:
                    raise ProtocolError(f"{mtype!r}: length {size} exceeds the limit of {self.max_length} bytes", data, bar + 1)
                start += 1
            else:
                start = bar + 1
            end = start + size
            if end > end_of_frame:
                raise ProtocolError(
                    f"{mtype!r}: length says {size} bytes but the frame has {end_of_frame - start} bytes of payload",
                    data,
                    start,
                )
            payload: Union[str, bytes] = data[start:end]
            if not binary:
                try:
                    payload = payload.decode("utf-8")  # type: ignore[union-attr]
                except UnicodeDecodeError as exc:
                    raise ProtocolError(
                        f"{mtype!r}: payload is not valid UTF-8 ({exc.reason}; does the length cut a character?)",
                        data,
                        start + exc.start,
                    ) from None
            # raw: this message's own bytes (the whole frame when it holds one message: the slice is the
            # same object then), so each is weighed by its own size against the queues' byte bounds
            out.append(Message(mtype, payload, None, None, None, received_at, data[pos:end]))
            pos = end
        return out

    def _encode_one(self, mtype: str, payload: Any) -> Tuple[bytes, bool]:
        self._check_type(mtype)
        if isinstance(payload, str):
            body, binary = payload.encode("utf-8"), False
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            body, binary = bytes(payload), True
        else:
            raise TypeError(f"a pipe payload is str or bytes, not {type(payload).__name__}")
        size = self.fixed.get(mtype)
        if size is None:
            return b"%s|%d|%s" % (mtype.encode("utf-8"), len(body), body), binary
        if len(body) != size:
            raise ValueError(f"{mtype!r} is fixed at {size} bytes; this payload has {len(body)}")
        return b"%s|%s" % (mtype.encode("utf-8"), body), binary

    def _parts(self, obj: Union[Message, Mapping[str, Any]]) -> Tuple[str, Any]:
        if isinstance(obj, Message):
            return obj.type, obj.payload
        if isinstance(obj, Mapping):
            try:
                return obj["type"], obj["payload"]
            except KeyError as exc:
                raise TypeError(f"a pipe message mapping needs 'type' and 'payload' keys; {exc} is missing") from None
        raise TypeError(f"PipeCodec sends Messages or {{'type', 'payload'}} mappings, not {type(obj).__name__}")

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        return self.encode_many([obj])

    def encode_many(self, objs: Iterable[Union[Message, Mapping[str, Any]]]) -> Frame:
        """Several messages in one frame; binary if any payload is bytes."""
        chunks = [self._encode_one(*self._parts(obj)) for obj in objs]
        if not chunks:
            raise ValueError("encode_many needs at least one message")
        data = b"".join(chunk for chunk, _ in chunks)
        if any(binary for _, binary in chunks):
            return data, True
        return data.decode("utf-8"), False


CODECS: Dict[str, Callable[[], Codec]] = {
    "json": JsonCodec, "wsbridge": JsonCodec.conventions, "pipe": PipeCodec, "raw": RawCodec,
}
"""By name, for the command line; ``wsbridge`` is JSON with wsbridge's conventions (`JsonCodec.conventions`)."""


def codec_by_name(name: str) -> Codec:
    """``"json"``, ``"pipe"`` or ``"raw"`` to a default-configured codec."""
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(sorted(CODECS))}") from None
