"""After a connection ends: retry (after how long) or give up. A pure policy.

Modelled on urllib3's ``Retry``: `ReconnectPolicy` holds the rules and the
`Backoff`; `ReconnectPolicy.decide` takes what is known about how a
connection ended (`Ending`) and the counts carried from the last `Decision`,
and returns the next `Decision`. No sockets, no clock, no threads: the
supervisor keeps the counts and does the waiting, and the rules are tested in
a table. Override the rules by passing them (``fatal_statuses=``,
``fatal_close_codes=``, ``retry_statuses=``, ``auth_retries=``), or subclass
and override `decide`, `fatal_reason` or `healthy`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import AbstractSet, Optional

from ..errors import HandshakeError
from .backoff import Backoff

FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 426})
"""Handshake refusals that retrying will not fix."""

FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1010})
"""Close codes from the server that say "your client is wrong", not "try again later"."""

AUTH_STATUSES = frozenset({401, 403})
"""Refusals of the credentials: retried (``auth_retries`` times) when the attempt had fresh ones."""

MAX_RETRY_AFTER = 300.0
"""The longest wait a server's Retry-After is honoured for, by default (seconds)."""


@dataclass(frozen=True)
class Ending:
    """How one connection attempt ended."""

    error: Optional[BaseException] = None
    """What ended it (None: an orderly close)."""
    close_code: Optional[int] = None
    """The server's close code, if it sent one."""
    close_reason: Optional[str] = None
    http_status: Optional[int] = None
    """The HTTP status of a refused upgrade."""
    retry_after: Optional[float] = None
    """Seconds the server asked to wait (Retry-After of a refused upgrade)."""
    fresh_credentials: bool = False
    """The attempt used credentials obtained for it (a callable headers/url/cookie/subprotocols)."""
    open_for: Optional[float] = None
    """Seconds the connection was open (None: it never opened)."""
    delivered: int = 0
    """Messages the reader decoded on the connection: > 0 when it delivered any (the
    reader decodes its frames until one gives a message, then the dispatcher decodes
    the rest; a frame the codec refuses delivers nothing)."""
    handshake_done: bool = False
    """The connection passed the connect hook (the client's handshake on every connect)."""


@dataclass(frozen=True)
class Decision:
    """What to do next: give up (``give_up`` says why) or retry after ``delay`` s."""

    failures: int
    """The failure count to carry to the next decision."""
    delay: float = 0.0
    give_up: Optional[str] = None
    fatal: bool = False
    """True when giving up because retrying cannot help (not because retries ran out)."""
    auth_failures: int = 0
    """Refusals in a row (401/403) of fresh credentials, to carry to the next decision."""


def _codes(name: str, value: AbstractSet[int]) -> "frozenset[int]":
    """``value`` as a frozenset of integers, or a ValueError naming the option."""
    if isinstance(value, (str, bytes)) or not all(type(v) is int for v in value):
        raise ValueError(f"ReconnectPolicy {name} is a set of integers, not {value!r}")
    return frozenset(value)


