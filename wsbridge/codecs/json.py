"""`JsonCodec`: one JSON object per frame, typed by a field."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

from ..errors import ProtocolError, preview
from ..message import Message
from .base import Codec, Frame, decode_text


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
        text = decode_text(data)
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
