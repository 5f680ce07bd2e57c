"""Conflation: while the subscribers are behind, only the latest message per key.

Market data is a stream of values that replace one another: a subscriber that
fell behind wants the newest price of each symbol, not every price in turn.
`Conflation` holds the rule of each message type (a key: a field name, a
dotted path into the payload, or a function of the `Message`) and squeezes a
batch the dispatcher took: of the messages of one type and key in the batch,
the newest is delivered, at the place of the oldest (so the latest value comes
as soon as it can, and each key keeps its order), and the others are counted
and skipped. A batch is everything queued when the dispatcher took it (up to
`dispatch.BATCH` messages): when the subscribers keep up, batches are small and
nothing is conflated; when they are behind, the queue grows and so does the
window. It runs after the sequence tracker and the store (held messages are
never in it; the store keeps every message) and only on live messages, never on
those delivered from a store. The rules are replaced whole, never changed in
place (written by any thread, read by the dispatcher once per batch).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from ..codecs.json import _getter
from ..message import Message

ConflationKey = Union[str, Callable[[Message], Any]]
"""What makes two messages of a type the same thing: a payload field, a dotted path
(``"data.symbol"``), or a function of the `Message` (returning None: not conflated)."""


def key_getter(mtype: str, key: ConflationKey) -> Callable[[Message], Any]:
    """The function that gives a message's key; `ValueError` for a key that cannot be one."""
    if callable(key):
        return key
    if not isinstance(key, str) or not key or not all(key.split(".")):
        raise ValueError(f"conflate({mtype!r}): the key is a field name, a dotted path or a function of the "
                         f"message, not {key!r}")
    payload = _getter(tuple(key.split(".")))
    return lambda message: payload(message.payload)


class Conflation:
    """The conflation rules of one client, and what they skipped (dispatcher thread)."""

    __slots__ = ("rules", "conflated")

    def __init__(self) -> None:
        self.rules: Dict[str, Callable[[Message], Any]] = {}
        """Type -> key function; replaced whole (see the module's docs)."""
        self.conflated = 0
        """Messages skipped because a newer one of the same type and key came in the same batch."""

    def set(self, mtype: str, key: Optional[ConflationKey]) -> None:
        """Conflate ``mtype`` by ``key`` from the next batch on (None: stop conflating it)."""
        if not isinstance(mtype, str):
            raise ValueError(f"conflate: the message type is a str, not {mtype!r}")
        rules = dict(self.rules)
        if key is None:
            rules.pop(mtype, None)
        else:
            rules[mtype] = key_getter(mtype, key)
        self.rules = rules

    def update(self, rules: Mapping[str, ConflationKey]) -> None:
        for mtype, key in rules.items():
            self.set(mtype, key)

    def squeeze(self, items: List[Any], keys: Optional[Iterator[int]],
                report: Callable[[BaseException, Message], None]) -> Tuple[List[Any], Optional[Iterator[int]]]:
        """``items`` (and the store keys of its messages, in order) with each message of a
        conflated type and key replaced by the newest of the batch, at the oldest's
        place, and the newer ones left out. The newest keeps the oldest's store key (the
        handled mark moves in order: a crash repeats, never skips), but the batch's last
        message takes the batch's last key, which covers what was left out. A key
        function that raises is reported and its message delivered as it is."""
        rules = self.rules
        if not rules:
            return items, keys
        slots: Dict[Tuple[str, Any], int] = {}
        out: List[Any] = []
        out_keys: List[Optional[int]] = []
        last = 0
        for item in items:
            store_key = next(keys) if keys is not None and item.__class__ is Message else None
            if store_key is not None:
                last = store_key
            get = rules.get(item.type) if item.__class__ is Message else None
            if get is not None:
                try:
                    value = get(item)
                    slot_key = None if value is None else (item.type, value)
                    where = None if slot_key is None else slots.get(slot_key)
                except Exception as exc:  # the user's key function, or an unhashable key
                    report(exc, item)
                    slot_key = where = None
                if where is not None:
                    out[where] = item  # the newest value, at the oldest's place (and the oldest's store key)
                    self.conflated += 1
                    continue
                if slot_key is not None:
                    slots[slot_key] = len(out)
            out.append(item)
            out_keys.append(store_key)
        if keys is None:
            return out, None
        kept = [k for k in out_keys if k is not None]
        if kept:  # once the batch's last message is delivered, all it superseded are handled too
            kept[-1] = last
        return out, iter(kept)
