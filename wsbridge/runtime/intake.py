"""The reader thread's half of a client: frames in, decoded messages queued.

`Intake.on_frame` runs on the reader thread of the connection of the moment
for every whole message the wire delivered (checked already: size, UTF-8;
see `wsbridge.wire.frames`). It queues the frame for the dispatcher, which
decodes it (`dispatch.Undecoded` says why there), or, for a codec that may split
a frame into several messages (`Codec.one_per_frame`), decodes it and queues the
messages; either blocks here while the dispatch queue is full (TCP backpressure). A frame the codec refuses is
reported and the stream goes on.
While a connection's handshake runs, each message is first handed to the
handshake's inbox (`watch`), so a connect hook sees its reply at once, however
long the queue. Once requests or acks are in use, each message is first shown to
the sender (`correlate`), which matches replies and acks as they arrive, before the
subscribers: a subscriber waiting for a reply gets it. In these two cases the reader
decodes the frame itself. The counters are written by the reader thread only (one
connection at a time); the dispatcher counts what it decodes (`Delivery`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..codecs import Codec
from ..errors import ProtocolError
from ..message import OVERHEAD, Message
from .dispatch import Dispatcher, Undecoded


class Intake:
    __slots__ = ("codec", "_queue", "put", "_deferred", "_report", "frames", "bytes", "received", "protocol_errors",
                 "_inbox", "_match", "_lock")

    def __init__(self, codec: Codec, dispatcher: Dispatcher, report: Callable[..., Any]) -> None:
        self.codec = codec
        self._queue = dispatcher.put
        self.put: Callable[[Any, int], None] = self._queue
        """Where each decoded message goes: the dispatch queue (see `watch`). Replaced
        by the supervisor between connections and as a handshake ends."""
        self._deferred: Optional[Callable[[Any, int], None]] = None
        """`put` when the dispatcher is to decode each frame (`Codec.one_per_frame`), from
        the first message of a connection on (`new_connection`); else None (the reader's)."""
        self._report = report
        self.frames = self.bytes = self.received = self.protocol_errors = 0
        self._inbox: Optional[Callable[[Message, int], None]] = None
        self._match: Optional[Callable[[Message], None]] = None
        self._lock = threading.Lock()  # `watch` (supervisor) and `correlate` (any thread) compose ``put``

    def new_connection(self) -> None:
        """A connection starts (the supervisor, before its reader): the reader decodes
        its frames until one gives a message, so that `received` tells whether the
        connection delivered anything (a server that sends only frames the codec
        refuses is backed off from); the dispatcher decodes the rest."""
        self._deferred = None

    def watch(self, inbox: Optional[Callable[[Message, int], None]]) -> None:
        """Hand each message to ``inbox`` before queuing it (None: queue it only). The
        supervisor's, before a connection starts and as its handshake ends: the reader
        checks nothing per frame otherwise."""
        with self._lock:
            self._inbox = inbox
            self._compose()

    def correlate(self, match: Callable[[Message], None]) -> None:
        """Show each message to ``match`` first, from now on (the sender's replies and
        acks; set once requests or acks are in use, never before)."""
        with self._lock:
            if self._match is None:
                self._match = match
                self._compose()

    def _compose(self) -> None:
        queue, inbox, match = self._queue, self._inbox, self._match
        if inbox is None and match is None:
            self.put = queue
            return

        def put(message: Message, size: int) -> None:
            if match is not None:
                match(message)
            if inbox is not None:
                inbox(message, size)
            queue(message, size)

        self.put = put

    def on_frame(self, data: bytes, binary: bool) -> None:
        self.frames += 1
        size = len(data)
        self.bytes += size
        put = self.put
        if put is self._deferred:  # nothing to show each message to: the dispatcher decodes it (`Undecoded`)
            put(tuple.__new__(Undecoded, (data, binary, time.time())), OVERHEAD + size)
            return
        try:
            messages = self.codec.decode(data, binary, time.time())
        except Exception as exc:  # a codec bug must not kill the reader either
            self.protocol_errors += 1
            self._report(decode_error(self.codec, exc, data), "decode", frame=data, size=size)  # bounded like data
            return
        for message in messages:
            raw = message.raw  # the dispatcher counts the same size off (`dispatch.weight`)
            put(message, OVERHEAD if raw is None else OVERHEAD + len(raw))
        self.received += len(messages)
        if messages and self.codec.one_per_frame:
            self._deferred = self._queue  # the connection delivers: the dispatcher decodes from now on


def decode_error(codec: Codec, exc: Exception, data: bytes) -> ProtocolError:
    """What a frame ``codec`` could not decode is reported as: its `ProtocolError`, or
    one naming the codec's failure (a bug of the codec's must not end the feed)."""
    return exc if isinstance(exc, ProtocolError) else ProtocolError(f"codec {codec!r} failed: {exc!r}", data)
