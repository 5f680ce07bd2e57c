"""`Proxy`: a fault-injecting TCP relay on 127.0.0.1 between a client and a server;
`ConnectProxy`: an HTTP CONNECT proxy on 127.0.0.1, for ``http_proxy``.

`Proxy` forwards bytes untouched until told otherwise: `cut` ends every relayed
connection at once, `stall` stops relaying without closing anything (a
half-open peer: the client's pings go unanswered), `refuse` closes the
listening socket so new connections are refused until `accept`, and
`close_with` sends the client a WebSocket close frame with a chosen code.
"""

from __future__ import annotations

import socket
import struct
import threading
from typing import List, Optional, Tuple

from .raw import CLOSE, frame, read_request


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.threads: List[threading.Thread] = []
        self.closed = False
        self.pumps_done = 0

    def close(self) -> None:
        self.closed = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Proxy:
    """Relay 127.0.0.1:``port`` to ``target``; every thread it starts is joined by `close`."""

    def __init__(self, target: Tuple[str, int], port: int = 0) -> None:
        self.target = target
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._pairs: List[_Pair] = []
        self._threads: List[threading.Thread] = []
        self._listener: Optional[socket.socket] = None
        self._accept_thread: Optional[threading.Thread] = None
        self.accepted = 0
        self.port = port
        self.accept()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def __enter__(self) -> "Proxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- listening --------------------------------------------------------
    def accept(self) -> None:
        """(Re)open the listening socket on the same port."""
        if self._listener is not None:
            return
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,), name="wsbridge-proxy-accept",
                                               daemon=True)
        self._accept_thread.start()

    def refuse(self) -> None:
        """Close the listening socket: new connections are refused until `accept`."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(10)
            self._accept_thread = None

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                self.accepted += 1
                self._pairs.append(pair)
                for src, dst, name in ((client, upstream, "up"), (upstream, client, "down")):
                    thread = threading.Thread(target=self._pump, args=(pair, src, dst), name=f"wsbridge-proxy-{name}",
                                              daemon=True)
                    pair.threads.append(thread)
                    self._threads.append(thread)
                    thread.start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                if pair.closed:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            with self._lock:
                pair.pumps_done += 1
                finished = pair.pumps_done == 2
                if finished:  # both directions are over: the pair's sockets and threads go
                    self._pairs.remove(pair)
                    for thread in pair.threads:
                        if thread is not threading.current_thread() and thread in self._threads:
                            self._threads.remove(thread)
            if finished:
                pair.closed = True
                for sock in (pair.client, pair.upstream):
                    sock.close()

    # -- faults -------------------------------------------------------------
    @property
    def connections(self) -> int:
        with self._lock:
            return sum(1 for pair in self._pairs if not pair.closed)

    def _live_pairs(self) -> List[_Pair]:
        with self._lock:
            return [pair for pair in self._pairs if not pair.closed]

    def _cut(self, pairs: List[_Pair]) -> int:
        for pair in pairs:
            pair.close()
        self._flowing.set()  # release pumps held by a stall so they see the cut
        return len(pairs)

    def cut(self) -> int:
        """End every relayed connection now (both sides see the TCP close)."""
        return self._cut(self._live_pairs())

    def stall(self) -> None:
        """Stop relaying in both directions, closing nothing (half-open)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close_with(self, code: int, reason: str = "") -> None:
        """Send every client a close frame with ``code``, then cut."""
        payload = struct.pack("!H", code) + reason.encode("utf-8")
        pairs = self._live_pairs()
        for pair in pairs:
            pair.closed = True  # stop the pumps relaying anything after the close frame
            try:
                pair.client.sendall(frame(payload, CLOSE))
            except OSError:
                pass
        self._cut(pairs)

    def close(self) -> None:
        """Stop listening, cut everything, join every thread."""
        self.refuse()
        self.cut()
        with self._lock:
            threads = list(self._threads)
            pairs = list(self._pairs)
        for thread in threads:
            thread.join(10)
        for pair in pairs:
            for sock in (pair.client, pair.upstream):
                sock.close()


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 (``url``: for ``http_proxy``) that tunnels
    to 127.0.0.1 only; every thread it starts is joined by `close`.

    Each CONNECT head received is kept in ``requests`` (`wait_requests` waits for
    them). ``answer=False`` makes a proxy that reads each CONNECT and never
    answers, holding the connection open until `close` (a stalled proxy)."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.requests: List[bytes] = []
        self._cond = threading.Condition()
        self._socks: List[socket.socket] = []  # every socket accepted or opened, closed by `close`
        self._threads: List[threading.Thread] = []
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="wsbridge-connect-proxy", daemon=True)
        self._accept_thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ConnectProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_requests(self, n: int, timeout: float = 10.0) -> List[bytes]:
        """The first ``n`` CONNECT heads, once they came (`TimeoutError` after ``timeout`` s)."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= n, timeout):
                raise TimeoutError(f"{n} CONNECT request(s) did not come to the proxy (got {len(self.requests)})")
            return self.requests[:n]

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._cond:
                self._socks.append(conn)
            try:
                self._serve(conn)
            except OSError:
                pass

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        head = read_request(conn) or b""
        conn.settimeout(None)
        with self._cond:
            self.requests.append(head)
            self._cond.notify_all()
        if not self.answer or not head.startswith(b"CONNECT "):
            return  # held open, unanswered, until close()
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        if host != "127.0.0.1":
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        try:
            upstream = socket.create_connection((host, int(port)), timeout=10)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            return
        upstream.settimeout(None)
        with self._cond:
            self._socks.append(upstream)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for src, dst in ((conn, upstream), (upstream, conn)):
            thread = threading.Thread(target=self._pump, args=(src, dst), name="wsbridge-connect-proxy-pump", daemon=True)
            with self._cond:
                self._threads.append(thread)
            thread.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        """Stop listening, cut every connection, join every thread."""
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        self._accept_thread.join(10)
        with self._cond:
            socks, threads = list(self._socks), list(self._threads)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(10)
        for sock in socks:
            sock.close()
