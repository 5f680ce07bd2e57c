"""A user's script that touches every name in ``wsbridge.__all__``, type-checked by
tests/test_typing.py with ``mypy --strict`` (never run: it only has to type-check)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import wsbridge


def build(url: str, redis_url: str) -> wsbridge.Client:
    policy = wsbridge.ReconnectPolicy(wsbridge.Backoff(initial=1, max_delay=60), retry_statuses={404})
    codecs: List[wsbridge.Codec] = [
        wsbridge.JsonCodec(), wsbridge.RawCodec(), wsbridge.PipeCodec(), wsbridge.codec_by_name("json"),
        wsbridge.Inflate(wsbridge.MsgpackCodec()),
    ]
    proto: type[wsbridge.ProtobufCodec] = wsbridge.ProtobufCodec
    store: wsbridge.Store = wsbridge.SQLiteStore("feed.db")
    redis_store: wsbridge.Store = wsbridge.RedisStreamStore(redis_url, feed="ticks")
    client = wsbridge.Client(url, codec=codecs[0], policy=policy, store=store, **wsbridge.conventions(),
                             compression="deflate", ack=wsbridge.AckRule())
    del proto, redis_store
    return client


def subscribe(client: wsbridge.Client) -> Callable[[wsbridge.Message], int]:
    @client.on("chat")
    def chat(msg: wsbridge.Message) -> int:  # keeps its type through the decorator
        return len(str(msg.payload))

    def every(msg: wsbridge.Message) -> Optional[str]:
        return msg.stream

    anything: Callable[[wsbridge.Message], Optional[str]] = client.on_any(every)
    same: Callable[[wsbridge.Message], int] = client.on("trade", chat)
    del anything, same
    return chat


def on_connecting(sender: Any, *, attempt: int, **kw: Any) -> None: ...
def on_connected(sender: Any, *, url: str, **kw: Any) -> None: ...
def on_disconnected(sender: Any, *, code: Optional[int], reason: Optional[str], error: Optional[BaseException],
                    **kw: Any) -> None: ...
def on_reconnecting(sender: Any, *, attempt: int, delay: float, **kw: Any) -> None: ...
def on_gave_up(sender: Any, *, error: Optional[BaseException], **kw: Any) -> None: ...
def on_stopped(sender: Any, *, replaced_by: Optional[wsbridge.Client], **kw: Any) -> None: ...
def on_message(sender: Any, *, message: wsbridge.Message, **kw: Any) -> None: ...
def on_error(sender: Any, *, error: BaseException, context: str, **kw: Any) -> None: ...
def on_dropped(sender: Any, *, what: str, count: int, **kw: Any) -> None: ...
def on_gap(sender: Any, *, stream: Optional[str], first: int, last: int, status: str, **kw: Any) -> None: ...
def on_reset(sender: Any, *, stream: Optional[str], last: int, seq: int, epoch: Any, why: str, restarted: bool,
             identical: int, **kw: Any) -> None: ...
def on_anything(sender: Any, **kw: Any) -> None: ...


def connect_signals(client: wsbridge.Client) -> None:
    signals = client.signals
    connecting: wsbridge.ConnectingReceiver = signals.connecting.connect(on_connecting)
    connected: wsbridge.ConnectedReceiver = signals.connected.connect(on_connected)
    disconnected: wsbridge.DisconnectedReceiver = signals.disconnected.connect(on_disconnected)
    reconnecting: wsbridge.ReconnectingReceiver = signals.reconnecting.connect(on_reconnecting)
    gave_up: wsbridge.GaveUpReceiver = signals.gave_up.connect(on_gave_up)
    stopped: wsbridge.StoppedReceiver = signals.stopped.connect(on_stopped)
    message: wsbridge.MessageReceiver = signals.message.connect(on_message)
    duplicate: wsbridge.MessageReceiver = signals.duplicate.connect(on_message)
    error: wsbridge.ErrorReceiver = signals.error.connect(on_error)
    dropped: wsbridge.DroppedReceiver = signals.dropped.connect(on_dropped)
    gap: wsbridge.GapReceiver = signals.gap.connect(on_gap)
    reset: wsbridge.ResetReceiver = signals.reset.connect(on_reset)
    signals.error.connect(on_anything)
    signals.error.connect(lambda sender, **kw: None)
    del connecting, connected, disconnected, reconnecting, gave_up, stopped, message, duplicate, error, dropped
    del gap, reset


def run(client: wsbridge.Client, redis_url: str) -> None:
    state: wsbridge.State = client.state
    connected: bool = state == "connected"  # a str too
    if connected and state is wsbridge.State.CONNECTED:
        stats: wsbridge.Stats = client.stats
        print(stats.received)
    handle: wsbridge.SendHandle = client.send({"type": "chat"})
    del handle

    @client.on_connect
    def login(session: wsbridge.Session) -> None:
        session.send({"type": "login"})

    sub: wsbridge.Subscription = client.subscribe({"type": "subscribe"}, ack="subscribe")
    tracker = wsbridge.SequenceTracker()
    gap: Optional[wsbridge.Gap] = None
    outbox: wsbridge.Outbox[bytes] = wsbridge.Outbox(maxsize=10)
    decision: Optional[wsbridge.Decision] = None
    ending: Optional[wsbridge.Ending] = None
    backoff: wsbridge.Backoff = wsbridge.NO_RETRY
    running: List[Any] = wsbridge.clients()
    stopped_all: bool = wsbridge.stop_all(timeout=5)
    consumer = wsbridge.StreamConsumer(redis_url, "ticks", group="risk", name="worker-1")
    lease = wsbridge.Lease(redis_url, "ticks-lease")
    bridge = wsbridge.Bridge("ws://127.0.0.1:8765/", redis_url)
    agreed: Optional[wsbridge.PerMessageDeflate] = client.deflate
    version: str = wsbridge.__version__
    del sub, tracker, gap, outbox, decision, ending, backoff, running, stopped_all, consumer, lease, bridge, agreed
    del version


def errors() -> List[type[wsbridge.WsbridgeError]]:
    return [
        wsbridge.ClientClosed, wsbridge.ConnectError, wsbridge.ConnectHookError, wsbridge.ConnectionLost,
        wsbridge.HandshakeError, wsbridge.LeaseLost, wsbridge.MessageTooLarge, wsbridge.OutboxFull,
        wsbridge.ProtocolError, wsbridge.StoreError, wsbridge.StoreFull, wsbridge.StoreInUse,
        wsbridge.UpgradeRefused, wsbridge.UsageError, wsbridge.WireError,
    ]
