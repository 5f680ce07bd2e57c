"""A snapshot of a client's counters."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class Stats:
    """Counters since the client was made (a consistent-enough snapshot:
    each counter is written by one thread and read without a lock)."""

    state: str = "new"
    frames: int = 0
    """Data messages read from the socket, as they came (the reader's count)."""
    bytes: int = 0
    received: int = 0
    """Messages decoded from those frames (the dispatcher decodes a frame just before
    delivering it; one frame may hold several messages)."""
    dispatched: int = 0
    protocol_errors: int = 0
    subscriber_errors: int = 0
    sent: int = 0
    queued: int = 0
    outbox: int = 0
    flushed: int = 0
    outbox_dropped: int = 0
    outbox_expired: int = 0
    """Removed from the send buffer unsent: their ``ttl`` passed."""
    acked: int = 0
    unacked: int = 0
    """Sent and not acknowledged yet (with an ack rule; at most ``ack_window``)."""
    resent: int = 0
    """Sent again on a new connection, not acknowledged on the one before."""
    pull_buffered: int = 0
    pull_dropped: int = 0
    dispatch_pending: int = 0
    dispatch_bytes: int = 0
    backpressure_waits: int = 0
    duplicates: int = 0
    gaps: int = 0
    lost: int = 0
    resets: int = 0
    """Streams that started numbering afresh (the ``reset`` signal): a new epoch, or a seq back after a reconnect."""
    held: int = 0
    resumes: int = 0
    stored: int = 0
    store_errors: int = 0
    replayed: int = 0
    conflated: int = 0
    """Messages not delivered because a newer one of the same type and key came with them
    while the subscribers were behind (`Client.conflate`)."""
    undelivered: int = 0
    """Received, not delivered: `stop` ran out of time for them (a store keeps them for the next run).
    Final once the client's threads ended (a subscriber may outlive `stop`'s timeout)."""
    connects: int = 0
    reconnects: int = 0
    connect_attempts: int = 0
    disconnects: int = 0

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)
