"""The `Message` record every codec produces and every subscriber receives."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

OVERHEAD = 256
"""The bytes a received message takes beyond its ``raw`` bytes, counted with them
against the byte bounds of the dispatch queue and the pull buffer, so that those bound
memory also for many tiny messages (a pipe frame of 5-byte messages took 36 times its
size). Measured with ``sys.getsizeof`` for ``Message("a", "x", None, None, None,
time.time(), b"a|1|x")`` on 64-bit CPython 3.11: the tuple 96 (104 since ``epoch``), the
type and the payload (``str``) 50 each, ``received_at`` 24, the ``raw`` bytes 38 less the 5
counted as ``len(raw)``, and a queue's slot, 8: 261 (269), rounded to 256
(``tests/test_review_fixes.py`` checks it against what decoding a frame of tiny messages
allocates: the type is shared, so that stays below it)."""


class Message(NamedTuple):
    """One received (or to-be-sent) message: an immutable record.

    ``type`` routes it to subscribers; ``payload`` is what the codec decoded
    (a dict for JSON, text or bytes for the pipe and raw formats); ``seq``,
    ``id``, ``stream`` and ``epoch`` (the generation of the stream's numbering:
    another epoch starts the stream afresh) drive duplicate, gap and reset
    detection when the wire format carries them; ``received_at`` is ``time.time()`` at decoding;
    ``raw`` is the message's bytes as they came: its frame, or its own part
    of the frame when one frame holds several messages (the pipe format).
    The dispatch queue and the pull buffer weigh a message by `weight`: ``len(raw)``
    and the `OVERHEAD` of the record itself.

    A ``NamedTuple`` rather than a dataclass because a receiver builds tens of
    thousands of these a second and tuple construction is the cheapest
    immutable record Python has.
    """

    type: str
    """What subscribers are registered for (``client.on(type)``)."""
    payload: Any = None
    """What the codec decoded: a dict for a JSON object, text or bytes for the pipe and raw formats."""
    seq: Optional[int] = None
    """The sequence id within its ``stream``, when the codec reads one (``seq_field``)."""
    id: Optional[Any] = None
    """The message's id, when the codec reads one (``id_field``): dedup of messages without ``seq``."""
    stream: Optional[str] = None
    """The stream ``seq`` counts in (``stream_field``); None: the one unnamed stream."""
    received_at: Optional[float] = None
    """``time.time()`` when it was decoded (for a replay: when it was recorded)."""
    raw: Union[bytes, str, None] = None
    """Its bytes as they came: its frame, or its own part of a frame that holds several."""
    epoch: Optional[Any] = None  # last: positional construction of the fields above stays as it was
    """The generation of the stream's numbering (``epoch_field``): another epoch starts the stream afresh."""

    def __repr__(self) -> str:
        payload = repr(self.payload)
        if len(payload) > 80:
            payload = payload[:77] + "..."
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (("seq", self.seq), ("id", self.id), ("stream", self.stream), ("epoch", self.epoch))
            if value is not None
        )
        return f"Message(type={self.type!r}, payload={payload}{extra})"


def weight(message: Message) -> int:
    """The bytes ``message`` counts for against the queues' byte bounds: its ``raw``
    bytes and the record's `OVERHEAD`."""
    raw = message.raw
    return OVERHEAD + (len(raw) if raw is not None else 0)
