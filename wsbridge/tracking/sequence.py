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

Numbering that starts again (a server restarted, or one that numbers per
connection) must not read as duplicates forever. Three ways out, all here:

* an *epoch* (``Message.epoch``, the codec's ``epoch_field``; compared as
  given, the codec makes it text): a message of another epoch than its stream's
  starts the stream afresh at its seq; one of the stream's last `PAST` epochs
  (a stale replay of an earlier generation) is a duplicate, said once per
  connection as a `Reset` with ``why="stale"``, ``restarted=False``; a message
  without an epoch is judged by content as below;
* ``per_connection``: every connection (`new_connection`) starts every stream afresh;
* otherwise, after a reconnect (`new_connection`) or at a start from stored
  positions, the first messages of a stream at or below its position are told
  apart by content: a digest of each message's ``raw`` is kept for the first
  ``reset_window`` seq ids of a stream's numbering (where a replay from the start
  and a restarted numbering begin; grown as they come, 8 bytes each), and
  ``recall(stream, seq)`` (a store's) is asked for others. Same digest: the
  server replays what it sent, a duplicate (counted: a restart found later says
  how many were dropped so, `Reset.identical`). Another digest: the numbering
  restarted, the stream starts afresh at this message. Nothing known (a replay
  of recent messages past the window, without a store): ``on_reset`` decides
  (``"drop"``: a duplicate, reported once per connection as a `Reset` with
  ``restarted=False``; ``"restart"``). The judging lasts until a message goes
  beyond everything known of the stream (its position and what its open gap
  holds), so a restart landing inside an open gap is still found. Within one
  connection a seq going back is a duplicate, as always.

A stream started afresh gives up its open gap first (the held messages are
of the old numbering: delivered, the ids missing before them declared lost),
and the `Outcome` carries a `Reset`.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ..message import Message

Positions = Dict[Optional[str], int]
"""Stream name (None: the unnamed stream) -> last contiguous sequence id."""

Epochs = Dict[Optional[str], Any]
"""Stream name -> the epoch its position belongs to (only streams whose messages carry one)."""

Recall = Callable[[Optional[str], int], Optional[int]]
"""``recall(stream, seq)``: the digest (`digest`) of the message kept at ``seq`` of
``stream`` (the latest such), or None when none is known."""

ON_RESET = ("restart", "drop")

ARMED, REPORTED = 1, 2  # `_Stream.armed`

RESET_WINDOW = 1024
"""The first seq ids of each stream's numbering whose message digest is kept."""

PAST = 8
"""The earlier epochs each stream remembers: a message of one of them is stale."""

UNKNOWN = 0
"""In a stream's head: no digest kept at that seq (a seq skipped; a digest of 0 reads as unknown too)."""


def digest(raw: Any) -> int:
    """What tells two messages at the same seq apart: ``hash`` of the whole ``raw``
    bytes (or text) they came as. Computed only for the first `RESET_WINDOW` seq ids of
    a numbering (and when judging), so its cost does not fall on the feed's steady
    state. A codec that keeps no ``raw`` makes every message look the same: a replay.
    An int of 64 bits (``hash`` is, on 64-bit builds): a head keeps it in an ``array``.
    Per process (``hash`` is seeded): a store's `Recall` hashes what it kept in the
    process that asks."""
    try:
        return hash(raw)
    except TypeError:  # a bytearray, a memoryview of one
        return hash(bytes(raw))


class Gap(NamedTuple):
    """Sequence ids ``first`` to ``last`` (inclusive) of ``stream`` are missing."""

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
    """The open gap this message closed: ``first`` to ``last`` are now all in, in order."""
    lost: Optional[Gap] = None
    """A gap given up because too many messages were held behind it."""
    reset: Optional["Reset"] = None
    """The stream started afresh at this message (its numbering restarted)."""
    before: Tuple["Outcome", ...] = ()
    """With a ``reset``: what giving up the old numbering's gaps released, to handle before this outcome."""


class Reset(NamedTuple):
    """``stream`` started afresh at ``seq``, its position having been ``last``.

    ``why``: ``"epoch"`` (the message has another epoch), ``"content"`` (it differs
    from the message received before at that seq), ``"unknown"`` (nothing known
    about that seq), ``"stale"`` (an earlier epoch of the stream: ``epoch`` is that
    one). ``epoch``: the stream's epoch now (None without one). ``restarted``:
    False when the message was dropped as a duplicate instead (``"unknown"`` with
    ``on_reset="drop"``, or ``"stale"``): the stream keeps its position.
    ``identical``: how many messages of this connection were dropped before it as
    identical to the old numbering's at their seq (a restart whose first messages
    repeat the old ones byte for byte, such as a fixed hello: lost unless the
    server carries an epoch)."""

    stream: Optional[str]
    last: int
    seq: int
    epoch: Any
    why: str
    restarted: bool = True
    identical: int = 0


class _Stream:
    __slots__ = ("last", "held", "gap_since", "gap_first", "top", "epoch", "past", "armed", "stale", "identical",
                 "released", "first", "head_end", "head")

    def __init__(self, last: int, epoch: Any = None, armed: bool = False, first: Optional[int] = None,
                 window: int = 0, past: Tuple[Any, ...] = ()) -> None:
        self.last = last
        self.held: Dict[int, Message] = {}
        self.gap_since = 0.0
        self.gap_first = 0  # first missing id of the gap open since gap_since
        self.top = 0  # the highest seq held (while ``held`` is not empty)
        self.epoch = epoch
        self.past = past  # the stream's earlier epochs, oldest first (at most PAST): theirs are stale
        # A new connection (or start) and no message of it beyond everything known yet: a seq back may be a
        # reset (ARMED, or REPORTED once an unknown one was said); 0 otherwise.
        self.armed = ARMED if armed else 0
        self.stale = False  # a stale epoch was said on this connection
        self.identical = 0  # messages of this connection dropped as identical to the old numbering's
        # While armed: the digests of the messages its open gap released (the old numbering's), past the head.
        self.released: Optional[Dict[int, int]] = None
        # The head: the digests of the first `window` seq ids from ``first``, the first seq of this numbering
        # seen (None: not seen, a position from a store), grown as they come and kept while the numbering lasts.
        self.first = first if first is not None else 0
        self.head_end = self.first + window if first is not None else -1  # (seq < head_end: in the head)
        self.head = array("q")


class _Global:
    """One sequence counter across every stream (``seq_scope="global"``)."""

    __slots__ = ("last", "missing")

    def __init__(self, last: int) -> None:
        self.last = last  # the highest id seen
        self.missing: "OrderedDict[int, float]" = OrderedDict()  # ids below ``last`` not seen yet -> when missed


class SequenceTracker:
    """Duplicates out, order restored, gaps found, resets told apart (see the module's docstring).

    ``global_seq``: the server numbers all its streams with one counter. Then a
    gap cannot be told apart by stream, so nothing is held back for it (it would
    hold every other stream): messages go out as they come, duplicates are still
    dropped, a gap is still announced (and resumed), and the ids that fill it are
    delivered when they arrive, or declared lost after ``gap_timeout`` (resets are
    not looked for: epochs and content apply per stream).

    ``per_connection``: the server numbers each connection's messages afresh;
    `new_connection` forgets every stream. ``epochs``: the epoch of each of
    ``positions``' streams (from a store). ``on_reset``, ``reset_window``,
    ``recall``: how a seq going back after a reconnect is judged (this module's docstring;
    the guide's Delivery page, *Numbering that starts again*)."""

    def __init__(
        self,
        positions: Optional[Positions] = None,
        *,
        gap_timeout: float = 5.0,
        max_held: int = 10_000,
        id_window: int = 10_000,
        global_seq: bool = False,
        per_connection: bool = False,
        epochs: Optional[Epochs] = None,
        on_reset: str = "drop",
        reset_window: int = RESET_WINDOW,
        recall: Optional[Recall] = None,
    ) -> None:
        if gap_timeout < 0 or max_held < 1 or id_window < 0:
            raise ValueError("gap_timeout >= 0, max_held >= 1 and id_window >= 0 are required")
        if on_reset not in ON_RESET:
            raise ValueError(f"on_reset is 'restart' or 'drop', not {on_reset!r}")
        if not isinstance(reset_window, int) or reset_window < 1:
            raise ValueError(f"reset_window is an int >= 1, not {reset_window!r}")
        if global_seq and per_connection:
            raise ValueError("one counter across streams (global_seq) or one per connection, not both")
        self.gap_timeout = gap_timeout
        self.max_held = max_held
        self.id_window = id_window
        self.per_connection = per_connection
        self.on_reset = on_reset
        self.reset_window = reset_window
        self.recall = recall
        epochs = epochs or {}
        # Streams from stored positions start armed: the first connection may bring a restarted numbering.
        self._streams: Dict[Optional[str], _Stream] = {
            s: _Stream(n, epochs.get(s), armed=True) for s, n in (positions or {}).items()}
        self._ids: "OrderedDict[Any, None]" = OrderedDict()
        self.held = 0
        """Messages held back behind open gaps, all streams."""
        self.resets = 0
        """Streams started afresh (each a `Reset`), all streams."""
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

    def epochs(self) -> Epochs:
        """The epoch of each stream's position, for the streams whose messages carry one."""
        return {name: s.epoch for name, s in self._streams.items() if s.epoch is not None}

    def open_gaps(self) -> List[Gap]:
        return [Gap(name, s.last + 1, min(s.held) - 1) for name, s in self._streams.items() if s.held]

    def new_connection(self, now: float) -> List[Outcome]:
        """A new connection starts. Per connection: every stream is forgotten (open gaps
        lost, what they held released, in order). Otherwise each stream's next message
        at or below its position is judged a replay or a restart (the guide's Delivery page, *Numbering that starts again*)."""
        if not self.per_connection:
            for stream in self._streams.values():
                stream.armed = ARMED
                stream.stale = False
                stream.identical = 0
                stream.released = None
            return []
        out = self.finish(now)
        self._streams.clear()
        return out

    def advance(self, msg: Message) -> bool:
        """`offer`'s steady state without an `Outcome` to build: ``msg`` is the next of its
        stream, with nothing held, armed or of another epoch. Taken (True), or nothing
        changed (False: `offer` it)."""
        seq = msg.seq
        stream = self._streams.get(msg.stream)
        if (stream is None or seq is None or seq != stream.last + 1 or self.global_seq or stream.held
                or stream.armed or msg.epoch != stream.epoch):
            return False
        stream.last = seq
        if seq < stream.head_end:
            self._remember(stream, seq, msg)
        return True

    def offer(self, msg: Message, now: float) -> Outcome:
        seq = msg.seq
        if seq is None:
            return self._offer_unsequenced(msg)
        if self.global_seq:
            return self._offer_global(msg, seq, now)
        stream = self._streams.get(msg.stream)
        if (stream is not None and seq == stream.last + 1 and not stream.held and not stream.armed
                and msg.epoch == stream.epoch):  # the steady state, first: the next one, nothing to judge
            stream.last = seq
            if seq < stream.head_end:
                self._remember(stream, seq, msg)
            return Outcome([msg])
        if stream is None:
            # The first message of a stream we have no position for starts it.
            stream = self._streams[msg.stream] = _Stream(seq, msg.epoch, first=seq, window=self.reset_window)
            self._remember(stream, seq, msg)
            return Outcome([msg])
        epoch = msg.epoch
        by_content = epoch is None  # with the stream's epoch: judged by it; without one: by content
        if not by_content and epoch != stream.epoch:
            if epoch in stream.past:
                return self._stale(msg.stream, stream, msg)
            if stream.epoch is not None:
                return self._restart(msg.stream, stream, msg, now, "epoch")
            stream.epoch = epoch  # the first epoch seen: the position is taken to be of it, not known to be
            by_content = True
        last = stream.last
        if seq <= last or seq in stream.held:
            if stream.armed and seq <= last and by_content:
                return self._judge(msg.stream, stream, msg, now)
            return Outcome([], duplicate=True)
        if stream.armed and (not stream.held or seq > stream.top):
            stream.armed = 0  # beyond everything known: this connection continues the numbering
            stream.released = None
        if seq < stream.head_end:  # the first messages of the numbering only
            self._remember(stream, seq, msg)
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
            stream.top = seq
        elif seq > stream.top:
            stream.top = seq
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
    def _remember(self, stream: _Stream, seq: int, msg: Message) -> None:
        """Keep the digest of the message accepted at ``seq`` in the head (``seq < head_end``):
        appended as messages come; a seq ahead pads the ids it skips (`UNKNOWN`), one
        behind (a gap filled) is written in its place."""
        head = stream.head
        i = seq - stream.first
        n = len(head)
        if i > n:
            head.frombytes(bytes(head.itemsize * (i - n)))
            n = i
        if i == n:
            head.append(digest(msg.raw))
        else:
            head[i] = digest(msg.raw)

    def _known(self, name: Optional[str], stream: _Stream, seq: int) -> Optional[int]:
        """The digest of the message received at ``seq`` of this numbering, from the head,
        the old gap released on this connection, or the store (None: not known)."""
        i = seq - stream.first
        if seq < stream.head_end and 0 <= i < len(stream.head) and stream.head[i] != UNKNOWN:
            return stream.head[i]
        if stream.released is not None and seq in stream.released:
            return stream.released[seq]
        return self.recall(name, seq) if self.recall is not None else None

    def _judge(self, name: Optional[str], stream: _Stream, msg: Message, now: float) -> Outcome:
        """A seq at or below the position after a reconnect: a replay (a duplicate), or
        a restarted numbering (the stream starts afresh), by content (the guide's Delivery page,
        *Numbering that starts again*)."""
        seq = msg.seq
        assert seq is not None
        known = self._known(name, stream, seq)
        if known is not None:
            if known == digest(msg.raw):
                stream.identical += 1
                return Outcome([], duplicate=True)
            return self._restart(name, stream, msg, now, "content")
        if self.on_reset == "restart":
            return self._restart(name, stream, msg, now, "unknown")
        # Dropped as before, said once per connection (the next ones would say the same); still judged.
        if stream.armed == REPORTED:
            return Outcome([], duplicate=True)
        stream.armed = REPORTED
        return Outcome([], duplicate=True, reset=Reset(name, stream.last, seq, stream.epoch, "unknown", False,
                                                       stream.identical))

    def _stale(self, name: Optional[str], stream: _Stream, msg: Message) -> Outcome:
        """A message of one of the stream's earlier epochs (a stale replay of it): a
        duplicate, said once per connection."""
        if stream.stale:
            return Outcome([], duplicate=True)
        stream.stale = True
        assert msg.seq is not None
        return Outcome([], duplicate=True, reset=Reset(name, stream.last, msg.seq, msg.epoch, "stale", False))

    def _restart(self, name: Optional[str], stream: _Stream, msg: Message, now: float, why: str) -> Outcome:
        """Start ``stream`` afresh at ``msg``: its open gaps are given up first (what
        they held is of the old numbering: released in order, the missing ids lost). The
        new numbering's epoch is the message's (a message without one: none yet); the
        old epoch joins the stream's past ones."""
        last = stream.last  # the position before (giving up the gaps moves it within the old numbering)
        before = []
        while stream.held:
            before.append(self._give_up(name, stream, now))
        seq = msg.seq
        assert seq is not None
        epoch, past = msg.epoch, stream.past
        if stream.epoch is not None and stream.epoch != epoch:
            past = (past + (stream.epoch,))[-PAST:]
        reset = Reset(name, last, seq, epoch, why, True, stream.identical)
        fresh = self._streams[name] = _Stream(seq, epoch, first=seq, window=self.reset_window, past=past)
        self._remember(fresh, seq, msg)
        self.resets += 1
        return Outcome([msg], reset=reset, before=tuple(before))

    def _release_contiguous(self, stream: _Stream, ready: List[Message]) -> None:
        held = stream.held
        nxt = stream.last + 1
        released = None
        if stream.armed:  # the old numbering's, perhaps: what tells them from a restart's, past the head
            released = stream.released = stream.released if stream.released is not None else {}
        while nxt in held:
            msg = held.pop(nxt)
            ready.append(msg)
            if released is not None and nxt >= stream.head_end and msg.raw is not None:  # (no raw: tells nothing)
                released[nxt] = digest(msg.raw)
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
