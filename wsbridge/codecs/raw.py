"""`RawCodec`: frames as they came, text or bytes."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Union

from ..message import Message
from .base import Codec, Frame, decode_text


class RawCodec(Codec):
    """Frames as they came: text frames become type ``text`` with a `str`
    payload, binary frames type ``binary`` with a `bytes` payload."""

    name = "raw"
    one_per_frame = True

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        if binary:
            return [Message("binary", data, None, None, None, received_at, data)]
        return [Message("text", decode_text(data), None, None, None, received_at, data)]

    def encode(self, obj: Union[Message, Mapping[str, Any], str, bytes]) -> Frame:
        payload = obj.payload if isinstance(obj, Message) else obj
        if isinstance(payload, str):
            return payload, False
        if isinstance(payload, (bytes, bytearray, memoryview)):
            return bytes(payload), True
        raise TypeError(f"RawCodec sends str or bytes payloads, not {type(payload).__name__}")
