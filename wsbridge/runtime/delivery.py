"""Delivery: what the dispatcher thread does with each batch it takes.

A batch holds items of a closed set of types (`Item`): received messages,
stored messages replayed after a restart (`Stored`), signals to emit
(`Emit`), the tick that gives up old gaps (`Expire`), the start of a new
connection (`NewConnection`: the tracker judges what follows), markers a thread
waits on (`Barrier`), and the end of the stream (`END`: at give-up, and at
`stop` unless the store keeps what gaps hold, see `Delivery.finish`).
`Delivery.handle` runs a batch through the sequence tracker (duplicates out,
held messages released in order), writes its new messages to the store in one
transaction, then delivers item by item: to the subscribers of the type, to
``on_any`` subscribers, then to the pull buffer. Every item is delivered in
isolation: a failure is reported and delivery goes on with the next item. Everything here belongs to the dispatcher thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Set, Tuple, Union

from ..codecs import Codec
from ..errors import StoreError
from ..message import Message
from ..tracking.sequence import Epochs, Outcome, Positions, Reset, SequenceTracker
from ..tracking.store import Store
from .conflation import Conflation
from .dispatch import Dispatcher, Undecoded
from .intake import decode_error
from .pull import PullBuffer
from .reporting import Reporter
from .signals import Signals, deliver

log = logging.getLogger("wsbridge")


class Stored(NamedTuple):
    """A message from a store: past its handled mark (replayed after a restart), or
    read back by `Client.replay` (``key`` None: no mark to move)."""

    key: Optional[int]
    message: Message


class Emit(NamedTuple):
    """A signal to send, in line with the messages around it; ``size``: the bytes of
    frame data it carries (a decode error's report), counted against the queue's bound."""

    signal: Any
    kwargs: Dict[str, Any]
    size: int = 0


class Expire:
    """Give up gaps that waited longer than ``gap_timeout``."""

    __slots__ = ()


EXPIRE = Expire()


class NewConnection:
    """A new connection starts: the messages after this item came on it (`SequenceTracker.new_connection`)."""

    __slots__ = ()


NEW_CONNECTION = NewConnection()


class Barrier:
    """Set ``done`` once every item queued before it was delivered."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class End:
    """No message will follow (the client gave up, or stops): the open gaps are lost
    and what they held is stored and delivered, in order; then the pull buffer closes,
    once every message queued before has reached it, so a puller gets them all first."""

    __slots__ = ()


END = End()


Item = Union[Message, Undecoded, Stored, Emit, Expire, NewConnection, Barrier, End]

CHUNK = 16
"""Items of a batch decoded and delivered at a time. The collector runs a young
collection once 700 more containers were made than freed; a chunk of decoded JSON
book updates makes about 200, which die (unless kept) before the next chunk is
decoded, so most chunks cause no collection at all (`dispatch.Undecoded`). A batch
of 4,096 decoded at once would make collections that all of it survives."""

STORE_CHUNK = 256
"""`CHUNK` with a store, which writes each chunk in one transaction before delivering
it: a commit every 16 messages would cost more than the collections it saves."""


class Delivery:
    """Runs on the dispatcher thread; owns the tracker, the positions and the counters below."""

    def __init__(
        self,
        owner: Any,
        signals: Signals,
        reporter: Reporter,
        tracker: SequenceTracker,
        pull: PullBuffer,
        store: Optional[Store],
        codec: Codec,
        want_resume: Callable[[], None],
        name: str,
    ) -> None:
        self.owner = owner
        self.signals = signals
        self.reporter = reporter
        self.tracker = tracker
        self.positions: Positions = tracker.positions()
        """The tracker's, as of the last batch: replaced, never changed in place (read by the supervisor)."""
        self.epochs: Epochs = tracker.epochs()
        """The epochs of those positions, kept the same way."""
        self.pull = pull
        self.store = store
        self.codec = codec
        self.chunk = CHUNK if store is None else STORE_CHUNK
        self._raw_is_payload = codec.raw_is_payload
        self._want_resume = want_resume
        self.name = name
        self.dispatcher: Optional[Dispatcher] = None
        self.conflation = Conflation()
        self._handlers: Dict[type, Callable[[Any, List[Message]], None]] = {
            Stored: self._stored, Emit: self._emit, Barrier: self._barrier, End: self._end,
        }
        """What each item type but `Message` (the hot path, inline) does: the closed set."""
        self.dispatched = self.duplicates = self.gaps = self.lost = self.resets = 0
        self.given = self.store_errors = self.replayed = self.abandoned = 0  # given: messages handed to the store
        self.received = self.protocol_errors = 0  # of the frames decoded here (`Undecoded`)
        self._warned: Set[Optional[str]] = set()  # streams whose first duplicate was logged

    @property
    def stored(self) -> int:
        """Messages stored: those handed to the store but for the ones it skipped as already
        stored (`Store.skipped`; a store writing later counts them as it writes)."""
        return self.given - (self.store.skipped if self.store is not None else 0)

    # -- one batch ------------------------------------------------------------------------
    def handle(self, batch: List[Item]) -> None:
        """Decode, dedup and order the batch, store it, then deliver it item by item,
        a `CHUNK` at a time (`STORE_CHUNK` with a store; the whole batch at once when a
        type is conflated)."""
        chunk = self.chunk if not self.conflation.rules else len(batch)  # conflation looks at the whole batch
        if len(batch) <= chunk:
            self._handle(self._decoded(batch))
            return
        for start in range(0, len(batch), chunk):
            self._handle(self._decoded(batch[start:start + chunk]))

    def _decoded(self, items: List[Item]) -> List[Item]:
        """``items`` with each `Undecoded` replaced by its messages, or by the report of
        the error that refused it (in line: the ``error`` signal comes in order)."""
        out: List[Item] = []
        decode = self.codec.decode
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.cut_at is not None and dispatcher.expired():
            # stop() ran out of time: what is not decoded yet is not (counted as undelivered frames)
            out = [item for item in items if item.__class__ is not Undecoded]
            self.abandoned += len(items) - len(out)
            return out
        for item in items:
            if item.__class__ is not Undecoded:
                out.append(item)
                continue
            data, binary, received_at = item
            try:
                messages = decode(data, binary, received_at)
            except Exception as exc:  # a codec bug must not end the feed either
                self.protocol_errors += 1
                error = decode_error(self.codec, exc, data)
                self.reporter.record(error, "decode")
                out.append(Emit(self.signals.error, {"error": error, "context": "decode", "frame": data}))
                continue
            self.received += len(messages)
            out.extend(messages)
        return out

    def _handle(self, batch: List[Item]) -> None:
        """Dedup and order the decoded batch, store it, then deliver it item by item. When a
        bounded store took only the first part of it, that part is delivered (so handled,
        and evictable), then the rest is offered to the store again."""
        items = self._track(batch)
        pulled: List[Message] = []
        while True:
            keys, cut = self._store(items) if self.store is not None else (None, len(items))
            if cut == len(items):
                self._deliver_items(items, keys, pulled)
                break
            self._deliver_items(items[:cut], keys, pulled)
            items = items[cut:]
        self._to_pull(pulled)

    def _deliver_items(self, items: List[Item], keys: Optional[Iterator[int]], pulled: List[Message]) -> None:
        """Deliver ``items`` in order (their messages' store keys in ``keys``)."""
        if self.conflation.rules:  # once a batch: nothing per message unless a type is conflated
            items, keys = self.conflation.squeeze(items, keys, self._key_failed)
        dispatcher = self.dispatcher
        for item in items:
            if dispatcher is not None and dispatcher.cut_at is not None and dispatcher.expired():
                if isinstance(item, (Message, Stored)):  # stop() ran out of time: signals still go
                    self.abandoned += 1
                    continue
            try:
                if isinstance(item, Message):  # (a Message is a tuple: test it first)
                    self._deliver(item, next(keys) if keys is not None else None)
                    pulled.append(item)
                else:
                    self._other(item, pulled)
            except Exception as exc:  # a bug guard: one item's failure never costs the others
                log.exception("%s: delivering %r failed", self.name, item)
                self.reporter.report(exc, "delivery")

    def _key_failed(self, exc: BaseException, message: Message) -> None:
        """A conflation key function raised: reported; the message is delivered as it is."""
        self.reporter.report(exc, "conflate", message=message)

    def _to_pull(self, pulled: List[Message]) -> None:
        """Hand the batch's delivered messages to the pull buffer."""
        if pulled and self.pull.enabled:
            dropped = self.pull.extend(pulled, self.signals.subscribed())
            if dropped:
                deliver(self.signals.dropped, self.owner, self.reporter.listener_failed, what="pull", count=dropped)

    def _deliver(self, message: Message, key: Optional[int]) -> None:
        signals = self.signals
        failed = self.reporter.subscriber_failed
        signal = signals.types.get(message.type)  # read at each message: a type subscribed mid-batch counts
        if signal is not None and signal.receivers:
            deliver(signal, self.owner, failed, message=message)
        if signals.message.receivers:
            deliver(signals.message, self.owner, failed, message=message)
        self.dispatched += 1
        if key is not None:
            self.store.mark_handled(key)  # type: ignore[union-attr]

    def _other(self, item: Item, pulled: List[Message]) -> None:
        handler = self._handlers.get(type(item))
        if handler is None:
            raise TypeError(f"not a dispatcher item: {item!r}")
        handler(item, pulled)

    def _stored(self, item: Stored, pulled: List[Message]) -> None:
        self.replayed += 1
        self._deliver(item.message, item.key)
        pulled.append(item.message)

    def _emit(self, item: Emit, pulled: List[Message]) -> None:
        deliver(item.signal, self.owner, self.reporter.listener_failed, **item.kwargs)

    @staticmethod
    def _barrier(item: Barrier, pulled: List[Message]) -> None:
        item.done.set()

    def _end(self, item: End, pulled: List[Message]) -> None:
        self._to_pull(pulled)  # what came before the end goes in first
        pulled.clear()
        self.pull.close()

    def finish(self) -> None:
        """The end of the stream at `stop` (the dispatcher's last batch). A store that
        keeps held messages (`Store.keeps_held`) is given those held behind open gaps:
        the gaps are not declared lost and the stored positions stay before them, so
        the next run with the store asks the server for the gaps again and delivers
        the held messages once they are filled (or given up): nothing is lost, nothing
        repeated. Declaring them lost here would move the stored position past them,
        and a restarted process could no longer ask for what the server still has.
        Without such a store (or if keeping them fails), the gaps are lost as at
        give-up (`END`): the held messages are stored and delivered, within `stop`'s time;
        so too with ``seq_scope="connection"``, whose gaps no later connection can fill."""
        store = self.store
        if store is not None and store.keeps_held and not self.tracker.per_connection:
            held = self.tracker.held_messages()
            try:
                store.keep_held(held, self._raw_is_payload)
            except Exception as exc:
                self._store_failed(exc, len(held))
            else:
                self.tracker.forget_held()
                if held:
                    log.info("%s: %d message(s) held behind a gap are kept in the store: the next run with it asks "
                             "for the gap again, then delivers them", self.name, len(held))
                return
        self.handle([END])

    # -- sequence tracking --------------------------------------------------------------------
    def _track(self, batch: List[Item]) -> List[Item]:
        """Run the batch through the sequence tracker: duplicates out, held
        messages released in order, gap and duplicate news as signals."""
        tracker = self.tracker
        advance = tracker.advance
        out: List[Item] = []
        now = time.monotonic()
        for item in batch:
            if item.__class__ is Message:
                if (item.seq is None and item.id is None) or advance(item):  # (the steady state: no outcome)
                    out.append(item)
                else:
                    self._tracked(tracker.offer(item, now), out, item)
            elif item is EXPIRE:
                for outcome in tracker.expire(now):
                    self._tracked(outcome, out, None)
            elif item is NEW_CONNECTION:
                for outcome in tracker.new_connection(now):
                    self._tracked(outcome, out, None)
            elif item is END:
                for outcome in tracker.finish(now):
                    self._tracked(outcome, out, None)
                out.append(item)
            else:
                out.append(item)
        positions = tracker.positions()
        if positions != self.positions or tracker.resets != self.resets:  # (an epoch may change at the same seq)
            self.positions = positions
            self.epochs = tracker.epochs()
            self.resets = tracker.resets
        return out

    def _tracked(self, outcome: Outcome, out: List[Item], message: Optional[Message]) -> None:
        gap_signal = self.signals.gap
        if outcome.reset is not None:  # (one test on the hot path: `before` comes with a reset only)
            for earlier in outcome.before:  # the reset gave up the old numbering's gaps first
                self._tracked(earlier, out, None)
            self._reset(outcome.reset, out)
        if outcome.duplicate:
            self.duplicates += 1
            stream = message.stream if message is not None else None
            if stream not in self._warned:
                self._warned.add(stream)
                log.warning(
                    "%s: dropped a message of stream %r as a duplicate (seq %s, id %r seen before); more are counted in "
                    "stats.duplicates. The codec names the fields that say so (seq_field, id_field): if this server "
                    "numbers per connection, pass seq_scope='connection'; if it reuses ids, name neither (JsonCodec() does not)",
                    self.name, stream, getattr(message, "seq", None), getattr(message, "id", None),
                )
            if self.signals.duplicate.receivers:
                out.append(Emit(self.signals.duplicate, {"message": message}))
            return
        if outcome.opened is not None:
            self.gaps += 1
            gap = outcome.opened
            log.info("%s: gap in stream %r: ids %d..%d missing; %s", self.name, gap.stream, gap.first, gap.last,
                     "delivering on (one counter across streams)" if self.tracker.global_seq else "holding later messages back")
            out.append(Emit(gap_signal, {"stream": gap.stream, "first": gap.first, "last": gap.last, "status": "open"}))
            self._want_resume()
        if outcome.lost is not None:
            gap = outcome.lost
            self.lost += gap.count
            log.warning("%s: stream %r: %d message(s) (ids %d..%d) never arrived; going on without them",
                        self.name, gap.stream, gap.count, gap.first, gap.last)
            out.append(Emit(gap_signal, {"stream": gap.stream, "first": gap.first, "last": gap.last, "status": "lost"}))
        out.extend(outcome.ready)
        if outcome.filled is not None:
            gap = outcome.filled
            out.append(Emit(gap_signal, {"stream": gap.stream, "first": gap.first, "last": gap.last, "status": "filled"}))

    def _reset(self, reset: Reset, out: List[Item]) -> None:
        """A seq back after a reconnect, or a new epoch: logged, and said on ``reset``."""
        epoch = "" if reset.epoch is None else f", epoch {reset.epoch!r}"
        if reset.restarted:
            identical = (f" ({reset.identical} message(s) before it on this connection were identical to the old "
                         f"numbering's and dropped: an epoch_field would tell)") if reset.identical else ""
            log.warning("%s: stream %r numbers afresh (%s): seq %d after position %d%s; delivering from it%s",
                        self.name, reset.stream, reset.why, reset.seq, reset.last, epoch, identical)
        elif reset.why == "stale":
            log.warning("%s: stream %r: seq %d of an earlier epoch%s (now %r): a stale replay, dropped as a duplicate",
                        self.name, reset.stream, reset.seq, epoch, self.tracker.epochs().get(reset.stream))
        else:
            log.warning("%s: stream %r went back to seq %d after position %d on a new connection%s, and nothing is "
                        "known about that seq: dropped as a duplicate (on_reset='drop'). If this server restarts its "
                        "numbering, pass on_reset='restart', seq_scope='connection' or the codec's epoch_field",
                        self.name, reset.stream, reset.seq, reset.last, epoch)
        out.append(Emit(self.signals.reset, {"stream": reset.stream, "last": reset.last, "seq": reset.seq,
                                             "epoch": reset.epoch, "why": reset.why, "restarted": reset.restarted,
                                             "identical": reset.identical}))

    # -- the store ----------------------------------------------------------------------------
    def _store(self, items: List[Item]) -> Tuple[Optional[Iterator[int]], int]:
        """Write the batch's new messages (`Store.append`): the keys of those stored, in
        order, and where the items start that it did not store, once it stored some
        (``len(items)`` when it stored all, or none: those are reported and delivered unstored)."""
        messages = [item for item in items if item.__class__ is Message]
        if not messages:
            return None, len(items)
        try:
            first = self.store.append(  # type: ignore[union-attr]
                messages, {} if self.tracker.per_connection else self.positions, self._raw_is_payload, self.epochs)
        except Exception as exc:
            if not isinstance(exc, StoreError) or not exc.stored or exc.first is None:
                self._store_failed(exc, len(messages))
                return None, len(items)
            self.given += exc.stored
            at = [i for i, item in enumerate(items) if item.__class__ is Message]  # the first not stored is the cut
            return iter(range(exc.first, exc.first + exc.stored)), at[exc.stored] if exc.stored < len(at) else len(items)
        self.given += len(messages)
        return iter(range(first, first + len(messages))), len(items)

    def _store_failed(self, exc: Exception, count: int) -> None:
        """A store write failed: count it, log it, say it on ``error``; delivery goes on."""
        self.store_errors += 1
        error = exc if isinstance(exc, StoreError) else StoreError(f"{self.store!r} failed: {exc!r}")
        log.error("%s: %s; delivering %d message(s) without storing them", self.name, error, count)
        deliver(self.signals.error, self.owner, self.reporter.listener_failed, error=error, context="store", count=count)
