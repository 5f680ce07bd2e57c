"""`Bridge`: receive one WebSocket feed and append it to a Redis Stream, with failover.

Run one bridge per feed on each of several machines. They share a `Lease`
in Redis: the holder receives and appends, the others wait. When the holder
dies its lease expires, a standby takes it, opens the `RedisStreamStore`
and starts a `Client` from the positions stored there, so the resume request
asks the server for exactly what the stream is missing. The store's append
script drops anything at or below the stored position and refuses writes
from a process that no longer holds the lease: nothing is lost (as long as
the feed server keeps what was asked for) and nothing is appended twice.

A bridge that finds its lease held by another process (it was cut off from
Redis for longer than the TTL, and a standby took over) stops its client
and becomes a standby itself.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

from ..client import Client
from ..errors import LeaseLost, StoreError
from ..redact import redact_url
from .conn import feed_key
from .lease import Lease
from .store import RedisStreamStore

log = logging.getLogger("wsbridge")


class Bridge:
    """Append the feed at ``url`` to the Redis at ``redis_url`` as ``feed``.

    ``lease_ttl``: seconds a dead holder keeps the lease (a standby takes over
    within about that); ``maxlen`` and ``buffer_size`` go to the
    `RedisStreamStore`; other keyword arguments to the `Client` (``codec``,
    ``headers``, ``backoff``, ...). `run` blocks until `stop`;
    ``on_event(text)`` hears what a person would want to see (the lease taken
    or lost, where the feed resumes from).
    """

    def __init__(
        self,
        url: str,
        redis_url: str,
        *,
        feed: str = "default",
        prefix: str = "wsbridge",
        maxlen: Optional[int] = None,
        buffer_size: int = 100_000,
        lease_ttl: float = 5.0,
        on_event: Optional[Callable[[str], Any]] = None,
        **client_options: Any,
    ) -> None:
        self.url, self.redis_url, self.feed, self.prefix = url, redis_url, feed, prefix
        self.maxlen, self.buffer_size = maxlen, buffer_size
        self.client_options = client_options
        self.on_event = on_event if on_event is not None else (lambda text: log.info("bridge %s: %s", feed, text))
        self.lease = Lease(redis_url, feed_key(prefix, feed, "lease"), ttl=lease_ttl, on_lost=self._lost)
        self.client: Optional[Client] = None
        self.store: Optional[RedisStreamStore] = None
        self.terms = 0
        """Times this bridge took the lease."""
        self._stop = threading.Event()
        self._wake = threading.Event()  # the term ends: stop, the lease lost, or the client gave up
        self._lease_lost = threading.Event()
        self._gave_up = threading.Event()

    def __repr__(self) -> str:
        return f"Bridge({redact_url(self.url)!r} -> {redact_url(self.redis_url)!r}, feed={self.feed!r})"

    def run(self) -> None:
        """Wait for the lease, bridge while holding it, wait again after losing it; until `stop`."""
        try:
            while not self._stop.is_set():
                self.on_event(f"waiting for the lease {self.lease.key}")
                if not self.lease.acquire(stop=self._stop, on_unreachable=self._unreachable):
                    break
                self._term()
                if self._gave_up.is_set():
                    break
        finally:
            self.lease.close()

    def _term(self) -> None:
        """One term as the holder: a store fenced by the lease, a client resuming from it."""
        self.terms += 1
        self._wake.clear()
        self._lease_lost.clear()
        store = RedisStreamStore(self.redis_url, feed=self.feed, prefix=self.prefix, maxlen=self.maxlen,
                                 buffer_size=self.buffer_size, lease=self.lease)
        options = dict(self.client_options)
        options.setdefault("name", f"wsbridge-bridge-{self.feed}")
        client = Client(self.url, store=store, pull_buffer=0, **options)
        client.signals.error.connect(self._on_error)
        client.signals.gave_up.connect(self._on_gave_up)
        self.store, self.client = store, client
        try:
            client.start()
        except Exception as exc:  # the store could not be opened: Redis went away again
            self.on_event(f"cannot start: {exc}")
            self.lease.release()
            self._stop.wait(1.0)
            return
        try:
            positions = store.positions()
            where = "resuming after " + ", ".join(
                f"seq {seq}" if name is None else f"stream {name!r} seq {seq}"
                for name, seq in sorted(positions.items(), key=lambda kv: (kv[0] is not None, kv[0] or ""))
            ) if positions else "starting from the beginning"
        except StoreError as exc:
            where = f"resuming from the stored positions (not readable just now: {exc})"
        self.on_event(f"took the lease; {where}")
        self._wake.wait()
        lost = self._lease_lost.is_set()
        client.stop()
        self.lease.release()
        if lost:
            self.on_event("lost the lease to another bridge; standing by")
        elif self._gave_up.is_set():
            self.on_event(f"the client gave up: {client.last_error}")

    def _unreachable(self, error: BaseException) -> None:
        self.on_event(f"cannot reach Redis at {redact_url(self.redis_url)} ({error}); retrying")

    @property
    def gave_up(self) -> bool:
        """Did the client give up (a refusal retrying will not fix)?"""
        return self._gave_up.is_set()

    def _on_gave_up(self, sender: Any, **kw: Any) -> None:
        self._gave_up.set()
        self._wake.set()

    def _on_error(self, sender: Any, error: BaseException, **kw: Any) -> None:
        if isinstance(error, LeaseLost):
            self._lost()

    def _lost(self) -> None:
        self._lease_lost.set()
        self._wake.set()

    def stop(self) -> None:
        """End `run` (from another thread or a signal handler): the client stops, the lease is released."""
        self._stop.set()
        self._wake.set()
