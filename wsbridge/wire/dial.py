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
``adopt`` cover it too.

A proxy from the environment (``http_proxy`` for ws://, ``https_proxy`` for
wss://, minus ``no_proxy``: websocket-client's reading of them) is dialled
here too, and the tunnel opened with HTTP CONNECT, under the same deadline
and abort. So websocket-client never dials, and wsbridge's upgrade checks
(`wsbridge.wire.handshake`) apply to every connection, proxied or not.
"""

from __future__ import annotations

import base64
import errno
import os
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, Optional

import websocket

from ..errors import HandshakeError
from .handshake import HttpHead, parse_status
from .wsclient import get_proxy_info, parse_url, ssl_socket  # TLS wrapping, so sslopt means what websocket-client documents

Adopt = Callable[[socket.socket], None]

_TRY_NEXT = frozenset({errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL})


def open_socket(
    url: str, sslopt: Optional[Dict[str, Any]], deadline: float, adopt: Adopt, aborted: threading.Event
) -> socket.socket:
    """A connected (and, for ``wss://``, TLS-established) socket to ``url``'s host,
    through the environment's proxy if it names one for that host.

    Each address the name resolves to is tried in turn, as websocket-client
    does; every step is bounded by ``deadline`` (a `time.monotonic` value),
    and the socket keeps the remaining time as its timeout for the HTTP
    upgrade. Raises `TimeoutError` naming the step that ran out of time.

    To abort, set ``aborted``, then shut down the adopted socket: a shutdown
    wakes a pending connect (or a read of the proxy's answer), and one that
    came before the connect started is seen through ``aborted``.
    """
    hostname, port, _, secure = parse_url(url)
    where = _host_port(hostname, port)
    proxy_host, proxy_port, proxy_auth = get_proxy_info(hostname, secure)
    if proxy_host:
        proxy_port = int(proxy_port or 80)  # websocket-client's default for a proxy URL without a port
        sock = _tcp(proxy_host, proxy_port, deadline, adopt, aborted)
    else:
        sock = _tcp(hostname, port, deadline, adopt, aborted)
    try:
        if proxy_host:
            _tunnel(sock, where, proxy_auth, deadline, aborted, f"the proxy at {_host_port(proxy_host, proxy_port)}")
        if secure:
            sock = _tls(sock, sslopt or {}, hostname, deadline, adopt, where)
        sock.settimeout(_remaining(deadline, f"WebSocket upgrade with {where}"))
        return sock
    except BaseException:
        sock.close()
        raise


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tcp(host: str, port: int, deadline: float, adopt: Adopt, aborted: threading.Event) -> socket.socket:
    """A TCP connection to ``host``, trying each address it resolves to."""
    where = _host_port(host, port)
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


def _tunnel(sock: socket.socket, where: str, auth: Any, deadline: float, aborted: threading.Event, proxy: str) -> None:
    """Open an HTTP CONNECT tunnel to ``where`` through the proxy ``sock`` is
    connected to, as websocket-client would (Basic credentials from the proxy's
    URL), within ``deadline``. Any 2xx answer opens it (RFC 9110 §9.3.6); it is
    read whole and strictly, and nothing may follow it (the server has not yet
    been sent a byte, so it cannot have answered)."""
    request = f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n"
    if auth and auth[0]:
        credentials = auth[0] + (f":{auth[1]}" if auth[1] else "")
        request += f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
    what = f"{proxy}'s answer to CONNECT"
    head = HttpHead(what)
    data = bytearray()
    try:
        sock.settimeout(_remaining(deadline, f"CONNECT through {proxy}"))
        sock.sendall((request + "\r\n").encode())
        end = -1
        while end < 0:
            sock.settimeout(_remaining(deadline, f"CONNECT through {proxy}"))
            chunk = sock.recv(16384)
            if not chunk:
                if aborted.is_set():
                    raise ConnectionAbortedError("connection attempt aborted")
                raise ConnectionError(f"{proxy} closed the connection without answering CONNECT {where}")
            data += chunk
            end = head.head_end(data)
    except socket.timeout:
        raise TimeoutError(f"{proxy} did not answer CONNECT {where} in time") from None
    status = parse_status(bytes(data[: data.find(b"\n")]).rstrip(b"\r").decode("latin-1"), what)
    if not 200 <= status < 300:
        raise HandshakeError(f"{proxy} refused CONNECT {where} (HTTP {status})", fatal=False)
    if end < len(data):
        raise HandshakeError(f"{proxy} sent {len(data) - end} bytes after its answer to CONNECT, before the server could speak")


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
        tls.settimeout(_remaining(deadline, f"TLS handshake with {where}"))
        try:
            tls.do_handshake()
        except socket.timeout:
            raise TimeoutError(f"TLS handshake with {where} not finished in time") from None
    except BaseException:
        tls.close()
        raise
    return tls


def _remaining(deadline: float, step: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{step}: connect timeout reached")
    return left
