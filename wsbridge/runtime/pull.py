"""The pull API's buffer: blocking ``recv`` for scripts that do not want callbacks.

The dispatcher adds each batch under one lock acquisition. Consumers take
the oldest message, optionally filtered by type or predicate; a filtered take
leaves non-matching messages in place for later calls, so ``wait_for("ack")``
never eats a ``chat`` message that ``recv()`` would have returned.

A take that waits is registered: the dispatcher offers it each new message
before buffering it, so what a caller already waits for is handed over
before the drop-oldest trim and before the block policy's bound applies.
Everything here is guarded by the buffer's lock; the dispatcher thread is
the only one that adds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Collection, Deque, Iterable, Iterator, List, Optional

from ..errors import ClientClosed, UsageError
from ..message import OVERHEAD, Message, weight
from .state import timeout_arg

log = logging.getLogger("wsbridge")

PULL_POLICIES = ("drop_oldest", "block")

Predicate = Callable[[Message], bool]


class _Take:
    """A caller waiting in `PullBuffer.get`: what it wants, and what it was handed."""

    __slots__ = ("types", "predicate", "message", "error")

    def __init__(self, types: Optional[Collection[str]], predicate: Optional[Predicate]) -> None:
        self.types = types
        self.predicate = predicate
        self.message: Optional[Message] = None
        self.error: Optional[BaseException] = None

    def wants(self, message: Message) -> bool:
        return (self.types is None or message.type in self.types) and (self.predicate is None or self.predicate(message))

    def __str__(self) -> str:
        return f" of type {', '.join(sorted(self.types))}" if self.types else ""


class PullBuffer:
    """Bounded buffer of received messages for `recv`, `messages` and `wait_for`.

    ``overflow="drop_oldest"`` (default): when full, the oldest message is
    discarded and counted in ``dropped``, so a program that only uses
    callbacks never stalls on a buffer nobody reads. The buffer is full at
    ``maxsize`` messages or ``max_bytes``, whichever comes first (a message
    weighs its own bytes as they came and the record's overhead, `message.weight`).
    ``overflow="block"``: the dispatcher waits for a reader, which in turn makes the
    socket reader wait (TCP backpressure) — lossless, for programs that pull every message.
    A take already waiting gets its message first, whatever the policy.
    """

    def __init__(self, maxsize: int = 10_000, overflow: str = "drop_oldest", max_bytes: int = 16 * 1024 * 1024) -> None:
        if maxsize < 0:
            raise ValueError("pull buffer maxsize must be >= 0 (0 disables it)")
        if overflow not in PULL_POLICIES:
            raise ValueError(f"pull overflow policy must be one of {PULL_POLICIES}, not {overflow!r}")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.overflow = overflow
        self._bytes = 0
        self._items: Deque[Message] = deque()
        self._takes: List[_Take] = []
        """Callers waiting, oldest first; none of them wants a buffered message."""
        self._cond = threading.Condition()
        self._closed = False
        self._unbounded = False
        self.dropped = 0
        self._pulling = False
        self._warned = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0

    def extend(self, messages: Iterable[Message]) -> int:
        """Add messages (dispatcher thread); return how many old ones were dropped."""
        dropped = 0
        items = self._items
        with self._cond:
            if self.overflow == "block":
                for message in messages:
                    if self._takes and self._hand(message):
                        continue
                    size = weight(message)
                    while self._full(size):
                        self._starve()
                        self._cond.notify_all()
                        self._cond.wait(0.1)
                        if self._takes and self._hand(message):
                            break
                    else:
                        items.append(message)
                        self._bytes += size
            else:
                if self._takes:
                    messages = [message for message in messages if not self._hand(message)]
                # Append the whole batch, then trim the oldest in one pass.
                added = 0
                for message in messages:
                    raw = message.raw
                    added += OVERHEAD if raw is None else OVERHEAD + len(raw)
                    items.append(message)
                self._bytes += added
                if not self._unbounded:
                    maxsize, max_bytes = self.maxsize, self.max_bytes
                    popleft = items.popleft
                    while len(items) > 1 and (len(items) > maxsize or self._bytes > max_bytes):
                        self._bytes -= weight(popleft())
                        dropped += 1
            self._cond.notify_all()
        if dropped:
            self.dropped += dropped
            if self._pulling and not self._warned:
                # Once, and at INFO: a program may pull once (wait_for an
                # ack) and then live on callbacks; the count is in stats.
                self._warned = True
                log.info(
                    "wsbridge pull buffer full (%d messages): dropping the oldest; "
                    "raise pull_buffer or use pull_overflow='block'",
                    self.maxsize,
                )
        return dropped

    def _hand(self, message: Message) -> bool:
        """Give ``message`` to the oldest waiting take that wants it (lock held).
        A predicate that raises fails its take, with that error."""
        for take in list(self._takes):
            try:
                wanted = take.wants(message)
            except Exception as exc:
                take.error = exc
                self._takes.remove(take)
                continue
            if wanted:
                take.message = message
                self._takes.remove(take)
                return True
        return False

    def _starve(self) -> None:
        """The block policy at a full buffer, with a message at the door that no
        waiting take wants: the stream waits for room, so what these takes wait
        for cannot arrive until someone takes what they leave. They fail at once
        rather than wait forever (lock held)."""
        for take in self._takes:
            take.error = UsageError(
                f"no message{take} can arrive: the pull buffer is full ({len(self._items)} messages) of messages "
                "this take leaves, and pull_overflow='block' makes the stream wait for room. Take those first "
                "(recv()), raise pull_buffer, or use pull_overflow='drop_oldest'"
            )
        self._takes.clear()

    def _full(self, incoming: int) -> bool:
        if self._unbounded or not self._items:
            return False
        return len(self._items) >= self.maxsize or self._bytes + incoming > self.max_bytes

    def _pop(self, index: int = 0) -> Message:
        items = self._items
        message = items[index]
        del items[index]
        self._bytes -= weight(message)
        return message

    def get(
        self,
        timeout: Optional[float] = None,
        types: Optional[Collection[str]] = None,
        predicate: Optional[Predicate] = None,
    ) -> Message:
        """Take the oldest matching message, waiting up to ``timeout`` seconds.

        Raises `TimeoutError` when none arrives in time, `ClientClosed`
        when the client stopped and nothing matching is left, and `UsageError`
        when a filtered take is starved by a full buffer under the block policy.
        """
        if not self.enabled:
            raise RuntimeError("the pull API is off (pull_buffer=0)")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._pulling = True
            message = self._take(types, predicate)
            if message is not None:
                if self.overflow == "block":
                    self._cond.notify_all()
                return message
            take = _Take(types, predicate)
            self._takes.append(take)
            if self.overflow == "block":
                self._cond.notify_all()  # a dispatcher waiting for room offers it the message at the door
            try:
                while take.message is None and take.error is None:
                    if self._closed:
                        raise ClientClosed("client stopped; no more messages")
                    if deadline is None:
                        self._cond.wait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError(f"no message{take} within {timeout} s")
                        self._cond.wait(remaining)
            finally:
                if take in self._takes:
                    self._takes.remove(take)
        if take.error is not None:
            raise take.error
        assert take.message is not None
        return take.message

    def _take(self, types: Optional[Collection[str]], predicate: Optional[Predicate]) -> Optional[Message]:
        items = self._items
        if not items:
            return None
        if types is None and predicate is None:
            return self._pop()
        for index, message in enumerate(items):
            if (types is None or message.type in types) and (predicate is None or predicate(message)):
                return self._pop(index)
        return None

    def unblock(self) -> None:
        """Stop making the dispatcher wait (the client is stopping: what
        was received still goes in, whatever the bound)."""
        with self._cond:
            self._unbounded = True
            self._cond.notify_all()

    def close(self) -> None:
        """No more messages will come: wake every waiter."""
        with self._cond:
            self._closed = True
            self._unbounded = True
            self._cond.notify_all()


class Pulling:
    """The pull API (`recv`, `messages`, `wait_for`) over ``self._pull``, for a
    client whose ``_check_pull(what)`` raises where pulling cannot work."""

    _pull: PullBuffer

    def _check_pull(self, what: str) -> None:
        raise NotImplementedError

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message, waiting up to ``timeout`` s (`TimeoutError`; None or
        ``inf``: no limit; negative or NaN: `ValueError`).

        Raises `ClientClosed` once the client has stopped (or gave up) and
        every buffered message was taken; `UsageError` from a subscriber.
        """
        self._check_pull("recv")
        return self._pull.get(timeout_arg(timeout))

    def messages(self, types: Optional[Collection[str]] = None, timeout: Optional[float] = None) -> Iterator[Message]:
        """Iterate over messages (of ``types`` only, if given).

        The iteration ends when no matching message arrives within ``timeout``
        seconds, or when the client stops. Messages of other types stay
        buffered for `recv`.
        """
        self._check_pull("messages")
        wanted = frozenset(types) if types is not None else None
        timeout = timeout_arg(timeout)

        def iterate() -> Iterator[Message]:
            while True:
                self._check_pull("messages")  # again: an iterator may be advanced in a subscriber
                try:
                    yield self._pull.get(timeout, wanted)
                except (TimeoutError, ClientClosed):
                    return

        return iterate()

    def wait_for(
        self, mtype: str, predicate: Optional[Callable[[Message], bool]] = None, timeout: Optional[float] = None
    ) -> Message:
        """The first buffered or future message of type ``mtype`` (matching
        ``predicate``), leaving other messages buffered."""
        self._check_pull("wait_for")
        if not isinstance(mtype, str):  # else it would wait out its timeout for a type no message has
            raise ValueError(f"wait_for takes a message type (a str) first, then a predicate, not a "
                             f"{type(mtype).__name__}: wait_for('update', lambda m: ...)")
        return self._pull.get(timeout_arg(timeout), frozenset((mtype,)), predicate)

