"""`ProtobufCodec`: one Protocol Buffers message per binary frame, of the user's generated classes."""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Optional, Type, Union

from ..errors import ProtocolError, install_hint
from ..message import Message
from .base import Frame
from .json import JsonCodec, Path, TypeField, _path


def _protobuf() -> Any:
    """protobuf's message module, or an ImportError that says how to get it (an optional dependency)."""
    try:
        from google.protobuf import message
    except ImportError:
        raise ImportError(f"ProtobufCodec needs protobuf: {install_hint('protobuf')}") from None
    return message


def _getter(path: Path) -> Callable[[Any], Any]:
    """The value at ``path`` in a protobuf message; None where a step is missing, not a
    message, or unset. A field without presence (a proto3 scalar not marked ``optional``)
    holding its default (0, "", b"") is unset: protobuf cannot tell the two apart, and
    an empty id or stream must not make messages duplicates of one another."""

    def get(obj: Any) -> Any:
        for step in path:
            try:
                field = obj.DESCRIPTOR.fields_by_name[step]
            except (AttributeError, KeyError):
                return None
            value = getattr(obj, step)
            if field.has_presence:
                if not obj.HasField(step):
                    return None
            elif value == field.default_value:
                return None
            obj = value
        return obj

    return get


def _put(record: Any, path: Path, value: Any) -> None:
    """Set ``value`` at ``path`` in the protobuf message ``record`` (sub-messages made on the way)."""
    for step in path[:-1]:
        record = getattr(record, step)
    setattr(record, path[-1], value)


