"""When to try connecting again: a pure, immutable policy object.

Modelled on urllib3's ``Retry``: it holds numbers and answers questions
("how long before attempt N?", "may attempt N happen at all?"); the
supervisor keeps the count and the clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Optional


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter.

    The delay before retry ``attempt`` (1, 2, ...) is
    ``min(max_delay, initial * factor ** (attempt - 1))``, then shortened by a
    random fraction of up to ``jitter`` (0: exact delays; 0.5: anywhere in
    the upper half), so clients cut off together do not return together.
    ``max_attempts`` consecutive failed retries make the client give up
    (None: never). A connection that stays up ``reset_after`` seconds resets
    the count, so one drop after a day of service starts again at ``initial``
    (so does a shorter one that delivered a message: `ReconnectPolicy.healthy`).
    """

    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.5
    max_attempts: Optional[int] = None
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max_delay < 0:
            raise ValueError("Backoff delays must be >= 0")
        if self.factor < 1:
            raise ValueError("Backoff factor must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff jitter is a fraction from 0 to 1")
        if self.max_attempts is not None and self.max_attempts < 0:
            raise ValueError("Backoff max_attempts must be >= 0 or None")
        if self.reset_after < 0:
            raise ValueError("Backoff reset_after must be >= 0")

    def base_delay(self, attempt: int) -> float:
        """The delay before retry ``attempt`` without jitter."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # Cap the exponent so huge attempt numbers do not overflow a float.
        exponent = min(attempt - 1, 1024)
        try:
            delay = self.initial * self.factor**exponent
        except OverflowError:
            delay = self.max_delay
        return min(self.max_delay, delay)

    def delay(self, attempt: int, rand: Optional[float] = None) -> float:
        """The delay before retry ``attempt``; ``rand`` in [0, 1) replaces the random draw."""
        if rand is None:
            rand = random.random()
        return self.base_delay(attempt) * (1.0 - self.jitter * rand)

    def allows(self, attempt: int) -> bool:
        """May retry number ``attempt`` happen?"""
        return self.max_attempts is None or attempt <= self.max_attempts

    def delays(self, rand: Callable[[], float] = random.random) -> Iterator[float]:
        """Every delay this policy allows, in order (endless when max_attempts is None)."""
        attempt = 1
        while self.allows(attempt):
            yield self.delay(attempt, rand())
            attempt += 1

    def with_(self, **changes: object) -> "Backoff":
        """A copy with some fields changed."""
        return replace(self, **changes)  # type: ignore[arg-type]


NO_RETRY = Backoff(max_attempts=0)
"""Connect once; never reconnect."""
