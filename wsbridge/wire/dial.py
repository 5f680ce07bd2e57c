"""Open the TCP (and TLS) connection ourselves, within a deadline.

websocket-client opens its socket with a process-global timeout and keeps it
out of reach until ``connect`` returns: a SYN that is never answered holds
the reader thread for the kernel's whole retry schedule (about two minutes on
Linux), and nothing can cut it short, so ``stop()`` could not join that
thread. `open_socket` dials instead, bounded by the attempt's deadline, and
hands each socket to ``adopt`` the moment it exists, so another thread can
shut it down in any phase (a shutdown wakes a pending ``connect``). The result
goes to websocket-client as a *prepared socket* for the HTTP upgrade.

TLS is websocket-client's own wrapping (same ``sslopt`` keys, same
verification defaults), with the handshake run here so the deadline and
``adopt`` cover it too. A ``wss://`` server behind an ``https://`` proxy gets
its TLS inside the proxy's (`wsbridge.wire.nested_tls`), from the same context.

Through a proxy (`wsbridge.wire.proxies`: the client's ``proxy``, else the
environment's, minus ``no_proxy``) the proxy is dialled here too, TLS set up
with it for an ``https://`` proxy, and the tunnel opened (HTTP CONNECT or
SOCKS5) under the same deadline and abort. So websocket-client never dials,
and wsbridge's upgrade checks (`wsbridge.wire.handshake`) and fast read path
apply to every connection, proxied or not.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Optional, Union

import websocket

from .nested_tls import NestedTLS, server_context
from .proxies import ProxyURL, host_port, remaining, tunnel
from .wsclient import parse_url, ssl_socket  # TLS wrapping, so sslopt means what websocket-client documents

Adopt = Callable[[socket.socket], None]

_TRY_NEXT = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})

PROXY_TLS_KEYS = ("ca_certs", "ca_cert_path", "cert_reqs", "check_hostname")
"""The ``sslopt`` keys that also verify an ``https://`` proxy's certificate (the
client certificate and the server's name are the server's alone)."""


def open_socket(
    url: str, sslopt: Optional[Dict[str, Any]], deadline: float, adopt: Adopt, aborted: threading.Event,
    proxy: Optional[ProxyURL],
) -> Union[socket.socket, NestedTLS]:
    """A connected (and, for ``wss://``, TLS-established) socket to ``url``'s host,
    through ``proxy`` if given (see `wsbridge.wire.proxies.choose_proxy`).

    Each address the name resolves to is tried in turn, as websocket-client
    does; every step is bounded by ``deadline`` (a `time.monotonic` value),
    and the socket keeps the remaining time as its timeout for the HTTP
    upgrade. Raises `TimeoutError` naming the step that ran out of time.

    To abort, set ``aborted``, then shut down the adopted socket: a shutdown
    wakes a pending connect (or a read of the proxy's answer), and one that
    came before the connect started is seen through ``aborted``.
    """
    hostname, port, _, secure = parse_url(url)
    where = host_port(hostname, port)
    sock: Union[socket.socket, NestedTLS]
    sock = _tcp(proxy.host, proxy.port, deadline, adopt, aborted) if proxy else _tcp(hostname, port, deadline, adopt, aborted)
    try:
        if proxy:
            if proxy.scheme == "https":
                tls = {key: sslopt[key] for key in PROXY_TLS_KEYS if sslopt and key in sslopt}
                sock = _tls(sock, tls, proxy.host, deadline, adopt, f"the proxy at {host_port(proxy.host, proxy.port)}")
            tunnel(sock, proxy, hostname, port, deadline, aborted)
        if secure and isinstance(sock, ssl.SSLSocket):  # an https:// proxy's tunnel
            sock = _nested_tls(sock, sslopt or {}, hostname, deadline, adopt, f"the server at {where}")
        elif secure:
            sock = _tls(sock, sslopt or {}, hostname, deadline, adopt, f"the server at {where}")
        sock.settimeout(remaining(deadline, f"WebSocket upgrade with {where}"))
        return sock
    except BaseException:
        sock.close()
        raise


def _tcp(host: str, port: int, deadline: float, adopt: Adopt, aborted: threading.Event) -> socket.socket:
    """A TCP connection to ``host``, trying each address it resolves to."""
    where = host_port(host, port)
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"{where}: name resolved to no address")
    last: Optional[OSError] = None
    for family, socktype, proto, _, address in infos:
        sock = socket.socket(family, socktype, proto)
        try:
            adopt(sock)
            for option in websocket.DEFAULT_SOCKET_OPTION:
                sock.setsockopt(*option)
            _connect(sock, address, deadline, aborted, where)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno not in _TRY_NEXT:
                raise
            last = exc
        except BaseException:
            sock.close()
            raise
    assert last is not None
    raise last


def _connect(sock: socket.socket, address: Any, deadline: float, aborted: threading.Event, where: str) -> None:
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        poller = select.poll()
        poller.register(sock, select.POLLOUT | select.POLLERR | select.POLLHUP)
        while True:
            if aborted.is_set():
                raise ConnectionAbortedError("connection attempt aborted")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"TCP connect to {where} not answered in time")
            if poller.poll(left * 1000):
                break
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, f"TCP connect to {where}: {os.strerror(err)}")
    if aborted.is_set():
        raise ConnectionAbortedError("connection attempt aborted")


def _tls(sock: socket.socket, sslopt: Dict[str, Any], hostname: str, deadline: float, adopt: Adopt, where: str) -> socket.socket:
    tls = ssl_socket(sock, {**sslopt, "do_handshake_on_connect": False}, hostname)
    try:
        adopt(tls)
        _handshake(tls, deadline, where)
    except BaseException:
        tls.close()
        raise
    return tls


def _nested_tls(outer: ssl.SSLSocket, sslopt: Dict[str, Any], hostname: str, deadline: float, adopt: Adopt,
                where: str) -> NestedTLS:
    """The server's TLS inside the proxy's (the tunnel ``outer`` carries it)."""
    context, server_hostname = server_context(sslopt, hostname)
    tls = NestedTLS(outer, context, server_hostname)
    adopt(tls)  # type: ignore[arg-type]  # shut down through the proxy's socket
    _handshake(tls, deadline, where)
    return tls


def _handshake(tls: Union[ssl.SSLSocket, NestedTLS], deadline: float, where: str) -> None:
    """Run ``tls``'s handshake within ``deadline``. A certificate that fails verification
    says whose it was (through an ``https://`` proxy there are two)."""
    tls.settimeout(remaining(deadline, f"TLS handshake with {where}"))
    try:
        tls.do_handshake()
    except socket.timeout:
        raise TimeoutError(f"TLS handshake with {where} not finished in time") from None
    except ssl.SSLCertVerificationError as exc:
        exc.verify_message = f"{exc.verify_message or exc.reason} (the certificate of {where})"
        raise
