"""After a connection ends: retry (after how long) or give up. A pure policy.

Modelled on urllib3's ``Retry``: `ReconnectPolicy` holds the rules and the
`Backoff`; `ReconnectPolicy.decide` takes what is known about how a
connection ended (`Ending`) and the count of failures so far, and returns a
`Decision`. No sockets, no clock, no threads: the supervisor keeps the count
and does the waiting, and the rules are tested in a table.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Optional

from ..errors import HandshakeError
from .backoff import Backoff

FATAL_HTTP_STATUSES = frozenset({400, 401, 403, 404, 405, 426})
"""Handshake refusals that retrying will not fix."""

FATAL_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1010})
"""Close codes from the server that say "your client is wrong", not "try again later"."""


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


@dataclass(frozen=True)
class Decision:
    """What to do next: give up (``give_up`` says why) or retry after ``delay`` s."""

    failures: int
    """The failure count to carry to the next decision."""
    delay: float = 0.0
    give_up: Optional[str] = None
    fatal: bool = False
    """True when giving up because retrying cannot help (not because retries ran out)."""


@dataclass(frozen=True)
class ReconnectPolicy:
    """The rules: which endings are fatal, and the `Backoff` between retries.

    ``retry_fatal=True`` retries even endings that will not heal by themselves
    (HTTP 401, close code 1008, a certificate that fails, a bad upgrade)."""

    backoff: Backoff = Backoff()
    retry_fatal: bool = False

    @staticmethod
    def fatal_reason(ending: Ending) -> Optional[str]:
        """Why retrying cannot help, or None."""
        err = ending.error
        if isinstance(err, HandshakeError) and err.fatal:
            return str(err)
        if ending.http_status in FATAL_HTTP_STATUSES:
            return f"handshake refused with HTTP {ending.http_status}"
        if ending.http_status is not None and 200 <= ending.http_status < 300:
            return f"not a WebSocket server: it answered the upgrade with HTTP {ending.http_status}"
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {err.verify_message or err}"
        if ending.close_code in FATAL_CLOSE_CODES:
            return f"server closed the connection with code {ending.close_code} ({ending.close_reason or 'no reason'})"
        return None

    def decide(self, ending: Ending, failures: int, rand: Optional[float] = None) -> Decision:
        """The next step after ``ending``, ``failures`` consecutive failures before it.

        A connection that stayed open ``backoff.reset_after`` seconds resets the
        count; ``rand`` in [0, 1) replaces the jitter's random draw (for tests)."""
        fatal = self.fatal_reason(ending)
        if fatal and not self.retry_fatal:
            return Decision(failures, give_up=fatal, fatal=True)
        if ending.open_for is not None and ending.open_for >= self.backoff.reset_after:
            failures = 0
        failures += 1
        if not self.backoff.allows(failures):
            return Decision(failures, give_up=f"retries exhausted (max_attempts={self.backoff.max_attempts})")
        return Decision(failures, delay=self.backoff.delay(failures, rand))
