"""wsbridge: live WebSocket data for synchronous Python.

    import wsbridge

    with wsbridge.Client("ws://127.0.0.1:8765/feed") as client:
        client.wait_connected(timeout=5)
        for msg in client.messages(types={"chat"}, timeout=10):
            print(msg.payload)
"""

import logging as _logging
from typing import TYPE_CHECKING

from .client import Client
from .codecs import Codec, Inflate, JsonCodec, MsgpackCodec, PipeCodec, ProtobufCodec, RawCodec, codec_by_name
from .errors import (
    ClientClosed,
    ConnectError,
    ConnectHookError,
    ConnectionLost,
    HandshakeError,
    LeaseLost,
    MessageTooLarge,
    OutboxFull,
    ProtocolError,
    StoreError,
    StoreFull,
    StoreInUse,
    UpgradeRefused,
    UsageError,
    WireError,
    WsbridgeError,
)
from .message import Message
from .presets import conventions
from .runtime.backoff import NO_RETRY, Backoff
from .runtime.outcomes import AckRule, SendHandle
from .runtime.policy import Decision, Ending, ReconnectPolicy
from .runtime.registry import live as clients
from .runtime.registry import stop_all
from .runtime.session import Session
from .runtime.signals import (
    ConnectedReceiver,
    ConnectingReceiver,
    DisconnectedReceiver,
    DroppedReceiver,
    ErrorReceiver,
    GapReceiver,
    GaveUpReceiver,
    MessageReceiver,
    ReconnectingReceiver,
    ResetReceiver,
    StoppedReceiver,
)
from .runtime.state import State
from .runtime.stats import Stats
from .runtime.subscriptions import Subscription
from .tracking.outbox import Outbox
from .tracking.sequence import Gap, SequenceTracker
from .tracking.store import Store
from .wire.deflate import PerMessageDeflate

if TYPE_CHECKING:  # imported on first use (`__getattr__`); type checkers see them here, typed as they are
    from .redis.bridge import Bridge
    from .redis.consumer import StreamConsumer
    from .redis.lease import Lease
    from .redis.store import RedisStreamStore
    from .tracking.sqlite import SQLiteStore

__version__ = "0.1.0"

# The library prints nothing unless the application configures logging.
_logging.getLogger("wsbridge").addHandler(_logging.NullHandler())

_LAZY = {
    "SQLiteStore": "tracking.sqlite",  # loads sqlite3: only for the programs that keep a store
    "RedisStreamStore": "redis.store",
    "StreamConsumer": "redis.consumer",
    "Lease": "redis.lease",
    "Bridge": "redis.bridge",
}


if not TYPE_CHECKING:  # hidden from type checkers, so that a misspelt name is an error for them

    def __getattr__(name: str) -> object:
        """`SQLiteStore` and the Redis pieces, imported on first use (the Redis ones need
        the ``redis`` extra)."""
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'wsbridge' has no attribute {name!r}")
        import importlib

        return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "Backoff",
    "Bridge",
    "Lease",
    "LeaseLost",
    "RedisStreamStore",
    "StreamConsumer",
    "Client",
    "ClientClosed",
    "Codec",
    "clients",
    "conventions",
    "stop_all",
    "ConnectError",
    "ConnectHookError",
    "ConnectionLost",
    "AckRule",
    "SendHandle",
    "Decision",
    "Ending",
    "JsonCodec",
    "Inflate",
    "MsgpackCodec",
    "ProtobufCodec",
    "Message",
    "PerMessageDeflate",
    "HandshakeError",
    "MessageTooLarge",
    "NO_RETRY",
    "Outbox",
    "OutboxFull",
    "PipeCodec",
    "ProtocolError",
    "RawCodec",
    "ReconnectPolicy",
    "SQLiteStore",
    "SequenceTracker",
    "Session",
    "State",
    "ConnectingReceiver",
    "ConnectedReceiver",
    "DisconnectedReceiver",
    "ReconnectingReceiver",
    "GaveUpReceiver",
    "StoppedReceiver",
    "MessageReceiver",
    "ErrorReceiver",
    "DroppedReceiver",
    "GapReceiver",
    "ResetReceiver",
    "Stats",
    "Store",
    "StoreError",
    "StoreFull",
    "StoreInUse",
    "Subscription",
    "Gap",
    "UpgradeRefused",
    "UsageError",
    "WireError",
    "WsbridgeError",
    "codec_by_name",
]
