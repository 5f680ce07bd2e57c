"""permessage-deflate (RFC 7692), with no sockets and no threads: the offer the
client makes, the check of the server's answer to it (`negotiate`), and the two
halves of the codec (`Inflater` for what the server sends, `Deflater` for what
the client sends).

The client offers ``permessage-deflate; client_no_context_takeover;
client_max_window_bits``: the server may choose the window the client compresses
with, and learns that the client never refers to an earlier message (§7.1.1.2),
so it may drop its window between them. Each message the client sends is indeed
compressed on its own (a full flush): sends come from any thread and may be
written in another order than compressed, and a send that writes nothing leaves
no state behind. Messages from the server are inflated with a 15-bit window,
which reads any smaller one, kept across messages unless the server said
``server_no_context_takeover``.
"""

from __future__ import annotations

import threading
import zlib
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from ..errors import HandshakeError, MessageTooLarge, WireError

EXTENSION = "permessage-deflate"
OFFER = f"{EXTENSION}; client_no_context_takeover; client_max_window_bits"
"""The ``Sec-WebSocket-Extensions`` value the client sends when compression is on."""

STEP = 256 * 1024
"""Most bytes taken from zlib in one call when a message inflates to more."""

TAIL = b"\x00\x00\xff\xff"
"""The end of a sync flush, which a sender strips from each message and the receiver puts back (§7.2.1)."""

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_BITS = ("server_max_window_bits", "client_max_window_bits")


class PerMessageDeflate(NamedTuple):
    """The permessage-deflate parameters the server agreed to (RFC 7692 §7.1)."""

    server_no_context_takeover: bool = False
    """The server starts each message with an empty window (the client's inflater is reset per message)."""
    client_no_context_takeover: bool = False
    """The client may not refer to earlier messages (it never does: each send is compressed on its own)."""
    server_max_window_bits: Optional[int] = None
    """The largest window the server compresses with (None: 15)."""
    client_max_window_bits: Optional[int] = None
    """The largest window the client may compress with (None: 15; at 8, which zlib cannot
    compress with, the client sends its messages uncompressed, as §6 allows)."""

    def __str__(self) -> str:
        """As a ``Sec-WebSocket-Extensions`` value."""
        parts = [EXTENSION, *(name for name in _FLAGS if getattr(self, name))]
        parts += [f"{name}={getattr(self, name)}" for name in _BITS if getattr(self, name) is not None]
        return "; ".join(parts)


def _split(value: str, sep: str) -> List[str]:
    """``value`` split at ``sep`` outside quoted strings (a quoted ``sep`` stays)."""
    parts, start, quoted, i = [], 0, False, 0
    while i < len(value):
        c = value[i]
        if c == '"':
            quoted = not quoted
        elif c == "\\" and quoted:
            i += 1
        elif c == sep and not quoted:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise HandshakeError(f"an unterminated quoted string in Sec-WebSocket-Extensions: {value[:120]!r}")
    parts.append(value[start:])
    return parts


def _token(text: str, what: str) -> str:
    if not text or any(c not in _TCHAR for c in text):
        raise HandshakeError(f"{what} {text[:80]!r} in Sec-WebSocket-Extensions is not a token")
    return text


def parse_extensions(values: List[str]) -> List[Tuple[str, Dict[str, Optional[str]]]]:
    """The extensions of ``Sec-WebSocket-Extensions`` field values (RFC 6455 §9.1):
    each a name and its parameters (None: no value; a quoted value unquoted, and a
    token, as RFC 7692 §7.1 requires). `HandshakeError` for a malformed one, or a
    parameter given twice (§7: the response is then refused)."""
    found: List[Tuple[str, Dict[str, Optional[str]]]] = []
    for value in values:
        for item in _split(value, ","):
            if not item.strip():
                continue  # empty list elements are allowed (RFC 9110 §5.6.1)
            name, *params = (part.strip() for part in _split(item, ";"))
            parsed: Dict[str, Optional[str]] = {}
            for param in params:
                key, sep, raw = (part.strip() for part in param.partition("="))
                key = _token(key, "parameter").lower()
                if key in parsed:
                    raise HandshakeError(f"parameter {key!r} is given twice in Sec-WebSocket-Extensions")
                if sep and len(raw) >= 2 and raw[0] == raw[-1] == '"':
                    raw = raw[1:-1].replace("\\", "")  # quoted-pair: the backslash goes
                parsed[key] = _token(raw, f"the value of {key!r}") if sep else None
            found.append((_token(name, "extension").lower(), parsed))
    return found


def _bits(value: Optional[str], name: str) -> int:
    if value is None or not value.isdigit() or value[0] == "0" or not 8 <= int(value) <= 15:  # no leading zero (§7.1.2)
        raise HandshakeError(f"{name}={value} in the server's permessage-deflate: it must be 8 to 15")
    return int(value)