@dataclass(frozen=True)
class ReconnectPolicy:
    """The rules: which endings are fatal, and the `Backoff` between retries.

    * ``fatal_statuses``: HTTP statuses of a refused upgrade that end the client
      (default `FATAL_HTTP_STATUSES`: 400, 401, 403, 404, 405, 426); a 2xx answer
      (not a WebSocket server) is fatal too. ``retry_statuses``: statuses retried
      whatever else says otherwise (``{404}`` for a server between deployments).
    * ``fatal_close_codes``: the server's close codes that end the client (default
      `FATAL_CLOSE_CODES`: 1002, 1003, 1007, 1008, 1010).
    * ``auth_retries`` (default 1): a 401/403 of an attempt whose credentials were
      obtained for it (a callable ``headers``, say) is retried this many times in a
      row, as the token may have expired on its way; then the client gives up.
      Without fresh credentials, a 401/403 is fatal at once.
    * ``retry_fatal=True`` retries even endings that will not heal by themselves
      (HTTP 401, close code 1008, a certificate that fails, a bad upgrade).
    * ``max_retry_after`` (seconds, default 300): the longest wait a server's
      Retry-After is honoured for; the delay is the longer of the backoff's and
      the server's, the server's cut to this.

    A healthy connection (`healthy`: it delivered a message, passed the connect
    hook, or stayed open ``backoff.reset_after`` seconds) resets the failure
    count, so a server that restarts every few seconds is retried after
    ``backoff.initial`` each time, while connections that open and deliver
    nothing still back off. Sets may be given as any set of integers.
    """

    backoff: Backoff = Backoff()
    retry_fatal: bool = False
    fatal_statuses: AbstractSet[int] = FATAL_HTTP_STATUSES
    fatal_close_codes: AbstractSet[int] = FATAL_CLOSE_CODES
    retry_statuses: AbstractSet[int] = frozenset()
    auth_retries: int = 1
    max_retry_after: float = MAX_RETRY_AFTER

    def __post_init__(self) -> None:
        if not isinstance(self.backoff, Backoff):
            raise ValueError(f"ReconnectPolicy backoff is a wsbridge.Backoff, not {type(self.backoff).__name__}")
        for name in ("fatal_statuses", "fatal_close_codes", "retry_statuses"):
            object.__setattr__(self, name, _codes(name, getattr(self, name)))
        if type(self.auth_retries) is not int or self.auth_retries < 0:
            raise ValueError(f"ReconnectPolicy auth_retries is an integer >= 0, not {self.auth_retries!r}")
        if not self.max_retry_after >= 0:
            raise ValueError(f"ReconnectPolicy max_retry_after is seconds >= 0, not {self.max_retry_after!r}")

    def fatal_reason(self, ending: Ending) -> Optional[str]:
        """Why retrying cannot help, or None."""
        status = ending.http_status
        if status is not None and status in self.retry_statuses:
            return None
        err = ending.error
        if isinstance(err, HandshakeError) and err.fatal:
            return str(err)
        if status in self.fatal_statuses:
            return f"handshake refused with HTTP {status}"
        if status is not None and 200 <= status < 300:
            return f"not a WebSocket server: it answered the upgrade with HTTP {status}"
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {err.verify_message or err}"
        if ending.close_code in self.fatal_close_codes:
            return f"server closed the connection with code {ending.close_code} ({ending.close_reason or 'no reason'})"
        return None

    def healthy(self, ending: Ending) -> bool:
        """Did the connection work? It opened and delivered a message or passed the
        connect hook, or it stayed open ``backoff.reset_after`` seconds."""
        if ending.open_for is None:
            return False
        return ending.delivered > 0 or ending.handshake_done or ending.open_for >= self.backoff.reset_after

    def decide(self, ending: Ending, failures: int, rand: Optional[float] = None, *, auth_failures: int = 0) -> Decision:
        """The next step after ``ending``, with ``failures`` consecutive failures and
        ``auth_failures`` refused fresh credentials before it (both carried from the
        last `Decision`).

        A healthy connection resets the failure count; ``rand`` in [0, 1) replaces
        the jitter's random draw (for tests). An override takes ``**counts`` and
        passes them on to ``super().decide``."""
        fatal = self.fatal_reason(ending)
        auth = 0
        if fatal and not self.retry_fatal:
            if not (ending.fresh_credentials and ending.http_status in AUTH_STATUSES):
                return Decision(failures, give_up=fatal, fatal=True)
            if auth_failures >= self.auth_retries:
                return Decision(failures, give_up=f"{fatal}, also with fresh credentials", fatal=True)
            auth = auth_failures + 1
        if self.healthy(ending):
            failures = 0
        failures += 1
        if not self.backoff.allows(failures):
            return Decision(failures, give_up=f"retries exhausted (max_attempts={self.backoff.max_attempts})")
        delay = self.backoff.delay(failures, rand)
        if ending.retry_after is not None:
            delay = max(delay, min(ending.retry_after, self.max_retry_after))
        return Decision(failures, delay=delay, auth_failures=auth)
