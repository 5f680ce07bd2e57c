"""TLS to the server inside the TLS connection to an ``https://`` proxy.

``ssl.SSLContext.wrap_socket`` needs a kernel socket, and the tunnel through an
``https://`` proxy is itself a TLS socket, so the server's TLS runs here as an
``ssl.SSLObject`` between two memory buffers: ciphertext for the server goes
out through the proxy's TLS socket, and what that socket yields goes in.
`NestedTLS` looks like a TLS socket to everything above it (websocket-client's
upgrade, `wsbridge.wire.buffered`, the writers), with the same timeout and
retry rules: a ``send`` that timed out is called again with the same data,
and a ``recv`` waits within the socket's timeout.

Only one thread reads (the connection's reader); writers may be other threads.
``_state`` guards the ``SSLObject`` and its buffers (memory work only, never
held across the network); ``_writing`` keeps ciphertext going out whole and in
the order it was made. Records the reader must answer (a TLS 1.3 key update)
go out at once when no write is under way, else with the write under way.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any, Dict, Optional, Union

from .wsclient import ssl_socket

CHUNK = 256 * 1024
"""Most ciphertext taken from the proxy's socket in one call."""

PIECE = 16 * 1024
"""Most plaintext one ``send`` takes: one TLS record."""

Buffer = Union[bytes, bytearray, memoryview]


def server_context(sslopt: Dict[str, Any], hostname: str) -> "tuple[ssl.SSLContext, Optional[str]]":
    """The context (and name to verify) websocket-client would build from ``sslopt``
    for ``hostname``: its own wrapping is asked, on a socket never connected, so
    ``sslopt`` keeps the meaning websocket-client documents (CA bundle from its
    environment variable, ``server_hostname``, ``check_hostname`` ...)."""
    probe = socket.socket()
    try:
        wrapped = ssl_socket(probe, {**sslopt, "do_handshake_on_connect": False}, hostname)
        try:
            return wrapped.context, wrapped.server_hostname
        finally:
            wrapped.close()
    finally:
        probe.close()


