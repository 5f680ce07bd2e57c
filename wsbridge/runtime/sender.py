"""Sending: the send buffer (outbox), its lock, the flush after a connect, the resume request.

`Sender` owns everything on the way out. ``send`` (any thread) writes
straight to the open connection when the buffer is empty, else buffers;
the supervisor `flush`-es the buffer in order after every (re)connect (once
the handshake, `wsbridge.runtime.session`, is done) and only then opens the
connection for direct sends, so a new message never overtakes a buffered one.
The recorded subscriptions live here too (`subscribe`): the handshake sends
them on every connection; one recorded after it went out on the connection
of the moment is sent like any other frame, in order, but for that connection
only (a frame `Queued.bound` to it, never kept in the store), so a
subscription goes out once per connection, never twice.

Everything here is guarded by ``cond``; the counters are written under it.
No socket write ever happens under ``cond`` (a peer that does not read must
not hold other senders): frames are kept whole by websocket-client's send lock. A send with a ``timeout`` that the
socket does not take in time goes to the buffer, and the supervisor flushes
it once the socket takes frames again. Once a close frame went out on a
connection, the connection refuses every data frame under that same lock
(`CloseFrameSent`): a send (or a flush) that meets the refusal keeps its frame in
the buffer, counted as not sent, for the next connection.

What cannot be encoded raises in `frame`, in the caller's thread, before
anything is queued: a frame in the buffer can always be sent.

Each user's send has a `SendHandle` (`wsbridge.runtime.outcomes`) that this module moves
on under ``cond``. With an `AckRule` (``ack``), a frame with an id leaves the buffer for
``unacked`` as it is written (registered before the write: its ack may come at once) and
stays there, and in the store, until the server acknowledges it (`correlate`, on the
reader thread); the flush on the next connection puts whatever another connection
left unacknowledged back at the head of the buffer, in order (at least once: the
server may get a message twice and dedups by its id). At most ``ack_window`` frames
are unacknowledged: past that, frames wait in the buffer, under its overflow rules.
An id awaits one ack at a time: a send whose id a message still awaiting its ack carries
is refused (``awaiting``). A frame with a ``ttl`` keeps its deadline in the store too
(wall-clock), so a later run does not write it past it.
Requests (`request`) wait under ``cond`` too, for the message that carries their id,
matched on the reader thread before it is dispatched (`correlate`); a request given up
on (timed out, connection lost) is taken out of the buffer and the store if not written yet.
While the dispatcher thread itself waits here (a subscriber's `request` or `SendHandle.wait`),
the reader does not wait for room in the dispatch queue (``unbounded``): else the reply,
behind a full queue only that subscriber drains, would never be read.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from typing import Any, Callable, ContextManager, Dict, Hashable, List, Mapping, Optional, Tuple, Union

from ..codecs import Codec
from ..errors import ClientClosed, CloseFrameSent, ConnectionLost, OutboxFull, StoreError, StoreFull, WsbridgeError
from ..message import Message
from ..tracking.outbox import Outbox
from ..tracking.sequence import Positions
from ..tracking.store import Store
from ..wire.connection import Connection
from .outcomes import ACKNOWLEDGED, DROPPED, EXPIRED, QUEUED, SENT, AckRule, SendHandle, stamp
from .subscriptions import Subscription

log = logging.getLogger("wsbridge")

Sendable = Union[str, bytes, bytearray, memoryview, Message, Mapping[str, Any]]
OutFrame = Tuple[Union[str, bytes], bool]
ResumeBuilder = Callable[[Positions], Optional[Sendable]]
Kept = Tuple[int, Union[str, bytes], bool, Optional[float]]
"""A frame kept in the store: ``(key, data, binary, expires)`` (`Store.outbox_items`)."""

FLUSH_BATCH = 512
FLUSH_BATCH_BYTES = 256 * 1024
"""The send buffer is flushed in writes of at most this many frames / bytes."""

FLUSH_FORGET_EVERY = 256
"""Kept frames the socket took are forgotten by the store in batches of this many
(a crash in between sends those again: at least once, never lost)."""

_thread = threading.local()


def _wall(item: SendHandle) -> Optional[float]:
    """``item``'s ttl deadline as wall-clock time (`time.time`), to keep in the store:
    monotonic time does not carry over to another process."""
    return None if item.expires is None else time.time() + (item.expires - time.monotonic())


def mark_hook_thread(session: Any = None) -> None:
    """This thread runs connect hooks (`wsbridge.runtime.session`), in ``session``."""
    _thread.hook = True
    _thread.session = session


def hook_session() -> Any:
    """The `Session` of the connect hook this thread runs (None: not a hook's thread)."""
    return getattr(_thread, "session", None)


def in_connect_hook() -> bool:
    """Does this thread run connect hooks? Its `Sender.send` never waits for room in the
    send buffer nor finds it full: the buffer drains only once the hooks are done."""
    return getattr(_thread, "hook", False)


Queued = SendHandle
"""A frame in the send buffer: the user's handle on it, or a subscription's frame (``bound``)."""


class Counts:
    """The sender's counters (written under the sender's lock)."""

    __slots__ = ("sent", "queued", "flushed", "dropped", "store_errors", "resumes", "expired", "acked", "resent")

    def __init__(self) -> None:
        self.sent = self.queued = self.flushed = self.dropped = self.store_errors = self.resumes = 0
        self.expired = self.acked = self.resent = 0


class Sender:
    def __init__(
        self,
        codec: Codec,
        outbox: Outbox,
        *,
        resume: Optional[ResumeBuilder],
        closed: Callable[[], Optional[str]],
        report: Callable[..., None],
        emit_dropped: Callable[[int], None],
        wake: Callable[[], None],
        outbox_timeout: Optional[float],
        name: str,
    ) -> None:
        self.codec = codec
        self.outbox = outbox
        self.store: Optional[Store] = None
        """Where queued frames are kept, once it is open (see `keep_in`)."""
        self.resume = resume
        self._closed = closed  # why nothing can be sent (None: it can)
        self._report = report
        self._emit_dropped = emit_dropped
        self._wake = wake  # the supervisor: frames wait in the buffer while connected
        self._outbox_timeout = outbox_timeout
        self.name = name
        self.cond = threading.Condition()
        self.live: Optional[Connection] = None
        """Open and flushed: sends go straight out. Set only while the buffer is empty."""
        self.inflight: List[Queued] = []
        """The head of the buffer being flushed (kept until the socket took it)."""
        self.sending = 0
        """Threads inside a socket write right now (`stop` cuts rather than wait for them)."""
        self.direct: Optional[Connection] = None
        """The connection of the last direct send (its rest may still be being written)."""
        self.flushing: Optional[Connection] = None
        """The connection a flush (or the handshake before it) is writing to (supervisor),
        for `close` to cut."""
        self.subscriptions: List[Subscription] = []
        """Recorded, in order; replaced, never changed in place."""
        self.subscribed_on: Optional[Connection] = None
        """The connection whose handshake sent the subscriptions (supervisor)."""
        self.counts = Counts()
        # Requests and acknowledged sends (set by the client before start; see the module docstring).
        self.ack: Optional[AckRule] = None
        self.ack_window = 1000
        self.request_field = "id"
        self.unacked: Dict[Hashable, Queued] = {}
        """Written, not acknowledged yet, in the order written; keyed by ack id."""
        self.awaiting: Dict[Hashable, Queued] = {}
        """Every send awaiting its ack (queued, being written or unacknowledged), by ack id:
        an id is awaited once at a time (`send` refuses a second)."""
        self.replies: Dict[Hashable, List[Optional[Message]]] = {}
        """The requests waiting: id -> [reply] (None until it came)."""
        self.watchers = 0
        """Threads waiting on ``cond`` for a handle or a reply (notified only then)."""
        self.expiring = 0
        """Frames with a ``ttl`` in the buffer (the flush looks for expired ones only then)."""
        self.unbounded: Callable[[], ContextManager[Any]] = contextlib.nullcontext
        """Set by the client (`Dispatcher.unbounded`): around a wait that only the reader
        can end, so the reader never waits on the dispatch queue for the waiting thread."""
        self.correlating: Callable[[], None] = lambda: None
        """Set by the client: from now on the reader shows every message to `correlate`
        (called at the first request; at start with an ack rule)."""
        self._ids = itertools.count(1)
        self._id_prefix = f"{os.urandom(4).hex()}-"

    # -- any thread -----------------------------------------------------------------
    def frame(self, obj: Sendable) -> OutFrame:
        """``obj`` as ``(data, binary)``: text as `str`, binary as `bytes`.
        Raises `ValueError` (or the codec's `TypeError`) for what cannot be sent."""
        if isinstance(obj, str):
            data: Union[str, bytes] = obj
            binary = False
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            return bytes(obj), True
        else:
            data, binary = self.codec.encode(obj)
        if not binary:
            try:
                if isinstance(data, str):
                    data.encode("utf-8")
                else:  # a codec may hand text over as bytes: they must be UTF-8
                    bytes(data).decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"cannot send a text frame that is not valid UTF-8 ({exc.reason} at {exc.start}): "
                    "a lone surrogate? Send bytes for binary data"
                ) from None
        return data, binary

    def new_id(self) -> str:
        """A fresh id for a message that has none: this client's random prefix and a count."""
        return f"{self._id_prefix}{next(self._ids)}"

    def send(self, obj: Sendable, timeout: Optional[float] = None, ttl: Optional[float] = None) -> SendHandle:
        """Send ``obj`` now or buffer it (see `Client.send`); ``timeout`` bounds the
        wait for room in the buffer and for the socket, together; a frame still in the
        buffer ``ttl`` s from now is never written."""
        ack_id = None
        if self.ack is not None:
            obj, ack_id = stamp(obj, self.ack.id_field, self.new_id)
        data, binary = self.frame(obj)
        item = Queued(self, data, binary, None, None, ack_id, None if ttl is None else time.monotonic() + ttl)
        if ack_id is None:
            self._send(item, timeout)
            return item
        with self.cond:
            if ack_id in self.awaiting:  # its ack could not tell the two apart: one would never resolve
                raise ValueError(f"a message with {self.ack.id_field}={ack_id!r} awaits its ack already "  # type: ignore[union-attr]
                                 "(an id is sent once until acknowledged)")
            self.awaiting[ack_id] = item
        try:
            self._send(item, timeout)
        except BaseException:  # nothing was queued (OutboxFull, StoreFull, ClientClosed)
            with self.cond:
                if self.awaiting.get(ack_id) is item:
                    del self.awaiting[ack_id]
            raise
        return item

    def _send(self, item: Queued, timeout: Optional[float]) -> None:
        """Send ``item`` now or buffer it; one ``bound`` to a connection (see `Queued`)
        only while it is wanted there, and whatever the buffer's bound."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bound = item.bound
        with self.cond:
            self._check_open()
            if bound is not None:
                if not self._wanted(bound, self.subscribed_on if isinstance(bound, Subscription) else bound):
                    return
            elif self.outbox.full and self.outbox.overflow == "block" and not in_connect_hook():
                self._wait_for_room(self._outbox_timeout if timeout is None else timeout)
            conn = self.live  # set only while the buffer is empty: a direct send cannot overtake
            if conn is not None and item.ack_id is not None:
                if len(self.unacked) >= self.ack_window:  # the window is full: it waits, and what follows
                    conn = self.live = None
                else:
                    if self.store is not None:  # kept until acknowledged, also across a restart
                        item.key = self._keep(self.store.outbox_add, item.data, item.binary, _wall(item))
                    self.unacked[item.ack_id] = item  # before the write: its ack may come at once
            if conn is not None:
                if isinstance(bound, Subscription):
                    bound.sent_on = conn
                item.conn = conn
                self.sending += 1
                self.direct = conn
        if conn is not None and self._write(conn, item, deadline):
            return
        dropped = None
        with self.cond:
            if conn is not None and self.live is conn:
                self.live = None  # what comes next queues behind this frame, until the supervisor flushed it
                self._wake()
            if item.ack_id is not None and conn is not None:
                if self.unacked.get(item.ack_id) is not item:
                    return  # acknowledged meanwhile, or already back in the buffer (a new connection's flush)
                del self.unacked[item.ack_id]
            dropped = self._queue(item)
            if dropped is not None:
                self.counts.dropped += 1
                total = self.counts.dropped
        if dropped is not None:
            log.warning("%s: send buffer full; dropped the oldest unsent message (%d dropped so far)", self.name, total)
            self._emit_dropped(1)

    def _write(self, conn: Connection, item: Queued, deadline: Optional[float]) -> bool:
        """A direct send, without the lock: True once the socket took the frame (or
        part of it, the connection writing the rest); False when it is to be buffered
        (the socket took nothing by ``deadline``, or the connection failed)."""
        frame = (item.data, item.binary)
        try:
            if deadline is None:
                conn.send(*frame)
                taken = True
            else:
                taken = conn.send_within(*frame, deadline, on_lost=lambda: self._requeue(item))
        except CloseFrameSent:  # the connection is closing: the frame waits for the next one
            taken = False
        except Exception as exc:
            log.info("%s: send failed (%s); buffering and reconnecting", self.name, exc)
            conn.abort()
            taken = False
        else:
            if not taken:
                log.debug("%s: the socket took nothing within the send's timeout; the frame waits in the send buffer",
                          self.name)
        with self.cond:
            self.sending -= 1
            if taken:
                self.counts.sent += 1
                if item._state is QUEUED:  # (its ack may have come first)
                    item._state = SENT
                    self._written(item)
                    if self.watchers:
                        self.cond.notify_all()
        return taken

    def _requeue(self, item: Queued) -> None:
        """A frame the socket took only in part before its connection failed (the
        connection's writer thread): first in the buffer again, sent whole on the
        next connection (at least once)."""
        with self.cond:
            if item._state is DROPPED:
                return  # a request given up on (`_withdraw`)
            if item.ack_id is not None:
                if self.unacked.get(item.ack_id) is not item:
                    return  # already back in the buffer (a new connection's flush)
                del self.unacked[item.ack_id]
            item._state = QUEUED
            if item.key is None and self.store is not None:
                item.key = self._keep(self.store.outbox_add, item.data, item.binary, _wall(item))
            self.outbox.restore([item])
            self.counts.queued += 1
            self.cond.notify_all()

    def _check_open(self) -> None:
        why = self._closed()
        if why:
            raise ClientClosed(f"{self.name} is {why}; nothing can be sent")

    def _queue(self, item: Queued) -> Optional[Queued]:
        """Append to the buffer (and keep it in the store, unless ``bound``); return what
        the overflow policy dropped. Lock held."""
        if item.bound is not None:
            self.outbox.put(item, force=True)
            self.counts.queued += 1
            return None
        if item.key is None and self.store is not None:  # (else kept already: a direct send awaiting its ack)
            # A store without room for it refuses the send (`StoreFull`): the caller still has the frame.
            item.key = self._keep(self.store.outbox_add, item.data, item.binary, _wall(item), refuse_full=True)
        # A connect hook's send is never refused for a full buffer: only the end of the
        # hooks can drain it (under drop_oldest, the oldest go as for any send).
        force = self.outbox.full and self.outbox.overflow != "drop_oldest" and in_connect_hook()
        try:
            dropped = self.outbox.put(item, keep=len(self.inflight), force=force)
        except OutboxFull:
            self._forget(item.key)
            raise
        self.counts.queued += 1
        if item.expires is not None:
            self.expiring += 1
        if dropped is not None:
            self._forget(dropped.key)
            self._settle(dropped, DROPPED)
        return dropped

    def _settle(self, item: Queued, state: str) -> None:
        """``item`` left the buffer unwritten (``state``: dropped or expired). Lock held."""
        item._state = state
        if item.expires is not None:
            self.expiring -= 1
        if item.ack_id is not None and self.awaiting.get(item.ack_id) is item:
            del self.awaiting[item.ack_id]
        if self.watchers:
            self.cond.notify_all()

    def _expire(self) -> None:
        """Remove the frames whose ``ttl`` passed from the buffer, never written (not
        those being written now), counted. Lock held."""
        now = time.monotonic()
        gone = self.outbox.remove_if(
            lambda q: q.expires is not None and q.expires <= now,
            keep=len(self.inflight),
        )
        for item in gone:
            self._forget(item.key)
            self._settle(item, EXPIRED)
        if gone:
            self.counts.expired += len(gone)
            log.info("%s: %d message(s) expired in the send buffer (their ttl passed), never sent", self.name, len(gone))

    def expire_due(self) -> None:
        """Remove what passed its ``ttl`` from the buffer now (`SendHandle.state`, and the
        supervisor's tick, so the counts and the store say so while nothing is flushed).
        Not once the client stopped: what it left stays as `unsent` says (the next run
        with the store expires it as it loads it)."""
        if self.expiring and not self._closed():
            with self.cond:
                if self.expiring:
                    self._expire()

    def _written(self, item: Queued) -> None:
        """``item`` was written: a ttl no longer applies (nor to a resend), in the store
        neither, where it stays until acknowledged. Lock held."""
        item.expires = None
        if item.ack_id is not None and item.key is not None and self.store is not None:
            self._keep(self.store.outbox_written, item.key)

    def _forget(self, key: Optional[int], through: bool = False) -> None:
        if key is not None and self.store is not None:
            self._keep(self.store.outbox_remove_through if through else self.store.outbox_remove, key)

    def _keep(self, operation: Callable[..., Any], *args: Any, refuse_full: bool = False) -> Any:
        """A send-buffer operation on the store. A failure is reported, not
        raised: the frame is still in memory (only a crash could lose it now);
        but with ``refuse_full``, `StoreFull` is raised (nothing was queued)."""
        try:
            return operation(*args)
        except Exception as exc:
            if refuse_full and isinstance(exc, StoreFull):
                raise
            self.counts.store_errors += 1
            self._report(exc if isinstance(exc, StoreError) else StoreError(f"{self.store!r} failed: {exc!r}"), "store")
            return None

    def _wait_for_room(self, timeout: Optional[float]) -> None:
        """The ``block`` policy: wait (lock released) until the flush makes room."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.unbounded():  # from a subscriber: room may wait on acks only the reader can bring
            while self.outbox.full:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise OutboxFull(f"send buffer still full ({self.outbox.maxsize} messages) after {timeout} s")
                self.cond.wait(remaining)
                self._check_open()

    def unsent(self) -> List[OutFrame]:
        """What the user's sends left in the buffer, the unacknowledged first (not the
        subscriptions' frames: the records are this client's)."""
        with self.cond:
            return [(q.data, q.binary) for q in [*self.unacked.values(), *self.outbox.items()] if q.bound is None]

    # -- outcomes, acks and replies ---------------------------------------------------------
    def wait_handle(self, handle: SendHandle, timeout: Optional[float]) -> str:
        """`SendHandle.wait`: until it is done, or ``timeout``; a ``ttl`` that passes
        meanwhile expires the frame (if still in the buffer) without waiting for a flush."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.cond, self.unbounded():
            self.watchers += 1
            try:
                while not handle.done:  # (reading its state expires it, past its ttl)
                    now = time.monotonic()
                    self._check_open()
                    remaining = None if deadline is None else deadline - now
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"the message is still {handle._state} after {timeout} s")
                    expires = handle.expires
                    if expires is not None and expires > now and handle._state is QUEUED:  # then expire it here
                        remaining = expires - now if remaining is None else min(remaining, expires - now)
                    self.cond.wait(remaining)
                return handle._state
            finally:
                self.watchers -= 1

    def correlate(self, message: Message) -> None:
        """An ack, or the reply to a request (reader thread, before the message is
        dispatched: one waiting in a subscriber gets it; subscribers still get it too).
        wsbridge's own quick tests only: no user code runs here."""
        payload = message.payload
        if not isinstance(payload, dict):
            return
        ack = self.ack
        try:
            if ack is not None and message.type == ack.type:
                acked = payload.get(ack.field)
                if acked is not None and acked in self.unacked:
                    self._acked(acked)
                return  # an ack is never a reply
            if self.replies:
                rid = payload.get(self.request_field)
                if rid is not None:
                    with self.cond:
                        waiting = self.replies.get(rid)
                        if waiting is not None and waiting[0] is None:
                            waiting[0] = message
                            self.cond.notify_all()
        except TypeError:  # an id that cannot be a key (a list): no message of ours has it
            return

    def _acked(self, ack_id: Hashable) -> None:
        with self.cond:
            item = self.unacked.pop(ack_id, None)
            if item is None:
                return
            if self.awaiting.get(ack_id) is item:
                del self.awaiting[ack_id]
            item._state = ACKNOWLEDGED
            self.counts.acked += 1
            self._forget(item.key)
            if self.watchers:
                self.cond.notify_all()
            if self.live is None and self.outbox:
                self._wake()  # the window may have had no room: the buffer is flushed again

    def request(self, obj: Sendable, timeout: float, resend: bool, session: Any = None) -> Message:
        """Send ``obj`` with an id in ``request_field`` and return the first message
        that carries that id (`Client.request`). ``session``: a connect hook's, which
        sends on its connection now rather than through the buffer."""
        deadline = time.monotonic() + timeout
        obj, rid = stamp(obj, self.request_field, self.new_id)
        if rid is None:
            raise ValueError(f"request() sends a mapping (or a Message of one), to carry its id in "
                             f"{self.request_field!r}; not {type(obj).__name__}")
        frame = self.frame(obj)
        self.correlating()
        waiting: List[Optional[Message]] = [None]
        with self.cond:
            self._check_open()
            if rid in self.replies:
                raise ValueError(f"a request with {self.request_field}={rid!r} is waiting already")
            self.replies[rid] = waiting  # before the send: the reply may come at once
        try:
            with self.unbounded():
                return self._await_reply(frame, rid, waiting, deadline, timeout, resend, session)
        finally:
            with self.cond:
                if self.replies.get(rid) is waiting:
                    del self.replies[rid]

    def _await_reply(self, frame: OutFrame, rid: Hashable, waiting: List[Optional[Message]], deadline: float,
                     timeout: float, resend: bool, session: Any) -> Message:
        handle: Optional[SendHandle] = None
        conn: Optional[Connection] = None
        while True:
            if session is not None:  # a connect hook: on its connection, now (the buffer waits for the hook)
                conn = session._conn
                session._send(frame)
            else:
                handle = Queued(self, frame[0], frame[1])
                self._send(handle, max(0.0, deadline - time.monotonic()))
            try:
                if self._reply_or_lost(handle, conn, rid, waiting, deadline, timeout):
                    return waiting[0]  # type: ignore[return-value]
                if not resend or session is not None:
                    raise ConnectionLost(f"the connection the request {self.request_field}={rid!r} went out on "
                                         "ended before its reply came")
            except BaseException:
                if handle is not None:
                    self._withdraw(handle)
                raise
            if handle is not None:
                self._withdraw(handle)  # sent once more below: not also by `_requeue`
            log.info("%s: the connection of request %s=%r ended; sending it again", self.name, self.request_field, rid)

    def _reply_or_lost(self, handle: Optional[SendHandle], conn: Optional[Connection], rid: Hashable,
                       waiting: List[Optional[Message]], deadline: float, timeout: float) -> bool:
        """Wait for the reply (True) or the end of the connection the request went out on
        (False); `TimeoutError`, `OutboxFull` (dropped), `ClientClosed`."""
        with self.cond:
            self.watchers += 1
            try:
                while waiting[0] is None:
                    self._check_open()
                    if handle is not None:
                        if handle._state is DROPPED:
                            raise OutboxFull(f"the request {self.request_field}={rid!r} was dropped from the "
                                             "full send buffer (outbox_overflow='drop_oldest')")
                        conn = handle.conn if handle._state is SENT else None
                    if conn is not None and conn.ended.is_set():
                        return False  # the connection it went out on is gone: no reply can come on it
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no reply to {self.request_field}={rid!r} within {timeout} s")
                    self.cond.wait(remaining)
                return True
            finally:
                self.watchers -= 1

    def _withdraw(self, item: Queued) -> None:
        """A request given up on (no reply: timed out, its connection lost, the client
        stopped): out of the buffer and the store if not written yet, and never sent again
        (not by `_requeue` either). One being written now goes out."""
        with self.cond:
            was, item._state = item._state, DROPPED
            if was is not QUEUED or not self.outbox.remove_if(lambda q: q is item, keep=len(self.inflight)):
                return
            if not self._closed():
                self._forget(item.key)
            elif item.key is not None and self.store is not None:
                try:  # stopping: the store may be closed already (then the next run sends it)
                    self.store.outbox_remove(item.key)
                except StoreError as exc:
                    log.debug("%s: a request given up on stays in the store (%s)", self.name, exc)

    # -- recorded subscriptions (any thread) --------------------------------------------
    def subscribe(self, sub: Subscription, positions: Positions) -> None:
        """Record ``sub``. Once the handshake of the connection of the moment sent the
        others, it is sent now, in order with other sends; else the next handshake sends it."""
        with self.cond:
            self._check_open()
            self.subscriptions = [*self.subscriptions, sub]
            now = self._wanted(sub, self.subscribed_on)
        if now:
            try:
                frame = sub.frame(positions, self.frame)
            except BaseException:  # the caller's callable failed: nothing is recorded
                self.unsubscribe(sub, None)
                raise
            if frame is not None:
                self._send(Queued(self, frame[0], frame[1], None, sub), None)

    def unsubscribe(self, sub: Subscription, message: Optional[Sendable]) -> bool:
        """Forget ``sub`` (False: it was not recorded); send ``message`` (if any) on the
        connection it went out on, if that is still the connection of the moment."""
        frame = self.frame(message) if message is not None else None  # raises before anything changes
        with self.cond:
            if not sub.active:
                return False
            sub.active = False
            self.subscriptions = [s for s in self.subscriptions if s is not sub]
            on = sub.sent_on
        if frame is not None and on is not None:
            self._send(Queued(self, frame[0], frame[1], None, on), None)
        return True

    def _wanted(self, bound: Union[Subscription, Connection], conn: Optional[Connection]) -> bool:
        """Is a frame ``bound`` to one connection still to go out on ``conn``? (Lock held.)"""
        if conn is None or not conn.is_open:
            return False
        if isinstance(bound, Subscription):
            return bound.active and bound.sent_on is not conn
        return bound is conn

    # -- the handshake (supervisor thread) -----------------------------------------------
    def subscriptions_for(self, conn: Connection) -> List[Subscription]:
        """The subscriptions to send in ``conn``'s handshake, in order; one recorded from
        now on goes out on ``conn`` as a frame of its own (see `subscribe`)."""
        with self.cond:
            self.subscribed_on = conn
            return self.subscriptions

    def claim(self, sub: Subscription, conn: Connection) -> bool:
        """Is ``sub`` still to go out on ``conn``? Then it counts as sent there."""
        with self.cond:
            return self._take(sub, conn)

    def send_on(self, conn: Connection, frame: OutFrame, deadline: float) -> None:
        """Write ``frame`` on ``conn`` now, for that connection only: `TimeoutError`
        when the socket took nothing by ``deadline`` (`time.monotonic`); raises if
        the connection is gone."""
        if not conn.send_within(*frame, deadline, on_lost=lambda: None):
            raise TimeoutError("the socket took nothing in the time left")
        with self.cond:
            self.counts.sent += 1

    def keep_in(self, store: Store, kept: List[Kept]) -> None:
        """The store is open (at start): the frames ``kept`` in it by an earlier run go
        first, each with what is left of its ``ttl`` (kept as a wall-clock deadline);
        the frames queued before it opened are kept in it now, in order, and every
        frame queued from now on."""
        with self.cond:
            self.store = store
            early = self.outbox.clear()
            for q in early:
                q.key = self._keep(store.outbox_add, q.data, q.binary, _wall(q))
            now, wall = time.monotonic(), time.time()
            earlier = []
            for key, data, binary, expires in kept:
                q = Queued(self, data, binary, key, None, self._kept_id(data, binary),
                           None if expires is None else now + (expires - wall))
                if q.ack_id is not None:
                    self.awaiting[q.ack_id] = q
                if q.expires is not None:
                    self.expiring += 1
                earlier.append(q)
            self.outbox.restore(earlier + early)

    def _kept_id(self, data: Union[str, bytes], binary: bool) -> Optional[Hashable]:
        """With an ack rule, a frame an earlier run kept awaits its ack again, by the id
        it carries (read back through the codec, once, at start). One whose id another
        awaits already (an earlier version kept both) is sent once, no ack awaited."""
        if self.ack is None:
            return None
        try:
            messages = self.codec.decode(data.encode("utf-8") if isinstance(data, str) else data, binary, 0.0)
        except Exception:
            return None
        payload = messages[0].payload if messages else None
        ack_id = payload.get(self.ack.id_field) if isinstance(payload, dict) else None
        try:
            return None if ack_id in self.awaiting else ack_id
        except TypeError:  # not a key (a list): no ack can name it
            return None

    def all_kept(self) -> bool:
        """Is every frame in the buffer kept in the store too?"""
        with self.cond:
            return all(q.key is not None for q in self.outbox.items())

    def wait_empty(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the buffer is empty (every frame handed to
        a socket); the lock too is waited for no longer (a write may hold it)."""
        deadline = time.monotonic() + timeout
        if not self.cond.acquire(timeout=timeout):
            return False
        try:
            return self.cond.wait_for(lambda: not self.outbox, max(0.0, deadline - time.monotonic()))
        finally:
            self.cond.release()

    def close(self) -> None:
        """No more direct sends; wake senders waiting for room (they see the client closed).
        A socket write under way is cut first, so this never waits behind a peer that
        does not read."""
        conn = self.direct
        if conn is not None and (self.sending or any(t.is_alive() for t in conn.writers)):
            conn.abort()
        conn = self.flushing
        if conn is not None:
            conn.abort()  # nothing is written after stop() returned
        with self.cond:
            self.live = None
            self.cond.notify_all()

    def waiting(self, conn: Connection) -> bool:
        """Do frames wait in the buffer while ``conn`` is open and flushed (a send's
        timeout ran out, or acks made room in the window)? The supervisor then flushes them."""
        with self.cond:
            return (self.live is None and bool(self.outbox) and conn.is_open
                    and (self.ack is None or len(self.unacked) < self.ack_window))

    def drop_live(self, conn: Connection) -> None:
        """``conn`` ended: no more direct sends on it; a request waiting for a reply on it
        learns at once."""
        with self.cond:
            if self.live is conn:
                self.live = None
            if self.watchers:
                self.cond.notify_all()

    # -- supervisor thread ------------------------------------------------------------
    def flush(self, conn: Connection, resume_from: Positions, stopping: threading.Event) -> bool:
        """Send the buffer in order, then the resume request (if ``resume_from``
        names streams); open for direct sends once both are out and nothing more
        waits (so nothing new overtakes them). Also while connected, for frames a
        send's timeout left in the buffer.

        Frames go out in batches (one system call for up to `FLUSH_BATCH`
        frames or `FLUSH_BATCH_BYTES`) and leave the buffer only once the
        socket took the whole batch: a connection lost mid-batch sends the
        batch again on the next one (at least once, never lost).
        """
        self.flushing = conn
        try:
            return self._flush(conn, resume_from, stopping)
        finally:
            self.flushing = None

    def _flush(self, conn: Connection, resume_from: Positions, stopping: threading.Event) -> bool:
        cond = self.cond
        sent_key: Optional[int] = None  # the last kept frame the socket took, not yet forgotten
        unforgotten = 0
        acks = self.ack is not None
        if acks:
            with cond:
                self._resend_unacked(conn)
        while True:
            if stopping.is_set():  # the rest stays buffered (see unsent())
                with cond:
                    if unforgotten:
                        self._forget(sent_key, through=True)
                return False
            with cond:
                if self.expiring:
                    self._expire()
                room = FLUSH_BATCH if not acks else min(FLUSH_BATCH, self.ack_window - len(self.unacked))
                if room <= 0 and self.outbox:  # the window is full: the rest waits for acks (`waiting`)
                    return conn.is_open and not stopping.is_set()
                batch = self.outbox.peek_many(max(0, room))
                if unforgotten and (not batch or unforgotten >= FLUSH_FORGET_EVERY):
                    self._forget(sent_key, through=True)
                    unforgotten = 0
                if not batch and not resume_from:
                    if conn.is_open and not stopping.is_set():
                        self.live = conn
                        cond.notify_all()
                        return True
                    return False
                size = 0
                for n, item in enumerate(batch, 1):
                    size += len(item.data)
                    if size >= FLUSH_BATCH_BYTES:
                        del batch[n:]
                        break
                self.inflight = batch
                frames = [(item.data, item.binary) for item in batch if item.bound is None or self._take(item.bound, conn)]
                if acks:
                    self._track(batch, conn)
            if not batch:  # then the resume request, without the lock; and what was queued meanwhile
                positions, resume_from = resume_from, {}
                if not self.send_resume(conn, positions):
                    return False
                continue
            try:
                if frames:
                    conn.send_many(frames)
            except Exception as exc:
                with cond:
                    self.inflight = []
                    if unforgotten:
                        self._forget(sent_key, through=True)
                    if acks:  # still at the head of the buffer: not unacknowledged on this connection
                        for queued in batch:
                            ack_id = queued.ack_id
                            if ack_id is not None and self.unacked.get(ack_id) is queued:
                                del self.unacked[ack_id]
                log.info("%s: flush interrupted (%s); %d message(s) stay buffered", self.name, exc, len(self.outbox))
                if not isinstance(exc, CloseFrameSent):  # else the close handshake ends it
                    conn.abort()
                return False
            with cond:
                self.inflight = []
                self.outbox.pop_many(len(batch))
                for item in batch:
                    if item._state is QUEUED:  # (its ack may have come first)
                        item._state = SENT
                    if item.expires is not None:
                        self.expiring -= 1
                        self._written(item)
                    if item.ack_id is not None:
                        continue  # kept (in the store too) until acknowledged
                    if item.key is not None:
                        if acks:  # kept frames awaiting acks lie between: forgotten one by one
                            self._forget(item.key)
                            continue
                        sent_key = item.key
                        unforgotten += 1
                self.counts.flushed += len(frames)
                self.counts.sent += len(frames)
                cond.notify_all()

    def _track(self, batch: List[Queued], conn: Connection) -> None:
        """The frames of ``batch`` that await acks are unacknowledged on ``conn`` from
        before the write (an ack may come at once). Lock held."""
        unacked = self.unacked
        for item in batch:
            if item.ack_id is not None:
                item.conn = conn
                unacked[item.ack_id] = item

    def _resend_unacked(self, conn: Connection) -> None:
        """What earlier connections left unacknowledged goes back to the head of the
        buffer, in the order written, to be sent on ``conn`` first. Lock held."""
        old = [item for item in self.unacked.values() if item.conn is not conn]
        if not old:
            return
        for item in old:
            del self.unacked[item.ack_id]
            item._state = QUEUED
        self.outbox.restore(old)
        self.counts.resent += len(old)
        log.info("%s: %d unacknowledged message(s) sent again on the new connection", self.name, len(old))

    def _take(self, bound: Union[Subscription, Connection], conn: Connection) -> bool:
        """Does a frame ``bound`` to one connection go out in this flush on ``conn``? A
        subscription's then counts as sent there. (Lock held.)"""
        if not self._wanted(bound, conn):
            return False
        if isinstance(bound, Subscription):
            bound.sent_on = conn
        return True

    def send_resume(self, conn: Connection, positions: Positions) -> bool:
        """Ask the server for what came after ``positions`` (if there are any),
        from the supervisor thread, without the sender's lock (the send lock keeps
        frames whole). A request that cannot be built or encoded is reported and
        skipped: it must never take the connection down."""
        if self.resume is None or not positions:
            return True
        try:
            request = self.resume(dict(positions))
            if request is None:
                return True
            frame = self.frame(request)
        except Exception as exc:
            self._report(WsbridgeError(f"the resume request could not be built: {exc!r}"), "send")
            return True
        try:
            conn.send(*frame)
        except Exception as exc:
            log.info("%s: resume request not sent (%s)", self.name, exc)
            if not isinstance(exc, CloseFrameSent):  # else the close handshake ends it
                conn.abort()
            return False
        with self.cond:
            self.counts.resumes += 1
            self.counts.sent += 1
        log.debug("%s: resume request sent for %d stream(s)", self.name, len(positions))
        return True
