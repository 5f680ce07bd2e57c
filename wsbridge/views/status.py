"""`StatusView`: the stream's health in one line."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Tuple

from ..message import Message
from .base import View

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client

RATE_WINDOW = 5.0
"""Seconds over which messages/s is averaged."""


class StatusView(View):
    """Connected or reconnecting (attempt, next retry in N s), messages/s,
    last sequence id, send-buffer length: read from the client's signals and
    stats whenever it is rendered, so it is never out of date."""

    title = "status"

    def __init__(self, client: Optional["Client"] = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._samples: Deque[Tuple[float, int]] = deque()
        self.attempt = 0
        self.retry_at: Optional[float] = None
        self.last_error: Optional[str] = None
        super().__init__(client)

    def _attach(self, client: "Client") -> None:
        with self.lock:  # a new client: its own counts and lifecycle; the rate counts from now
            self._samples.clear()  # (drawn once, at the end, it is the average since attach, not 0)
            self._samples.append((self._clock(), client.stats.dispatched))
            self.attempt = 0
            self.retry_at = None
        super()._attach(client)
        signals = client.signals
        for signal in (signals.connected, signals.disconnected, signals.reconnecting, signals.gave_up):
            signal.connect(self._lifecycle)

    def _detach(self) -> None:
        client = self.client
        if client is not None:
            signals = client.signals
            for signal in (signals.connected, signals.disconnected, signals.reconnecting, signals.gave_up):
                signal.disconnect(self._lifecycle)
        super()._detach()

    def subscriptions(self) -> List[Tuple[str, Callable[[Message], Any]]]:
        return []

    def _lifecycle(self, sender: Any, **kw: Any) -> None:
        with self.lock:
            if "delay" in kw:  # reconnecting: the attempt since the last connection (the
                self.attempt += 1  # policy's own count spans short-lived connections too)
                self.retry_at = self._clock() + kw["delay"]
            elif "url" in kw:  # connected
                self.attempt = 0
                self.retry_at = None
            if kw.get("error") is not None:
                self.last_error = str(kw["error"])
        self.changed()

    def rate(self) -> float:
        """Messages delivered per second over the last few seconds."""
        if self.client is None:
            return 0.0
        now, count = self._clock(), self.client.stats.dispatched
        with self.lock:
            samples = self._samples
            samples.append((now, count))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
                samples.popleft()
            then, before = samples[0]
        return (count - before) / (now - then) if now > then else 0.0

    def text(self) -> str:
        client = self.client
        if client is None:
            return "not attached"
        stats = client.stats
        state = stats.state
        with self.lock:
            attempt, retry_at, error = self.attempt, self.retry_at, self.last_error
        if state == "backoff" and retry_at is not None:
            head = f"reconnecting (attempt {attempt}, next retry in {max(0.0, retry_at - self._clock()):.1f} s)"
        elif state == "gave_up":
            head = f"gave up ({error or 'see the log'})"
        else:
            head = state
        positions = client.positions
        last = ", ".join(f"{stream or '-'}:{seq}" for stream, seq in sorted(positions.items(), key=lambda kv: str(kv[0])))
        first = f"{head} | {self.rate():,.0f} msg/s | last seq {last or '-'} | outbox {stats.outbox}"
        second = (f"received {stats.dispatched:,} | reconnects {stats.reconnects} | "
                  f"duplicates {stats.duplicates} | lost {stats.lost}")
        # Two lines when one would not fit 80 columns: broken between fields, never inside one.
        return f"{first} | {second}" if len(first) + len(second) + 3 <= 80 else f"{first}\n{second}"

    def __rich__(self) -> Any:
        from rich.text import Text

        line = self.text()
        if line.startswith("connected"):
            style = "green"
        elif line.startswith(("reconnecting", "connecting", "backoff")):
            style = "yellow"
        else:
            style = "red"
        return Text(line, style=style)
