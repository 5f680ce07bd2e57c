"""Wire formats: pure functions from frames to `Message` records and back.

No sockets, no threads, no clocks. One module per format: `json` (`JsonCodec`),
`msgpack` (`MsgpackCodec`) and `protobuf` (`ProtobufCodec`) with JSON's field options,
`pipe` (`PipeCodec`, ``TYPE|LENGTH|PAYLOAD``), `raw` (`RawCodec`), on the base
`Codec` in `base`; `inflate` (`Inflate`) inflates compressed payloads before any of them.
Called on the reader thread (decode) and the sending thread (encode).
"""

from __future__ import annotations

from typing import Callable, Dict

from .base import DEFAULT_MAX_LENGTH, Codec, Frame
from .inflate import Inflate
from .json import JsonCodec
from .msgpack import MsgpackCodec
from .pipe import PipeCodec
from .protobuf import ProtobufCodec
from .raw import RawCodec

CODECS: Dict[str, Callable[[], Codec]] = {
    "json": JsonCodec, "wsbridge": JsonCodec.conventions, "msgpack": MsgpackCodec, "pipe": PipeCodec, "raw": RawCodec,
}
"""By name, for the command line; ``wsbridge`` is JSON with wsbridge's conventions (`JsonCodec.conventions`).
`ProtobufCodec` has no name here: it needs the user's generated class."""


def codec_by_name(name: str) -> Codec:
    """A name of `CODECS` (``"json"``, ``"msgpack"``, ...) to a default-configured codec."""
    try:
        return CODECS[name]()
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(sorted(CODECS))}") from None


__all__ = ["CODECS", "DEFAULT_MAX_LENGTH", "Codec", "Frame", "Inflate", "JsonCodec", "MsgpackCodec", "PipeCodec",
           "ProtobufCodec", "RawCodec", "codec_by_name"]
