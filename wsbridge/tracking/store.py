"""Keeping what was received: the `Store` interface, and how stores encode payloads.

A store holds every message the client accepted (after dedup) and two
positions: *received* (the last contiguous sequence id stored per stream,
what a resume asks to continue after) and *handled* (the last stored message
whose subscribers all returned). The client writes each batch before any
subscriber sees it and marks each message handled after its subscribers
return, so after a crash the messages past the handled mark are delivered
again first: the one in flight may be repeated, none is lost.

`SQLiteStore` lives in `wsbridge.tracking.sqlite` (`wsbridge.SQLiteStore` imports it
when first used, so a client without a store does not load ``sqlite3``).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

from ..errors import StoreError, StoreFull, StoreInUse  # noqa: F401 - defined in errors.py; importable from here as before
from ..message import Message
from .sequence import Epochs, Positions

S = TypeVar("S", bound="Store")



class Store:
    """What the client needs of a store; `SQLiteStore` is the bundled one.

    Keys are increasing integers the store assigns, one per message, in
    arrival order. The client calls `open` (and `held_messages`) on start,
    then `append`, `mark_handled` and, as it stops, `keep_held` from its
    dispatcher thread only; `history` may be called from any thread.
    """

    owner: Optional[str] = None
    """The name of the client that writes the store (the client sets it): a second
    writer's `StoreInUse` names it."""

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def idle(self) -> None:
        """Upkeep off the writer's path (`SQLiteStore`: checkpoints), called about four
        times a second by the client's supervisor thread while connected."""

    def __enter__(self: "S") -> "S":
        self.open()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def positions(self) -> Positions:
        """Last contiguous sequence id stored per stream."""
        raise NotImplementedError

    def epochs(self) -> Epochs:
        """The epoch of each stored position (streams whose messages carry one), as text."""
        return {}

    def digest(self, stream: Optional[str], seq: int) -> Optional[int]:
        """The `digest` of the last message stored at ``seq`` of ``stream`` (None: not
        known): after a restart, tells a server replaying what it sent from one whose
        numbering restarted (`SequenceTracker`'s ``recall``)."""
        return None

    def unhandled(self) -> Iterator[Tuple[int, Message]]:
        """Stored messages past the handled mark, oldest first, with their keys
        (read lazily: the backlog after a long outage need not fit in memory)."""
        raise NotImplementedError

    def append(self, messages: Sequence[Message], positions: Positions, raw_is_payload: bool = False,
               epochs: Optional[Epochs] = None) -> int:
        """Store ``messages`` (one transaction) and the new received positions
        (with ``epochs``, the epochs they belong to); return the key of the first
        (the rest follow, consecutive). ``raw_is_payload``: each message's ``raw``
        frame is its payload as JSON (`Codec.raw_is_payload`), so it may be stored
        as it came."""
        raise NotImplementedError

    def mark_handled(self, key: int) -> None:
        """Every subscriber returned for the message ``key`` (and all before it)."""
        raise NotImplementedError

    def history(
        self,
        type: Optional[str] = None,
        stream: Optional[str] = None,
        since: Optional[float] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> List[Message]:
        """Stored messages in arrival order, filtered by type, stream (None:
        all streams), ``received_at >= since``, ``seq > after_seq``; the
        first ``limit`` of them. Safe beside a writing client, from any
        thread (and, for `SQLiteStore`, any process)."""
        return list(self.iter_history(type, stream, since, after_seq, limit))

    def iter_history(
        self,
        type: Optional[str] = None,
        stream: Optional[str] = None,
        since: Optional[float] = None,
        after_seq: Optional[int] = None,
        limit: Optional[int] = None,
    ) -> Iterator[Message]:
        """`history` one message at a time (for large stores)."""
        raise NotImplementedError

    skipped = 0
    """Messages `append` was given but did not store, as stored already (a store that can
    tell, counted as it writes): ``stats.stored`` leaves them out."""

    # Messages held back behind open gaps when the client stops (see `Delivery.finish`).
    keeps_held = False
    """True when the store implements `keep_held` and `held_messages`."""

    def keep_held(self, messages: Sequence[Message], raw_is_payload: bool = False) -> None:
        """Keep ``messages``, held behind open gaps as the client stops, in place of
        those kept before (one transaction): the next run holds them again while it
        asks the server for the gaps. The stored positions do not move. ``raw_is_payload``
        as for `append` (their frames kept: what tells a resend of them from a restart)."""
        raise NotImplementedError

    def held_messages(self) -> List[Message]:
        """The messages `keep_held` kept, in order (they stay kept until the next call)."""
        return []

    # The send buffer, kept so queued sends survive a restart. A store that
    # does not keep it returns None from `outbox_add` and nothing else is called.
    def outbox_items(self) -> List[Tuple[int, Union[str, bytes], bool, Optional[float]]]:
        """Queued frames from an earlier run, oldest first: ``(key, data, binary, expires)``."""
        return []

    def outbox_add(self, data: Union[str, bytes], binary: bool, expires: Optional[float] = None) -> Optional[int]:
        """Keep a frame that waits in the send buffer; its key (None: not kept).
        ``expires``: the `time.time` past which it is not to be written (its ``ttl``)."""
        return None

    def outbox_written(self, key: int) -> None:
        """A kept frame was written and stays kept until acknowledged: its ttl no longer applies."""

    def outbox_remove(self, key: int) -> None:
        """Forget one kept frame (dropped by the overflow policy)."""

    def outbox_remove_through(self, key: int) -> None:
        """Forget every kept frame up to ``key`` (the socket took them)."""



# payload kinds
_NONE, _TEXT, _BYTES, _JSON = 0, 1, 2, 3
JSON_FRAME = 4  # the JSON frame as it came (UTF-8 bytes), its payload once parsed

def stream_key(stream: Optional[str]) -> str:
    return "-" if stream is None else "s:" + stream


def encode_payload(payload: Any) -> Tuple[int, Any]:
    if payload is None:
        return _NONE, None
    if isinstance(payload, str):
        return _TEXT, payload
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return _BYTES, bytes(payload)
    return _JSON, json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def decode_payload(kind: int, value: Any) -> Any:
    if kind == _JSON or kind == JSON_FRAME:
        return json.loads(value)
    if kind == _BYTES:
        return bytes(value)
    return value


def stored_raw(kind: int, value: Any) -> Optional[bytes]:
    """A message's ``raw`` as read back: its frame when the store kept it as it came
    (`JSON_FRAME`, so a replay can decode it again), else None."""
    return bytes(value) if kind == JSON_FRAME else None


def encode_id(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def check_store_path(path: str, *, must_exist: bool = False) -> None:
    """`StoreError` for a path where no SQLite store can be: a folder, something other
    than a plain file (opening a FIFO would block for ever), a folder that does not
    exist, or (``must_exist``) nothing at all. Reads nothing."""
    if os.path.isdir(path):
        raise StoreError(f"cannot open the store {path!r}: it is a folder, not a store")
    if os.path.exists(path):
        if not os.path.isfile(path):
            raise StoreError(f"cannot open the store {path!r}: it is not a store (not a plain file)")
        return
    if must_exist:
        raise StoreError(f"no store at {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise StoreError(f"cannot open the store {path!r}: there is no folder {folder!r}")
