"""`Blackhole`: a port on 127.0.0.1 whose TCP handshake is never answered.

A listening socket with a backlog of 0 whose one queued connection is never
accepted: the kernel then drops every further SYN, so a client's ``connect``
waits exactly as it would for a host that is down or firewalled, on
loopback, with no network namespace or root needed.
"""

from __future__ import annotations

import socket
from typing import Any


class Blackhole:
    """``url`` points at a port where connect attempts hang until they time out."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        # Fill the accept queue; from now on SYNs to the port go unanswered.
        self._filler = socket.create_connection(("127.0.0.1", self.port), timeout=5)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def close(self) -> None:
        self._filler.close()
        self._listener.close()

    def __enter__(self) -> "Blackhole":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
