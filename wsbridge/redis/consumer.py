"""`StreamConsumer`: handle a feed's messages from Redis, as one of a consumer group.

Consumers of one group share the work (Redis hands each entry to one of
them); every group sees every entry. A consumer reads with ``XREADGROUP``,
delivers each message through the same blinker signals and ``on(type)`` API
as `Client` (on its own thread, in stream order), and acknowledges (``XACK``)
each batch after its subscribers returned. Entries a dead consumer left
unacknowledged for ``claim_idle`` seconds are claimed (``XAUTOCLAIM``) and
handled by a live one; on start a consumer first handles what is still
pending under its own name. So every message is handled at least once; a
consumer killed mid-batch repeats that batch's handled messages elsewhere.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, cast

from ..message import Message
from ..redact import redact_url
from ..runtime.backoff import Backoff
from ..runtime.reporting import Reporter
from ..runtime.signals import Signals, Subscribable, deliver
from .store import REDIS_ERRORS, connect, entry_message, feed_key

log = logging.getLogger("wsbridge")

Entry = Tuple[bytes, Dict[bytes, bytes]]


class StreamConsumer(Subscribable):
    """Consume the feed ``feed`` (written by a `RedisStreamStore` or a bridge) as ``name`` in ``group``.

    ``start`` creates the group if needed (reading from ``start_id``: "0",
    the whole stream, or "$", only what comes next) and runs the consumer
    thread; ``stop`` ends it after the batch in hand and joins it.
    ``batch``: entries per read; ``block``: seconds a read waits for new
    ones; ``claim_idle``: seconds an entry must have been pending under a
    dead consumer before it is claimed. A Redis that goes away is retried
    with ``backoff``.

    Signals (``consumer.signals``): ``message``, one per type via `on`,
    ``error`` (``context``: "subscriber", "redis", "decode"), ``connected``,
    ``disconnected``, ``stopped``.
    """

    def __init__(
        self,
        redis_url: str,
        feed: str,
        group: str,
        name: str,
        *,
        prefix: str = "wsbridge",
        start_id: str = "0",
        batch: int = 100,
        block: float = 1.0,
        claim_idle: float = 30.0,
        backoff: Optional[Backoff] = None,
    ) -> None:
        if batch < 1 or block <= 0 or claim_idle < 0:
            raise ValueError("batch >= 1, block > 0 and claim_idle >= 0 are required")
        self.redis_url, self.feed, self.group, self.name = redis_url, feed, group, name
        self.key = feed_key(prefix, feed, "messages")
        self.start_id, self.batch, self.block, self.claim_idle = start_id, batch, block, claim_idle
        self.backoff = backoff or Backoff(initial=0.1, max_delay=2.0)
        self.signals = Signals()
        self._redis = connect(redis_url)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._next_claim = 0.0
        self._reporter = Reporter(self, self.signals, self._emit, repr(self))
        self.handled = self.acked = self.claimed = 0
        """Counters: messages delivered, entries acknowledged, entries claimed from others."""

    def __repr__(self) -> str:
        return f"StreamConsumer({redact_url(self.redis_url)!r}, {self.feed!r}, group={self.group!r}, name={self.name!r})"

    def start(self) -> "StreamConsumer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"wsbridge-consumer-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish the message in hand, acknowledge it with those before it, end the thread
        and close; True when it ended. The rest of a batch read stays pending under this
        name: its next start handles them first, or another consumer claims them.
        May be called from a subscriber (it then only asks the thread to end)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        alive = thread is not None and thread.is_alive()
        if not alive:
            self._redis.close()
        return not alive

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "StreamConsumer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def threads(self) -> List[threading.Thread]:
        return [self._thread] if self._thread is not None else []

    # -- the consumer thread ------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        connected = False
        own_pending = True  # first, what this name left unacknowledged in an earlier run
        try:
            while not self._stop.is_set():
                try:
                    if not connected:
                        self._ensure_group()
                        connected, attempt = True, 0
                        self._emit(self.signals.connected, url=redact_url(self.redis_url))
                    if own_pending:
                        entries = self._read("0")
                        if not entries:
                            own_pending = False
                            continue
                    else:
                        entries = self._claim() or self._read(">")
                    self._handle(entries)
                except REDIS_ERRORS as exc:
                    own_pending = True  # a batch whose XACK failed is pending under our name: first again
                    if connected:
                        connected = False
                        self._emit(self.signals.disconnected, code=None, reason=None, error=exc)
                    attempt += 1
                    delay = self.backoff.delay(attempt) if self.backoff.allows(attempt) else self.backoff.max_delay
                    log.warning("%r: Redis unreachable (%s); retry in %.2f s", self, exc, delay)
                    self._report(exc, "redis")
                    self._stop.wait(delay)
        except Exception as exc:  # noqa: BLE001 - a bug here must be seen, not end the thread silently
            log.exception("%r: consumer failed", self)
            self._report(exc, "consumer")
        finally:
            self._emit(self.signals.stopped, replaced_by=None)

    def _ensure_group(self) -> None:
        import redis

        try:
            self._redis.xgroup_create(self.key, self.group, id=self.start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read(self, start: str) -> List[Entry]:
        block = None if start != ">" else int(self.block * 1000)
        reply = self._redis.xreadgroup(self.group, self.name, {self.key: start}, count=self.batch, block=block)
        return self._present(cast(List[Entry], reply[0][1]) if reply else [])  # type: ignore[index]

    def _present(self, entries: List[Entry]) -> List[Entry]:
        """Drop (and acknowledge) entries that were trimmed from the stream while pending: they come back empty."""
        gone = [e[0] for e in entries if not e[1]]
        if gone:
            self._redis.xack(self.key, self.group, *gone)
            return [e for e in entries if e[1]]
        return entries

    def _claim(self) -> List[Entry]:
        """Entries idle under another (dead) consumer for ``claim_idle`` s, checked at most every ``claim_idle / 2`` s."""
        now = time.monotonic()
        if now < self._next_claim:
            return []
        self._next_claim = now + max(0.05, self.claim_idle / 2)
        entries: List[Entry] = []
        cursor = "0-0"
        while True:
            reply = self._redis.xautoclaim(self.key, self.group, self.name, int(self.claim_idle * 1000),
                                           start_id=cursor, count=self.batch)
            cursor = reply[0]
            entries += self._present(reply[1])
            if cursor in (b"0-0", "0-0") or len(entries) >= self.batch:
                break
        if entries:
            self.claimed += len(entries)
            log.info("%r: claimed %d message(s) left pending by another consumer", self, len(entries))
            self._next_claim = 0.0  # there may be more
        return entries

    def _handle(self, entries: List[Entry]) -> None:
        """Deliver each entry's message, then acknowledge the batch."""
        signals = self.signals
        done: List[bytes] = []
        for entry_id, fields in entries:
            if self._stop.is_set():
                break  # the rest stay pending: this name's next start, or another consumer, takes them
            done.append(entry_id)
            try:
                message = entry_message(fields)
            except Exception as exc:  # noqa: BLE001 - a malformed entry is reported and acknowledged
                self._report(exc, "decode", entry=entry_id)
                continue
            signal = signals.types.get(message.type)
            if signal is not None and signal.receivers:
                deliver(signal, self, self._reporter.subscriber_failed, message=message)
            if signals.message.receivers:
                deliver(signals.message, self, self._reporter.subscriber_failed, message=message)
            self.handled += 1
        if done:
            self.acked += self._redis.xack(self.key, self.group, *done)

    # -- reporting (on this thread: a consumer's signals are sent where they happen) ----------
    def _emit(self, signal: Any, **kwargs: Any) -> None:
        deliver(signal, self, self._reporter.listener_failed, **kwargs)

    def _report(self, error: BaseException, context: str, **extra: Any) -> None:
        self._reporter.report(error, context, **extra)

    @property
    def errors(self) -> int:
        """Errors reported so far (on the ``error`` signal), subscribers' included."""
        return self._reporter.reported


__all__ = ["StreamConsumer", "Message"]
