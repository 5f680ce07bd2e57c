"""The `Message` record every codec produces and every subscriber receives."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union


class Message(NamedTuple):
    """One received (or to-be-sent) message: an immutable record.

    ``type`` routes it to subscribers; ``payload`` is what the codec decoded
    (a dict for JSON, text or bytes for the pipe and raw formats); ``seq``,
    ``id`` and ``stream`` drive duplicate and gap detection when the wire
    format carries them; ``received_at`` is ``time.time()`` at decoding;
    ``raw`` is the message's bytes as they came: its frame, or its own part
    of the frame when one frame holds several messages (the pipe format).
    The dispatch queue and the pull buffer weigh a message by ``len(raw)``.

    A ``NamedTuple`` rather than a dataclass because a receiver builds tens of
    thousands of these a second and tuple construction is the cheapest
    immutable record Python has.
    """

    type: str
    payload: Any = None
    seq: Optional[int] = None
    id: Optional[Any] = None
    stream: Optional[str] = None
    received_at: Optional[float] = None
    raw: Union[bytes, str, None] = None

    def __repr__(self) -> str:
        payload = repr(self.payload)
        if len(payload) > 80:
            payload = payload[:77] + "..."
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (("seq", self.seq), ("id", self.id), ("stream", self.stream))
            if value is not None
        )
        return f"Message(type={self.type!r}, payload={payload}{extra})"
