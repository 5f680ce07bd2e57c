"""`MsgpackCodec`: one MessagePack value per binary frame, with `JsonCodec`'s field options."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Union

from ..errors import ProtocolError, install_hint
from ..message import Message
from .base import Frame
from .json import JsonCodec, TypeField


def _msgpack() -> Any:
    """The msgpack module, or an ImportError that says how to get it (an optional dependency)."""
    try:
        import msgpack
    except ImportError:
        raise ImportError(f"MsgpackCodec needs msgpack: {install_hint('msgpack')}") from None
    return msgpack


class MsgpackCodec(JsonCodec):
    """One MessagePack value per frame, read as `JsonCodec` reads JSON.

    It takes `JsonCodec`'s options (``type_field`` a name, a dotted path or a function;
    ``seq_field``, ``id_field``, ``stream_field``, ``epoch_field``, ``default_type``) and
    reads them from the decoded map; the payload is the whole decoded value. Map keys
    must be strings or bytes (msgpack's ``strict_map_key``: other keys are a
    `ProtocolError`), bin values stay `bytes`, and unknown extension types are
    ``msgpack.ExtType``. `encode` writes what `JsonCodec` would (a `Message` with its type
    and fields written in) as one binary frame. Needs the ``msgpack`` extra.
    """

    name = "msgpack"
    raw_is_payload = False  # a message's raw frame is MessagePack, not JSON
    _format, _record = "MessagePack", "MessagePack map"

    def __init__(self, type_field: TypeField = "type", *, seq_field: Optional[str] = None, id_field: Optional[str] = None,
                 stream_field: Optional[str] = None, epoch_field: Optional[str] = None,
                 default_type: Optional[str] = None) -> None:
        msgpack = _msgpack()
        super().__init__(type_field, seq_field=seq_field, id_field=id_field, stream_field=stream_field,
                         epoch_field=epoch_field, default_type=default_type)
        self._unpackb = msgpack.unpackb
        self._packb = msgpack.packb
        self._errors = (ValueError, TypeError, msgpack.UnpackException)

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        try:
            obj = self._unpackb(data)
        except self._errors as exc:  # ExtraData, FormatError, StackError (too deep), a key that is not a string
            raise ProtocolError(f"not valid MessagePack ({type(exc).__name__}: {str(exc)[:100]})", data) from None
        return self._decode_any(obj, data, received_at)

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        return self._packb(self._body(obj)), True
