"""What every connection of a client is made with, checked once, up front; and what
one attempt sends (`Attempt`), obtained afresh on the dialling thread.

``url``, ``headers``, ``subprotocols`` and ``cookie`` may be callables of no
arguments: each attempt calls them (`ConnectOptions.attempt`, on its reader
thread) and checks what they return as a value given up front is checked, so
every attempt carries fresh credentials (a signed URL, a token that expires).

A header the upgrade request writes itself from an option is sent once: an
``Origin``, ``Host`` or ``Cookie`` in ``headers`` takes the place of the one
websocket-client would write (``origin``, ``host``; cookies are joined).
"""

from __future__ import annotations

import os
import ssl
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union
from urllib.parse import quote, urlsplit

from ..errors import ConnectError, HandshakeError
from ..redact import MASK, redact_headers, redact_protocols, redact_url
from .deflate import OFFER as DEFLATE_OFFER
from .proxies import ProxyURL, check_no_proxy, choose_proxy, parse_proxy
from .wsclient import parse_url

T = TypeVar("T")

Headers = Union[Mapping[str, str], Callable[[], Mapping[str, str]]]
"""Header names to values, or a callable returning them for each attempt."""
Url = Union[str, Callable[[], str]]
Subprotocols = Union[None, Sequence[str], Callable[[], Optional[Sequence[str]]]]
Cookie = Union[None, str, Callable[[], Optional[str]]]

COMPRESSIONS = ("deflate", None)
"""The values of the ``compression`` option."""

CALLABLE = "<callable>"
"""What a ``repr`` shows for an option given as a callable."""


