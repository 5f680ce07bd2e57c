"""The publish/subscribe layer: one set of blinker signals per client.

Lifecycle signals follow blinker's convention (``receiver(sender, **kw)``,
sender = the client). Message subscribers registered with ``client.on(type)``
receive just the `Message`; an adapter bridges the two. Every receiver is
called in isolation: one that raises is reported and the rest still run.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Callable, Dict, Generic, Optional, Protocol, Tuple, TypeVar, overload

from blinker import ANY, Signal

from ..message import Message

MessageHandler = Callable[[Message], Any]
H = TypeVar("H", bound=MessageHandler)
"""A subscriber's own type, kept by `on` / `on_any` (a decorated function stays typed)."""
R = TypeVar("R", bound=Callable[..., Any])
"""The receivers a signal takes (one of the ``*Receiver`` protocols below)."""


# What each signal passes its receivers, as `typing.Protocol`s: ``client.signals.NAME.connect(fn)``
# checks ``fn`` against them. A receiver takes the sender positionally and the keywords by name; its
# ``**kw`` takes the keywords a later version adds (and those it does not name). As in blinker, the
# first parameter is named ``sender`` (a `Client`, or a `StreamConsumer`: its signals send the same).

class ConnectingReceiver(Protocol):
    """``connecting``: an attempt starts (``attempt``: failures in a row before it)."""

    def __call__(self, sender: Any, *, attempt: int, **kw: Any) -> object: ...


class ConnectedReceiver(Protocol):
    """``connected``: the socket is open, the handshake done (``url``, credentials redacted)."""

    def __call__(self, sender: Any, *, url: str, **kw: Any) -> object: ...


class DisconnectedReceiver(Protocol):
    """``disconnected``: the connection ended (``code``, ``reason``: the close frame's, else None;
    ``error``: why, else None)."""

    def __call__(self, sender: Any, *, code: Optional[int], reason: Optional[str], error: Optional[BaseException],
                 **kw: Any) -> object: ...


class ReconnectingReceiver(Protocol):
    """``reconnecting``: a retry is scheduled after ``delay`` seconds."""

    def __call__(self, sender: Any, *, attempt: int, delay: float, **kw: Any) -> object: ...


class GaveUpReceiver(Protocol):
    """``gave_up``: the client will not reconnect (``error``: the last failure, else None)."""

    def __call__(self, sender: Any, *, error: Optional[BaseException], **kw: Any) -> object: ...


class StoppedReceiver(Protocol):
    """``stopped``: the last signal (``replaced_by``: the `Client` that took this one's name, else None)."""

    def __call__(self, sender: Any, *, replaced_by: Any, **kw: Any) -> object: ...


class MessageReceiver(Protocol):
    """``message`` and ``duplicate``: a message delivered, or one dropped as already received."""

    def __call__(self, sender: Any, *, message: Message, **kw: Any) -> object: ...


class ErrorReceiver(Protocol):
    """``error``: something went wrong and the stream goes on (``context``: "decode", "subscriber",
    "send", ...; plus ``message`` or ``frame`` when there is one)."""

    def __call__(self, sender: Any, *, error: BaseException, context: str, **kw: Any) -> object: ...


class DroppedReceiver(Protocol):
    """``dropped``: ``count`` items discarded by the overflow policy of ``what`` ("outbox", "pull", ...)."""

    def __call__(self, sender: Any, *, what: str, count: int, **kw: Any) -> object: ...


class GapReceiver(Protocol):
    """``gap``: seqs ``first`` to ``last`` of ``stream`` are missing (``status``: "open", "filled", "lost")."""

    def __call__(self, sender: Any, *, stream: Optional[str], first: int, last: int, status: str,
                 **kw: Any) -> object: ...


class ResetReceiver(Protocol):
    """``reset``: ``stream`` numbers afresh (see `Client.signals` and the guide's Delivery page)."""

    def __call__(self, sender: Any, *, stream: Optional[str], last: int, seq: int, epoch: Any, why: str,
                 restarted: bool, identical: int, **kw: Any) -> object: ...


