"""`ChatView`: a chat log that appends each chat message."""

from __future__ import annotations

import html
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Hashable, List, NamedTuple, Optional, Tuple

from ..message import Message
from .base import View

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client


class ChatLine(NamedTuple):
    sender: str
    time: float
    """Seconds since the epoch: the message's own time field, else when it was received."""
    text: str

    def format(self) -> str:
        return f"{time.strftime('%H:%M:%S', time.localtime(self.time))} {self.sender}: {self.text}"


class ChatView(View):
    """The last ``max_lines`` chat messages of type ``type``, oldest first.

    A JSON payload gives ``sender_field``, ``text_field`` and ``time_field``
    (seconds since the epoch); a text payload (pipe or raw) is the text.
    `say` sends a chat message in the same shape.
    """

    title = "chat"

    def __init__(
        self,
        client: Optional["Client"] = None,
        type: str = "chat",
        *,
        sender_field: str = "from",
        text_field: str = "text",
        time_field: str = "ts",
        max_lines: int = 500,
    ) -> None:
        self.type = type
        self.sender_field = sender_field
        self.text_field = text_field
        self.time_field = time_field
        self._lines: Deque[ChatLine] = deque(maxlen=max_lines)
        super().__init__(client)

    def config(self) -> Hashable:
        return self.type, self.sender_field, self.text_field, self.time_field

    def subscriptions(self) -> List[Tuple[str, Callable[[Message], Any]]]:
        return [(self.type, self.handle)]

    @property
    def lines(self) -> List[ChatLine]:
        with self.lock:
            return list(self._lines)

    def handle(self, msg: Message) -> None:
        """Append one chat message (called by the client; callable directly in tests)."""
        payload = msg.payload
        stamp = msg.received_at if msg.received_at is not None else time.time()
        if isinstance(payload, dict):
            sent_at = payload.get(self.time_field)
            line = ChatLine(
                str(payload.get(self.sender_field, "?")),
                float(sent_at) if isinstance(sent_at, (int, float)) and not isinstance(sent_at, bool) else stamp,
                _text_of(payload, self.text_field),
            )
        else:
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
            line = ChatLine("?", stamp, text)
        with self.lock:
            self._lines.append(line)
        self.changed()

    def say(self, text: str, sender: str) -> None:
        """Send a chat message through the client (JSON shape)."""
        if self.client is None:
            raise RuntimeError("the view is not attached to a client")
        self.client.send({"type": self.type, self.sender_field: sender, self.text_field: text, self.time_field: time.time()})

    def text(self) -> str:
        return "\n".join(line.format() for line in self.lines)

    def __rich__(self) -> Any:
        from rich.panel import Panel
        from rich.text import Text

        body = Text()
        for i, line in enumerate(self.lines):
            if i:
                body.append("\n")
            body.append(time.strftime("%H:%M:%S ", time.localtime(line.time)), style="dim")
            body.append(line.sender, style="bold cyan")
            body.append(": " + line.text)
        return Panel(body, title=f"{self.title} ({self.type})", title_align="left")

    def to_html(self) -> str:
        rows = "".join(
            f"<div><span style='color:#888'>{time.strftime('%H:%M:%S', time.localtime(line.time))}</span> "
            f"<b>{html.escape(line.sender)}</b>: {html.escape(line.text)}</div>"
            for line in self.lines
        )
        return f"<div class='wsbridge-chat' style='font-family:monospace'>{rows}</div>"


TEXT_FIELDS = ("text", "body", "message", "content", "msg")
"""Where chat text is found when the configured field is absent (then the payload itself)."""


def _text_of(payload: dict, field: str) -> str:
    """The chat text of ``payload``: ``field``, else a common text field, else the payload as JSON."""
    for name in (field, *TEXT_FIELDS):
        value = payload.get(name)
        if isinstance(value, str):
            return value
    import json

    return json.dumps(payload, ensure_ascii=False, default=str)