class ProtobufCodec(JsonCodec):
    """One Protocol Buffers message per frame, of your generated classes.

    ``message`` is the generated class of every frame (an envelope, or one class whose
    ``oneof`` holds the kinds of message), or a function of the frame's bytes that
    returns the class to parse it with (one that raises or returns something else makes
    the frame a `ProtocolError`). ``type_field`` (a field, a dotted path through
    sub-messages, or a function of the parsed message such as
    ``lambda m: m.WhichOneof("body")``), ``seq_field``, ``id_field``, ``stream_field``,
    ``epoch_field`` and ``default_type`` are `JsonCodec`'s, read from the parsed message.
    A field without presence (a proto3 scalar not marked ``optional``) at its default
    (0, "", b"") counts as missing: mark a ``seq`` that may be 0 ``optional``.

    With ``payloads`` (type -> class), ``message`` is an envelope: the bytes at
    ``payload_field`` are parsed with the class of the envelope's type (a type not in
    ``payloads`` is a `ProtocolError`), and the message's payload is that; otherwise the
    payload is the parsed message itself. With a class, the field paths are checked
    against it at construction (a ValueError names the one that is not there).

    `encode` sends a protobuf message as it is; a `Message` whose payload is one gets
    its type (and its seq, id, stream and epoch, when set) written at the named fields:
    of a new envelope holding the payload's bytes (with ``payloads``), else of a copy of
    the payload. With a function as ``type_field`` or ``message``, a `Message`'s payload
    is sent alone and must say its type itself. Needs the ``protobuf`` extra.
    """

    name = "protobuf"
    raw_is_payload = False  # a message's raw frame is protobuf, not JSON
    _format, _record = "protobuf", "protobuf message"
    _getter = staticmethod(_getter)

    def __init__(
        self,
        message: Union[Type[Any], Callable[[bytes], Type[Any]]],
        type_field: TypeField = "type",
        *,
        payloads: Optional[Mapping[str, Type[Any]]] = None,
        payload_field: str = "payload",
        seq_field: Optional[str] = None,
        id_field: Optional[str] = None,
        stream_field: Optional[str] = None,
        epoch_field: Optional[str] = None,
        default_type: Optional[str] = None,
    ) -> None:
        pb = _protobuf()
        self._message_type = pb.Message
        self._decode_errors = (pb.DecodeError, ValueError, RuntimeError)
        self.message_class: Optional[Type[Any]] = None
        self._pick: Optional[Callable[[bytes], Type[Any]]] = None
        if isinstance(message, type) and self._is_class(message):
            self.message_class = message
        elif callable(message) and not isinstance(message, type):
            self._pick = message
        else:
            raise ValueError(f"ProtobufCodec message is a generated protobuf class or a function that picks one, "
                             f"not {message!r}")
        super().__init__(type_field, seq_field=seq_field, id_field=id_field, stream_field=stream_field,
                         epoch_field=epoch_field, default_type=default_type)
        self.payloads = dict(payloads) if payloads is not None else None
        self.payload_field = payload_field
        self._payload_path = _path("payload_field", payload_field, "ProtobufCodec")
        self._payload_of = _getter(self._payload_path)
        for mtype, cls in (self.payloads or {}).items():
            if not isinstance(mtype, str) or not self._is_class(cls):
                raise ValueError(f"ProtobufCodec payloads maps a type (str) to a generated protobuf class, "
                                 f"not {mtype!r} to {cls!r}")
        if self.message_class is not None:
            named = [("type_field", self._type_path), ("seq_field", self._seq_path), ("id_field", self._id_path),
                     ("stream_field", self._stream_path), ("epoch_field", self._epoch_path)]
            if self.payloads is not None:
                named.append(("payload_field", self._payload_path))
            for option, path in named:
                if path is not None:
                    self._check_path(self.message_class, option, path)

    def _is_class(self, value: Any) -> bool:
        return isinstance(value, type) and issubclass(value, self._message_type)

    @staticmethod
    def _check_path(cls: Any, option: str, path: Path) -> None:
        """A ValueError unless ``path`` names a field of ``cls``, through sub-messages."""
        descriptor = cls.DESCRIPTOR
        for number, step in enumerate(path, 1):
            field = descriptor.fields_by_name.get(step) if descriptor is not None else None
            if field is None:
                where = descriptor.full_name if descriptor is not None else ".".join(path[:number - 1])
                raise ValueError(f"ProtobufCodec {option}={'.'.join(path)!r}: {where} has no field {step!r}")
            descriptor = field.message_type

    def __repr__(self) -> str:
        message = self.message_class or self._pick
        return f"ProtobufCodec({getattr(message, '__qualname__', message)}, type_field={self._type_name})"

    def _parse(self, cls: Any, data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except self._decode_errors as exc:
            raise ProtocolError(f"not a valid {cls.__name__} ({str(exc)[:100]})", data) from None

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        cls = self.message_class
        if cls is None:
            try:
                cls = self._pick(data)  # type: ignore[misc]
            except Exception as exc:
                raise ProtocolError(f"the class picker failed: {type(exc).__name__}: {str(exc)[:100]}", data) from None
            if not self._is_class(cls):
                raise ProtocolError(f"the class picker returned {cls!r}, not a generated protobuf class", data)
        messages = self._decode_any(self._parse(cls, data), data, received_at)
        if self.payloads is None:
            return messages
        [message] = messages
        payload_class = self.payloads.get(message.type)
        if payload_class is None:
            raise ProtocolError(f"no class for type {message.type!r} in payloads", data)
        body = self._payload_of(message.payload)
        if body is not None and type(body) is not bytes:
            raise ProtocolError(f"{self.payload_field!r} must hold bytes, found {type(body).__name__}", data)
        return [message._replace(payload=self._parse(payload_class, body or b""))]

    def _check_record(self, obj: Any, data: bytes) -> None:
        """A parsed message always holds fields by name: nothing to refuse."""

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        if isinstance(obj, self._message_type):
            return obj.SerializeToString(), True
        payload = obj.payload if isinstance(obj, Message) else None
        if not isinstance(obj, Message) or not isinstance(payload, self._message_type):
            raise TypeError(f"ProtobufCodec sends protobuf messages, or Messages whose payload is one, "
                            f"not {type(obj if payload is None else payload).__name__}")
        if self._type_path is None or (self.payloads is not None and self.message_class is None):
            return payload.SerializeToString(), True
        if self.payloads is not None:
            record = self.message_class()  # type: ignore[misc]
            _put(record, self._payload_path, payload.SerializeToString())
        else:
            record = type(payload)()
            record.CopyFrom(payload)
        _put(record, self._type_path, obj.type)
        for path, value in ((self._seq_path, obj.seq), (self._id_path, obj.id), (self._stream_path, obj.stream),
                            (self._epoch_path, obj.epoch)):
            if path is not None and value is not None:
                _put(record, path, value)
        return record.SerializeToString(), True
