"""`Inflate`: a codec that inflates gzip, zlib or raw deflate payloads before another codec."""

from __future__ import annotations

import zlib
from typing import Any, Dict, List, Mapping, Optional, Union

from ..errors import ProtocolError
from ..message import Message
from .base import DEFAULT_MAX_LENGTH, Codec, Frame

WBITS: Dict[str, int] = {"auto": 32 + 15, "gzip": 16 + 15, "zlib": 15, "deflate": -15}
"""zlib's window bits per format: ``auto`` reads a gzip or a zlib header, whichever comes."""


class Inflate(Codec):
    """Inflates the payload of each binary frame, then hands it to ``codec``.

    Many exchange feeds compress each message themselves (gzip, zlib or raw deflate
    inside a binary frame). ``format`` is ``"auto"`` (a gzip or a zlib stream, told by
    its header), ``"gzip"``, ``"zlib"`` or ``"deflate"`` (raw deflate has no header, so
    it is never guessed). Text frames go to ``codec`` as they came (servers that
    compress their pushes often answer pings and errors in plain text).

    ``max_size`` bounds the inflated bytes of one frame, checked as they are produced:
    a frame that would inflate beyond it (a decompression bomb) is a `ProtocolError`
    before more than ``max_size`` bytes are allocated. A stream that is corrupt, cut
    short (gzip and zlib, which say where they end) or followed by other bytes is a
    `ProtocolError` too; a raw deflate stream may end without a final block (senders
    that flush each message), and ``codec`` judges what it holds.

    Sends go through ``codec`` and leave uncompressed (feeds that compress their
    pushes read plain subscriptions); ``compress_sends=True`` compresses them in
    ``format`` (gzip for ``auto``) into binary frames. The inner codec sees the
    inflated bytes with the frame's binary flag, and its messages' ``raw`` is them.
    """

    name = "inflate"

    def __init__(self, codec: Codec, format: str = "auto", *, max_size: int = DEFAULT_MAX_LENGTH,
                 compress_sends: bool = False) -> None:
        if not isinstance(codec, Codec):
            raise ValueError(f"Inflate wraps a codec (a wsbridge.Codec), not {codec!r}")
        if format not in WBITS:
            raise ValueError(f"Inflate format is one of {', '.join(WBITS)}, not {format!r}")
        if type(max_size) is not int or max_size < 1:
            raise ValueError(f"Inflate max_size is a positive number of bytes, not {max_size!r}")
        self.codec = codec
        self.format = format
        self.max_size = max_size
        self.compress_sends = bool(compress_sends)
        self.raw_is_payload = codec.raw_is_payload
        self.one_per_frame = codec.one_per_frame
        self._wbits = WBITS[format]
        self._send_wbits = WBITS["gzip" if format == "auto" else format]

    def __repr__(self) -> str:
        return f"Inflate({self.codec!r}, {self.format!r})"

    def inflate(self, data: bytes) -> bytes:
        """The inflated bytes of one payload; a `ProtocolError` for a bomb or a broken stream."""
        inflater = zlib.decompressobj(self._wbits)
        try:
            out = inflater.decompress(data, self.max_size + 1)  # one byte past the bound tells a bomb
        except zlib.error as exc:
            raise ProtocolError(f"not a valid {self.format} stream ({exc})", data) from None
        if len(out) > self.max_size:
            raise ProtocolError(f"inflates to more than max_size={self.max_size} bytes", data)
        if inflater.unused_data:
            raise ProtocolError(f"{len(inflater.unused_data)} bytes after the end of the {self.format} stream", data)
        if not inflater.eof and self.format != "deflate":
            raise ProtocolError(f"the {self.format} stream is cut short", data)
        return out

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        if binary:
            data = self.inflate(data)
        return self.codec.decode(data, binary, received_at)

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        frame, binary = self.codec.encode(obj)
        if not self.compress_sends:
            return frame, binary
        deflater = zlib.compressobj(wbits=self._send_wbits)
        data = frame.encode("utf-8") if isinstance(frame, str) else frame
        return deflater.compress(data) + deflater.flush(), True
