"""The pull API's buffer: blocking ``recv`` for scripts that do not want callbacks.

It costs nothing a callback-only client would notice: while the client has
subscribers and nobody has called ``recv`` or ``messages`` yet, it keeps only a
*window*, the last `WINDOW` messages of each type, which ``wait_for`` searches
(so a reply that arrives between ``send`` and ``wait_for`` is found however
busy other types are). Keeping 10,000 decoded messages nobody reads made every
message survive into the garbage collector's oldest generation: a feed of
nested JSON ran at half speed. The first ``recv``/``messages`` call turns the
whole buffer on, starting with the window's messages in arrival order; a
client without subscribers (a pull script) or with ``overflow="block"`` has
it on from the start.

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

import heapq
import logging
import threading
import time
from collections import deque
from typing import Callable, Collection, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from ..errors import ClientClosed, UsageError
from ..message import OVERHEAD, Message, weight
from .state import timeout_arg

log = logging.getLogger("wsbridge")

PULL_POLICIES = ("drop_oldest", "block")

Predicate = Callable[[Message], bool]

WINDOW = 64
"""Messages of each type the window keeps, at most: fewer once there are more types
than ``maxsize / 64`` (each type then keeps ``maxsize // types``, at least one),
so the windows together stay within ``maxsize`` without trimming per message."""
WINDOW_BYTES = 1024 * 1024
"""What the windows weigh together, at most (`message.weight`; less if ``max_bytes`` is
less): a window is for replies and acks, not for keeping large messages alive."""
WINDOW_TYPES = 1024
"""Types with a window, at most (a codec may take types from the data, one per symbol;
an empty window costs about a kilobyte): past it, the tenth of them that had a message
least recently is forgotten in one pass."""


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


class _Window:
    """The last messages of one type, with their arrival numbers (window mode)."""

    __slots__ = ("messages", "order")

    def __init__(self, size: int, messages: Iterable[Message] = (), order: Iterable[int] = ()) -> None:
        self.messages: Deque[Message] = deque(messages, maxlen=size)
        self.order: Deque[int] = deque(order, maxlen=size)

    @property
    def last(self) -> int:
        return self.order[-1] if self.order else 0


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

    While the client has subscribers and no ``recv``/``messages`` call was made,
    only a window is kept (see the module's docstring): what falls out of it is
    not a drop. Once the whole buffer has kept a message (no subscriber then), it
    stays on: a subscriber added later never costs a pull script what it buffered.
    Drops before the first ``recv``/``messages`` call are counted, and reported
    (`started` returns them) when it comes: a buffer nobody reads never signals.
    """

    def __init__(self, maxsize: int = 10_000, overflow: str = "drop_oldest", max_bytes: int = 16 * 1024 * 1024) -> None:
        if maxsize < 0:
            raise ValueError("pull buffer maxsize must be >= 0 (0 disables it)")
        if overflow not in PULL_POLICIES:
            raise ValueError(f"pull overflow policy must be one of {PULL_POLICIES}, not {overflow!r}")
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.overflow = overflow
        # All of the following is guarded by self._cond; the dispatcher thread is the only one that adds.
        self._bytes = 0
        """What ``_items`` or the windows weigh (whichever is in use)."""
        self._items: Deque[Message] = deque()
        self._windows: Dict[Optional[str], _Window] = {}
        """The window of each type, in window mode (else empty)."""
        self._windowed = 0
        """Messages in the windows."""
        self._order = 0
        """Arrival number of the last message a window took."""
        self._window_mode = False
        self._whole = False
        """The whole buffer is on for good: it kept a message, or a recv()/messages() call came."""
        self._per_type = min(WINDOW, maxsize)
        self._window_bytes = min(WINDOW_BYTES, max_bytes)
        """What each window keeps now (`WINDOW`)."""
        self._takes: List[_Take] = []
        """Callers waiting, oldest first; none of them wants a buffered message."""
        self._cond = threading.Condition()
        self._closed = False
        self._unbounded = False
        self.dropped = 0
        self._pulling = False
        """A recv() or messages() call was made: the whole buffer is on for good."""
        self._unreported = 0
        """Drops before the first recv()/messages() call: `started` hands them over."""
        self._warned = False

    def __len__(self) -> int:
        return len(self._items) + self._windowed

    @property
    def enabled(self) -> bool:
        return self.maxsize > 0

    def extend(self, messages: Iterable[Message], subscribed: bool = False) -> int:
        """Add messages (dispatcher thread); return how many old ones were dropped
        that someone reads about (none before the first recv()/messages() call).
        ``subscribed``: the client has subscribers, so until a recv()/messages()
        call, only the window is kept."""
        with self._cond:
            window = subscribed and not self._whole and self.overflow != "block"
            if window != self._window_mode:
                self._switch(window)
            dropped = 0
            if self.overflow == "block":
                self._block_extend(messages)
            else:
                if self._takes:
                    messages = [message for message in messages if not self._hand(message)]
                if window:
                    self._to_windows(messages)
                else:
                    dropped = self._drop_extend(messages)
                    self._whole = self._whole or bool(self._items)
            self._cond.notify_all()
            if dropped and not self._pulling:
                self.dropped += dropped
                self._unreported += dropped
                return 0
        if dropped:
            self.dropped += dropped
            if not self._warned:
                # Once, and at INFO: a program may pull once (wait_for an
                # ack) and then live on callbacks; the count is in stats.
                self._warned = True
                log.info(
                    "wsbridge pull buffer full (%d messages): dropping the oldest; "
                    "raise pull_buffer or use pull_overflow='block'",
                    self.maxsize,
                )
        return dropped

    def _drop_extend(self, messages: Iterable[Message]) -> int:
        """Append the whole batch, then trim the oldest in one pass (lock held)."""
        items = self._items
        added = 0
        for message in messages:
            raw = message.raw
            added += OVERHEAD if raw is None else OVERHEAD + len(raw)
            items.append(message)
        self._bytes += added
        dropped = 0
        if not self._unbounded:
            maxsize, max_bytes = self.maxsize, self.max_bytes
            popleft = items.popleft
            while len(items) > 1 and (len(items) > maxsize or self._bytes > max_bytes):
                self._bytes -= weight(popleft())
                dropped += 1
        return dropped

    def _block_extend(self, messages: Iterable[Message]) -> None:
        """Append each message once there is room for it (lock held; waits, releasing it)."""
        items = self._items
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
                self._whole = True

    def _to_windows(self, messages: Iterable[Message]) -> None:
        """Keep the last messages of each type (lock held). A window's deque drops
        its oldest itself; the bounds of the whole buffer still apply."""
        windows = self._windows
        size = 0  # what the messages in the windows weigh, less what was there before
        order = self._order
        for message in messages:
            box = windows.get(message.type)
            if box is None:
                box = self._new_window(message.type)
            kept = box.messages
            if len(kept) == kept.maxlen:
                raw = kept[0].raw
                size -= OVERHEAD if raw is None else OVERHEAD + len(raw)
            else:
                self._windowed += 1
            raw = message.raw
            size += OVERHEAD if raw is None else OVERHEAD + len(raw)
            order += 1
            kept.append(message)
            box.order.append(order)
        self._order = order
        self._bytes += size
        if self._bytes > self._window_bytes and self._windowed > 1:
            self._trim_windows()

    def _new_window(self, mtype: Optional[str]) -> _Window:
        """A window for a type not seen yet (lock held). With many types, each keeps
        fewer (`WINDOW`); past `WINDOW_TYPES`, the tenth of them seen least
        recently is forgotten in one pass."""
        windows = self._windows
        if len(windows) >= min(WINDOW_TYPES, self.maxsize):
            for key, _ in heapq.nsmallest(max(1, len(windows) // 10), windows.items(), key=lambda kv: kv[1].last):
                self._forget(windows.pop(key).messages)
        per_type = max(1, min(WINDOW, self.maxsize // (len(windows) + 1)))
        if per_type < self._per_type:  # rare: about 2 * sqrt(maxsize) times over the life of a buffer
            self._per_type = per_type
            for key, box in list(windows.items()):
                if len(box.messages) > per_type:
                    self._forget(list(box.messages)[:-per_type])
                windows[key] = _Window(per_type, box.messages, box.order)
        box = windows[mtype] = _Window(self._per_type)
        return box

    def _forget(self, messages: Iterable[Message]) -> None:
        """Messages that left the windows other than by a deque's own trim (lock held)."""
        for message in messages:
            self._windowed -= 1
            self._bytes -= weight(message)

    def _trim_windows(self) -> None:
        """Over `WINDOW_BYTES` (large messages): forget the oldest messages of all
        windows, in arrival order, down to nine tenths of it: one pass for many
        messages, not a scan of every window per message (lock held)."""
        windows = self._windows
        heads = [(box.order[0], key) for key, box in windows.items() if box.order]  # arrival numbers are unique
        heapq.heapify(heads)
        target = self._window_bytes * 9 // 10
        while heads and self._windowed > 1 and self._bytes > target:
            _, key = heapq.heappop(heads)
            box = windows[key]
            box.order.popleft()
            self._forget((box.messages.popleft(),))
            if box.order:
                heapq.heappush(heads, (box.order[0], key))

    def _switch(self, window: bool) -> None:
        """Move what is kept between the windows and the whole buffer (lock held). Into
        window mode there is nothing to move: the whole buffer, once it kept a message,
        stays on (``_whole``)."""
        if window:
            assert not self._items
            self._window_mode = True
            return
        merged = sorted(
            ((n, m) for box in self._windows.values() for n, m in zip(box.order, box.messages, strict=True)), key=lambda nm: nm[0]
        )
        self._windows.clear()
        self._windowed = 0
        self._window_mode = False
        self._items.extend(m for _, m in merged)  # the bytes they weigh are the same

    def started(self) -> int:
        """A recv()/messages() call: turn the whole buffer on for good, and return
        the drops nobody was told about yet (once)."""
        with self._cond:
            if not self._pulling:
                self._pulling = self._whole = True
                if self._window_mode:
                    self._switch(False)
            unreported, self._unreported = self._unreported, 0
        return unreported

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
        if self._window_mode:
            return self._take_windowed(types, predicate)
        items = self._items
        if not items:
            return None
        if types is None and predicate is None:
            return self._pop()
        for index, message in enumerate(items):
            if (types is None or message.type in types) and (predicate is None or predicate(message)):
                return self._pop(index)
        return None

    def _take_windowed(self, types: Optional[Collection[str]], predicate: Optional[Predicate]) -> Optional[Message]:
        """`_take` in window mode: the oldest match among the windows of ``types`` (lock held)."""
        windows = self._windows
        boxes = [windows[t] for t in types if t in windows] if types is not None else list(windows.values())
        best: Optional[Tuple[int, _Window, int]] = None  # (arrival number, window, index)
        for box in boxes:
            for index, message in enumerate(box.messages):
                if predicate is None or predicate(message):
                    if best is None or box.order[index] < best[0]:
                        best = (box.order[index], box, index)
                    break
        if best is None:
            return None
        _, box, index = best
        message = box.messages[index]
        del box.messages[index]
        del box.order[index]
        self._windowed -= 1
        self._bytes -= weight(message)
        return message

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

    def _pull_started(self) -> None:
        """A recv()/messages() call: the whole buffer is on from now (`PullBuffer.started`);
        drops nobody was told of yet are reported now."""
        raise NotImplementedError

    def recv(self, timeout: Optional[float] = None) -> Message:
        """The next message, waiting up to ``timeout`` s (`TimeoutError`; None or
        ``inf``: no limit; negative or NaN: `ValueError`).

        Raises `ClientClosed` once the client has stopped (or gave up) and
        every buffered message was taken; `UsageError` from a subscriber.
        """
        self._check_pull("recv")
        self._pull_started()
        return self._pull.get(timeout_arg(timeout))

    def messages(self, types: Optional[Collection[str]] = None, timeout: Optional[float] = None) -> Iterator[Message]:
        """Iterate over messages (of ``types`` only, if given).

        The iteration ends when no matching message arrives within ``timeout``
        seconds, or when the client stops. Messages of other types stay
        buffered for `recv`.
        """
        self._check_pull("messages")
        self._pull_started()
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

