"""Reporting errors: on the ``error`` signal, and in the log without flooding it.

One `Reporter` serves a `Client` and a `StreamConsumer` alike. Every error
goes to the ``error`` signal, each time; the log gets it at WARNING only when
nobody listens on that signal (a listener handles it; the log says DEBUG).
A subscriber that raises is logged with its traceback the first time, and
then, for the same subscriber and exception type, at most once every
`SUMMARY_EVERY` seconds as a count: a subscriber that fails on every
message does not print a traceback per message. Other errors (a frame the
codec refuses, a store that fails) are logged the same way, per context.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from .signals import Signals, Subscriber, deliver

log = logging.getLogger("wsbridge")

SUMMARY_EVERY = 10.0
"""Seconds between two log lines about the same failing subscriber."""


class Reporter:
    """Reports for one client or consumer (``owner``, the signals' sender).

    ``emit(signal, **kwargs)`` is how a signal reaches its receivers: the
    client queues it for the dispatcher (never waiting), a consumer delivers
    it on its own thread. `subscriber_failed` runs on the delivering thread.
    """

    def __init__(
        self, owner: Any, signals: Signals, emit: Callable[..., None], name: str,
        emit_data: Optional[Callable[..., None]] = None,
    ) -> None:
        self._owner = owner
        self._signals = signals
        self._emit = emit
        self._emit_data = emit_data
        """``emit_data(signal, size, **kwargs)``: how a report that carries ``size``
        bytes of frame data travels (bounded, as data is; the reader's decode errors)."""
        self._name = name
        self.subscriber_errors = 0
        """Subscriber exceptions so far (written by the delivering thread)."""
        self.reported = 0
        """Errors reported on the ``error`` signal, subscribers' included (under the lock)."""
        self._seen: Dict[Tuple[Any, type], Tuple[float, int]] = {}  # (fn, exception type) -> (last logged, not logged since)
        self._lock = threading.Lock()

    def report(self, error: BaseException, context: str, *, size: int = 0, **extra: Any) -> None:
        """Report a recoverable error on the ``error`` signal (and the log, rate-limited,
        when nobody listens); from any thread, never waiting, unless it carries
        ``size`` bytes of frame data: then it waits for room like the data it is."""
        self.record(error, context)
        if size and self._emit_data is not None:
            self._emit_data(self._signals.error, size, error=error, context=context, **extra)
        else:
            self._emit(self._signals.error, error=error, context=context, **extra)

    def record(self, error: BaseException, context: str) -> None:
        """Log (rate-limited) and count a report; its signal is the caller's to send
        (`report` queues it; the dispatcher sends a decode error's in line)."""
        if log.isEnabledFor(logging.WARNING if not self._signals.error.receivers else logging.DEBUG):
            self._log(context, type(error), error, logging.DEBUG if self._signals.error.receivers else logging.WARNING)
        with self._lock:  # reports come from any thread
            self.reported += 1

    def _log(self, what: Any, kind: type, error: BaseException, level: int, message: Any = None) -> None:
        """Log ``error`` of ``what`` the first time, then at most once every
        `SUMMARY_EVERY` seconds for the same ``what`` and ``kind``, as a count."""
        key = (what, kind)
        now = time.monotonic()
        with self._lock:
            last, quiet = self._seen.get(key, (0.0, -1))
            if quiet >= 0 and now - last < SUMMARY_EVERY:
                self._seen[key] = (last, quiet + 1)
                return
            self._seen[key] = (now, 0)
        if isinstance(what, str):  # a context: "decode", "store", ...
            if quiet <= 0:
                log.log(level, "%s: %s error: %s", self._name, what, error)
            else:
                log.log(level, "%s: %d more %s error(s) (%s) in %.0f s; the last: %s",
                        self._name, quiet + 1, what, kind.__name__, now - last, error)
        elif quiet <= 0:
            log.log(level, "%s: subscriber %r raised on %r", self._name, what, message, exc_info=error)
        else:
            log.log(level, "%s: subscriber %r raised %s %d more time(s) in %.0f s; the last: %s",
                    self._name, what, kind.__name__, quiet + 1, now - last, error)

    def subscriber_failed(self, exc: BaseException, receiver: Any, kwargs: Dict[str, Any]) -> None:
        """A subscriber raised (called by `deliver` on the delivering thread):
        the ``error`` signal each time, the log rate-limited."""
        self.subscriber_errors += 1
        fn = receiver.fn if isinstance(receiver, Subscriber) else receiver
        message = kwargs.get("message")
        level = logging.DEBUG if self._signals.error.receivers else logging.ERROR
        if log.isEnabledFor(level):
            self._log(fn, type(exc), exc, level, message)
        with self._lock:
            self.reported += 1
        if self._signals.error.receivers:
            deliver(self._signals.error, self._owner, self.listener_failed,
                    error=exc, context="subscriber", message=message, subscriber=fn)

    def listener_failed(self, exc: BaseException, receiver: Any, kwargs: Dict[str, Any]) -> None:
        """A receiver of a lifecycle or error signal raised: logged, never re-reported."""
        log.error("%s: signal receiver %r raised", self._name, receiver, exc_info=exc)
