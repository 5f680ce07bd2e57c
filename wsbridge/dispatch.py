"""Ordered hand-off from the reader thread to one dispatcher thread.

The reader appends to a deque (atomic, lock-free) without waking anyone and
calls `wake` once the socket has nothing more to read (or ``WAKE_EVERY``
items piled up), so a burst costs one wake-up, not one per message: on two
cores a futex wake and a GIL hand-off per frame cost more than the frame.
The dispatcher takes everything waiting as one batch. The queue is bounded:
when ``maxsize`` items wait, `put` blocks the reader, which stops reading
the socket, so TCP pushes back on the server instead of memory growing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Deque, List, Optional

log = logging.getLogger("wsbridge")

BATCH = 4096
WAKE_EVERY = 256


class Dispatcher:
    def __init__(self, handle: Callable[[List[Any]], None], maxsize: int = 100_000, name: str = "wsbridge-dispatcher") -> None:
        if maxsize < 1:
            raise ValueError("dispatch queue maxsize must be >= 1")
        self._handle = handle
        self.maxsize = maxsize
        self._queue: Deque[Any] = deque()
        self._wake = threading.Event()
        self._idle = False
        self._space = threading.Event()
        self._space_wanted = False
        self._closing = False
        self._abandon = False
        self.blocked = 0
        """How many times the reader waited for room (backpressure)."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def start(self) -> None:
        self._thread.start()

    def put(self, item: Any) -> None:
        """Queue one item without waking the dispatcher (unless many wait).

        Blocks while the queue is full. Call `wake` when the burst is over.
        """
        queue = self._queue
        if len(queue) >= self.maxsize:
            self.wake()
            self._wait_for_room()
        queue.append(item)
        if self._idle and len(queue) >= WAKE_EVERY:
            self._idle = False
            self._wake.set()

    def wake(self) -> None:
        """Have the dispatcher deliver what is queued."""
        if self._idle:
            self._idle = False
            self._wake.set()

    def put_now(self, item: Any) -> None:
        """Queue one item and wake the dispatcher (for rare events)."""
        self.put(item)
        self.wake()

    def _wait_for_room(self) -> None:
        self.blocked += 1
        while len(self._queue) >= self.maxsize and not self._closing:
            self._space.clear()
            self._space_wanted = True
            if len(self._queue) < self.maxsize:
                break
            # The timeout only guards against a missed wake-up; the set() after
            # each batch is what normally ends the wait.
            self._space.wait(0.05)

    def _run(self) -> None:
        queue = self._queue
        popleft = queue.popleft
        while True:
            if queue and not self._abandon:
                batch = [popleft() for _ in range(min(len(queue), BATCH))]
                try:
                    self._handle(batch)
                except Exception:  # the handler isolates subscribers; this is a bug guard
                    log.exception("wsbridge dispatcher failed on a batch of %d items", len(batch))
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

    def stop(self, timeout: Optional[float] = None, drain: bool = True) -> bool:
        """Deliver what is queued (unless ``drain`` is false), then end the thread.

        Returns whether the thread ended within ``timeout``.
        """
        self._closing = True
        if not drain:
            self._abandon = True
        self._wake.set()
        self._space.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()
