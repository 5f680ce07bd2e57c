"""Sequence tracking: drop duplicates, put messages back in order, find gaps.

Pure logic, no threads or clocks (the caller passes ``now``). Per stream it
keeps the last *contiguous* sequence id received: a message at or below it
is a duplicate; the next one is delivered at once; one further ahead opens a
gap and is held back, so subscribers see every stream in order. A gap closes
when the missing messages arrive (the client asks the server to resend them
with a resume request) or, after ``gap_timeout`` seconds or ``max_held``
waiting messages, or when the stream ends for good (`SequenceTracker.finish`),
is declared lost and the held messages are released.

The first message of a stream with no known position starts it (so
positions from a store or an earlier connection matter: a message older
than the first one seen counts as a duplicate). Messages without ``seq`` fall back to ``id``: an id seen among the last
``id_window`` ids is a duplicate. Messages with neither pass through.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional

from ..message import Message

Positions = Dict[Optional[str], int]
"""Stream name (None: the unnamed stream) -> last contiguous sequence id."""


class Gap(NamedTuple):
    """Sequence ids ``first``..``last`` (inclusive) of ``stream`` are missing."""

    stream: Optional[str]
    first: int
    last: int

    @property
    def count(self) -> int:  # type: ignore[override]  # public API since 0.1; tuple.count(value) means nothing for a Gap
        return self.last - self.first + 1


class Outcome(NamedTuple):
    """What `SequenceTracker.offer` decided about one message."""

    ready: List[Message]
    """Messages to deliver now, in order (the offered one, perhaps with held ones after it)."""
    duplicate: bool = False
    opened: Optional[Gap] = None
    """A gap this message revealed (the client should ask for a resend)."""
    filled: Optional[Gap] = None
    """The open gap this message closed: ``first``..``last`` are now all in, in order."""
    lost: Optional[Gap] = None
    """A gap given up because too many messages were held behind it."""



class _Stream:
    __slots__ = ("last", "held", "gap_since", "gap_first")

    def __init__(self, last: int) -> None:
        self.last = last
        self.held: Dict[int, Message] = {}
        self.gap_since = 0.0
        self.gap_first = 0  # first missing id of the gap open since gap_since


class _Global:
    """One sequence counter across every stream (``seq_scope="global"``)."""

    __slots__ = ("last", "missing")

    def __init__(self, last: int) -> None:
        self.last = last  # the highest id seen
        self.missing: "OrderedDict[int, float]" = OrderedDict()  # ids below ``last`` not seen yet -> when missed


class SequenceTracker:
    """Duplicates out, order restored, gaps found (see the module's docstring).

    ``global_seq``: the server numbers all its streams with one counter. Then a
    gap cannot be told apart by stream, so nothing is held back for it (it would
    hold every other stream): messages go out as they come, duplicates are still
    dropped, a gap is still announced (and resumed), and the ids that fill it are
    delivered when they arrive, or declared lost after ``gap_timeout``."""

    def __init__(
        self,
        positions: Optional[Positions] = None,
        *,
        gap_timeout: float = 5.0,
        max_held: int = 10_000,
        id_window: int = 10_000,
        global_seq: bool = False,
    ) -> None:
        if gap_timeout < 0 or max_held < 1 or id_window < 0:
            raise ValueError("gap_timeout >= 0, max_held >= 1 and id_window >= 0 are required")
        self.gap_timeout = gap_timeout
        self.max_held = max_held
        self.id_window = id_window
        self._streams: Dict[Optional[str], _Stream] = {s: _Stream(n) for s, n in (positions or {}).items()}
        self._ids: "OrderedDict[Any, None]" = OrderedDict()
        self.held = 0
        """Messages held back behind open gaps, all streams."""
        self.global_seq = global_seq
        self._global: Optional[_Global] = None
        if global_seq and positions and None in positions:
            self._global = _Global(positions[None])

    def positions(self) -> Positions:
        """Last contiguous sequence id per stream: what a resume asks to continue after."""
        if self.global_seq:
            g = self._global
            return {} if g is None else {None: next(iter(g.missing)) - 1 if g.missing else g.last}
        return {name: s.last for name, s in self._streams.items()}

    def open_gaps(self) -> List[Gap]:
        return [Gap(name, s.last + 1, min(s.held) - 1) for name, s in self._streams.items() if s.held]

    def offer(self, msg: Message, now: float) -> Outcome:
        seq = msg.seq
        if seq is None:
            return self._offer_unsequenced(msg)
        if self.global_seq:
            return self._offer_global(msg, seq, now)
        stream = self._streams.get(msg.stream)
        if stream is None:
            # The first message of a stream we have no position for starts it.
            self._streams[msg.stream] = _Stream(seq)
            return Outcome([msg])
        last = stream.last
        if seq <= last or seq in stream.held:
            return Outcome([], duplicate=True)
        if seq == last + 1:
            stream.last = seq
            if not stream.held:
                return Outcome([msg])
            ready = [msg]
            self._release_contiguous(stream, ready)
            if stream.held:  # part of the gap arrived; the rest stays open
                return Outcome(ready)
            return Outcome(ready, filled=Gap(msg.stream, stream.gap_first, stream.last))
        # Ahead of the next expected id: hold it back.
        opened = None
        if not stream.held:
            stream.gap_since = now
            stream.gap_first = last + 1
            opened = Gap(msg.stream, last + 1, seq - 1)
        stream.held[seq] = msg
        self.held += 1
        if len(stream.held) <= self.max_held:
            return Outcome([], opened=opened)
        outcome = self._give_up(msg.stream, stream, now)
        return outcome._replace(opened=opened)

    def expire(self, now: float) -> List[Outcome]:
        """Give up gaps open longer than ``gap_timeout``; release what they held."""
        out: List[Outcome] = []
        g = self._global
        if g is not None and g.missing:
            expired = []
            while g.missing:
                first = next(iter(g.missing))
                if now - g.missing[first] < self.gap_timeout:
                    break  # each gap keeps its own clock
                g.missing.popitem(last=False)
                expired.append(first)
            out.extend(Outcome([], lost=gap) for gap in _ranges(expired))
        for name, stream in self._streams.items():
            if stream.held and now - stream.gap_since >= self.gap_timeout:
                out.append(self._give_up(name, stream, now))
        return out

    def finish(self, now: float) -> List[Outcome]:
        """The stream ended for good (the client gave up or stops): every open gap is
        lost, as if its ``gap_timeout`` had passed, and what it held is released in
        order (a gap behind another is given up in turn)."""
        out: List[Outcome] = []
        g = self._global
        if g is not None and g.missing:
            out.extend(Outcome([], lost=gap) for gap in _ranges(sorted(g.missing)))
            g.missing.clear()
        for name, stream in self._streams.items():
            while stream.held:
                out.append(self._give_up(name, stream, now))
        return out

    def held_messages(self) -> List[Message]:
        """The messages held back behind open gaps, stream by stream, in order."""
        return [s.held[seq] for s in self._streams.values() for seq in sorted(s.held)]

    def forget_held(self) -> None:
        """Drop the held messages (they were kept elsewhere: a store hands them to the
        next run); the positions stay before the gaps, so a resume asks for them again."""
        for stream in self._streams.values():
            stream.held.clear()
        self.held = 0

    # -- internals -----------------------------------------------------------
    def _release_contiguous(self, stream: _Stream, ready: List[Message]) -> None:
        held = stream.held
        nxt = stream.last + 1
        while nxt in held:
            ready.append(held.pop(nxt))
            self.held -= 1
            stream.last = nxt
            nxt += 1

    def _give_up(self, name: Optional[str], stream: _Stream, now: float) -> Outcome:
        """Declare the ids before the oldest held message lost, release what
        follows them; a further gap behind starts its own clock."""
        first_held = min(stream.held)
        lost = Gap(name, stream.last + 1, first_held - 1)
        stream.last = first_held - 1
        ready: List[Message] = []
        self._release_contiguous(stream, ready)
        stream.gap_since = now
        stream.gap_first = stream.last + 1
        return Outcome(ready, lost=lost)

    def _offer_global(self, msg: Message, seq: int, now: float) -> Outcome:
        g = self._global
        if g is None:
            self._global = _Global(seq)
            return Outcome([msg])
        if seq <= g.last:
            if seq not in g.missing:
                return Outcome([], duplicate=True)
            del g.missing[seq]
            return Outcome([msg], filled=Gap(None, seq, seq))
        opened = lost = None
        if seq > g.last + 1:
            opened = Gap(None, g.last + 1, seq - 1)
            g.missing.update(dict.fromkeys(range(max(g.last + 1, seq - self.max_held), seq), now))
            given_up = []
            while len(g.missing) > self.max_held:  # too many to wait for: the oldest are lost
                given_up.append(g.missing.popitem(last=False)[0])
            if seq - g.last - 1 > self.max_held:  # ids of this gap too far back to wait for
                given_up.extend(range(g.last + 1, seq - self.max_held))
            given_up.sort()
            if given_up:
                lost = Gap(None, given_up[0], given_up[-1])
        g.last = seq
        return Outcome([msg], opened=opened, lost=lost)

    @property
    def waiting(self) -> bool:
        """Is anything waiting on the clock (held messages, or global-scope gaps)?"""
        return bool(self.held) or (self._global is not None and bool(self._global.missing))

    def _offer_unsequenced(self, msg: Message) -> Outcome:
        mid = msg.id
        if mid is None or not self.id_window:
            return Outcome([msg])
        ids = self._ids
        try:
            if mid in ids:
                return Outcome([], duplicate=True)
        except TypeError:  # an unhashable id (a list, a dict): no dedup possible
            return Outcome([msg])
        ids[mid] = None
        if len(ids) > self.id_window:
            ids.popitem(last=False)
        return Outcome([msg])


def _ranges(ids: List[int]) -> List[Gap]:
    """Ascending ids as the runs of consecutive ones, each a `Gap` of the unnamed stream."""
    gaps: List[Gap] = []
    for i in ids:
        if gaps and gaps[-1].last == i - 1:
            gaps[-1] = Gap(None, gaps[-1].first, i)
        else:
            gaps.append(Gap(None, i, i))
    return gaps
