"""The handshake of every connection: the connect hooks, then the recorded subscriptions.

Every (re)connect runs it as soon as the socket is open, before anything else goes
out, on a thread of its own (`HandshakeRun`, ``<client>-handshake-<n>``): user code (a
hook, a subscription's callable, an ack predicate) never holds the supervisor, which
waits for the run within the handshake's time and fails the attempt when it does not
end (a thread still in user code then ends on its own; see `Supervisor.straggler`).
Each hook ``fn(session)`` (a login, a channel join) may `Session.send` on that
connection only, `Session.request` a reply and `Session.wait_for` one; then every
recorded `Subscription` is sent, each waiting for its ack if it names one. Only then
does the supervisor flush the send buffer and send the resume request
(`Sender.flush`): nothing the user queued overtakes the handshake, and a slow
subscriber cannot delay it (it never waits for the dispatcher).

Replies are seen as they are decoded: from the moment a connection starts until its
handshake ends, the reader thread hands every message to the connection's `Inbox`
before queuing it for the dispatcher (`Intake.watch`); subscribers still get it as
usual. A reply waited for by `Session.request` (and a subscription's ack) is matched as
it arrives, so however many messages follow it, it cannot be pushed out; the inbox
keeps the others, within bounds, for `Session.wait_for`.

An error a handshake leaves behind (`ConnectHookError`, kept as ``last_error``, the
cause of a give-up, reported on ``error``) holds no frame of wsbridge's: their locals
hold the messages being sent (`keep_users_frames`).
"""

from __future__ import annotations

import threading
import time
import types
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple, TypeVar

from ..errors import ClientClosed, ConnectHookError, preview
from ..message import Message
from ..tracking.sequence import Positions
from ..wire.connection import Connection
from .sender import OutFrame, Sendable, Sender, mark_hook_thread
from .subscriptions import Match, describe_match, matcher

INBOX_SIZE = 1000
"""The most messages a handshake's inbox keeps for `Session.wait_for` (the oldest go first);
it keeps at most the dispatch queue's byte bound of them, too."""

ConnectHook = Callable[["Session"], object]


class Kept:
    """Messages kept in arrival order within a count and a byte bound, the oldest
    dropped past either (weighed as the dispatch queue weighs them). Used under the
    inbox's lock only."""

    __slots__ = ("items", "bytes", "size", "max_bytes")

    def __init__(self, size: int, max_bytes: int) -> None:
        self.items: Deque[Tuple[Message, int]] = deque()
        self.bytes = 0
        self.size = size
        self.max_bytes = max_bytes

    def append(self, message: Message, size: int) -> None:
        self.items.append((message, size))
        self.bytes += size
        while len(self.items) > self.size or self.bytes > self.max_bytes:
            self.bytes -= self.items.popleft()[1]

    def popleft(self) -> Message:
        message, size = self.items.popleft()
        self.bytes -= size
        return message

    def discard(self, message: Message) -> None:
        """Forget ``message`` (the very object) if it is kept."""
        for i, (kept, size) in enumerate(self.items):
            if kept is message:
                del self.items[i]
                self.bytes -= size
                return

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0

    def __bool__(self) -> bool:
        return bool(self.items)


class Waiter:
    """A reply being waited for: the first message that passes ``test`` from the moment it
    was registered (`Inbox.expect`). Written under the inbox's lock.

    A message type is tested as the message arrives, on the reader thread. A predicate
    (the user's code) never runs there nor under the lock, where one that blocks would
    hold the reader, `Inbox.end` (so `reconnect` and `stop`) and the supervisor: the
    messages that arrive meanwhile wait in ``pending`` (bounded as the inbox is) for the
    waiting thread to test them."""

    __slots__ = ("test", "user", "message", "error", "pending")

    def __init__(self, test: Callable[[Message], bool], user: bool, pending: Kept) -> None:
        self.test = test
        self.user = user
        """``test`` is the user's predicate (tested on the waiting thread)."""
        self.message: Optional[Message] = None
        self.error: Optional[BaseException] = None
        """What ``test`` raised (it is the user's predicate): raised to the one waiting."""
        self.pending = pending


