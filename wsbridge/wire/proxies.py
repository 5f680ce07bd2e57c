"""Proxies: which one an attempt goes through, and the tunnel through it, with no thread of their own.

`choose_proxy` picks the proxy for a server: the client's ``proxy`` option, else
the environment's (``http_proxy`` for ws://, ``https_proxy`` for wss://, as
websocket-client reads them), unless ``no_proxy`` (the option, else the
environment's; `bypasses`) names the host. `tunnel`
opens the way to the server through it: HTTP CONNECT (``http://``, and
``https://``, the same spoken over TLS to the proxy, which `wsbridge.wire.dial`
sets up) with Basic credentials, or SOCKS5 (RFC 1928) with a username and
password (RFC 1929); ``socks5h://`` has the proxy resolve the server's name.

Every read is bounded by the attempt's deadline and ends when the attempt is
aborted (its socket shut down). The proxy's credentials go to the proxy only;
no error message or ``repr`` shows them.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union
from urllib.parse import unquote, urlsplit

from ..errors import ConnectError, HandshakeError
from ..redact import redact_url
from .handshake import HttpHead, parse_head, parse_status, refusal

DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
"""The proxy schemes wsbridge speaks, and the port of each when the URL names none
(80 for ``http``, as websocket-client has it for an environment proxy)."""

_SOCKS_REPLIES = {
    1: ("general SOCKS server failure", False), 2: ("connection not allowed by ruleset", True),
    3: ("network unreachable", False), 4: ("host unreachable", False), 5: ("connection refused", False),
    6: ("TTL expired", False), 7: ("command not supported", True), 8: ("address type not supported", True),
}
"""RFC 1928 §6: what each reply code means, and whether retrying cannot help."""


@dataclass(frozen=True, repr=False)
class ProxyURL:
    """A proxy to go through. Its ``repr`` masks the password."""

    scheme: str
    """``http``, ``https``, ``socks5`` or ``socks5h``."""
    host: str
    port: int
    username: Optional[str] = None
    password: Optional[str] = None

    @property
    def where(self) -> str:
        """``scheme://host:port``: no credentials, for messages."""
        return f"{self.scheme}://{host_port(self.host, self.port)}"

    def __repr__(self) -> str:
        # A user with no password may be a key itself (``APIKEY:@proxy``): masked too.
        user = f"{self.username}:***@" if self.password else ("***@" if self.username else "")
        return f"ProxyURL('{self.scheme}://{user}{host_port(self.host, self.port)}')"


def parse_proxy(url: str, what: str = "proxy") -> ProxyURL:
    """``url`` (``scheme://[user[:password]@]host[:port]``, user and password
    percent-encoded) as a `ProxyURL`; `ValueError` naming ``what`` (the option or
    the environment variable) for anything else. A URL without a scheme is ``http://``."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    shown = redact_url(text)
    if any(c.isspace() or c < " " for c in text):
        raise ValueError(f"{what}: a proxy URL has no spaces or control characters: {shown!r}")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{what}: not a proxy URL (its port must be a number from 1 to 65535): {shown!r}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"{what}: a proxy URL starts with http://, https://, socks5:// or socks5h://, not {shown!r}")
    if not parts.hostname:
        raise ValueError(f"{what}: the proxy URL names no host: {shown!r}")
    if port == 0 or (parts.path not in ("", "/")) or parts.query:
        raise ValueError(f"{what}: a proxy URL is scheme://host:port, with no port 0, path or query: {shown!r}")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    for value in (username, password):
        if value is not None and scheme.startswith("socks") and not 0 < len(value.encode()) < 256:
            raise ValueError(f"{what}: a SOCKS5 username and password are 1 to 255 bytes each (RFC 1929)")
        if value is not None and any(c < " " or c == "\x7f" for c in value):
            raise ValueError(f"{what}: the proxy's username and password hold no control characters")
    return ProxyURL(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], username or None, password)


def split_no_proxy(no_proxy: Union[None, str, Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """``no_proxy`` as a tuple of hosts: a str is split at commas, as the environment's is."""
    if no_proxy is None:
        return None
    if isinstance(no_proxy, str):
        return tuple(host.strip() for host in no_proxy.split(",") if host.strip())
    return tuple(no_proxy)


def check_no_proxy(no_proxy: Sequence[str]) -> None:
    """`ValueError` for a ``no_proxy`` that is not a sequence of host names, domains
    (``.example.com``), addresses or networks (``10.0.0.0/8``), or ``*``."""
    if isinstance(no_proxy, (str, bytes)) or not all(isinstance(h, str) and h and h == h.strip() for h in no_proxy):
        raise ValueError("no_proxy is a list of host names, domains, addresses or networks, such as "
                         "['localhost', '.internal.example', '10.0.0.0/8']")


