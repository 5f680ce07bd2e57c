"""`JupyterRenderer`: a view as a live ``ipywidgets`` widget in a notebook.

Registered on import as what `View.display` builds (see `register_notebook_renderer`)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Optional

from ..errors import install_hint
from .base import View, register_notebook_renderer

log = logging.getLogger("wsbridge")


class JupyterRenderer:
    """An ``ipywidgets.HTML`` widget that follows ``view``.

    Updated from the thread that changed the view (the client's dispatcher),
    at most once per ``min_interval`` seconds: a burst of messages costs one
    widget update, and the last change is always shown (a named timer thread
    draws it when the interval is over; `close` joins it). The `stopped` of
    the view's client ends the updates; when the view moves to a client that
    replaced its own, the widget follows it, and when the view is retired
    (`View.retired`), the widget keeps its last state.

    Besides, a named thread redraws ``refresh_per_second`` times a second (as
    `TerminalRenderer` does) when the view's rendering differs from what the
    widget shows: a view read from the client's counters when drawn (the
    `StatusView`'s "received", its rate) stays live between its own changes.
    """

    def __init__(self, view: View, *, min_interval: float = 0.1, refresh_per_second: float = 2.0) -> None:
        if isinstance(min_interval, bool) or not isinstance(min_interval, (int, float)) or not min_interval >= 0:
            raise ValueError(f"min_interval is seconds >= 0, not {min_interval!r}")
        if (isinstance(refresh_per_second, bool) or not isinstance(refresh_per_second, (int, float))
                or not 0 < refresh_per_second <= 100):
            raise ValueError(f"refresh_per_second is a number of redraws a second, > 0 and <= 100, not {refresh_per_second!r}")
        try:
            import ipywidgets
        except ImportError as exc:
            raise ImportError(f"JupyterRenderer needs ipywidgets: {install_hint('jupyter')}") from exc

        self.view = view
        self.min_interval = min_interval
        self.refresh_per_second = refresh_per_second
        self.widget = ipywidgets.HTML(value=view.to_html())
        self.updates = 0
        self._lock = threading.Lock()
        self._last = 0.0
        self._timer: Optional[threading.Timer] = None
        self._closed = False
        self._closing = threading.Event()  # set by `close`: the pacing thread ends
        self._pacer = threading.Thread(target=self._pace, name="wsbridge-view-pacer", daemon=True)
        view.add_listener(self._changed)
        self._client: Any = None
        self._follow()
        self._pacer.start()  # owns nothing: it reads the view and sets the widget, as the dispatcher does

    def _pace(self) -> None:
        """The pacing thread: redraw at the renderer's own rate while the rendering changes."""
        period = 1.0 / self.refresh_per_second
        while not self._closing.wait(period):
            try:
                html = self.view.to_html()
                if html != self.widget.value:
                    self._draw(html)
            except Exception:  # a view's bug must not end the widget's updates
                log.exception("wsbridge: drawing %r failed", self.view)

    def _follow(self) -> None:
        """Hear the `stopped` of the view's client (the view may have moved to another)."""
        client = self.view.client
        with self._lock:
            if self._closed or client is self._client:
                return
            old, self._client = self._client, client
        if old is not None:
            old.signals.stopped.disconnect(self._client_stopped)
        if client is not None:  # the client's end is the widget's: draw it, release the timer
            client.signals.stopped.connect(self._client_stopped)

    def display(self) -> "JupyterRenderer":
        from IPython.display import display

        display(self.widget)
        return self

    def refresh(self) -> None:
        """Draw the view's current state now."""
        self._draw(self.view.to_html())

    def _draw(self, html: str) -> None:
        with self._lock:
            if self._closed:
                return
            self._last = time.monotonic()
        self.widget.value = html
        self.updates += 1

    def _changed(self, view: View) -> None:
        if view.retired:  # a view made again took over: this widget keeps its last state
            self.close()
            return
        if view.client is not self._client:
            self._follow()
        with self._lock:
            if self._closed or self._timer is not None:
                return  # closed, or a draw is already due
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                self._timer = threading.Timer(wait, self._due)
                self._timer.name = "wsbridge-view-refresh"
                self._timer.daemon = True
                self._timer.start()
                return
        self.refresh()

    def _due(self) -> None:
        with self._lock:
            self._timer = None
        self.refresh()

    def _client_stopped(self, sender: Any, **kw: Any) -> None:
        if self.view.client is not sender and self.view.client is not None:
            self._follow()  # the view moved to the client that replaced this one
            return
        self.refresh()
        self.close()

    def close(self) -> None:
        """Stop following the view (the widget keeps its last content)."""
        self.view.remove_listener(self._changed)
        with self._lock:
            self._closed = True
            timer, self._timer = self._timer, None
            client, self._client = self._client, None
        if client is not None:
            client.signals.stopped.disconnect(self._client_stopped)
        if timer is not None:
            timer.cancel()
            timer.join(5)
        self._closing.set()
        if self._pacer.is_alive() and self._pacer is not threading.current_thread():
            self._pacer.join(5)

    def _repr_html_(self) -> str:  # shown where widgets are not rendered
        return self.view.to_html()


register_notebook_renderer(JupyterRenderer)
