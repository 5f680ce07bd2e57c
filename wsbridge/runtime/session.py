"""The handshake of every connection: the connect hooks, then the recorded subscriptions.

Every (re)connect runs it on the supervisor thread as soon as the socket is
open, before anything else goes out: each hook ``fn(session)`` (a login, a
channel join) may `Session.send` on that connection only and
`Session.wait_for` a reply; then every recorded `Subscription` is sent, each
waiting for its ack if it names one. Only then does the supervisor flush the
send buffer and send the resume request (`Sender.flush`): nothing the user
queued overtakes the handshake, and a slow subscriber cannot delay it (it
never waits for the dispatcher).

Replies are seen as they are decoded: from the moment a connection starts
until its handshake ends, the reader thread hands every message to the
connection's `Inbox` before queuing it for the dispatcher (`Intake.watch`);
subscribers still get it as usual.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Deque, Optional, Tuple

from ..errors import ClientClosed, ConnectHookError, preview
from ..message import Message
from ..tracking.sequence import Positions
from ..wire.connection import Connection
from .sender import OutFrame, Sendable, Sender
from .subscriptions import Match, describe_match, matcher

INBOX_SIZE = 1000
"""The most messages a handshake keeps for `Session.wait_for` (the oldest go first)."""

ConnectHook = Callable[["Session"], object]


class Inbox:
    """The messages one connection received during its handshake, not yet taken.

    Written by the connection's reader thread (`add`; `end` as it exits) and by
    `Supervisor.reconnect` (`end`); read by the supervisor thread (`take`); all
    under ``cond``."""

    def __init__(self, size: int = INBOX_SIZE) -> None:
        self.cond = threading.Condition()
        self.messages: Deque[Message] = deque(maxlen=size)
        self.added = 0
        self.ended: Optional[str] = None
        """Why no reply can come any more (None: one may)."""

    def add(self, message: Message) -> None:
        with self.cond:
            self.messages.append(message)
            self.added += 1
            self.cond.notify_all()

    def end(self, why: str) -> None:
        """No reply can come any more: a waiting `take` ends (what came is still taken)."""
        with self.cond:
            if self.ended is None:
                self.ended = why
            self.cond.notify_all()

    def close(self) -> None:
        """The handshake is over: let go of the messages (the supervisor's)."""
        self.end("the handshake is over")
        with self.cond:
            self.messages.clear()

    def take(self, match: Match, deadline: float) -> Message:
        """The oldest message not taken yet that ``match``-es, waiting until ``deadline``
        (`time.monotonic`): `TimeoutError` then, `ConnectionError` once none can come."""
        test = matcher(match)
        with self.cond:
            messages = self.messages
            looked = self.added - len(messages)  # messages are numbered as `added` counts them
            while True:
                first = self.added - len(messages)  # the number of messages[0]
                for i in range(max(0, looked - first), len(messages)):
                    if test(messages[i]):
                        message = messages[i]
                        del messages[i]
                        return message
                looked = self.added
                if self.ended is not None:
                    raise ConnectionError(f"no {describe_match(match)} came: {self.ended}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {describe_match(match)} came in the time given")
                self.cond.wait(remaining)


class Session:
    """The connection being opened, as a connect hook sees it (on the supervisor thread),
    for as long as the hook runs.

    `send` writes on this connection only, at once: never buffered, never sent on
    another connection (once this one is gone, or the handshake over, it raises). `wait_for` waits for a
    reply received on this connection. Both are bounded by what is left of the
    client's ``connect_hook_timeout``, and end at once when the client stops or
    `Client.reconnect` is called. (`Client.send` from a hook queues the message for
    after the handshake.)"""

    def __init__(
        self, conn: Connection, inbox: Inbox, sender: Sender, stopping: threading.Event,
        positions: Callable[[], Positions], deadline: float,
    ) -> None:
        self._conn = conn
        self._inbox = inbox
        self._sender = sender
        self._stopping = stopping
        self._positions = positions
        self.deadline = deadline
        """`time.monotonic` by which the hook (or the subscription being sent) must be done."""

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol the server chose (None: none)."""
        return self._conn.subprotocol

    @property
    def positions(self) -> Positions:
        """The client's last sequence position per stream (what a resume would ask after)."""
        return dict(self._positions())

    def send(self, obj: Sendable) -> None:
        """Send ``obj`` on this connection now (as `Client.send` encodes it); raises
        if the connection is gone, the time is up or the client stops."""
        self._send(self._sender.frame(obj))

    def wait_for(self, match: Match, timeout: Optional[float] = None) -> Message:
        """The first message received on this connection, not taken by an earlier
        `wait_for`, of type ``match`` (a str) or for which ``match(message)`` is
        true; waits up to ``timeout`` s (None: what is left of the hook's time).
        Looks at the messages received since the connection opened (the last
        1,000), then waits for new ones. `TimeoutError` when none came."""
        self._check()
        deadline = self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)
        return self._inbox.take(match, deadline)

    def _send(self, frame: OutFrame) -> None:
        self._check()
        self._sender.send_on(self._conn, frame, self.deadline)

    def _check(self) -> None:
        if self._stopping.is_set():
            raise ClientClosed("the client is stopping")
        if self._inbox.ended is not None:
            raise ConnectionError(self._inbox.ended)
        if time.monotonic() >= self.deadline:
            raise TimeoutError("the time given is up")


def _name(hook: ConnectHook) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)


def _why(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {preview(text, 200)}" if text else type(exc).__name__


class Handshake:
    """Runs the handshake of every connection (the supervisor's thread)."""

    def __init__(self, sender: Sender, stopping: threading.Event, positions: Callable[[], Positions]) -> None:
        self.sender = sender
        self.stopping = stopping
        self.positions = positions
        self.hooks: Tuple[ConnectHook, ...] = ()
        """Set by the client: replaced whole, read at every connect."""
        self.timeout = 10.0
        """``connect_hook_timeout``: the hooks' time, and a subscription's unless it names one."""

    def run(self, conn: Connection, inbox: Inbox) -> bool:
        """The hooks, in order, then the recorded subscriptions, on ``conn``. Raises
        `ConnectHookError` (its cause: the hook's exception) when one failed. True when
        the server passed something: a hook, or a subscription's ack (the retry policy
        then counts the connection as healthy)."""
        session = Session(conn, inbox, self.sender, self.stopping, self.positions, time.monotonic() + self.timeout)
        passed = bool(self.hooks)
        for hook in self.hooks:
            try:
                hook(session)
            except Exception as exc:
                raise ConnectHookError(f"the connect hook {_name(hook)} failed: {_why(exc)}") from exc
            if time.monotonic() > session.deadline:
                raise ConnectHookError(f"the connect hook {_name(hook)} ran out of connect_hook_timeout ({self.timeout} s)")
        for sub in self.sender.subscriptions_for(conn):
            session.deadline = time.monotonic() + (sub.timeout or self.timeout)
            try:
                if not self.sender.claim(sub, conn):  # unsubscribed meanwhile
                    continue
                frame = sub.frame(self.positions(), self.sender.frame)
                if frame is None:
                    continue
                session._send(frame)
                if sub.ack is not None:
                    session.wait_for(sub.ack)
                    passed = True
            except Exception as exc:
                raise ConnectHookError(f"{sub!r} failed: {_why(exc)}") from exc
        return passed