@dataclass(frozen=True, repr=False)
class ConnectOptions:
    """What every connection of a client is made with. Its ``repr`` masks the
    secrets (reprs reach logs, and tracebacks that show local variables)."""

    url: Url
    headers: Headers
    sslopt: Optional[Dict[str, Any]]
    subprotocols: Subprotocols
    ping_interval: float
    ping_timeout: float
    idle_timeout: Optional[float]
    connect_timeout: float
    close_timeout: float
    max_message_size: int
    cookie: Cookie = None
    origin: Optional[str] = None
    host: Optional[str] = None
    suppress_origin: bool = False
    proxy: Optional[str] = None
    """``http://``, ``https://``, ``socks5://`` or ``socks5h://``, with credentials
    if the proxy wants them (None: the environment's, as websocket-client reads it)."""
    no_proxy: Optional[Tuple[str, ...]] = None
    """Hosts reached without the proxy (None: the environment's ``no_proxy``)."""
    compression: Optional[str] = "deflate"
    """``"deflate"``: offer permessage-deflate (RFC 7692); None: offer no compression."""
    proxy_url: Optional[ProxyURL] = field(init=False, default=None)
    """``proxy``, parsed."""

    @property
    def io_timeout(self) -> float:
        """Bounds every blocking socket write and partial-frame read."""
        bounds = [t for t in (self.ping_timeout, self.idle_timeout) if t]
        return min(bounds) if bounds else 30.0

    @property
    def tick(self) -> float:
        bounds = [t / 4 for t in (self.ping_timeout, self.idle_timeout) if t]
        return min([0.25, *bounds])

    @property
    def shown_url(self) -> str:
        """The URL as logs and reprs may show it (secrets masked; a callable's is unknown until called)."""
        return CALLABLE if callable(self.url) else redact_url(self.url)

    @property
    def fresh(self) -> bool:
        """Does each attempt obtain credentials afresh (any of url, headers, subprotocols, cookie a callable)?"""
        return any(callable(v) for v in (self.url, self.headers, self.subprotocols, self.cookie))

    def __repr__(self) -> str:
        """The URL's and the proxy's password and secret-looking query values, every
        header value (any header may carry a credential), the cookie, secret-looking
        ``sslopt`` values and subprotocols (`redact_protocol`) masked; a callable shown
        as such."""
        shown = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        shown.update(
            url=self.shown_url,
            headers=CALLABLE if callable(self.headers) else dict.fromkeys(self.headers, MASK),
            sslopt=redact_headers(self.sslopt) if self.sslopt else self.sslopt,
            subprotocols=CALLABLE if callable(self.subprotocols)
            else redact_protocols(self.subprotocols) if self.subprotocols else self.subprotocols,
            cookie=CALLABLE if callable(self.cookie) else (MASK if self.cookie else self.cookie),
            proxy=redact_url(self.proxy) if self.proxy else self.proxy,
        )
        return f"ConnectOptions({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def __post_init__(self) -> None:
        if not callable(self.url):
            check_url(self.url)
        check_options(self.ping_interval, self.ping_timeout, self.idle_timeout, self.max_message_size,
                      self.connect_timeout, self.close_timeout)
        check_tls_files(self.sslopt)
        check_headers({k: v for k, v in (("Origin", self.origin), ("Host", self.host)) if v is not None})
        if self.no_proxy is not None:
            check_no_proxy(self.no_proxy)
        if self.proxy is not None:
            object.__setattr__(self, "proxy_url", parse_proxy(self.proxy))
        if not callable(self.headers):
            given = {name.lower() for name in checked_headers(self.headers)}
            if "origin" in given and (self.origin is not None or self.suppress_origin):
                raise ValueError("an Origin header and origin= (or suppress_origin=True) together: give one")
            if "host" in given and self.host is not None:
                raise ValueError("a Host header and host= together: give one")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression={self.compression!r}: give 'deflate' (permessage-deflate) or None (no compression)")
        if not callable(self.headers):
            self._check_extensions(self.headers)
        if not callable(self.subprotocols):
            checked_subprotocols(self.subprotocols)
        if not callable(self.cookie):
            checked_cookie(self.cookie)

    def _check_extensions(self, headers: Mapping[str, str]) -> None:
        """`ValueError` for a ``Sec-WebSocket-Extensions`` header while compression is
        on: the client writes that header itself then (the two would contradict)."""
        if self.compression and any(name.lower() == "sec-websocket-extensions" for name in headers):
            raise ValueError("a Sec-WebSocket-Extensions header while compression is on: give compression=None to send your own")

    def attempt(self, deadline: float, note: Callable[[Optional[str]], None]) -> "Attempt":
        """What the next attempt sends: each callable option called (``note`` is told
        which runs, then None) and its value checked, then the proxy chosen. Runs on
        the attempt's reader thread, before it dials. `ConnectError` naming the option
        when a callable raises or returns what is refused (the policy decides whether
        to retry); `TimeoutError` when one returned after ``deadline`` (`time.monotonic`)."""
        url = _call("url", self.url, checked_url, deadline, note)
        headers = _call("headers", self.headers, checked_headers, deadline, note)
        try:
            self._check_extensions(headers)
        except ValueError as exc:  # a value given up front was checked at construction
            raise ConnectError(f"headers: the callable returned a value that is refused: {exc}") from None
        subprotocols = _call("subprotocols", self.subprotocols, checked_subprotocols, deadline, note)
        cookie = _call("cookie", self.cookie, checked_cookie, deadline, note)
        lines: List[str] = []
        origin, host, suppress_origin = self.origin, self.host, self.suppress_origin
        cookies = [cookie] if cookie else []
        for name, value in headers.items():
            key = name.lower()
            if key == "origin":
                origin, suppress_origin = value, False
            elif key == "host":
                host = value
            elif key == "cookie":
                cookies.append(value)
            else:
                lines.append(f"{name}: {value}")
        if self.compression:
            lines.append(f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}")
        hostname, _, _, secure = parse_url(url)
        try:
            proxy = choose_proxy(hostname, secure, self.proxy_url, self.no_proxy)
        except ValueError as exc:  # the environment's proxy cannot work: retrying cannot help
            raise HandshakeError(str(exc), fatal=True) from None
        return Attempt(url, lines, subprotocols, "; ".join(cookies) or None, origin, host, suppress_origin, proxy, self.fresh)


@dataclass(frozen=True, repr=False)
class Attempt:
    """What one connection attempt sends: the options' values, callables called.
    Owned by the attempt's reader thread. Its ``repr`` shows the URL, masked."""

    url: str
    header: List[str]
    """Header lines (``Name: value``), but Origin, Host and Cookie: those are below."""
    subprotocols: Optional[List[str]]
    cookie: Optional[str]
    origin: Optional[str]
    host: Optional[str]
    suppress_origin: bool
    proxy: Optional[ProxyURL]
    fresh: bool
    """Credentials were obtained for this attempt (see `ConnectOptions.fresh`)."""

    def __repr__(self) -> str:
        return f"Attempt({redact_url(self.url)!r}, proxy={self.proxy!r})"


def _call(name: str, value: Any, check: Callable[[Any], T], deadline: float,
          note: Callable[[Optional[str]], None]) -> T:
    """``value``, or what ``value()`` returns, checked by ``check``."""
    if not callable(value):
        return check(value)
    note(f"the {name} callable")
    try:
        got = value()
    except Exception as exc:  # its text may hold a secret: the exception is the cause, not the message
        raise ConnectError(f"{name}: the callable raised {type(exc).__name__} (see this error's __cause__)") from exc
    finally:
        note(None)
    if time.monotonic() > deadline:
        raise TimeoutError(f"{name}: the callable returned after connect_timeout")
    try:
        return check(got)
    except (TypeError, ValueError) as exc:
        raise ConnectError(f"{name}: the callable returned a value that is refused: {exc}") from None


