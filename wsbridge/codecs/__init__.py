"""Wire formats: pure functions from frames to `Message` records and back.

No sockets, no threads, no clocks. One module per format: `json` (`JsonCodec`),
`pipe` (`PipeCodec`, ``TYPE|LENGTH|PAYLOAD``), `raw` (`RawCodec`), on the base
`Codec` in `base`. Called on the reader thread (decode) and the sending thread
(encode).
"""

from .pipe import CODECS, DEFAULT_MAX_LENGTH, Codec, Frame, JsonCodec, PipeCodec, RawCodec, codec_by_name

__all__ = ["CODECS", "DEFAULT_MAX_LENGTH", "Codec", "Frame", "JsonCodec", "PipeCodec", "RawCodec", "codec_by_name"]
