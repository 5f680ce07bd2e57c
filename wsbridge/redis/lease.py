"""`Lease`: one holder at a time for a feed, across processes and machines.

A Redis key with a time to live: the holder's random token is its value.
``acquire`` sets it only where it is missing (``SET NX PX``); the holder
renews it every third of the TTL from a thread of its own; ``release``
deletes it (only if still its own). When the holder dies, the key expires
and a waiting process takes it within one TTL plus one poll interval.

A renewal that finds the key expired but free (Redis was unreachable for
longer than the TTL, or restarted without it) takes it again: nobody else
took over, so the holder carries on. Only a renewal that finds another
holder's token means the lease is lost.

A lease alone cannot stop a holder that was paused past its TTL (a stopped
VM, a long GC) from writing once more after a successor took over; so the
writer checks the token inside Redis with every write (`RedisStreamStore`
does, in its append script): a stale holder's write is refused.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from typing import Any, Callable, Optional, cast

from ..errors import LeaseLost
from .conn import REDIS_ERRORS, connect, load_redis

log = logging.getLogger("wsbridge")

_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if holder == false then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """A lease on ``key`` in the Redis at ``url``, held for ``ttl`` seconds at a time.

    ``on_lost`` is called (from the renewing thread) when a renewal finds the
    lease gone: the holder must stop writing at once.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        ttl: float = 5.0,
        poll: Optional[float] = None,
        on_lost: Optional[Callable[[], Any]] = None,
        owner: Optional[str] = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError("the lease ttl must be > 0")
        load_redis()
        self.url, self.key, self.ttl = url, key, ttl
        self.poll = poll if poll is not None else min(1.0, ttl / 3)
        self.on_lost = on_lost
        self.token = f"{owner or socket.gethostname()}:{secrets.token_hex(8)}"
        self._redis = connect(url)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._held = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __repr__(self) -> str:
        return f"Lease({self.key!r}, held={self.held})"

    @property
    def held(self) -> bool:
        return self._held.is_set()

    def holder(self) -> Optional[str]:
        """The token of the current holder (None: nobody)."""
        value = cast(Optional[bytes], self._redis.get(self.key))  # see connect: replies are bytes
        return value.decode() if value is not None else None

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; start renewing it."""
        if self.held:
            return True
        if not self._redis.set(self.key, self.token, nx=True, px=int(self.ttl * 1000)):
            return False
        self._held.set()
        self._stop.clear()
        self._thread = threading.Thread(target=self._keep, name=f"wsbridge-lease-{self.key}", daemon=True)
        self._thread.start()
        log.info("took the lease %s (%s)", self.key, self.token)
        return True

    def acquire(
        self,
        timeout: Optional[float] = None,
        stop: Optional[threading.Event] = None,
        on_unreachable: Optional[Callable[[BaseException], Any]] = None,
    ) -> bool:
        """Wait until the lease is ours (True), ``timeout`` passed or ``stop`` was set (False).
        Redis being unreachable counts as waiting; ``on_unreachable(error)`` hears
        the first failure of each outage."""
        deadline = None if timeout is None else time.monotonic() + timeout
        announced = unreachable = False
        while True:
            try:
                if self.try_acquire():
                    return True
                unreachable = False
                if not announced:
                    log.info("waiting for the lease %s, held by %s", self.key, self.holder())
                    announced = True
            except REDIS_ERRORS as exc:
                if not unreachable:
                    log.warning("cannot reach Redis for the lease %s (retrying): %s", self.key, exc)
                    if on_unreachable is not None:
                        on_unreachable(exc)
                unreachable = True
            wait = self.poll if deadline is None else min(self.poll, deadline - time.monotonic())
            if wait <= 0 or (stop or self._stop).wait(wait):
                return False

    def _keep(self) -> None:
        """Renew every third of the TTL; report a loss (another holder's token in the key)."""
        interval = self.ttl / 3
        while not self._stop.wait(interval):
            try:
                ok = bool(self._renew(keys=[self.key], args=[self.token, int(self.ttl * 1000)]))
            except REDIS_ERRORS as exc:
                log.warning("could not renew the lease %s (trying again): %s", self.key, exc)
                continue
            if ok:
                continue
            self._held.clear()
            log.error("lost the lease %s", self.key)
            if self.on_lost is not None:
                self.on_lost()
            return

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease is held."""
        if not self.held:
            raise LeaseLost(f"the lease {self.key} is not held by this process")

    def release(self) -> None:
        """Stop renewing and give the lease up (if still ours), so a standby takes it at once."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
        if self._held.is_set():
            self._held.clear()
            try:
                self._release(keys=[self.key], args=[self.token])
            except REDIS_ERRORS as exc:
                log.warning("could not release the lease %s (it expires by itself): %s", self.key, exc)

    def close(self) -> None:
        self.release()
        self._redis.close()

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
