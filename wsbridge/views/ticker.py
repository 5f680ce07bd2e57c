"""`TickerView`: the latest message per key (a symbol, a sensor), as a table."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple

from ..message import Message
from .base import View

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client


class TickerView(View):
    """For JSON messages of ``type``: one row per value of ``key`` holding the
    latest ``fields`` (all fields when None), and how many updates it had."""

    title = "ticker"

    def __init__(
        self, client: Optional["Client"] = None, type: str = "tick", *, key: str = "sym", fields: Optional[Sequence[str]] = None
    ) -> None:
        self.type = type
        self.key = key
        self.fields = list(fields) if fields is not None else None
        self._rows: Dict[Any, Dict[str, Any]] = {}
        self._updates: Dict[Any, int] = {}
        super().__init__(client)

    def config(self) -> Hashable:
        return self.type, self.key, tuple(self.fields) if self.fields is not None else None

    def subscriptions(self) -> List[Tuple[str, Callable[[Message], Any]]]:
        return [(self.type, self.handle)]

    def handle(self, msg: Message) -> None:
        payload = msg.payload
        if not isinstance(payload, dict) or self.key not in payload:
            return
        name = payload[self.key]
        row = {f: payload.get(f) for f in self.fields} if self.fields is not None else {
            k: v for k, v in payload.items() if k not in ("type", self.key)
        }
        with self.lock:
            self._rows[name] = row
            self._updates[name] = self._updates.get(name, 0) + 1
        self.changed()

    @property
    def rows(self) -> Dict[Any, Dict[str, Any]]:
        with self.lock:
            return {k: dict(v) for k, v in self._rows.items()}

    def _columns(self, rows: Dict[Any, Dict[str, Any]]) -> List[str]:
        if self.fields is not None:
            return list(self.fields)
        seen: Dict[str, None] = {}
        for row in rows.values():
            seen.update(dict.fromkeys(row))
        return list(seen)

    def text(self) -> str:
        rows = self.rows
        columns = self._columns(rows)
        lines = ["  ".join([self.key, *columns, "updates"])]
        for name in sorted(rows, key=str):
            lines.append("  ".join([str(name), *(str(rows[name].get(c, "")) for c in columns), str(self._updates.get(name, 0))]))
        return "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.table import Table

        rows = self.rows
        columns = self._columns(rows)
        table = Table(title=f"{self.title} ({self.type})", title_justify="left")
        for name in (self.key, *columns, "updates"):
            table.add_column(name, justify="left" if name == self.key else "right")
        for name in sorted(rows, key=str):
            table.add_row(str(name), *(str(rows[name].get(c, "")) for c in columns), str(self._updates.get(name, 0)))
        return table

    def to_html(self) -> str:
        rows = self.rows
        columns = self._columns(rows)
        head = "".join(f"<th>{html.escape(c)}</th>" for c in (self.key, *columns, "updates"))
        body = "".join(
            "<tr>"
            + "".join(f"<td>{html.escape(str(v))}</td>"
                      for v in (name, *(rows[name].get(c, "") for c in columns), self._updates.get(name, 0)))
            + "</tr>"
            for name in sorted(rows, key=str)
        )
        return f"<table class='wsbridge-ticker'><tr>{head}</tr>{body}</table>"
