"""What every connection of a client is made with, checked once, up front."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any, Dict, List, Optional
from urllib.parse import quote, urlsplit

from ..redact import MASK, redact_headers, redact_protocol, redact_url


@dataclass(frozen=True, repr=False)
class ConnectOptions:
    """What every connection of a client is made with. Its ``repr`` masks the
    secrets (reprs reach logs, and tracebacks that show local variables)."""

    url: str
    headers: Dict[str, str]
    sslopt: Optional[Dict[str, Any]]
    subprotocols: Optional[List[str]]
    ping_interval: float
    ping_timeout: float
    idle_timeout: Optional[float]
    connect_timeout: float
    close_timeout: float
    max_message_size: int

    @property
    def io_timeout(self) -> float:
        """Bounds every blocking socket write and partial-frame read."""
        bounds = [t for t in (self.ping_timeout, self.idle_timeout) if t]
        return min(bounds) if bounds else 30.0

    @property
    def tick(self) -> float:
        bounds = [t / 4 for t in (self.ping_timeout, self.idle_timeout) if t]
        return min([0.25, *bounds])

    def __repr__(self) -> str:
        """The URL's password and secret-looking query values, every header value
        (any header may carry a credential), secret-looking ``sslopt`` values and
        subprotocols (`redact_protocol`) masked."""
        shown = dict(vars(self), url=redact_url(self.url), headers=dict.fromkeys(self.headers, MASK),
                     sslopt=redact_headers(self.sslopt) if self.sslopt else self.sslopt,
                     subprotocols=[redact_protocol(p) for p in self.subprotocols] if self.subprotocols else self.subprotocols)
        return f"ConnectOptions({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def __post_init__(self) -> None:
        check_options(self.url, self.ping_interval, self.ping_timeout, self.idle_timeout, self.max_message_size,
                      self.connect_timeout, self.close_timeout)
        check_tls_files(self.sslopt)
        check_headers(self.headers)
        check_subprotocols(self.subprotocols)


_URL_SAFE = "/?#[]@!$&'()*+,;=%:~"
"""What `quote` leaves as it is when it shows the ASCII form of a path and query."""

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""What a header name is made of (RFC 9110 §5.1: a token)."""


def check_headers(headers: Dict[str, str]) -> None:
    """`ValueError` for a header that would not be one header line: a name that is not
    a token, or a value holding a control character (RFC 9110 §5.5: CR or LF would
    end the line and start another, injecting headers; NUL and the rest are refused
    too, as by http.client). The message names the header, never its value."""
    for name, value in headers.items():
        text = str(name)
        if not text:
            raise ValueError("a header name cannot be empty")
        bad = next((i for i, c in enumerate(text) if c not in _TCHAR), None)
        if bad is not None:  # what follows the bad character is not shown: it may be a value
            raise ValueError(
                f"header name {text[:bad]!r}...: {text[bad]!r} at position {bad} is not allowed in a name "
                "(letters, digits and !#$%&'*+-.^_`|~ only)"
            )
        if isinstance(value, (bytes, bytearray)):  # it would go out as "b'...'"
            raise ValueError(f"the value of header {name!r} is bytes: give it as str")
        bad = next((i for i, c in enumerate(str(value)) if (c < " " and c != "\t") or c == "\x7f"), None)
        if bad is not None:
            raise ValueError(
                f"the value of header {name!r} holds {str(value)[bad]!r} at position {bad}: control characters are "
                "refused (a CR or LF would end the header line and start another)"
            )


def check_subprotocols(subprotocols: Optional[List[str]]) -> None:
    """`ValueError` for a subprotocol that is not a token (RFC 6455 §4.1: each is a
    token, RFC 9110 §5.6.2), or is offered twice: a comma, space, CR or LF would change
    the ``Sec-WebSocket-Protocol`` header or inject others. The message names the
    subprotocol's place in the list, never its text (it may carry a token)."""
    if subprotocols is None:
        return
    if isinstance(subprotocols, (str, bytes)):
        raise ValueError("subprotocols is a list of names, not one string")
    for i, protocol in enumerate(subprotocols):
        if not isinstance(protocol, str) or not protocol:
            raise ValueError(f"subprotocols[{i}] must be a non-empty string")
        bad = next((j for j, c in enumerate(protocol) if c not in _TCHAR), None)
        if bad is not None:
            raise ValueError(f"subprotocols[{i}] holds {protocol[bad]!r} at position {bad}: a subprotocol is a token "
                             "(letters, digits and !#$%&'*+-.^_`|~ only)")
    if len(set(subprotocols)) != len(subprotocols):
        raise ValueError("a subprotocol is offered twice")


