"""`TerminalRenderer`: views drawn live in a terminal with ``rich``."""

from __future__ import annotations

import io
import threading
from typing import Any, Sequence, Union

from .base import View


class TerminalRenderer:
    """Redraw ``views`` (one above the other) ``refresh_per_second`` times a
    second with ``rich.live.Live``: the redraw rate is bounded however fast
    messages arrive, and each redraw reads the views' current state.

    Use as a context manager, or `start` / `stop`. ``console`` defaults to
    rich's (stdout); pass ``rich.console.Console(record=True)`` to capture.
    """

    def __init__(self, views: Union[View, Sequence[View]], *, console: Any = None, refresh_per_second: float = 4.0,
                 transient: bool = False) -> None:
        from rich.live import Live

        self.views = [views] if isinstance(views, View) else list(views)
        self._live = Live(
            get_renderable=self.renderable,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=transient,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    @property
    def console(self) -> Any:
        return self._live.console

    def renderable(self) -> Any:
        from rich.console import Group

        return Group(*self.views)

    def start(self) -> "TerminalRenderer":
        self._live.start()
        return self

    def refresh(self) -> None:
        """Draw now, besides the regular redraws (after a step a person should see)."""
        self._live.refresh()

    def stop(self) -> None:
        """Draw a last time and stop, and join rich's refresh thread (``Live.stop``
        only tells it to end: it would outlive the renderer by up to one period)."""
        thread = getattr(self._live, "_refresh_thread", None)
        self._live.stop()
        if isinstance(thread, threading.Thread) and thread is not threading.current_thread():
            thread.join(5.0)
        if not self.console.is_terminal:  # rich ends a non-terminal draw without a newline
            self.console.line()

    def __enter__(self) -> "TerminalRenderer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def render_text(views: Union[View, Sequence[View]], width: int = 100) -> str:
    """The views as a terminal would show them, as plain text (for logs and tests)."""
    from rich.console import Console, Group

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None, force_terminal=False)
    console.print(Group(*([views] if isinstance(views, View) else views)))
    return console.export_text()
