"""Exceptions raised by wsbridge. All derive from `WsbridgeError`."""

from __future__ import annotations

from typing import Optional, Union


class WsbridgeError(Exception):
    """Base class of every error wsbridge raises on purpose."""


def preview(data: Union[bytes, str, None], limit: int = 64) -> str:
    """A short, safe rendering of offending input for error messages and logs."""
    if data is None:
        return "None"
    if len(data) <= limit:
        return repr(data)
    return f"{data[:limit]!r}... ({len(data)} {'bytes' if isinstance(data, bytes) else 'chars'})"


class ProtocolError(WsbridgeError, ValueError):
    """A frame that does not follow the wire format.

    ``frame`` is the offending frame data and ``offset`` the position in it
    where decoding failed (when known). The message text shows a truncated
    preview of the frame, never all of it.
    """

    def __init__(self, reason: str, frame: Union[bytes, str, None] = None, offset: Optional[int] = None):
        self.reason = reason
        self.frame = frame
        self.offset = offset
        text = reason
        if offset is not None:
            text += f" (at byte {offset})"
        if frame is not None:
            text += f" in frame {preview(frame)}"
        super().__init__(text)


class MessageTooLarge(ProtocolError):
    """A frame larger than the client's ``max_message_size``: refused before
    its payload is read, and the connection closed with code 1009."""


class OutboxFull(WsbridgeError):
    """`send()` found the send buffer full and the overflow policy said raise."""


class ClientClosed(WsbridgeError):
    """The client is stopped: it cannot send, and the pull API has nothing more to give."""


class ConnectError(WsbridgeError, ConnectionError):
    """The client could not connect, and its retry policy says not to try again."""