def choose_proxy(hostname: str, secure: bool, proxy: Optional[ProxyURL], no_proxy: Optional[Sequence[str]]) -> Optional[ProxyURL]:
    """The proxy to reach ``hostname`` through (None: go direct): ``proxy``, else the
    environment's; none when ``no_proxy`` (None: the environment's) names the host.
    `ValueError` for an environment variable that is not a proxy URL."""
    if bypasses(hostname, no_proxy):
        return None
    if proxy is not None:
        return proxy
    name = "https_proxy" if secure else "http_proxy"
    value = os.environ.get(name, os.environ.get(name.upper(), "")).replace(" ", "")
    return parse_proxy(value, f"the environment's {name}") if value else None


def bypasses(hostname: str, no_proxy: Optional[Sequence[str]]) -> bool:
    """Does ``no_proxy`` (None: the environment's ``no_proxy``; an empty one: nothing)
    name ``hostname``? ``*`` names every host; an address, a network (``10.0.0.0/8``)
    the addresses in it; a name (``example.com`` or ``.example.com``) that host and
    the hosts under it, at a label boundary (``.internal.example`` does not name
    ``evilinternal.example``, and ``.host`` not ``localhost``). A ``:port`` on an entry
    is ignored, as curl does."""
    if no_proxy is None:
        env = os.environ.get("no_proxy", os.environ.get("NO_PROXY", ""))
        no_proxy = [entry.strip() for entry in env.split(",") if entry.strip()]
    host = hostname.lower().rstrip(".").strip("[]")
    try:
        address: Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]] = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        entry = entry.strip().lower()
        if entry == "*":
            return True
        if entry.startswith("[") and "]" in entry:  # [::1]:8080
            entry = entry[1:entry.index("]")]
        elif entry.count(":") == 1:  # name:port
            entry = entry.partition(":")[0]
        if address is not None:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        name = entry.lstrip(".").rstrip(".")
        if name and (host == name or host.endswith("." + name)):
            return True
    return False


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def remaining(deadline: float, step: str) -> float:
    """Seconds left before ``deadline`` (`time.monotonic`); `TimeoutError` naming ``step`` when none."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{step}: connect timeout reached")
    return left


def tunnel(sock: socket.socket, proxy: ProxyURL, host: str, port: int, deadline: float, aborted: threading.Event) -> None:
    """Open the way to ``host``:``port`` through ``proxy``, whose socket ``sock`` is
    (TLS set up for an ``https://`` proxy), within ``deadline``."""
    if proxy.scheme.startswith("socks"):
        _socks5(_Exchange(sock, f"the SOCKS5 proxy at {host_port(proxy.host, proxy.port)}", deadline, aborted),
                proxy, host, port)
    else:
        _connect(_Exchange(sock, f"the proxy at {host_port(proxy.host, proxy.port)}", deadline, aborted),
                 proxy, host_port(host, port))


class _Exchange:
    """Bounded writes and reads with a proxy, on the dialling thread."""

    def __init__(self, sock: socket.socket, proxy: str, deadline: float, aborted: threading.Event) -> None:
        self.sock, self.proxy, self.deadline, self.aborted = sock, proxy, deadline, aborted

    def send(self, data: bytes, step: str) -> None:
        try:
            self.sock.settimeout(remaining(self.deadline, f"{step} through {self.proxy}"))
            self.sock.sendall(data)
        except socket.timeout:
            raise TimeoutError(f"{self.proxy} took no {step} in time") from None

    def recv(self, n: int, step: str) -> bytes:
        """Up to ``n`` bytes, at least one."""
        try:
            self.sock.settimeout(remaining(self.deadline, f"{step} through {self.proxy}"))
            chunk = self.sock.recv(n)
        except socket.timeout:
            raise TimeoutError(f"{self.proxy} did not answer {step} in time") from None
        if not chunk:
            if self.aborted.is_set():
                raise ConnectionAbortedError("connection attempt aborted")
            raise ConnectionError(f"{self.proxy} closed the connection without answering {step}")
        return chunk

    def recv_exactly(self, n: int, step: str) -> bytes:
        data = b""
        while len(data) < n:
            data += self.recv(n - len(data), step)
        return data


def _connect(talk: _Exchange, proxy: ProxyURL, where: str) -> None:
    """HTTP CONNECT, as websocket-client sends it (Basic credentials from the proxy's
    URL). Any 2xx answer opens the tunnel (RFC 9110 §9.3.6); it is read whole and
    strictly, and nothing may follow it (the server has not yet been sent a byte,
    so it cannot have answered). Another status is `UpgradeRefused` (``proxy``
    true; a 407 is fatal: the credentials are wrong or missing)."""
    request = f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n"
    if proxy.username:
        credentials = f"{proxy.username}:{proxy.password or ''}"  # RFC 7617: user-id ":" password, always
        request += f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
    step = f"CONNECT {where}"
    talk.send((request + "\r\n").encode(), step)
    what = f"{talk.proxy}'s answer to CONNECT"
    head = HttpHead(what)
    data = bytearray()
    end = -1
    while end < 0:
        data += talk.recv(16384, step)
        end = head.head_end(data)
    status_line, fields = parse_head(bytes(data[:end]))
    status, reason = parse_status(status_line, what)
    if not 200 <= status < 300:
        raise refusal(status, reason, fields, f"{talk.proxy} refused CONNECT {where}", proxy=True)
    if end < len(data):
        raise HandshakeError(
            f"{talk.proxy} sent {len(data) - end} bytes after its answer to CONNECT, before the server could speak"
        )


def _socks5(talk: _Exchange, proxy: ProxyURL, host: str, port: int) -> None:
    """RFC 1928's CONNECT, with RFC 1929's username and password when the proxy's
    URL has them. ``socks5h``: the proxy resolves ``host`` (sent as a name);
    ``socks5``: it is resolved here and sent as an address. A refusal of the
    credentials, or of every method offered, is fatal (`HandshakeError`); a reply
    that the server could not be reached is retried (`ConnectError`)."""
    step = "the SOCKS5 greeting"
    credentials = proxy.username is not None
    talk.send(b"\x05\x02\x00\x02" if credentials else b"\x05\x01\x00", step)  # methods: none, username/password
    version, method = talk.recv_exactly(2, step)
    if version != 5:
        raise HandshakeError(f"{talk.proxy} does not speak SOCKS5 (its answer starts with {version:#04x})")
    if method == 2 and credentials:
        user, password = (proxy.username or "").encode(), (proxy.password or "").encode()
        step = "the SOCKS5 username and password"
        talk.send(bytes((1, len(user))) + user + bytes((len(password),)) + password, step)
        try:
            refused = talk.recv_exactly(2, step)[1] != 0
        except ConnectionAbortedError:
            raise
        except ConnectionError:  # some proxies (pproxy) close instead of answering a refusal
            raise HandshakeError(f"{talk.proxy} closed the connection on receiving the username and password: "
                                 "taken as a refusal") from None
        if refused:
            raise HandshakeError(f"{talk.proxy} refused the username and password")
    elif method != 0:
        needs = "" if credentials else ": it needs a username and password (socks5://user:password@host:port)"
        raise HandshakeError(f"{talk.proxy} accepts none of the authentication methods offered{needs}")
    step = f"SOCKS5 CONNECT {host_port(host, port)}"
    talk.send(b"\x05\x01\x00" + _socks_address(host, port, remote_dns=proxy.scheme == "socks5h") + port.to_bytes(2, "big"), step)
    _, reply, _, kind = talk.recv_exactly(4, step)
    if reply != 0:
        meaning, fatal = _SOCKS_REPLIES.get(reply, (f"reply {reply:#04x}", False))
        message = f"{talk.proxy} could not connect to {host_port(host, port)}: {meaning}"
        raise HandshakeError(message) if fatal else ConnectError(message)
    size = {1: 4, 4: 16}.get(kind)
    if size is None:
        size = talk.recv_exactly(1, step)[0] if kind == 3 else -1
    if size < 0:
        raise HandshakeError(f"{talk.proxy} answered with an unknown address type {kind:#04x}")
    talk.recv_exactly(size + 2, step)  # the address and port the proxy connected from: not needed


def _socks_address(host: str, port: int, remote_dns: bool) -> bytes:
    """RFC 1928 §5's DST.ADDR for ``host``: an address as such, a name as a name
    (``remote_dns``) or as the first address it resolves to here."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if remote_dns:
            name = host.encode("idna")
            if len(name) > 255:
                raise ConnectError(f"the host name {host[:60]!r}... is too long for SOCKS5 (255 bytes at most)") from None
            return bytes((3, len(name))) + name
        address = ipaddress.ip_address(socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][4][0])
    return (b"\x01" if address.version == 4 else b"\x04") + address.packed
