"""RFC 6455 frame rules, with no sockets and no threads.

What a client must check in what the server sends: the frame header
(`check_header`), text (`check_text`), close frames (`parse_close`), and the
order and size of fragments (`Reassembler`). Every violation raises
`WireError` with the close code the RFC gives for it (1002 protocol error,
1007 invalid data, 1009 too big) and the offending bytes; the read loop
(`wsbridge.wire.buffered`) sends that close code and ends the connection.
"""

from __future__ import annotations

import codecs
from typing import Any, Callable, Optional, Tuple, Union

from ..errors import MessageTooLarge, WireError
from .deflate import Inflater

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
TOO_BIG = 1009

MAX_CONTROL = 125
"""The largest payload a control frame may carry (RFC 6455 §5.5)."""


def check_header(first: int, second: int, rsv: int = 0) -> None:
    """The first two bytes of a frame from the server, against RFC 6455 §5.2.

    An RSV bit is an error unless in ``rsv`` (0x40, RSV1: permessage-deflate was
    negotiated, and then only on a data frame, RFC 7692 §6); so is a masked
    frame (§5.1: a client MUST fail on one), a reserved opcode, and a control
    frame that is fragmented or longer than 125 bytes (§5.5).
    """
    head = bytes((first, second))
    if first & 0x70 & ~rsv:
        what = "no extension was negotiated" if not rsv else "permessage-deflate defines only RSV1"
        raise WireError(f"RSV bits {(first >> 4) & 7:03b} set, but {what}", head, close_code=PROTOCOL_ERROR)
    if second & 0x80:
        raise WireError("the server sent a masked frame", head, close_code=PROTOCOL_ERROR)
    opcode = first & 0x0F
    if opcode >= 0x8:
        if opcode > PONG:
            raise WireError(f"reserved control opcode {opcode:#x}", head, close_code=PROTOCOL_ERROR)
        if first & 0x40:
            raise WireError(f"RSV1 set on a control frame (opcode {opcode:#x})", head, close_code=PROTOCOL_ERROR)
        if not first & 0x80:
            raise WireError(f"a fragmented control frame (opcode {opcode:#x})", head, close_code=PROTOCOL_ERROR)
        if second & 0x7F > MAX_CONTROL:
            raise WireError(f"a control frame (opcode {opcode:#x}) over {MAX_CONTROL} bytes", head, close_code=PROTOCOL_ERROR)
    elif opcode > BINARY:
        raise WireError(f"reserved data opcode {opcode:#x}", head, close_code=PROTOCOL_ERROR)


def check_text(data: bytes) -> None:
    """Raise `WireError` (1007) unless ``data`` is valid UTF-8.

    ASCII (the common case) is checked at memory speed, without decoding."""
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"a text message is not valid UTF-8 ({exc.reason} at byte {exc.start})"
            raise WireError(reason, data, close_code=INVALID_DATA) from None


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: ``code`` and as much of ``reason`` as a control frame holds."""
    return code.to_bytes(2, "big") + reason.encode("utf-8")[: MAX_CONTROL - 2]


def valid_close_code(code: int) -> bool:
    """May a close frame carry ``code``? (RFC 6455 §7.4: the defined codes,
    the IANA-registered 1012-1014, and 3000-4999 for libraries and apps.)"""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> Tuple[Optional[int], str]:
    """The code and reason of a close frame's payload (code None: no code given)."""
    if not payload:
        return None, ""
    if len(payload) == 1:
        raise WireError("a close frame with a 1-byte payload", payload, close_code=PROTOCOL_ERROR)
    code = int.from_bytes(payload[:2], "big")
    if not valid_close_code(code):
        raise WireError(f"a close frame with invalid code {code}", payload, close_code=PROTOCOL_ERROR)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"a close reason that is not valid UTF-8 ({exc.reason})", payload, close_code=INVALID_DATA) from None
    return code, reason


def _never_valid(pending: bytes) -> bool:
    """Can these bytes, left pending by Python's incremental UTF-8 decoder, never
    start a valid character? (It already refuses E0 8x/9x, F0 8x and F4 9x-Bx at
    once, but waits on ED A0-BF, the start of an encoded surrogate.)"""
    return len(pending) >= 2 and pending[0] == 0xED and pending[1] >= 0xA0


