"""The client's checks of the server's answer to the WebSocket upgrade, with no sockets.

websocket-client writes the upgrade request and parses the response itself,
but it reads header lines with no bound, compares ``Sec-WebSocket-Accept``
case-insensitively, accepts a subprotocol nobody asked for, and follows a
redirect on a socket of its own, resending every header (``Authorization``,
``Cookie``) to the new origin. So the socket under it (`BufferedSocket`)
shows this module the request as it goes out and the response head as it
comes in, before websocket-client reads a byte of it: `Handshake.check_head`
bounds it, and `Handshake.check_response` applies RFC 6455 §4.1 exactly.

The status line is read strictly (RFC 9112 §4: ``HTTP/x.y``, a space, exactly
three ASCII digits, then a space and the reason, or nothing). websocket-client
reads the status with ``int()``, which also takes ``+302``, ``3_02`` or
``٣٠٢``: any line the two could read differently is refused, so the status
websocket-client acts on is always the one checked here.

Redirects are refused: a 3xx answer raises `UpgradeRefused` naming the target
(with any secret in it redacted), so no header is ever sent to another origin
and the client never counts a connection it does not have. Point the client at
the new URL to follow it. Any other status but 101 is `UpgradeRefused` too, with
the status, its reason phrase and ``Retry-After``: websocket-client never reads
a refused answer.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from datetime import timezone
from typing import Dict, List, Optional, Tuple, Union

from ..errors import HandshakeError, UpgradeRefused, preview
from ..redact import redact_protocols, redact_url
from .deflate import PerMessageDeflate, negotiate

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

MAX_LINE = 8 * 1024
"""The longest header line accepted in the server's response, in bytes."""

MAX_HEAD = 64 * 1024
"""The largest response head (status line and headers) accepted, in bytes."""