def checked_url(url: Any) -> str:
    """``url`` checked (`check_url`), its scheme in lower case (websocket-client knows no other)."""
    if not isinstance(url, str):
        raise TypeError(f"a URL is a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    url = scheme.lower() + sep + rest if sep else url
    check_url(url)
    return url


def checked_headers(headers: Any) -> Dict[str, str]:
    """``headers`` (a mapping of names to values) as a dict, checked (`check_headers`)."""
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers are a mapping of names to values, not {type(headers).__name__}")
    headers = dict(headers)
    check_headers(headers)
    return headers


def checked_subprotocols(subprotocols: Any) -> Optional[List[str]]:
    """``subprotocols`` (None, or a sequence of RFC 9110 tokens) as a list."""
    if subprotocols is None:
        return None
    if not isinstance(subprotocols, (str, bytes)) and not isinstance(subprotocols, Sequence):
        raise TypeError(f"subprotocols are a list of names, not {type(subprotocols).__name__}")
    check_subprotocols(subprotocols)
    return list(subprotocols)


def checked_cookie(cookie: Any) -> Optional[str]:
    """``cookie`` (None, or the value of a Cookie header: ``name=value; name2=value2``), checked."""
    if cookie is None:
        return None
    if not isinstance(cookie, str):
        raise TypeError(f"a cookie is a str (name=value; name2=value2), not {type(cookie).__name__}")
    check_headers({"Cookie": cookie})
    return cookie


_URL_SAFE = "/?#[]@!$&'()*+,;=%:~"
"""What `quote` leaves as it is when it shows the ASCII form of a path and query."""

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""What a header name is made of (RFC 9110 §5.1: a token)."""


def check_headers(headers: Dict[str, str]) -> None:
    """`ValueError` for a header that would not be one header line: a name that is not
    a token, or a value holding a control character (RFC 9110 §5.5: CR or LF would
    end the line and start another, injecting headers; NUL and the rest are refused
    too, as by http.client), or a name given twice (in other cases). The message
    names the header, never its value."""
    seen = set()
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
        if text.lower() in seen:
            raise ValueError(f"header {text!r} is given twice (names are case-insensitive)")
        seen.add(text.lower())
        bad = next((i for i, c in enumerate(str(value)) if (c < " " and c != "\t") or c == "\x7f"), None)
        if bad is not None:
            raise ValueError(
                f"the value of header {name!r} holds {str(value)[bad]!r} at position {bad}: control characters are "
                "refused (a CR or LF would end the header line and start another)"
            )


def check_subprotocols(subprotocols: Any) -> None:
    """`ValueError` for a subprotocol that is not a token (RFC 6455 §4.1: each is a
    token, RFC 9110 §5.6.2), or is offered twice: a comma, space, CR or LF would change
    the ``Sec-WebSocket-Protocol`` header or inject others. The message names the
    subprotocol's place in the list, never its text (it may carry a token)."""
    if subprotocols is None:
        return
    if isinstance(subprotocols, (str, bytes)):
        raise ValueError("subprotocols are a list of names, not one string")
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
    """`ValueError` for a file that does not exist (or a folder where a file goes), a
    ``ca_certs`` that is not PEM certificates, or a client certificate (``certfile``)
    that does not load with its key (``keyfile``, ``password``): retrying could never help."""
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
    certfile = (sslopt or {}).get("certfile")
    if sslopt and certfile is not None:
        password = sslopt.get("password")
        try:  # with no password, an encrypted key fails here rather than make OpenSSL prompt on the terminal
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certfile, sslopt.get("keyfile"),
                                                                     password if password is not None else (lambda: ""))
        except (ssl.SSLError, ValueError, OSError) as exc:
            hint = " (an encrypted key needs sslopt['password'])" if password is None else ""
            raise ValueError(f"sslopt['certfile']: {os.fspath(certfile)!r} does not load as a PEM client certificate "
                             f"with its private key{hint} ({exc})") from None


def check_url(url: str) -> None:
    """`ValueError` for what is not a ws:// or wss:// URL naming a host (and a valid port)."""
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
        encoded = parts._replace(path=quote(parts.path, safe=_URL_SAFE), query=quote(parts.query, safe=_URL_SAFE))
        raise ValueError(f"the URL's path or query is not ASCII: percent-encode it ({redact_url(encoded.geturl())!r})")
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


def check_options(
    ping_interval: float, ping_timeout: float, idle_timeout: Optional[float], max_message_size: int,
    connect_timeout: float, close_timeout: float,
) -> None:
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
