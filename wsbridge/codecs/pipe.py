"""`PipeCodec`: the ``TYPE|LENGTH|PAYLOAD`` format, several messages to a frame."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from ..errors import ProtocolError
from ..message import Message
from .base import DEFAULT_MAX_LENGTH, Codec, Frame


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
