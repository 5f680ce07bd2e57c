"""The send buffer: a bounded FIFO of encoded frames with an overflow policy.

Pure data structure: the client adds the lock and the waiting. A frame is
removed only after the socket accepted it (``peek`` then ``pop``), so a
connection lost in the middle of a flush loses nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Generic, List, Optional, TypeVar

from ..errors import OutboxFull

T = TypeVar("T")

POLICIES = ("raise", "drop_oldest", "block")


class Outbox(Generic[T]):
    """Bounded FIFO.

    ``overflow`` says what `put` does when ``maxsize`` items are waiting:
    ``"raise"`` raises `OutboxFull` (the caller keeps its message),
    ``"drop_oldest"`` makes room by dropping the oldest item and returns it
    (the caller counts and reports it), ``"block"`` is the caller's cue to
    wait for room (`put` itself then raises like ``"raise"``).
    """

    def __init__(self, maxsize: int = 10_000, overflow: str = "raise") -> None:
        if maxsize < 1:
            raise ValueError("outbox maxsize must be >= 1")
        if overflow not in POLICIES:
            raise ValueError(f"outbox overflow policy must be one of {POLICIES}, not {overflow!r}")
        self.maxsize = maxsize
        self.overflow = overflow
        self._items: Deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put(self, item: T, keep: int = 0, force: bool = False) -> Optional[T]:
        """Append ``item``; return the item dropped to make room, if any.

        ``keep``: that many of the oldest items are being written to the
        socket right now, so ``drop_oldest`` drops the oldest one after them.
        ``force``: append whatever the bound (a control frame, such as a
        subscription's: few, and never the user's data).
        """
        dropped = None
        items = self._items
        if len(items) >= self.maxsize and not force:
            if self.overflow != "drop_oldest" or len(items) <= keep:
                raise OutboxFull(f"send buffer full ({self.maxsize} messages waiting)")
            dropped = items[keep]
            del items[keep]
        items.append(item)
        return dropped

    def restore(self, items: List[T]) -> None:
        """Put back what an earlier run left, ahead of anything new, whatever
        the bound (nothing kept is dropped on the way back)."""
        self._items.extendleft(reversed(items))

    def peek(self) -> Optional[T]:
        """The oldest item, left in place; None when empty."""
        return self._items[0] if self._items else None

    def pop(self) -> T:
        """Remove the oldest item (after the socket accepted it)."""
        return self._items.popleft()

    def peek_many(self, n: int) -> List[T]:
        """Up to ``n`` of the oldest items, left in place."""
        items = self._items
        return [items[i] for i in range(min(n, len(items)))]

    def pop_many(self, n: int) -> None:
        """Remove the ``n`` oldest items (after the socket accepted them)."""
        popleft = self._items.popleft
        for _ in range(n):
            popleft()

    def remove_if(self, test: Callable[[T], bool], keep: int = 0) -> List[T]:
        """Remove and return the items that pass ``test``, but for the ``keep`` oldest
        (being written to the socket right now); the others keep their order."""
        items = self._items
        kept: List[T] = []
        gone: List[T] = []
        for i, item in enumerate(items):
            (gone if i >= keep and test(item) else kept).append(item)
        if gone:
            items.clear()
            items.extend(kept)
        return gone

    def items(self) -> List[T]:
        """A copy of what is waiting, oldest first."""
        return list(self._items)

    def clear(self) -> List[T]:
        """Remove and return everything waiting."""
        items = list(self._items)
        self._items.clear()
        return items
