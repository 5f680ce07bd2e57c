"""The publish/subscribe layer: one set of blinker signals per client.

Lifecycle signals follow blinker's convention (``receiver(sender, **kw)``,
sender = the client). Message subscribers registered with ``client.on(type)``
receive just the `Message`; an adapter bridges the two. Every receiver is
called in isolation: one that raises is reported and the rest still run.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable, Dict, Optional, Tuple

from blinker import ANY, Signal

from .message import Message

MessageHandler = Callable[[Message], Any]


class StrongSignal(Signal):
    """A blinker `Signal` that holds its receivers strongly by default.

    blinker's default weak references silently drop a lambda or a closure
    the moment ``connect`` returns; a client's receivers should live as long
    as the client (``disconnect`` removes them). Pass ``weak=True`` for
    blinker's behaviour.

    The receivers for a sender are worked out once and kept until the next
    connect or disconnect (blinker computes them on every send, a measurable
    share of a message's cost), unless a receiver is weakly held.
    """

    def __init__(self, doc: Optional[str] = None) -> None:
        super().__init__(doc)
        self._cached: Optional[Tuple[Any, Tuple[Any, ...]]] = None

    def connect(self, receiver: Any, sender: Any = ANY, weak: bool = False) -> Any:  # type: ignore[override]
        self._cached = None
        return super().connect(receiver, sender, weak)

    def disconnect(self, receiver: Any, sender: Any = ANY) -> None:
        self._cached = None
        super().disconnect(receiver, sender)

    def _disconnect(self, receiver_id: Any, sender_id: Any) -> None:  # also blinker's weak-reference cleanup
        self._cached = None
        super()._disconnect(receiver_id, sender_id)

    def receivers_for(self, sender: Any) -> Tuple[Any, ...]:  # type: ignore[override]
        cached = self._cached
        if cached is not None and cached[0] is sender:
            return cached[1]
        receivers = tuple(super().receivers_for(sender))
        if not any(isinstance(r, weakref.ref) for r in self.receivers.values()):
            self._cached = (sender, receivers)
        return receivers


class Subscriber:
    """Adapts ``fn(message)`` to blinker's ``receiver(sender, message=...)``.

    Held strongly (blinker's default weak references would drop the adapter
    at once); `Client.off` disconnects it.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: MessageHandler) -> None:
        self.fn = fn

    def __call__(self, sender: Any, message: Message, **_: Any) -> Any:
        return self.fn(message)

    def __repr__(self) -> str:
        return f"Subscriber({getattr(self.fn, '__qualname__', self.fn)!r})"


class Signals:
    """The signals of one client. Connect with ``client.signals.NAME.connect(fn)``.

    =============  ==========================================================
    connecting     a connection attempt starts (``attempt``)
    connected      the socket is open and the send buffer flushed
    disconnected   the connection ended (``code``, ``reason``, ``error``)
    reconnecting   a retry is scheduled (``attempt``, ``delay``)
    gave_up        the client will not reconnect (``error``)
    stopped        `stop` was called; the last signal of all
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
    =============  ==========================================================
    """

    NAMES = ("connecting", "connected", "disconnected", "reconnecting", "gave_up", "stopped", "message", "error", "dropped", "duplicate", "gap")

    def __init__(self) -> None:
        for name in self.NAMES:
            setattr(self, name, StrongSignal(name))
        self.types: Dict[str, Signal] = {}

    connecting: Signal
    connected: Signal
    disconnected: Signal
    reconnecting: Signal
    gave_up: Signal
    stopped: Signal
    message: Signal
    error: Signal
    dropped: Signal
    duplicate: Signal
    gap: Signal

    def for_type(self, mtype: str) -> Signal:
        """The signal of one message type, created on first use."""
        signal = self.types.get(mtype)
        if signal is None:
            signal = self.types[mtype] = StrongSignal(f"type:{mtype}")
        return signal

    def subscribe(self, signal: Signal, fn: MessageHandler) -> Subscriber:
        subscriber = Subscriber(fn)
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