def negotiate(response: List[str], offer: List[str]) -> Optional[PerMessageDeflate]:
    """What the server's ``Sec-WebSocket-Extensions`` (``response``, its field values)
    agrees to of the client's ``offer`` (the values sent); None when it uses no extension.

    RFC 7692 §7: the response accepts one offer, so at most one permessage-deflate and
    no other extension (none other is offered); each parameter at most once, none
    unknown. ``server_no_context_takeover`` and ``client_no_context_takeover`` take no
    value; ``server_max_window_bits`` takes 8 to 15, at most the value offered (the
    server may name it unasked, §7.1.2.1); ``client_max_window_bits`` takes 8 to 15 and
    only if offered (§7.1.2.2), at most the value offered. Anything else: `HandshakeError`.
    """
    chosen = parse_extensions(response)
    if not chosen:
        return None
    offered = dict(parse_extensions(offer))
    names = [name for name, _ in chosen]
    if any(name not in offered for name in names):
        raise HandshakeError(f"the server uses WebSocket extension(s) wsbridge did not offer: {names!r}")
    if any(name != EXTENSION for name in names):
        raise HandshakeError(f"the server uses WebSocket extension(s) wsbridge does not support: {names!r}")
    if len(chosen) > 1:
        raise HandshakeError(f"the server accepted permessage-deflate more than once: {names!r}")
    params, asked = chosen[0][1], offered[EXTENSION]
    agreed: Dict[str, object] = {}
    for key, value in params.items():
        if key in _FLAGS:
            if value is not None:
                raise HandshakeError(f"{key}={value} in the server's permessage-deflate: it takes no value")
            agreed[key] = True
        elif key in _BITS:
            bits = _bits(value, key)
            if key == "client_max_window_bits" and key not in asked:
                raise HandshakeError("the server's permessage-deflate sets client_max_window_bits, which was not offered")
            limit = asked.get(key)
            if limit is not None and bits > int(limit):
                raise HandshakeError(f"{key}={bits} in the server's permessage-deflate exceeds the {limit} offered")
            agreed[key] = bits
        else:
            raise HandshakeError(f"the server's permessage-deflate has parameter {key[:40]!r}, which RFC 7692 does not define")
    return PerMessageDeflate(**agreed)  # type: ignore[arg-type]


class Inflater:
    """Inflates the messages the server compressed, one frame at a time, never
    producing more than the message's size limit allows: a message that would
    inflate past it is refused (`MessageTooLarge`, close code 1009) once the limit
    is reached, before the rest is inflated, and with no more than the limit and one
    `STEP` allocated (zlib's output is taken a step at a time). Bytes after the end of
    the deflate stream (its final block) are refused (1007): a message is never cut
    short silently. Owned by the connection's reader thread."""

    __slots__ = ("reset_each", "_zlib")

    def __init__(self, params: PerMessageDeflate) -> None:
        self.reset_each = params.server_no_context_takeover
        self._zlib = zlib.decompressobj(wbits=-15)  # a 15-bit window reads any smaller one

    def inflate(self, data: bytes, fin: bool, room: int) -> bytes:
        """A compressed frame's payload inflated (``fin``: the message's last frame);
        `MessageTooLarge` when it inflates to more than ``room`` bytes."""
        inflater = self._zlib
        if inflater.eof and data:
            raise WireError("a compressed message goes on after the end of its deflate stream", data[:64], close_code=1007)
        tail = fin and len(data) > 2048  # a large payload is not copied to append the tail
        if fin and not tail:
            data = data + TAIL
        try:
            out = self._take(inflater, data, room)
            if tail and len(out) <= room:
                out += self._take(inflater, TAIL, room - len(out))
        except zlib.error as exc:
            raise WireError(f"a compressed message does not inflate ({exc})", data[:64], close_code=1007) from None
        if len(out) > room:
            raise MessageTooLarge(f"a compressed message inflates past max_message_size (more than {room} bytes left)",
                                  bytes(out[:64]))
        if inflater.eof and inflater.unused_data not in (b"", TAIL):
            raise WireError("bytes follow the end of a compressed message's deflate stream", inflater.unused_data[:64],
                            close_code=1007)
        if fin and (self.reset_each or inflater.eof):  # a final deflate block ends the stream: start a new one
            self._zlib = zlib.decompressobj(wbits=-15)
        return out if out.__class__ is bytes else bytes(out)  # (within the room `_take` gives bytes)

    @staticmethod
    def _take(inflater: "zlib._Decompress", data: bytes, room: int) -> Union[bytes, bytearray]:
        """``data`` inflated, at most ``room`` + 1 bytes of it: one call for a message up to
        `STEP`, else a step at a time into one buffer (zlib would build a large output in
        pieces and join them: twice the limit at once)."""
        out = inflater.decompress(data, min(room + 1, STEP))
        if len(out) < STEP or len(out) > room:
            return out
        buf = bytearray(out)
        while len(buf) <= room:
            more = inflater.decompress(inflater.unconsumed_tail, min(room + 1 - len(buf), STEP))
            if not more:
                break
            buf += more
        return bytes(buf) if len(buf) <= room else buf  # (past the room it is refused: not copied)


class Deflater:
    """Compresses each message the client sends on its own (a full flush resets the
    window, so the bytes of one message never refer to another). Shared by the
    sending threads; the lock orders their use of the one compressor, not the wire."""

    __slots__ = ("_zlib", "_lock")

    def __init__(self, params: PerMessageDeflate) -> None:
        bits = params.client_max_window_bits or 15
        self._zlib = zlib.compressobj(6, zlib.DEFLATED, -bits)
        self._lock = threading.Lock()

    @staticmethod
    def usable(params: PerMessageDeflate) -> bool:
        """Can the client compress under these parameters? (zlib cannot with an 8-bit window.)"""
        return params.client_max_window_bits != 8

    def deflate(self, data: bytes) -> bytes:
        """``data`` compressed as one message's payload (the sync flush's tail stripped)."""
        with self._lock:
            out = self._zlib.compress(data) + self._zlib.flush(zlib.Z_FULL_FLUSH)
        return out[:-4] if out.endswith(TAIL) else out