class NestedTLS:
    """A TLS connection carried by another TLS socket (``outer``), socket-like."""

    def __init__(self, outer: ssl.SSLSocket, context: ssl.SSLContext, server_hostname: Optional[str]) -> None:
        self.outer = outer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._in, self._out, server_side=False, server_hostname=server_hostname)
        self._state = threading.Lock()  # the SSLObject, both BIOs and _plain
        self._writing = threading.Lock()  # _backlog and _owed: ciphertext leaves in order
        self._plain = b""  # decrypted ahead by `pending`; owned by the reader thread
        self._ahead: Optional[Union[bytes, OSError]] = None  # the end (b"") or error `pending` met; reader's
        self._backlog = b""  # ciphertext the proxy's socket has not taken yet
        self._owed = 0  # plaintext bytes whose ciphertext is in _backlog, owed to a retried send

    # -- the handshake ------------------------------------------------------------
    def do_handshake(self) -> None:
        """Run the server's TLS handshake through the tunnel, within the socket's timeout
        per step (`socket.timeout` when one runs out)."""
        while True:
            with self._state:
                try:
                    self._tls.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
            with self._writing:
                self._drain()
            if done:
                return
            self._fill()

    # -- reading (the reader thread) ------------------------------------------------
    def recv(self, n: int = CHUNK, flags: int = 0) -> bytes:
        if flags:
            raise ValueError("flags are not supported on TLS inside TLS")
        if self._plain:
            ahead, self._plain = self._plain[:n], self._plain[n:]
            return ahead
        if self._ahead is not None:  # met by `pending` and kept: the stream's end, or its error
            if isinstance(self._ahead, BaseException):
                raise self._ahead
            return b""
        while True:
            data: Optional[bytes]
            with self._state:
                try:
                    data = self._tls.read(n)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""  # the server's TLS ended (or the tunnel did)
                answer = self._out.pending > 0
            if answer:
                self._answer()
            if data is not None:
                return data
            self._fill()

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        view = memoryview(buffer).cast("B")
        data = self.recv(min(nbytes, len(view)) if nbytes else len(view), flags)
        view[: len(data)] = data
        return len(data)

    def pending(self) -> int:
        """Plaintext a ``recv`` returns without waiting for the network: what is decrypted
        ahead, plus any whole record the buffers already hold (decrypted now, since a
        ``select`` on the socket cannot see it). Non-zero too when what they hold is the
        end of the stream or a bad record: ``recv`` then returns or raises it at once."""
        if self._plain or self._ahead is not None:
            return len(self._plain) or 1
        with self._state:
            waiting = self._tls.pending()
            if waiting:
                return waiting
            try:
                while self.outer.pending():
                    self._in.write(self.outer.recv(self.outer.pending()))
                if not self._in.pending:
                    return 0
                self._plain = self._tls.read(CHUNK)
                if not self._plain:  # the far end's close_notify
                    self._ahead = b""
                    return 1
            except ssl.SSLWantReadError:
                return 0  # a part of a record only: the rest is on its way
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._ahead = b""  # the end, read ahead: the next `recv` returns it at once
                return 1
            except OSError as exc:  # a bad record: the next `recv` raises it at once
                self._ahead = exc
                return 1
        return len(self._plain)

    def _fill(self) -> None:
        """Wait (within the socket's timeout) for ciphertext from the tunnel."""
        data = self.outer.recv(CHUNK)
        with self._state:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()

    def _answer(self) -> None:
        """Send what reading produced (a TLS 1.3 key update), unless a write is under
        way: that one sends it after its own (`_drain` takes all there is). A socket
        that fails here fails the next write too: the reader goes on to what it read."""
        if self._writing.acquire(blocking=False):
            try:
                self._drain()
            except OSError:
                pass  # what is left stays in _backlog, in order
            finally:
                self._writing.release()

    # -- writing (any thread) ---------------------------------------------------------
    def send(self, data: Buffer, flags: int = 0) -> int:
        """Take up to `PIECE` bytes of ``data``; they are on their way once this returns.
        On `socket.timeout` call again with the same data (as for ``ssl.SSLSocket``):
        what was taken then counts once."""
        if flags:
            raise ValueError("flags are not supported on TLS inside TLS")
        with self._writing:
            if self._backlog:
                self._drain()
            owed, self._owed = self._owed, 0  # (the reader's `_answer` may have drained it meanwhile)
            if owed:
                return owed
            with self._state:
                taken = self._tls.write(bytes(memoryview(data)[:PIECE]))
            self._owed = taken
            self._drain()
            self._owed = 0
        with self._state:
            left = self._out.pending > 0  # the reader's answer, made after our last look
        if left:
            self._answer()
        return taken

    def sendall(self, data: Buffer, flags: int = 0) -> None:
        view = memoryview(data).cast("B")
        sent = 0
        while sent < len(view):
            sent += self.send(view[sent:], flags)

    def _drain(self) -> None:
        """Hand every byte of ciphertext to the proxy's socket, in order (``_writing`` held)."""
        while True:
            with self._state:
                self._backlog += self._out.read()
            if not self._backlog:
                return
            while self._backlog:
                sent = self.outer.send(self._backlog)
                self._backlog = self._backlog[sent:]

    # -- everything else is the proxy socket's ------------------------------------------
    def settimeout(self, value: Optional[float]) -> None:
        self.outer.settimeout(value)

    def gettimeout(self) -> Optional[float]:
        return self.outer.gettimeout()

    def setblocking(self, flag: bool) -> None:
        self.outer.setblocking(flag)

    def fileno(self) -> int:
        return self.outer.fileno()

    def shutdown(self, how: int) -> None:
        self.outer.shutdown(how)

    def close(self) -> None:
        self.outer.close()

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._tls.getpeercert(binary_form)

    def version(self) -> Optional[str]:
        return self._tls.version()

    def cipher(self) -> Any:
        return self._tls.cipher()

    @property
    def server_hostname(self) -> Optional[str]:
        return self._tls.server_hostname

    def __getattr__(self, name: str) -> Any:
        return getattr(self.outer, name)


TLS_SOCKETS = (ssl.SSLSocket, NestedTLS)
"""The socket types whose bytes go through TLS (never read from the descriptor)."""
