"""`Subscription`: a message the client sends on every connection, until told not to.

`Client.subscribe` records one; the handshake of every later connection sends
it again after the connect hooks (`wsbridge.runtime.session`), waiting for its
ack if it names one. Its state (``active``, ``sent_on``) is guarded by the
sender's lock (`Sender.cond`): it says on which connection the subscription
went out last, so that it goes out once per connection, never twice.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Tuple, Union

from ..message import Message
from ..tracking.sequence import Positions
from ..wire.connection import Connection

Match = Union[str, Callable[[Message], bool]]
"""What a reply is recognised by: its type, or a predicate of the message."""

Frame = Tuple[Union[str, bytes], bool]
Encode = Callable[[Any], Frame]

_numbers = itertools.count(1)


def matcher(match: Match) -> Callable[[Message], bool]:
    """``match`` as a predicate; `ValueError` for what is neither a type nor a callable."""
    if isinstance(match, str):
        return lambda message: message.type == match
    if callable(match):
        return match
    raise ValueError(f"a reply is waited for by its type (a str) or a predicate of the message, not {type(match).__name__}")


def describe_match(match: Match) -> str:
    if isinstance(match, str):
        return f"message of type {match!r}"
    return f"message matching {getattr(match, '__qualname__', 'the predicate')}"


class Subscription:
    """A recorded subscription, as `Client.subscribe` returns it (pass it to
    `Client.unsubscribe`). ``message`` is what is sent (or a callable of the
    client's positions that returns it, None for nothing this time); ``ack``
    the reply a handshake waits for (a type or a predicate; None: none),
    within ``timeout`` seconds. Its repr never shows the message (it may carry
    a credential)."""

    def __init__(self, message: Any, frame: Encode, ack: Optional[Match], timeout: Optional[float]) -> None:
        if ack is not None:
            matcher(ack)
        if timeout is not None and not timeout > 0:
            raise ValueError(f"a subscription's ack timeout is > 0 seconds (None: connect_hook_timeout), not {timeout!r}")
        self.number = next(_numbers)
        self.message = message
        self.ack = ack
        self.timeout = timeout
        # Encoded now: what cannot be sent raises in subscribe(), and nothing is recorded.
        self._frame = None if callable(message) else frame(message)
        self.active = True
        """False once unsubscribed (under the sender's lock)."""
        self.sent_on: Optional[Connection] = None
        """The connection it went out on last (under the sender's lock)."""

    def frame(self, positions: Positions, frame: Encode) -> Optional[Frame]:
        """What to send now: the message, or what the callable makes of ``positions`` (None: nothing)."""
        if self._frame is not None:
            return self._frame
        message = self.message(dict(positions))
        return None if message is None else frame(message)

    def __repr__(self) -> str:
        ack = f" ack={describe_match(self.ack)}" if self.ack is not None else ""
        return f"<wsbridge.Subscription #{self.number}{ack}{'' if self.active else ' ended'}>"