REDIRECTS = frozenset({301, 302, 303, 307, 308})
PERMANENT_REDIRECTS = frozenset({301, 308})
"""A permanent redirect makes the client give up; a temporary one is retried (with
backoff, never followed): the server may be between deployments."""

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_STATUS_LINE = re.compile(r"HTTP/[0-9]\.[0-9] ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
"""RFC 9112 §4 (the head is decoded as latin-1; ``[0-9]``, unlike ``\\d``, is ASCII only).
The space before an empty reason may be missing: websocket-client strips it anyway."""
_FOLD = re.compile(rb"\r?\n[ \t]+")


def accept_value(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value that answers ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def parse_head(head: bytes) -> Tuple[str, Dict[str, List[str]]]:
    """The first line and the header fields (lower-case names, every value kept)
    of an HTTP head. Lines may end in CRLF or a bare LF (RFC 7230 §3.5); a folded
    line (obs-fold) continues the value before it, joined by a space (§3.2.4)."""
    lines = [line[:-1] if line.endswith(b"\r") else line for line in head.split(b"\n")]
    fields: Dict[str, List[str]] = {}
    last: Optional[List[str]] = None
    for line in lines[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t") and last:
            last[-1] = f"{last[-1]} {line.strip().decode('latin-1')}"
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise HandshakeError(f"a malformed header line in the upgrade response: {line[:80]!r}")
        last = fields.setdefault(name.strip().lower().decode("latin-1"), [])
        last.append(value.strip().decode("latin-1"))
    return lines[0].decode("latin-1"), fields


def parse_status(line: str, what: str) -> Tuple[int, str]:
    """The status code and reason phrase of an HTTP response's status line (``what``:
    whose, for the error; the reason shown in printable ASCII, at most 80 characters);
    `HandshakeError` for anything but the strict form of RFC 9112 §4."""
    found = _STATUS_LINE.fullmatch(line)
    if found is None:
        raise HandshakeError(f"{what} has a malformed status line: {preview(line, 80)}")
    reason = "".join(c if " " <= c <= "~" else "?" for c in (found.group(2) or "").strip()[:80])  # printable: it is logged
    return int(found.group(1)), reason


def retry_after(fields: Dict[str, List[str]]) -> Optional[float]:
    """The seconds a ``Retry-After`` field asks to wait (RFC 9110 §10.2.3: delta-seconds
    or an HTTP-date, a date past counting as 0); None when absent or unreadable."""
    value = fields.get("retry-after", [""])[0].strip()
    if value.isascii() and value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime  # here: 1.2 MB of modules, for a refusal that carries a date

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is GMT all the same
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def refusal(status: int, reason: str, fields: Dict[str, List[str]], what: str, proxy: bool = False) -> UpgradeRefused:
    """`UpgradeRefused` for a ``status`` answer (``what`` says who refused what), with
    its ``Retry-After``. A proxy's 407 is fatal: its credentials are wrong or missing."""
    wait = retry_after(fields)
    phrase = f": {reason}" if reason else ""
    later = f"; it asks to retry after {wait:g} s" if wait is not None else ""
    return UpgradeRefused(f"{what} (HTTP {status}){phrase}{later}", status, reason, wait, proxy=proxy,
                          fatal=proxy and status == 407)


def _tokens(values: List[str]) -> List[str]:
    return [token.strip() for value in values for token in value.split(",") if token.strip()]


class HttpHead:
    """Finds where an HTTP response head ends as it arrives, within `MAX_LINE`
    and `MAX_HEAD`. ``what`` names the response in errors. Owned by the thread
    that reads the response."""

    __slots__ = ("what", "_line")

    def __init__(self, what: str) -> None:
        self.what = what
        self._line = 0  # where the first line of the head not yet checked starts

    def head_end(self, data: Union[bytes, bytearray]) -> int:
        """Where the response head in ``data`` ends (after its blank line), or -1
        if it has not yet; raises `HandshakeError` past the size limits. Called
        with ``data`` grown each time: each line is checked once."""
        found = _HEAD_END.search(data, max(0, self._line - 2))
        end = found.end() if found else -1
        scan_to = len(data) if end < 0 else end
        start = self._line
        while start < scan_to:
            stop = data.find(b"\n", start, scan_to)
            if (stop if stop >= 0 else scan_to) - start > MAX_LINE:
                raise HandshakeError(f"a header line of {self.what} exceeds {MAX_LINE} bytes: {data[start : start + 60]!r}...")
            if stop < 0:
                break
            start = stop + 1
        self._line = start
        if (len(data) if end < 0 else end) > MAX_HEAD:
            raise HandshakeError(f"the head of {self.what} exceeds {MAX_HEAD} bytes")
        return end


class Handshake(HttpHead):
    """One upgrade: the request sent and the response head received.

    Owned by the reader thread that dials; read by others only after the
    connection opened (``subprotocol``). Its ``repr`` is the default one, on
    purpose: the request holds the headers (``Authorization``)."""

    __slots__ = ("request", "head", "subprotocol", "deflate")

    def __init__(self) -> None:
        super().__init__("the server's upgrade response")
        self.request = b""
        """The upgrade request as sent (set by the socket on the first send)."""
        self.head: Optional[bytes] = None
        """The response head, once whole and checked."""
        self.subprotocol: Optional[str] = None
        """The subprotocol the server chose (None: none)."""
        self.deflate: Optional[PerMessageDeflate] = None
        """The permessage-deflate parameters the server agreed to (None: no compression)."""

    def check_response(self, head: bytes) -> bytes:
        """Check a whole response head against the request (RFC 6455 §4.1);
        return it with folded lines unfolded (websocket-client refuses obs-fold).

        A status line that is not strictly RFC 9112's is refused; any status but
        101 is `UpgradeRefused` (websocket-client never reads such an answer)."""
        head = _FOLD.sub(b" ", head)
        status_line, fields = parse_head(head)
        status, reason = parse_status(status_line, self.what)
        if status in REDIRECTS:
            target = fields.get("location", [""])[0]
            where = repr(redact_url(target)) if target else "nowhere (no Location header)"
            raise UpgradeRefused(
                f"the server redirected the upgrade (HTTP {status}) to {where}; "
                "wsbridge does not follow redirects: connect to that URL instead",
                status, reason, fatal=status in PERMANENT_REDIRECTS,
            )
        if status != 101:
            raise refusal(status, reason, fields, "handshake refused")
        _, request = parse_head(self.request)
        key = request.get("sec-websocket-key", [""])[0].encode("latin-1")
        accept = fields.get("sec-websocket-accept", [])
        if len(set(accept)) != 1 or accept[0].encode("latin-1") != accept_value(key):
            raise HandshakeError(f"Sec-WebSocket-Accept {accept!r} does not answer the key sent")
        if "websocket" not in [t.lower() for t in _tokens(fields.get("upgrade", []))]:
            raise HandshakeError(f"the upgrade response has no 'Upgrade: websocket' (got {fields.get('upgrade')!r})")
        if "upgrade" not in [t.lower() for t in _tokens(fields.get("connection", []))]:
            raise HandshakeError(f"the upgrade response has no 'Connection: Upgrade' (got {fields.get('connection')!r})")
        chosen = _tokens(fields.get("sec-websocket-protocol", []))
        offered = _tokens(request.get("sec-websocket-protocol", []))
        if len(chosen) > 1 or (chosen and chosen[0] not in offered) or (offered and not chosen):
            shown = dict(zip(offered, redact_protocols(offered), strict=True))
            offers = ", ".join(repr(shown[p]) for p in offered) or "none"
            if not chosen:  # websocket-client would refuse it too, less clearly
                raise HandshakeError(f"the server chose none of the subprotocols offered ({offers})")
            picked = ", ".join(shown.get(p) or redact_protocols([p])[0] for p in chosen)
            raise HandshakeError(f"the server chose subprotocol {picked[:80]!r}, but the client offered {offers}")
        # RFC 6455 §9.1: only an extension offered may be used (permessage-deflate, when offered)
        self.deflate = negotiate(fields.get("sec-websocket-extensions", []), request.get("sec-websocket-extensions", []))
        self.subprotocol = chosen[0] if chosen else None
        self.head = head
        return head