class Inbox:
    """The messages one connection received during its handshake, not yet taken, and the
    replies waited for.

    Written by the connection's reader thread (`add`), by the handshake's thread (`take`,
    `expect`, `wait`) and by whoever ends it (`end`: the reader as it exits,
    `Supervisor.reconnect`, the supervisor); all under ``cond``. It keeps the latest
    ``size`` messages and at most ``max_bytes`` of them, weighed as the dispatch queue
    weighs them; a message a `Waiter` for its type matches is handed to it as it arrives,
    never kept. No user code runs under ``cond`` (see `Waiter`)."""

    def __init__(self, size: int = INBOX_SIZE, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.cond = threading.Condition()
        self.size = size
        self.max_bytes = max_bytes
        self.messages = Kept(size, max_bytes)
        self.waiters: List[Waiter] = []
        self.ended: Optional[str] = None
        """Why no reply can come any more (None: one may)."""

    def add(self, message: Message, size: int) -> None:
        """A message of ``size`` bytes arrived (reader thread): to the first waiter for
        its type, else kept (the oldest dropped past the bounds) and queued for the
        waiters with a predicate, which test it on their own thread."""
        with self.cond:
            for waiter in self.waiters:
                if not waiter.user and waiter.test(message):  # a type: wsbridge's test, quick
                    waiter.message = message
                    self.waiters.remove(waiter)
                    self.cond.notify_all()
                    return
            self.messages.append(message, size)
            for waiter in self.waiters:
                if waiter.user:
                    waiter.pending.append(message, size)
            self.cond.notify_all()

    def end(self, why: str) -> None:
        """No reply can come any more: a wait ends (what came is still taken)."""
        with self.cond:
            if self.ended is None:
                self.ended = why
            self.cond.notify_all()

    def close(self) -> None:
        """The handshake is over: let go of the messages (the supervisor's)."""
        self.end("the handshake is over")
        with self.cond:
            self.messages.clear()
            self.waiters = []

    def take(self, match: Match, deadline: float) -> Message:
        """The oldest message kept that ``match``-es, else the first to arrive, waiting
        until ``deadline`` (`time.monotonic`): `TimeoutError` then, `ConnectionError`
        once none can come."""
        test = matcher(match)
        with self.cond:  # looked at and registered at once: nothing slips in between
            kept = [message for message, _ in self.messages.items]
            waiter = self.expect(match, test)
        for message in kept:  # tested outside the lock: a predicate is the user's code
            if self._passes(waiter, message):
                self.forget(waiter)
                return self._taken(waiter)
        return self.wait(waiter, match, deadline)

    def _passes(self, waiter: Waiter, message: Message) -> bool:
        """Test ``message`` for ``waiter`` on the waiting thread; a hit (or the
        predicate's error) is recorded, and the message is no longer kept for others."""
        try:
            hit = waiter.test(message)
        except Exception as exc:  # the user's predicate: its error goes to the one waiting
            waiter.error, hit = exc, True
        if hit:
            with self.cond:
                waiter.message = message
                self.messages.discard(message)
        return hit

    @staticmethod
    def _taken(waiter: Waiter) -> Message:
        if waiter.error is not None:
            raise waiter.error
        assert waiter.message is not None
        return waiter.message

    def expect(self, match: Match, test: Optional[Callable[[Message], bool]] = None) -> Waiter:
        """Register a wait for the first message to arrive from now on that ``match``-es."""
        waiter = Waiter(test or matcher(match), user=callable(match), pending=Kept(self.size, self.max_bytes))
        with self.cond:
            self.waiters.append(waiter)
        return waiter

    def wait(self, waiter: Waiter, match: Match, deadline: float) -> Message:
        """What ``waiter`` (of this inbox) got, waiting until ``deadline``."""
        try:
            while True:
                with self.cond:
                    if waiter.message is not None:
                        break
                    if not waiter.pending:
                        if self.ended is not None:
                            raise ConnectionError(f"no {describe_match(match)} came: {self.ended}")
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise TimeoutError(f"no {describe_match(match)} came in the time given")
                        self.cond.wait(remaining)
                        continue
                    message = waiter.pending.popleft()
                if self._passes(waiter, message):  # outside the lock: the user's predicate
                    break
        finally:
            self.forget(waiter)
        return self._taken(waiter)

    def forget(self, waiter: Waiter) -> None:
        """No one waits for ``waiter`` any more: what it would match is kept again."""
        with self.cond:
            if waiter in self.waiters:
                self.waiters.remove(waiter)


class Session:
    """The connection being opened, as a connect hook sees it, for as long as the hook
    runs (on the handshake's thread).

    `send` writes on this connection only, at once: never buffered, never sent on
    another connection (once this one is gone, or the handshake over, it raises).
    `request` sends and waits for the reply; `wait_for` waits for a message received on
    this connection. All are bounded by what is left of the client's
    ``connect_hook_timeout``, and end at once when the client stops or
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

    def request(self, obj: Sendable, match: Optional[Match] = None, timeout: Optional[float] = None) -> Message:
        """Send ``obj`` on this connection and return its reply: the first message
        received after it of type ``match`` (a str), or for which ``match(message)`` is
        true; without ``match``, the one that carries its id, as `Client.request` matches
        it (the same mechanism: `Client.request` from a hook comes here). The reply is
        looked for among the messages from the moment it is sent (a
        predicate runs on this thread, never on the reader's), so however many messages
        follow it (an ack, then a snapshot), it is not missed. Waits up to ``timeout`` s (None: what is
        left of the hook's time); `TimeoutError` when none came, `ConnectionLost` when the
        connection ended first."""
        deadline = self._deadline(timeout)
        if match is None:
            self._check()
            return self._sender.request(obj, max(0.0, deadline - time.monotonic()), False, self)
        frame = self._sender.frame(obj)
        return self._request(frame, match, deadline)

    def wait_for(self, match: Match, timeout: Optional[float] = None) -> Message:
        """The first message received on this connection, not taken by an earlier
        wait, of type ``match`` (a str) or for which ``match(message)`` is true; waits
        up to ``timeout`` s (None: what is left of the hook's time).

        It looks first at the messages that came before it was called, since the
        connection opened: those the inbox still keeps, the latest 1,000 and at most
        ``dispatch_queue_bytes`` of them (a reply followed by more than that, say a
        snapshot, may be gone: wait for a reply to your own message with `request`,
        which cannot miss it); then it waits for new ones. `TimeoutError` when none came."""
        self._check()
        return self._inbox.take(match, self._deadline(timeout))

    def _deadline(self, timeout: Optional[float]) -> float:
        return self.deadline if timeout is None else min(self.deadline, time.monotonic() + timeout)

    def _request(self, frame: OutFrame, match: Match, deadline: float) -> Message:
        """Send ``frame``, the wait for its reply registered first."""
        self._check()
        waiter = self._inbox.expect(match)
        try:
            self._sender.send_on(self._conn, frame, self.deadline)
        except BaseException:
            self._inbox.forget(waiter)
            raise
        return self._inbox.wait(waiter, match, deadline)

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


def _ours(tb: types.TracebackType) -> bool:
    """Is this traceback entry's code wsbridge's?"""
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module == "wsbridge" or module.startswith("wsbridge.")


def _raised_by_wsbridge(exc: BaseException) -> bool:
    """Was ``exc`` raised by wsbridge's code (rather than the user's, or a library's)?"""
    tb = exc.__traceback__
    if tb is None:
        return True  # made, not raised: by wsbridge
    while tb.tb_next is not None:
        tb = tb.tb_next
    return _ours(tb)


def _why(exc: BaseException) -> str:
    """``exc`` for the message of a `ConnectHookError`: wsbridge's own errors (the
    connection ended, the time ran out) with their text; the user's by their type only
    (their text may hold a credential: the exception is the error's ``__cause__``)."""
    if not _raised_by_wsbridge(exc):
        return f"raised {type(exc).__name__} (see this error's __cause__)"
    text = str(exc).split("\n", 1)[0]
    return f"failed: {type(exc).__name__}: {preview(text, 200)}" if text else f"failed: {type(exc).__name__}"


E = TypeVar("E", bound=BaseException)


def keep_users_frames(error: E) -> E:
    """``error`` and the errors chained to it, fit to outlive the handshake: each one
    wsbridge raised keeps no traceback, each one the user's code raised keeps the frames
    of code that is not wsbridge's (the user's own, to debug the hook with). wsbridge's
    frames go: their locals hold the messages sent (a login's token, a subscription's
    message), which tools that print a traceback's locals (Sentry, rich) would show."""
    seen = set()
    stack: List[Optional[BaseException]] = [error]
    while stack:
        exc = stack.pop()
        if exc is None or id(exc) in seen:
            continue
        seen.add(id(exc))
        if _raised_by_wsbridge(exc):
            exc.__traceback__ = None
        else:
            entries = []
            tb = exc.__traceback__
            while tb is not None:
                if not _ours(tb):
                    entries.append(tb)
                tb = tb.tb_next
            kept: Optional[types.TracebackType] = None
            for entry in reversed(entries):
                kept = types.TracebackType(kept, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
            exc.__traceback__ = kept
        stack += [exc.__cause__, exc.__context__]
    return error


class Handshake:
    """The handshake of every connection: its settings (set by the client) and the steps."""

    def __init__(self, sender: Sender, stopping: threading.Event, positions: Callable[[], Positions]) -> None:
        self.sender = sender
        self.stopping = stopping
        self.positions = positions
        self.hooks: Tuple[ConnectHook, ...] = ()
        """Set by the client: replaced whole, read at every connect."""
        self.timeout = 10.0
        """``connect_hook_timeout``: the hooks' time, and a subscription's unless it names one."""

    def start(self, conn: Connection, inbox: Inbox, name: str, wake: Callable[[], None]) -> "HandshakeRun":
        """Run the handshake of ``conn`` on a new thread named ``name``; ``wake`` is called as it ends."""
        run = HandshakeRun(self, conn, inbox, name, wake)
        run.thread.start()
        return run

    def run(self, run: "HandshakeRun") -> bool:
        """The hooks, in order, then the recorded subscriptions, on the run's connection
        (the run's thread). Raises `ConnectHookError` (its cause: the exception) when one
        failed. True when the server passed something: a hook, or a subscription's ack
        (the retry policy then counts the connection as healthy)."""
        session, conn = run.session, run.conn
        passed = bool(self.hooks)
        for hook in self.hooks:
            run.what = f"the connect hook {_name(hook)}"
            try:
                hook(session)
            except Exception as exc:
                raise ConnectHookError(f"{run.what} {_why(exc)}") from exc
            if time.monotonic() > session.deadline:
                raise ConnectHookError(f"{run.what} ran out of connect_hook_timeout ({self.timeout} s)")
        for sub in self.sender.subscriptions_for(conn):
            run.what, run.limit = repr(sub), f"its ack timeout ({sub.timeout or self.timeout} s)"
            session.deadline = time.monotonic() + (sub.timeout or self.timeout)
            try:
                if not self.sender.claim(sub, conn):  # unsubscribed meanwhile
                    continue
                frame = sub.frame(self.positions(), self.sender.frame)
                if frame is None:
                    continue
                if sub.ack is None:
                    session._send(frame)
                else:
                    session._request(frame, sub.ack, session.deadline)
                    passed = True
            except Exception as exc:
                raise ConnectHookError(f"{sub!r} {_why(exc)}") from exc
        return passed


class HandshakeRun:
    """One connection's handshake, on a thread of its own, so that user code never holds
    the supervisor. Written by its thread until ``done`` is set, then read by the
    supervisor (``what`` and ``session.deadline`` also while it runs)."""

    def __init__(self, handshake: Handshake, conn: Connection, inbox: Inbox, name: str, wake: Callable[[], None]) -> None:
        self.handshake = handshake
        self.conn = conn
        self.inbox = inbox
        self.session = Session(conn, inbox, handshake.sender, handshake.stopping, handshake.positions,
                               time.monotonic() + handshake.timeout)
        self.what = "the handshake"
        """What runs now, for the message when it does not return in time."""
        self.limit = f"connect_hook_timeout ({handshake.timeout} s)"
        """The time it has, in words."""
        self.passed = False
        self.error: Optional[ConnectHookError] = None
        """Why it failed: its traceback and its cause's hold no frame of wsbridge's."""
        self.done = threading.Event()
        self._wake = wake
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        mark_hook_thread(self.session)
        try:
            self.passed = self.handshake.run(self)
        except ConnectHookError as exc:
            self.error = keep_users_frames(exc)
        except BaseException as exc:  # SystemExit and the like, from a hook: this thread ends, the attempt fails
            error = ConnectHookError(f"{self.what} {_why(exc)}")
            error.__cause__ = exc
            self.error = keep_users_frames(error)
        finally:
            self.done.set()
            self._wake()

    def abandon(self, why: str) -> None:
        """The supervisor goes on without it: what the session is asked from now on raises."""
        self.inbox.end(why)