TLS_FILES = ("ca_certs", "certfile", "keyfile", "ca_cert_path")
"""The ``sslopt`` keys that name files (``ca_cert_path``: a folder): wrong, every attempt would fail alike."""


def check_tls_files(sslopt: Optional[Dict[str, Any]]) -> None:
    """`ValueError` for a file that does not exist (or a folder where a file goes), or a
    ``ca_certs`` that is not PEM certificates: retrying could never help."""
    for key in TLS_FILES:
        value = (sslopt or {}).get(key)
        if value is None:
            continue
        path = os.fspath(value)
        folder = key == "ca_cert_path"
        if not os.path.exists(path):
            raise ValueError(f"sslopt[{key!r}]: there is no {'folder' if folder else 'file'} {path!r}")
        if os.path.isdir(path) != folder:
            raise ValueError(f"sslopt[{key!r}]: {path!r} is {'not a folder' if folder else 'not a file but a folder'}")
        if key == "ca_certs":
            try:
                ssl.create_default_context(cafile=path)
            except (ssl.SSLError, ValueError, OSError) as exc:
                raise ValueError(f"sslopt['ca_certs']: {path!r} is not a PEM file of CA certificates ({exc})") from None


def check_options(
    url: str, ping_interval: float, ping_timeout: float, idle_timeout: Optional[float], max_message_size: int,
    connect_timeout: float, close_timeout: float,
) -> None:
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(f"not a valid URL ({exc}): {redact_url(url)!r}") from None
    if parts.scheme.lower() not in ("ws", "wss"):
        raise ValueError(f"a WebSocket URL starts with ws:// or wss://, not {redact_url(url)!r}")
    if any(c.isspace() for c in url):
        raise ValueError(f"a URL has no spaces: {redact_url(url)!r} (encode them as %20)")
    bad = next((i for i, c in enumerate(url) if c < " " or c == "\x7f"), None)
    if bad is not None:  # they would reach the request line, Host and a proxy's CONNECT as they are
        raise ValueError(f"the URL holds the control character {url[bad]!r} at position {bad} (percent-encode it)")
    if not (parts.path + parts.query).isascii():  # the request line is ASCII (RFC 9112 §3.2)
        raise ValueError(f"the URL's path or query is not ASCII: percent-encode it "
                         f"({quote(parts.path + ('?' + parts.query if parts.query else ''), safe=_URL_SAFE)!r})")
    if not parts.hostname:
        raise ValueError(f"the URL names no host: {redact_url(url)!r}")
    if not parts.hostname.isascii():  # it would go out as raw UTF-8 in Host and CONNECT
        try:
            ascii_form = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_form = None
        raise ValueError(f"the URL's host {parts.hostname!r} is not ASCII: give its IDNA form"
                         + (f" ({ascii_form!r})" if ascii_form else ""))
    try:
        port = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"the URL's port is not a number from 1 to 65535: {redact_url(url)!r}")
    if ping_interval < 0 or ping_timeout < 0:
        raise ValueError("ping_interval and ping_timeout must be >= 0")
    if ping_interval and ping_timeout and ping_interval <= ping_timeout:
        raise ValueError(
            f"ping_interval ({ping_interval}) must be greater than ping_timeout ({ping_timeout}): "
            "a ping must be answered before the next one is due"
        )
    if idle_timeout is not None and idle_timeout <= 0:
        raise ValueError("idle_timeout must be > 0 or None")
    if max_message_size < 1:
        raise ValueError("max_message_size must be >= 1 byte")
    if connect_timeout <= 0 or close_timeout < 0:
        raise ValueError("connect_timeout must be > 0 and close_timeout >= 0")
