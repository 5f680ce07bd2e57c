"""`JsonCodec`: one JSON value per frame, typed by a field, a nested field or a function."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from ..errors import ProtocolError, preview
from ..message import Message
from .base import Codec, Frame, decode_text

TypeField = Union[str, Callable[[Any], Any]]
"""What names a message's type: a field, a dotted path to a nested field, or a
function of the decoded payload."""

Path = Tuple[str, ...]


def _path(option: str, field: Any, codec: str = "JsonCodec") -> Path:
    """``"data.type"`` as ``("data", "type")``; a ValueError for what is not a field name or path."""
    if not isinstance(field, str):
        raise ValueError(f"{codec} {option} is a field name or a dotted path, not {field!r}")
    parts = tuple(field.split("."))
    if len(parts) > 1 and not all(parts):
        raise ValueError(f"{codec} {option}={field!r}: a dotted path with an empty part")
    return parts


def _getter(path: Path) -> Callable[[Any], Any]:
    """The value at ``path`` in a decoded JSON value; None where a step is missing or not an object."""
    if len(path) == 1:
        key = path[0]
        return lambda obj: obj.get(key) if type(obj) is dict else None

    def get(obj: Any) -> Any:
        for step in path:
            if type(obj) is not dict:
                return None
            obj = obj.get(step)
        return obj

    return get


def _put(body: Dict[str, Any], path: Path, value: Any, replace: bool = True) -> None:
    """Set ``value`` at ``path`` in ``body``, creating the objects on the way and copying
    those there already (the caller's stay as they were); ``replace=False`` keeps a value
    already there."""
    node = body
    for step in path[:-1]:
        child = node.get(step)
        if child is None:
            child = {}
        elif isinstance(child, Mapping):
            child = dict(child)
        else:
            raise TypeError(f"JsonCodec cannot set {'.'.join(path)!r}: {step!r} holds a {type(child).__name__}")
        node[step] = child
        node = child
    if replace:
        node[path[-1]] = value
    else:
        node.setdefault(path[-1], value)


MAX_EPOCH = 256
"""The longest epoch (as text) a message may carry: a generation id, which a stream
keeps with its last few (`wsbridge.tracking.sequence`), so a server cannot pin much memory with it."""


MISSING_TYPE_HINT = " (pass type_field=NAME, or default_type=T for records without one)"
"""Appended to the error of a record without a type: what to pass instead (short: the
message, frame preview included, stays under 400 characters)."""


class JsonCodec(Codec):
    """One JSON value per frame; ``type_field`` says where the message type is.

    ``type_field`` is a field name (``"type"``), a dotted path to a nested field
    (``"data.type"``, ``"params.channel"``), or a function of the decoded payload
    that returns the type. A type that is an integer is used as its decimal text
    (``{"op": 5}`` is of type ``"5"``). With a name or a path, a frame must hold a
    JSON object; with a function, any JSON value (a Phoenix channels array
    ``[join_ref, ref, topic, event, payload]`` with ``type_field=lambda a: a[3]``).
    A function that raises or finds no type makes the frame a `ProtocolError`.

    ``seq_field``, ``id_field``, ``stream_field`` and ``epoch_field`` name the
    fields (or dotted paths) that carry a message's sequence id (an integer),
    its id, its stream and its epoch (a string or an integer, made text: the generation of
    the stream's numbering, which a server changes when it numbers afresh, as
    Centrifugo does); each is off (None) unless named, because a field the user did not
    name must never make the client drop a message as a duplicate.
    `conventions` names all three as wsbridge's own servers use them. The
    payload is the whole decoded value. ``default_type`` types messages without
    a type; without it such a message is a `ProtocolError`. ``loads``/``dumps``
    may be swapped for a faster JSON library with the same contract (e.g.
    ``orjson.loads``).

    `encode` sends a dict (or, with a function, a list) as given; a `Message`
    becomes its payload with the type written at ``type_field`` (nested objects
    created for a dotted path) and ``seq``/``id``/``stream`` where named. With a
    function, the codec cannot know where the type goes: a `Message` is sent as
    its payload alone, which must say its type itself.
    """

    name = "json"
    raw_is_payload = True
    one_per_frame = True
    _format, _record = "JSON", "JSON object"
    """The format, and what a frame of it decodes to, in error messages."""
    _getter = staticmethod(_getter)
    """The getter of a field path: how the codecs built on this one (`MsgpackCodec`,
    `ProtobufCodec`) read their own records."""

    def __init__(
        self,
        type_field: TypeField = "type",
        *,
        seq_field: Optional[str] = None,
        id_field: Optional[str] = None,
        stream_field: Optional[str] = None,
        epoch_field: Optional[str] = None,
        default_type: Optional[str] = None,
        loads: Callable[[str], Any] = json.loads,
        dumps: Optional[Callable[[Any], str]] = None,
    ) -> None:
        self.type_field = type_field
        self.seq_field = seq_field
        self.id_field = id_field
        self.stream_field = stream_field
        self.epoch_field = epoch_field
        self.default_type = default_type
        self._loads = loads
        self._dumps = dumps or (lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
        # Decided once, here: plain names take `decode`'s inline path, as cheap as ever;
        # paths and functions go through the getters of `_decode_any`.
        codec = type(self).__name__
        self._type_path: Optional[Path] = None if callable(type_field) else _path("type_field", type_field, codec)
        paths = {option: _path(option, field, codec) if field is not None else None
                 for option, field in (("seq_field", seq_field), ("id_field", id_field), ("stream_field", stream_field),
                                       ("epoch_field", epoch_field))}
        self._seq_path, self._id_path, self._stream_path = paths["seq_field"], paths["id_field"], paths["stream_field"]
        self._epoch_path = paths["epoch_field"]
        self._plain = self._type_path is not None and all(p is None or len(p) == 1 for p in (self._type_path, *paths.values()))
        self._type_of: Callable[[Any], Any] = (
            type_field if callable(type_field) else self._getter(self._type_path))  # type: ignore[arg-type]
        self._seq_of, self._id_of, self._stream_of, self._epoch_of = (
            self._getter(p) if p is not None else None for p in paths.values())

    @classmethod
    def conventions(cls, **kwargs: Any) -> "JsonCodec":
        """The codec of servers that speak wsbridge's conventions (the bundled test
        server, `wsbridge serve`): ``seq``, ``id`` and ``stream`` fields."""
        return cls(**{"seq_field": "seq", "id_field": "id", "stream_field": "stream", **kwargs})

    def __repr__(self) -> str:
        fields = "".join(f", {n}={v!r}" for n, v in (("seq_field", self.seq_field), ("id_field", self.id_field),
                                                      ("stream_field", self.stream_field),
                                                      ("epoch_field", self.epoch_field)) if v)
        return f"{type(self).__name__}(type_field={self.type_field!r}{fields})"

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        text = decode_text(data)
        try:
            obj = self._loads(text)
        except RecursionError:
            raise ProtocolError("JSON nested too deeply", data) from None
        except ValueError as exc:
            raise ProtocolError(f"not valid JSON ({exc})", data) from None
        if not self._plain:
            return self._decode_any(obj, data, received_at)
        if type(obj) is not dict:
            raise self._not_an_object(obj, data)
        mtype = obj.get(self.type_field, self.default_type)
        if type(mtype) is not str:
            mtype = self._type_text(mtype, data)
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
        if self.epoch_field is None:
            return [Message(mtype, obj, seq, mid, stream, received_at, data)]
        return [Message(mtype, obj, seq, mid, stream, received_at, data, self._epoch(obj.get(self.epoch_field), data))]

    def _decode_any(self, obj: Any, data: bytes, received_at: Optional[float]) -> List[Message]:
        """`decode` past the parse when a field is a dotted path or the type a function
        (and for the codecs built on this one, past theirs)."""
        if self._type_path is not None:
            if type(obj) is not dict:  # JSON's objects cost no call
                self._check_record(obj, data)
            mtype = self._type_of(obj)
        else:
            try:
                mtype = self._type_of(obj)
            except Exception as exc:
                why = f"{type(exc).__name__}: {str(exc)[:100]}"
                raise ProtocolError(f"type_field {self._type_name} failed: {why}", data) from None
        if mtype is None:
            mtype = self.default_type
        if type(mtype) is not str:
            mtype = self._type_text(mtype, data)
        seq = stream = mid = None
        if self._seq_of is not None:
            seq = self._seq_of(obj)
            if seq is not None and type(seq) is not int:
                raise ProtocolError(f"{self.seq_field!r} must be an integer, found {preview(repr(seq), 20)}", data)
        if self._stream_of is not None:
            stream = self._stream_of(obj)
            if stream is not None and type(stream) is not str:
                stream = str(stream)
        if self._id_of is not None:
            mid = self._id_of(obj)
        epoch = self._epoch(self._epoch_of(obj), data) if self._epoch_of is not None else None
        return [Message(mtype, obj, seq, mid, stream, received_at, data, epoch)]

    def _epoch(self, epoch: Any, data: bytes) -> Optional[str]:
        """An epoch is a string or an integer, made text (or missing: None): epochs are
        compared as text, so ``7`` and ``"7"`` are one generation and any integer fits a
        store; anything else, or longer than `MAX_EPOCH` (a stream remembers its last
        epochs), is a `ProtocolError`."""
        if type(epoch) is int:
            epoch = str(epoch)
        if epoch is None or type(epoch) is str and len(epoch) <= MAX_EPOCH:
            return epoch
        raise ProtocolError(f"{self.epoch_field!r} must be a string (of at most {MAX_EPOCH} characters) or an "
                            f"integer, found {preview(repr(epoch), 20)}", data)

    @property
    def _type_name(self) -> str:
        field = self.type_field
        return repr(field) if isinstance(field, str) else getattr(field, "__qualname__", repr(field))

    def _type_text(self, mtype: Any, data: bytes) -> str:
        """A type that is not a string: an integer as its text, else a `ProtocolError`."""
        if type(mtype) is int:
            return str(mtype)
        if mtype is None:  # says what to change: the field to read, or a type for such records
            if self._type_path is None:
                raise ProtocolError(f"type_field {self._type_name} found no type{MISSING_TYPE_HINT}", data)
            raise ProtocolError(f"{self._record} has no {self._type_name} field{MISSING_TYPE_HINT}", data)
        raise ProtocolError(f"{self._type_name} must be a string or an integer, found {type(mtype).__name__}", data)

    def _not_an_object(self, obj: Any, data: bytes) -> ProtocolError:
        hint = " (for arrays, pass a function of the payload as type_field)" if type(obj) is list else ""
        return ProtocolError(f"{self._format} frame must be an object, found {type(obj).__name__}{hint}", data)

    def _check_record(self, obj: Any, data: bytes) -> None:
        """For a value that is not a dict: a `ProtocolError` unless it holds fields by name
        some other way (a type read by name or path needs them)."""
        raise self._not_an_object(obj, data)

    def typed(self, mtype: str, body: Mapping[str, Any]) -> Dict[str, Any]:
        """A copy of ``body`` with ``mtype`` at ``type_field`` (a dotted path creates the
        objects on its way). With a function as ``type_field`` the codec cannot know
        where the type goes: it is put under ``"type"``."""
        out = dict(body)
        _put(out, self._type_path or ("type",), mtype)
        return out

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        return self._dumps(self._body(obj)), False

    def _body(self, obj: Union[Message, Mapping[str, Any]]) -> Any:
        """The value `encode` serialises: ``obj``, or a `Message` as its payload with its fields written in."""
        if self._type_path is None:  # typed by a function: sent as given
            if not isinstance(obj, Message) and not isinstance(obj, (Mapping, list, tuple)):
                raise TypeError(f"{type(self).__name__} sends dicts, lists or Messages, not {type(obj).__name__}")
            return obj.payload if isinstance(obj, Message) else obj
        if isinstance(obj, Message):
            payload = obj.payload
            body = self.typed(obj.type, payload if isinstance(payload, Mapping) else {"payload": payload})
            named = ((self._seq_path or ("seq",), obj.seq), (self._id_path or ("id",), obj.id),
                     (self._stream_path or ("stream",), obj.stream), (self._epoch_path or ("epoch",), obj.epoch))
            for path, value in named:
                if value is not None:
                    _put(body, path, value, replace=False)
            obj = body
        if not isinstance(obj, Mapping):
            raise TypeError(f"{type(self).__name__} sends dicts or Messages, not {type(obj).__name__}")
        return obj
