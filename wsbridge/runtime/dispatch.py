"""Ordered hand-off from the reader thread to one dispatcher thread.

The reader appends to a deque (atomic, lock-free) without waking anyone and
calls `wake` once the socket has nothing more to read (or ``WAKE_EVERY``
items piled up), so a burst costs one wake-up, not one per message: on two
cores a futex wake and a GIL hand-off per frame cost more than the frame.
The dispatcher takes everything waiting as one batch.

Data is bounded, in items and in bytes: when either bound is reached, `put`
blocks the reader, which stops reading the socket, so TCP pushes back on the
server instead of memory growing. While it waits, `holding` is true, so the
supervisor does not take the silence for a dead peer. While the dispatcher
thread itself waits for what only the reader brings (a subscriber's request
waiting for its reply, see `unbounded`), the reader does not wait for room:
the queue goes over its bounds for that long. Control items
(lifecycle and error signals) go in the same order with `put_control`,
which never waits: a subscriber may stop the client or report an error
however full the queue is.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Deque, Iterator, List, NamedTuple, Optional

from ..message import OVERHEAD, Message
from ..message import weight as message_weight

log = logging.getLogger("wsbridge")

BATCH = 4096
WAKE_EVERY = 256


class Undecoded(NamedTuple):
    """A frame's data as it came, for the dispatcher to decode (`Delivery.handle`).

    Decoding on the dispatcher thread, just before delivery, lets a decoded message
    die young: one decoded by the reader waits in the queue for a GIL hand-off
    (hundreds of messages), long enough to survive into the collector's older
    generations, whose full collections then cost a nested-JSON feed a fifth of its
    time. Left undecoded, the queue holds bytes, which the collector does not track and
    the byte bound weighs exactly. Build with ``tuple.__new__(Undecoded, (...))``: the
    named constructor is a Python call per frame."""

    data: bytes
    binary: bool
    received_at: float


def weight(item: Any) -> int:
    """The bytes an item counts for against the byte bound: a message's (its frame data
    and the record's overhead, `message.weight`), or the ``size`` an item declares (a
    report that carries a frame)."""
    if item.__class__ is Undecoded:
        return OVERHEAD + len(item.data)
    message = item if item.__class__ is Message else getattr(item, "message", None)
    if message is None:
        return getattr(item, "size", 0)
    return message_weight(message)


def _weigh(batch: List[Any]) -> int:
    """`weight` of a whole batch (messages inline: this runs for every message)."""
    total = 0
    for item in batch:
        if item.__class__ is Undecoded:
            total += OVERHEAD + len(item[0])
        elif item.__class__ is Message:
            raw = item.raw
            total += OVERHEAD if raw is None else OVERHEAD + len(raw)
        else:
            total += weight(item)
    return total


class Dispatcher:
    """One thread that hands queued items, in order and in batches, to ``handle``.

    ``on_exit`` runs on the dispatcher thread as it ends (the client closes
    its store there: the thread that writes the store closes it).
    """

    def __init__(
        self,
        handle: Callable[[List[Any]], None],
        maxsize: int = BATCH,
        max_bytes: int = 4 * 1024 * 1024,
        name: str = "wsbridge-dispatcher",
        on_exit: Callable[[], None] = lambda: None,
    ) -> None:
        if maxsize < 1 or max_bytes < 1:
            raise ValueError("the dispatch queue's bounds must be >= 1")
        self._handle = handle
        self._on_exit = on_exit
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._queue: Deque[Any] = deque()
        self._in_bytes = 0  # written by the thread that puts data (the reader)
        self._out_bytes = 0  # written by the dispatcher thread
        self._taken = 0  # what the batch in hand weighs (dispatcher thread)
        self._wake = threading.Event()
        self._idle = False
        self._space = threading.Event()
        self._space_wanted = False
        self._closing = False
        self._released = False
        self.cut = False
        """Set by `stop` once its time is up: from then on data items are dropped
        (counted), control items still delivered, then the thread ends."""
        self.cut_at: Optional[float] = None
        """`time.monotonic` after which `cut` holds (set by `stop`; checked per item)."""
        self.blocked = 0
        """How many times the reader waited for room (backpressure)."""
        self.holding = False
        """True while the reader waits for room (written by the reader)."""
        self.lifted = False
        """True while the dispatcher thread waits for the reader (`unbounded`; written by it)."""
        self.released_at = 0.0
        """`time.monotonic` when the reader last got room after waiting (written by the reader)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def pending_bytes(self) -> int:
        return self._in_bytes - self._out_bytes

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Any, size: int = 0) -> None:
        """Queue one data item of ``size`` bytes without waking the dispatcher
        (unless many wait). Blocks while the queue is full. Call `wake` when
        the burst is over."""
        queue = self._queue
        if (len(queue) >= self.maxsize or self._in_bytes - self._out_bytes >= self.max_bytes) and not self.lifted:
            self.wake()
            self._wait_for_room()
        self._in_bytes += size
        queue.append(item)
        if self._idle and len(queue) >= WAKE_EVERY:
            self._idle = False
            self._wake.set()

    def put_control(self, item: Any) -> None:
        """Queue a control item behind what is queued and wake the dispatcher;
        never waits (from any thread)."""
        self._queue.append(item)
        self._idle = False
        self._wake.set()

    def wake(self) -> None:
        """Have the dispatcher deliver what is queued."""
        if self._idle:
            self._idle = False
            self._wake.set()

    def _full(self) -> bool:
        return len(self._queue) >= self.maxsize or self._in_bytes - self._out_bytes >= self.max_bytes

    def _wait_for_room(self) -> None:
        self.blocked += 1
        self.holding = True
        try:
            while self._full() and not self._closing and not self._released and not self.lifted:
                self._space.clear()
                self._space_wanted = True
                if not self._full():
                    break
                # The timeout only guards against a missed wake-up; the set() after
                # each batch is what normally ends the wait.
                self._space.wait(0.05)
        finally:
            self.released_at = time.monotonic()
            self.holding = False

    @contextlib.contextmanager
    def unbounded(self) -> Iterator[None]:
        """Around a wait of the dispatcher thread for something only the reader can bring
        (a reply, an ack): meanwhile the reader queues without waiting for room, else
        neither could go on. The wait's own timeout bounds how far the queue goes over.
        Any other thread: nothing changes (the dispatcher drains the queue meanwhile)."""
        if threading.current_thread() is not self._thread:
            yield
            return
        self.lifted = True
        self._space.set()  # a reader waiting for room goes on
        try:
            yield
        finally:
            self.lifted = False

    def release_reader(self) -> None:
        """Let a reader waiting for room go on (the client is stopping: its
        connection is being closed, and the reader must see that to end)."""
        self._released = True
        self._space.set()

    def _run(self) -> None:
        queue = self._queue
        try:
            while True:
                if queue:
                    batch = self._take()
                    try:
                        self._handle(batch)
                    except Exception:  # the handler isolates every item; this is a bug guard
                        log.exception("wsbridge dispatcher failed on a batch of %d items", len(batch))
                    # Counted off once handled: the bound holds the batch in hand too, so a
                    # stalled subscriber holds at most max_bytes, not that and a batch more.
                    self._out_bytes += self._taken
                    del batch
                    if self._space_wanted:
                        self._space_wanted = False
                        self._space.set()
                    continue
                if self._closing:
                    return
                self._wake.clear()
                self._idle = True
                if queue or self._closing:
                    self._idle = False
                    continue
                self._wake.wait()
                self._idle = False
        finally:
            try:
                self._on_exit()
            except Exception:
                log.exception("wsbridge dispatcher exit handler failed")

    def _take(self) -> List[Any]:
        """The next batch: up to `BATCH` items and, past the first, a quarter of
        ``max_bytes``, so that the reader fills the rest of the bound while the batch is
        delivered (the bound counts the batch in hand). Its weight in ``_taken``."""
        queue = self._queue
        popleft = queue.popleft
        batch = [popleft() for _ in range(min(len(queue), BATCH))]
        total = _weigh(batch)
        budget = self.max_bytes // 4
        if total > budget and len(batch) > 1:  # large messages: the first of them up to the budget
            total, n = 0, 0
            for item in batch:
                size = weight(item)
                if n and total + size > budget:
                    break
                total += size
                n += 1
            queue.extendleft(reversed(batch[n:]))  # back in front (the reader appends at the other end)
            del batch[n:]
        self._taken = total
        return batch

    def expired(self) -> bool:
        """Has `stop`'s time run out? (Checked by the handler before each item.)"""
        cut_at = self.cut_at
        if cut_at is not None and not self.cut and time.monotonic() > cut_at:
            self.cut = True
        return self.cut

    def drain(self) -> List[Any]:
        """What is still queued (for the exit handler, on the dispatcher thread)."""
        queue = self._queue
        return [queue.popleft() for _ in range(len(queue))]

    def stop(self, timeout: float, join: bool = True) -> bool:
        """Deliver what is queued within ``timeout``, then end the thread: past
        the timeout, data still queued is dropped (counted) and the rest (the
        lifecycle signals) delivered. Returns whether the thread ended in time.

        From the dispatcher thread itself (a subscriber stopping its client), or
        with ``join=False``, it only sets the deadline: the thread ends once the
        subscriber (or what it waits for) returns."""
        self.cut_at = time.monotonic() + timeout
        self._closing = True
        self._wake.set()
        self._space.set()
        if not join or self._thread is threading.current_thread() or self._thread.ident is None:
            return self._thread.ident is None
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.cut = True
            self._wake.set()
            self._thread.join(0.05)
        return not self._thread.is_alive()
