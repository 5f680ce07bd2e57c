"""The base `Codec`, and what every format shares: the frame type, the size bound, strict UTF-8.

A codec turns the bytes of one WebSocket frame into a list of messages (or raises
`ProtocolError`), and a message into the data of one frame. Text frames reach `decode`
as their raw UTF-8 bytes; each codec validates UTF-8 strictly itself (`decode_text`),
which is both correct and much faster than websocket-client's pure-Python check.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple, Union

from ..errors import ProtocolError
from ..message import Message

Frame = Tuple[Union[str, bytes], bool]
"""What `Codec.encode` returns: the frame data and whether it is a binary frame."""

DEFAULT_MAX_LENGTH = 16 * 1024 * 1024


def decode_text(data: bytes) -> str:
    """The UTF-8 text of a frame, checked strictly: invalid bytes are a `ProtocolError`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"text is not valid UTF-8 ({exc.reason})", data, exc.start) from None


class Codec:
    """Base class of wire formats. Subclass it to add your own.

    ``decode(data, binary, received_at)`` gets the bytes of one complete frame
    (``binary`` tells a binary frame from a text frame) and returns the
    messages it holds; ``encode(obj)`` returns ``(data, binary)`` for one frame.
    """

    name = "codec"
    raw_is_payload = False
    """True when a message's ``raw`` frame, parsed as JSON, is its payload (a
    store may then keep the frame as it came instead of encoding the payload)."""
    one_per_frame = False
    """True when `decode` never returns more than one message for a frame. The
    dispatcher thread may then decode it, just before delivery (the dispatch queue
    weighs the frame, which is the message's bytes). Frames of a codec that may
    split one into many (the pipe format) are decoded by the reader, so that the
    queue's bounds weigh and hold back each message."""

    def decode(self, data: bytes, binary: bool, received_at: Optional[float] = None) -> List[Message]:
        raise NotImplementedError

    def encode(self, obj: Union[Message, Mapping[str, Any]]) -> Frame:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
