"""A client's lifecycle state, and waiting for it to change.

The states and their order (each arrow is one signal, see `Signals`)::

    NEW --start()--> CONNECTING --socket open, handshake done, send buffer flushed--> CONNECTED
    CONNECTED --connection ended (or reconnect())--> BACKOFF --delay (none after reconnect())--> CONNECTING ...
    NEW --replay()--> REPLAYING (a stored feed, no connection) --its end--> STOPPED
    any --retry policy says no--> GAVE_UP
    any --stop()--> STOPPED

`GAVE_UP` and `STOPPED` are final (a stop after giving up still ends in
`STOPPED`).
"""

from __future__ import annotations

import enum
import threading
import time
from typing import Callable, Optional

WAIT_MAX = threading.TIMEOUT_MAX / 2
"""Timeouts at or above this (``inf`` included) mean no limit: lock and condition
waits refuse more than `threading.TIMEOUT_MAX` (half of it leaves room for the
arithmetic of deadlines). About 146 years on Linux, 24 days on Windows."""


def timeout_arg(value: Optional[float], name: str = "timeout") -> Optional[float]:
    """A caller's timeout, checked: None (or at least `WAIT_MAX`, ``inf`` too) is None,
    no limit; NaN or a negative number is a `ValueError` that says so."""
    if value is None:
        return None
    if value != value or value < 0:
        raise ValueError(f"{name} is a number of seconds >= 0 (or None: no limit), not {value!r}")
    return None if value >= WAIT_MAX else value


class State(str, enum.Enum):
    """A client's state. A `str` too, so ``client.state == "connected"`` holds."""

    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    REPLAYING = "replaying"
    GAVE_UP = "gave_up"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in (State.GAVE_UP, State.STOPPED)


class Lifecycle:
    """The state of one client, with a condition to wait on.

    Written by the supervisor (connecting, connected, backoff, gave_up) and by
    `stop` (stopped), always under the condition; read by anyone."""

    __slots__ = ("_cond", "_state", "last_error")

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._state = State.NEW
        self.last_error: Optional[BaseException] = None
        """Why the last attempt failed or the last connection ended (None: no error)."""

    @property
    def state(self) -> State:
        return self._state

    def begin(self, state: State = State.CONNECTING) -> bool:
        """NEW -> ``state`` (CONNECTING, or REPLAYING); False if the client already started."""
        with self._cond:
            if self._state is not State.NEW:
                return False
            self._state = state
            self._cond.notify_all()
            return True

    def set(self, state: State, error: Optional[BaseException] = None) -> bool:
        """Move to ``state`` unless the client already ended; returns whether it moved."""
        with self._cond:
            if self._state.final and state is not State.STOPPED:
                return False
            self._state = state
            if error is not None:
                self.last_error = error
            self._cond.notify_all()
            return True

    def stop(self) -> State:
        """Move to STOPPED; return the state it was in."""
        with self._cond:
            before = self._state
            self._state = State.STOPPED
            self._cond.notify_all()
            return before

    def wait_for(self, done: Callable[[State], bool], timeout: Optional[float]) -> State:
        """Wait until ``done(state)`` (or a final state); return the state then.
        Raises `TimeoutError` when ``timeout`` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not done(self._state) and not self._state.final and self._state is not State.NEW:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                self._cond.wait(remaining)
            return self._state