class StrongSignal(Signal, Generic[R]):
    """A blinker `Signal` that holds its receivers strongly by default, and is
    safe to connect to and disconnect from while another thread sends.

    blinker's default weak references silently drop a lambda or a closure
    the moment ``connect`` returns; a client's receivers should live as long
    as the client (``disconnect`` removes them). Pass ``weak=True`` for
    blinker's behaviour.

    Every change to the receivers happens under a lock and publishes a new
    tuple of them (copy on write); `receivers_for` returns the tuple of the
    moment, so a send never iterates a dict another thread is changing: a
    receiver connected before a send starts is called by it, one disconnected
    before is not. (blinker itself computes the receivers on every send, a
    measurable share of a message's cost; the tuple is also the cache.)
    """

    def __init__(self, doc: Optional[str] = None) -> None:
        super().__init__(doc)
        self._lock = threading.RLock()  # re-entrant: blinker's weak-reference cleanup may run inside a change
        self._snapshot: Optional[Tuple[Any, ...]] = ()
        self._by_sender_too = False  # has anything connected for one sender only?

    def connect(self, receiver: R, sender: Any = ANY, weak: bool = False) -> R:  # type: ignore[override]
        with self._lock:
            self._by_sender_too = self._by_sender_too or sender is not ANY
            result = super().connect(receiver, sender, weak)
            self._publish()
        return result

    def disconnect(self, receiver: Any, sender: Any = ANY) -> None:
        with self._lock:
            super().disconnect(receiver, sender)
            self._publish()

    def swap(self, old: Any, new: R) -> None:
        """Disconnect ``old`` and connect ``new`` in one change: a send calls one of them."""
        with self._lock:
            Signal.connect(self, new, ANY, False)  # not published yet
            self.disconnect(old)  # publishes both changes

    def _disconnect(self, receiver_id: Any, sender_id: Any) -> None:  # also blinker's weak-reference cleanup
        with self._lock:
            super()._disconnect(receiver_id, sender_id)
            self._publish()

    def _publish(self) -> None:
        """Work out the receivers anew (lock held). Weakly held or sender-specific
        receivers are worked out at each send instead (None)."""
        if self._by_sender_too or any(isinstance(r, weakref.ref) for r in self.receivers.values()):
            self._snapshot = None
        else:
            self._snapshot = tuple(super().receivers_for(ANY))

    def receivers_for(self, sender: Any) -> Tuple[Any, ...]:  # type: ignore[override]
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        with self._lock:
            return tuple(super().receivers_for(sender))


class Subscriber:
    """Adapts ``fn(message)`` to blinker's ``receiver(sender, message=...)``.

    Held strongly (blinker's default weak references would drop the adapter
    at once); `Client.off` disconnects it.
    """

    __slots__ = ("fn", "moved")

    def __init__(self, fn: MessageHandler) -> None:
        self.fn = fn
        self.moved = False
        """Moved here from a client this one replaced (see `Signals.subscribe`)."""

    def key(self) -> Tuple[Any, ...]:
        """What makes two handlers the same one made again: module and qualified name."""
        fn = getattr(self.fn, "__func__", self.fn)  # a bound method: its function's
        return getattr(fn, "__module__", None), getattr(fn, "__qualname__", None) or id(fn)

    def __call__(self, sender: Any, message: Message, **_: Any) -> Any:
        return self.fn(message)

    def __repr__(self) -> str:
        return f"Subscriber({getattr(self.fn, '__qualname__', self.fn)!r})"


