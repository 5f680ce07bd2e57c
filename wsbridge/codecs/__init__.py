"""Wire formats: pure functions from frames to `Message` records and back.

No sockets, no threads, no clocks. One module per format: `json` (`JsonCodec`),
`pipe` (`PipeCodec`, ``TYPE|LENGTH|PAYLOAD``), `raw` (`RawCodec`), on the base
`Codec` in `base`. Called on the reader thread (decode) and the sending thread
(encode).
"""

from __future__ import annotations

from typing import Callable, Dict

from .base import DEFAULT_MAX_LENGTH, Codec, Frame
from .json import JsonCodec
from .pipe import PipeCodec
from .raw import RawCodec

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


__all__ = ["CODECS", "DEFAULT_MAX_LENGTH", "Codec", "Frame", "JsonCodec", "PipeCodec", "RawCodec", "codec_by_name"]
