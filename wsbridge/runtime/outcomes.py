"""What became of a send: `SendHandle`; the rule that recognises the server's acks: `AckRule`.

`Client.send` returns a `SendHandle`, which is also the frame's record in the send
buffer (one object per send). The sender moves its ``state`` on under its lock:
``"queued"`` (in the send buffer, or being written), then ``"sent"`` (the socket took
it), and with an `AckRule` ``"acknowledged"`` (the server said it has it); or
``"dropped"`` (the ``drop_oldest`` overflow policy made room with it) or ``"expired"``
(its ``ttl`` passed before it could be written: removed from the buffer, never
written; reading ``state`` past the ttl removes it at once, without a timer thread). Nothing
waits, and no event is made, unless someone calls `SendHandle.wait`: a send whose handle
is ignored pays an attribute write or two.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Optional, Protocol, Tuple, Union

from ..message import Message

QUEUED = "queued"
SENT = "sent"
ACKNOWLEDGED = "acknowledged"
DROPPED = "dropped"
EXPIRED = "expired"


class AckRule(NamedTuple):
    """How the server acknowledges a message: each message sent as a mapping carries an
    id in ``id_field`` (one is added when it has none), and a message of type ``type``
    whose ``ack_field`` (default: ``id_field``) holds that id acknowledges it. Matched by
    wsbridge as the ack is read (on the reader thread, so no user code runs there)."""

    type: str = "ack"
    id_field: str = "id"
    ack_field: Optional[str] = None

    def check(self) -> "AckRule":
        for name in ("type", "id_field"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"AckRule.{name} is a non-empty str, not {value!r}")
        if self.ack_field is not None and (not isinstance(self.ack_field, str) or not self.ack_field):
            raise ValueError(f"AckRule.ack_field is a non-empty str or None, not {self.ack_field!r}")
        return self

    @property
    def field(self) -> str:
        """The field of the ack that holds the acknowledged id."""
        return self.ack_field or self.id_field


def stamp(obj: Any, field: str, new_id: Callable[[], str]) -> Tuple[Any, Optional[Hashable]]:
    """``obj`` with an id in ``field`` and that id: a mapping (or a `Message` whose payload
    is one) keeps its own, else gets a copy with a new one (the caller's object is never
    changed). Anything else (text, bytes) carries no id we can read: ``(obj, None)``."""
    payload = obj.payload if isinstance(obj, Message) else obj
    if not isinstance(payload, Mapping):
        return obj, None
    mid = payload.get(field)
    if mid is None:
        mid = new_id()
        payload = {**payload, field: mid}
        obj = payload if not isinstance(obj, Message) else obj._replace(payload=payload, raw=None)
    try:
        hash(mid)
    except TypeError:
        raise ValueError(f"the {field!r} of a message must be a str or a number, not {type(mid).__name__}") from None
    return obj, mid


class Owner(Protocol):
    """What a handle waits on: the sender (see `wsbridge.runtime.sender.Sender.wait_handle`)."""

    def wait_handle(self, handle: "SendHandle", timeout: Optional[float]) -> str: ...

    def expire_due(self) -> None: ...


class SendHandle:
    """What became of one `Client.send`: ``state`` is ``"queued"``, ``"sent"``,
    ``"acknowledged"``, ``"dropped"`` or ``"expired"`` (the guide's Delivery page, *Send
    outcomes*). Written by the sender under its lock; read anywhere.

    It is the frame's record in the send buffer too: ``data`` and ``binary`` (the frame),
    ``key`` (its place in the store, if kept there) and ``bound`` (a subscription's frame,
    for one connection only, never kept in the store: see `wsbridge.runtime.sender`)."""

    __slots__ = ("data", "binary", "key", "bound", "_state", "ack_id", "conn", "expires", "_owner")

    def __init__(self, owner: Owner, data: Union[str, bytes], binary: bool, key: Optional[int] = None,
                 bound: Any = None, ack_id: Optional[Hashable] = None, expires: Optional[float] = None) -> None:
        self.data = data
        self.binary = binary
        self.key = key
        self.bound = bound
        self._state = QUEUED
        """What `state` reads, as the sender wrote it (under its lock)."""
        self.ack_id = ack_id
        """The id the server acks it by (None: no ack is awaited: ``"sent"`` is final)."""
        self.conn: Any = None
        """The connection it went (or goes) out on."""
        self.expires = expires
        """`time.monotonic` past which it is not written (None: no ``ttl``)."""
        self._owner = owner

    @property
    def state(self) -> str:
        """The outcome so far. Past its ``ttl`` while still in the send buffer, it is
        removed from the buffer now (and counted), as the next flush would: ``"expired"``."""
        state = self._state
        if state is QUEUED and self.expires is not None and self.expires <= time.monotonic():
            self._owner.expire_due()  # (not after stop: the stopped client's buffer stays as it was left)
            state = self._state
            return EXPIRED if state is QUEUED else state
        return state

    @property
    def done(self) -> bool:
        """Final: acknowledged, dropped, expired, or sent when no ack is awaited."""
        state = self.state
        return state is not QUEUED and (state is not SENT or self.ack_id is None)

    def wait(self, timeout: Optional[float] = None) -> str:
        """Wait up to ``timeout`` s (None: no limit) until `done`; returns ``state``.
        `TimeoutError` when it is not done by then, `ClientClosed` when the client
        stopped first (the message then waits in `Client.unsent`)."""
        if self.done:
            return self.state
        return self._owner.wait_handle(self, timeout)

    def __repr__(self) -> str:
        return f"<SendHandle {self.state}{'' if self.ack_id is None else f' id={self.ack_id!r}'}>"