class Signals:
    """The signals of one client. Connect with ``client.signals.NAME.connect(fn)``.

    =============  ==========================================================
    connecting     a connection attempt starts (``attempt``)
    connected      the socket is open, the handshake done (connect hooks,
                   subscriptions) and the send buffer flushed
    disconnected   the connection ended (``code``, ``reason``, ``error``)
    reconnecting   a retry is scheduled (``attempt``, ``delay``)
    gave_up        the client will not reconnect (``error``)
    stopped        `stop` was called; the last signal of all
                   (``replaced_by``: the client of the same ``name`` that
                   took this one's place, else None)
    message        every message (``message``)
    error          something went wrong and the stream goes on (``error``,
                   ``context``: "decode", "subscriber", "send", ...; plus
                   ``message`` or ``frame`` when there is one)
    dropped        data was discarded by a stated overflow policy (``what``,
                   ``count``)
    duplicate      a message already received was dropped (``message``)
    gap            sequence ids of a stream are missing (``stream``,
                   ``first``, ``last``, ``status``: "open" when found, then
                   "filled" once they arrived or "lost" when given up)
    reset          a stream numbers afresh from this message on, or went back
                   after a reconnect to a seq nothing is known about, or to
                   an earlier epoch (``stream``, ``last``: its position
                   before, ``seq``: the seq now, ``epoch``: its epoch now or
                   None (the stale one for "stale"), ``why``: "epoch",
                   "content", "unknown" or "stale", ``restarted``: False when
                   dropped as a duplicate instead, ``identical``: messages
                   dropped before it as identical to the old numbering's;
                   see the guide's Delivery page)
    =============  ==========================================================
    """

    NAMES = (
        "connecting", "connected", "disconnected", "reconnecting", "gave_up", "stopped",
        "message", "error", "dropped", "duplicate", "gap", "reset",
    )

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, StrongSignal(name))
        self.types: Dict[str, Signal] = {}
        """The signal of each message type; replaced, never changed in place (read by
        the dispatcher without a lock)."""
        self._lock = threading.Lock()

    connecting: StrongSignal[ConnectingReceiver]
    connected: StrongSignal[ConnectedReceiver]
    disconnected: StrongSignal[DisconnectedReceiver]
    reconnecting: StrongSignal[ReconnectingReceiver]
    gave_up: StrongSignal[GaveUpReceiver]
    stopped: StrongSignal[StoppedReceiver]
    message: StrongSignal[MessageReceiver]
    error: StrongSignal[ErrorReceiver]
    dropped: StrongSignal[DroppedReceiver]
    duplicate: StrongSignal[MessageReceiver]
    gap: StrongSignal[GapReceiver]
    reset: StrongSignal[ResetReceiver]

    def for_type(self, mtype: str) -> Signal:
        """The signal of one message type, created on first use."""
        signal = self.types.get(mtype)
        if signal is None:
            with self._lock:
                signal = self.types.get(mtype)
                if signal is None:
                    signal = StrongSignal(f"type:{mtype}")
                    self.types = {**self.types, mtype: signal}
        return signal

    def subscribed(self) -> bool:
        """Has anything subscribed to messages (`on`, `on_any`, a view)? (Any thread.)"""
        return bool(self.message.receivers) or any(signal.receivers for signal in self.types.values())

    def subscribe(self, signal: Signal, fn: MessageHandler) -> Subscriber:
        """Connect ``fn``; it takes the place of a subscriber that moved here from a
        replaced client and is the same handler made again (`Subscriber.key`): a
        notebook cell run again registers it anew, and it must not run twice."""
        subscriber = Subscriber(fn)
        twin = next((r for r in signal.receivers_for(ANY) if isinstance(r, Subscriber) and r.moved
                     and r.key() == subscriber.key()), None)
        if twin is not None and isinstance(signal, StrongSignal):
            signal.swap(twin, subscriber)  # one change: no message runs both, or neither
        else:
            signal.connect(subscriber)
        return subscriber

    def unsubscribe(self, fn: Callable[..., Any], mtype: Optional[str] = None) -> int:
        """Disconnect ``fn`` (a handler or its `Subscriber`); return how many links were cut."""
        signals = [self.types[mtype]] if mtype is not None and mtype in self.types else []
        if mtype is None:
            signals = [self.message, *self.types.values()]
        cut = 0
        for signal in signals:
            for receiver in list(signal.receivers_for(ANY)):
                # == so that a bound method (a new object at each access) matches itself
                if receiver is fn or (isinstance(receiver, Subscriber) and receiver.fn == fn):
                    signal.disconnect(receiver)
                    cut += 1
        return cut


class Subscribable:
    """``on`` / ``on_any`` / ``off`` over ``self.signals``: the subscription API of
    `Client` and `StreamConsumer` alike. Safe from any thread at any time: a
    subscriber added is called for every message delivered after `on` returned;
    one removed, for none delivered after `off` returned."""

    signals: "Signals"

    def _check_process(self) -> None:
        """Raise if this object may not be used here (a client inherited through fork())."""

    @overload
    def on(self, mtype: str) -> Callable[[H], H]: ...

    @overload
    def on(self, mtype: str, fn: H) -> H: ...

    def on(self, mtype: str, fn: Optional[H] = None) -> Any:
        """Subscribe ``fn(message)`` to messages of type ``mtype``.

        Use as ``x.on("chat", fn)`` or as a decorator ``@x.on("chat")``.
        Subscribers run on one thread, one message at a time, in arrival
        order; returns ``fn`` so decorators stack. ``H`` is ``fn``'s own type (any
        ``Callable[[Message], object]``): a decorated function stays typed as it was.
        """
        self._check_process()

        def register(fn: H) -> H:
            self.signals.subscribe(self.signals.for_type(mtype), fn)
            return fn

        return register if fn is None else register(fn)

    def on_any(self, fn: H) -> H:
        """Subscribe ``fn(message)`` to every message."""
        self._check_process()
        self.signals.subscribe(self.signals.message, fn)
        return fn

    def off(self, fn: Callable[..., Any], mtype: Optional[str] = None) -> int:
        """Unsubscribe ``fn`` (from ``mtype`` only, or from everything); returns how many links were cut."""
        self._check_process()
        return self.signals.unsubscribe(fn, mtype)


def deliver(
    signal: Signal,
    sender: Any,
    on_error: Callable[[BaseException, Any, Dict[str, Any]], None],
    **kwargs: Any,
) -> None:
    """Call every receiver of ``signal``; report each exception to ``on_error``.

    blinker's own ``send`` stops at the first receiver that raises; a
    subscriber's bug must never cost another subscriber its message.
    """
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception as exc:  # noqa: BLE001 - isolation is the point
            on_error(exc, receiver, kwargs)
