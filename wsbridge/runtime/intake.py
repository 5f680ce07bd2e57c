"""The reader thread's half of a client: frames in, decoded messages queued.

`Intake.on_frame` runs on the reader thread of the connection of the moment
for every whole message the wire delivered (checked already: size, UTF-8;
see `wsbridge.wire.frames`). It decodes with the codec and queues the messages
for the dispatcher, which blocks here while the dispatch queue is full (TCP
backpressure). A frame the codec refuses is reported and the stream goes on.
While a connection's handshake runs, each message is first handed to the
handshake's inbox (`watch`), so a connect hook sees its reply at once, however
long the queue. The counters are written by the reader thread only (one
connection at a time).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

from ..codecs import Codec
from ..errors import ProtocolError
from ..message import OVERHEAD, Message
from .dispatch import Dispatcher


class Intake:
    __slots__ = ("codec", "_queue", "put", "_report", "frames", "bytes", "received", "protocol_errors")

    def __init__(self, codec: Codec, dispatcher: Dispatcher, report: Callable[..., Any]) -> None:
        self.codec = codec
        self._queue = dispatcher.put
        self.put: Callable[[Message, int], None] = dispatcher.put
        """Where each decoded message goes: the dispatch queue (see `watch`). Replaced
        by the supervisor between connections and as a handshake ends."""
        self._report = report
        self.frames = self.bytes = self.received = self.protocol_errors = 0

    def watch(self, inbox: Optional[Callable[[Message, int], None]]) -> None:
        """Hand each message to ``inbox`` before queuing it (None: queue it only). The
        supervisor's, before a connection starts and as its handshake ends: the reader
        checks nothing per frame otherwise."""
        queue = self._queue
        if inbox is None:
            self.put = queue
            return

        def put(message: Message, size: int) -> None:
            inbox(message, size)
            queue(message, size)

        self.put = put

    def on_frame(self, data: bytes, binary: bool) -> None:
        self.frames += 1
        size = len(data)
        self.bytes += size
        try:
            messages = self.codec.decode(data, binary, time.time())
        except ProtocolError as exc:
            self.protocol_errors += 1
            self._report(exc, "decode", frame=data, size=size)  # bounded like data: it carries the frame
            return
        except Exception as exc:  # a codec bug must not kill the reader
            self.protocol_errors += 1
            self._report(ProtocolError(f"codec {self.codec!r} failed: {exc!r}", data), "decode", frame=data, size=size)
            return
        put = self.put
        for message in messages:
            raw = message.raw  # the dispatcher counts the same size off (`dispatch.weight`)
            put(message, OVERHEAD if raw is None else OVERHEAD + len(raw))
        self.received += len(messages)
