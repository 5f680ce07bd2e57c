"""Mistakes a type checker must catch: each line marked ``# E: CODE`` must be a ``mypy --strict``
error with that code (tests/test_typing.py), and no other line an error."""

from __future__ import annotations

from typing import Any

import wsbridge

client = wsbridge.Client("ws://127.0.0.1:8765/")
stats = wsbridge.Stat  # E: attr-defined
store = wsbridge.RedisStreamStor  # E: attr-defined


@client.on("chat")
def show(msg: wsbridge.Message) -> int:
    return 1


text: str = show(wsbridge.Message("chat"))  # E: assignment


def wrong_keyword(sender: Any, *, err: BaseException, **kw: Any) -> None: ...
def wrong_type(sender: Any, *, attempt: str, **kw: Any) -> None: ...


client.signals.error.connect(wrong_keyword)  # E: arg-type
client.signals.connecting.connect(wrong_type)  # E: arg-type
consumer: wsbridge.StreamConsumer = wsbridge.StreamConsumer("redis://127.0.0.1:6379/0", 1, "g", "n")  # E: arg-type
