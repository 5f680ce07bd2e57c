"""Replay: a stored feed played back through a client, as if it came from the socket.

`Replay` runs on a thread of its own (it stands in for the reader and the
supervisor of a client that never connects): it reads a store's messages in
order (`Store.iter_history`: a read-only connection for `SQLiteStore`, plain
reads for `RedisStreamStore`; no lock taken, nothing written, no mark moved, so a
live client may be writing the store meanwhile), decodes each again with the
client's codec when the store kept its frame (``raw``; else the stored message as
it is), and queues it for the dispatcher as a `Stored` item: the sequence tracker
and the client's own store are skipped (the feed was tracked when it was
recorded), the subscribers, views and pull buffer get it as they would a live
message. Pacing: each message is queued no sooner than its recorded
``received_at`` (relative to the first) divided by ``speed``; ``speed=None`` queues
as fast as the subscribers take them (the queue's bound holds the reader back,
as TCP would). Its counters are written by its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Collection, Iterable, List, Optional

from ..codecs import Codec
from ..message import Message, weight
from ..tracking.store import Store
from .delivery import Stored
from .dispatch import Dispatcher
from .intake import decode_error

log = logging.getLogger("wsbridge")


def check_speed(speed: Optional[float]) -> Optional[float]:
    """``speed`` as a replay takes it: a number > 0 (1.0: the recorded pace) or None
    (as fast as possible); a `ValueError` otherwise."""
    if speed is None:
        return None
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or not speed > 0 or speed == float("inf"):
        raise ValueError(f"speed is a number > 0 (1.0: the recorded pace, 10: ten times faster) or None "
                         f"(as fast as possible), not {speed!r}")
    return float(speed)


class Replay:
    """A stored feed played back through a client (see the module's docs); made by
    `Client.replay`. `wait` for its end; ``fed`` counts the messages queued."""

    def __init__(
        self,
        store: Store,
        codec: Codec,
        dispatcher: Dispatcher,
        *,
        speed: Optional[float],
        types: Optional[Collection[str]],
        since: Optional[float],
        stopping: threading.Event,
        report: Callable[..., None],
        on_end: Callable[[], None],
        name: str,
    ) -> None:
        self.store = store
        self.speed = check_speed(speed)
        self.types = frozenset(types) if types is not None else None
        self.since = since
        self._codec = codec
        self._dispatcher = dispatcher
        self._stopping = stopping
        self._report = report
        self._on_end = on_end
        self.fed = 0
        """Messages queued for the subscribers (the replay's thread writes it)."""
        self.started: Optional[float] = None
        """`time.monotonic` at which the first message was due: message ``m`` is queued
        no sooner than ``started + (m.received_at - first.received_at) / speed``."""
        self.error: Optional[BaseException] = None
        """Why reading the store failed (None: it did not)."""
        self.thread = threading.Thread(target=self._run, name=f"{name}-replay", daemon=True)

    def __repr__(self) -> str:
        return f"<wsbridge.Replay of {self.store!r}: {self.fed} message(s), {'done' if self.done else 'running'}>"

    @property
    def done(self) -> bool:
        """True once the replay ended (every message delivered, or the client stopped)."""
        return self.thread.ident is not None and not self.thread.is_alive()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until every message was delivered and the client stopped (or was
        stopped, or reading the store failed: `error`); returns whether that happened
        within ``timeout`` seconds. A frame the codec cannot decode is reported on
        ``error`` (context ``"decode"``, with its bytes) and skipped, as a live one is."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _messages(self) -> Iterable[Message]:
        """The stored messages, decoded again where the store kept their frames."""
        codec = self._codec
        for stored in self.store.iter_history(since=self.since):
            raw = stored.raw
            if not isinstance(raw, bytes):
                yield stored
                continue
            try:
                decoded: List[Message] = codec.decode(raw, False, stored.received_at)  # a JSON text frame
            except Exception as exc:  # the client's codec reads it otherwise than the recording one, or fails
                self._report(decode_error(codec, exc, raw), "decode", frame=raw)  # skipped, as a live frame is
                continue
            yield from decoded

    def _run(self) -> None:
        dispatcher, stopping, speed, types = self._dispatcher, self._stopping, self.speed, self.types
        first: Optional[float] = None
        try:
            for message in self._messages():
                if stopping.is_set():
                    return
                if types is not None and message.type not in types:
                    continue
                at = message.received_at
                if speed is not None and at is not None:
                    if first is None:
                        first, self.started = at, time.monotonic()
                    assert self.started is not None
                    delay = self.started + (at - first) / speed - time.monotonic()
                    if delay > 0:
                        dispatcher.wake()  # what is queued goes out while this one waits for its time
                        if stopping.wait(delay):
                            return
                dispatcher.put(Stored(None, message), weight(message))
                self.fed += 1
                if speed is not None:
                    dispatcher.wake()
        except Exception as exc:  # the store cannot be read (gone, not a store, Redis away)
            self.error = exc
            log.error("replay of %r failed after %d message(s): %s", self.store, self.fed, exc)
            self._report(exc, "replay")
        finally:
            dispatcher.wake()
            self._on_end()