class Reassembler:
    """Checks the data frames of a connection in order and joins fragmented
    messages (RFC 6455 §5.4), inflating compressed ones (RFC 7692).

    For each data frame: `begin` with its header, before the payload is read
    (order of fragments, the size limit on the running total); the payload's
    pieces go through the check `begin` returned as they arrive (text: UTF-8,
    so a message fails as soon as the bytes that make it invalid arrive, even
    mid-frame); then `add` the whole payload. Fragments are joined in one
    `bytearray`, so memory is the message's size however many fragments (empty
    ones included) carry it.

    With an ``inflater`` (permessage-deflate negotiated), a message whose first
    frame has RSV1 set is compressed: each frame's payload is inflated in `add`,
    within what is left of ``max_size`` (a bomb stops at the limit, 1009), and its
    text checked as it is inflated. Owned by one reader thread.
    """

    __slots__ = ("max_size", "opcode", "inflater", "_buf", "_utf8", "_compressed")

    def __init__(self, max_size: int, inflater: Optional[Inflater] = None) -> None:
        self.max_size = max_size
        self.opcode = 0
        """The message's opcode while a fragmented one is in progress (TEXT or BINARY), else 0."""
        self.inflater = inflater
        self._buf = bytearray()
        self._utf8: Optional[codecs.IncrementalDecoder] = None
        self._compressed = False  # the message in progress came with RSV1

    @property
    def size(self) -> int:
        """Bytes of the fragmented message so far."""
        return len(self._buf)

    def begin(self, first: int, length: int) -> Optional[Callable[[Any], None]]:
        """Check a data frame's header (``first`` byte, payload ``length``)
        before its payload is read; return the check for its payload's pieces
        (None: binary or compressed, nothing to check as it arrives)."""
        opcode = first & 0x0F
        if opcode == CONTINUATION:
            if not self.opcode:
                raise WireError("a continuation frame with no message to continue", bytes((first,)), close_code=PROTOCOL_ERROR)
            if first & 0x40:
                raise WireError("RSV1 set on a continuation frame (it marks a message's first frame only)",
                                bytes((first,)), close_code=PROTOCOL_ERROR)
        elif self.opcode:
            raise WireError(
                f"a new message (opcode {opcode:#x}) before the fragmented one ended", bytes((first,)), close_code=PROTOCOL_ERROR
            )
        else:
            self._compressed = bool(first & 0x40)
        # A compressed frame is bounded alone here; what it inflates to, in `add`.
        total = len(self._buf) + length if opcode == CONTINUATION and not self._compressed else length
        if total > self.max_size:
            what = "a message of" if first & 0x80 and opcode != CONTINUATION else "a fragmented message of at least"
            if self._compressed:
                what = "a compressed frame of"
            raise MessageTooLarge(
                f"{what} {total} bytes exceeds max_message_size ({self.max_size} bytes)",
                bytes(self._buf[:64]) if self._buf else None,
            )
        if opcode == TEXT:
            self._utf8 = codecs.getincrementaldecoder("utf-8")()
        return self._check_text if self._utf8 is not None and not self._compressed else None

    def _check_text(self, piece: Any, final: bool = False) -> None:
        decoder = self._utf8
        assert decoder is not None
        try:
            decoder.decode(piece, final)
            if not _never_valid(decoder.getstate()[0]):
                return
            reason = "an encoded surrogate"
        except UnicodeDecodeError as exc:
            reason = str(exc.reason)
        data = bytes(self._buf[-256:]) + bytes(piece)
        self.reset()
        raise WireError(f"a text message is not valid UTF-8 ({reason})", data[-256:], close_code=INVALID_DATA)

    def joins(self, first: int) -> bool:
        """Will `add` copy this frame's payload (its header went through `begin`) into
        the message being joined, as it is? Then the payload may be a view of the read
        buffer, valid only until `add` returns (no bytes of its own: one copy fewer)."""
        return not self._compressed and (not first & 0x80 or not first & 0x0F)

    def add(self, first: int, payload: Union[bytes, memoryview]) -> Optional[Tuple[bytes, int]]:
        """Take a data frame whose payload went through `begin`'s check; return
        ``(message, opcode)`` once the message is whole, else None. The payload
        may be a view (see `joins`), never kept."""
        opcode = first & 0x0F
        if self._compressed:
            assert self.inflater is not None, "check_header refuses RSV1 unless negotiated"
            payload = bytes(payload)  # its own bytes already (see joins): no copy
            payload = self.inflater.inflate(payload, bool(first & 0x80), self.max_size - len(self._buf))
            if self._utf8 is not None:
                self._check_text(payload)
        if first & 0x80:
            if self._utf8 is not None:
                self._check_text(b"", final=True)  # a message may not end inside a character
                self._utf8 = None
            if opcode != CONTINUATION:  # a whole message in one frame (its own bytes, see joins: no copy)
                return bytes(payload), opcode
            self._buf += payload
            message = (bytes(self._buf), self.opcode)
            self.reset()
            return message
        if opcode != CONTINUATION:
            self.opcode = opcode
        self._buf += payload
        return None

    def inflate_whole(self, data: bytes, opcode: int) -> bytes:
        """A compressed message of one frame (the reader's fast path), inflated within
        ``max_size``; text checked as UTF-8."""
        assert self.inflater is not None, "the fast path takes RSV1 only once deflate is negotiated"
        data = self.inflater.inflate(data, True, self.max_size)
        if opcode == TEXT and not data.isascii():
            check_text(data)
        return data

    def reset(self) -> None:
        self.opcode = 0
        self._buf = bytearray()
        self._utf8 = None
        self._compressed = False
