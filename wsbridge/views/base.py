"""`View`: plain state fed by a client's messages, shown by renderers.

A view subscribes to message types on a client (on the dispatcher thread,
in arrival order) and keeps plain Python state that tests and code can read.
It knows nothing about terminals or notebooks: renderers (`TerminalRenderer`,
`JupyterRenderer`) ask it for text, a ``rich`` renderable or HTML, at a rate
of their own, and hear about changes through `add_listener`.

Renderers import the views, never the other way round: `View.display` builds
whatever notebook renderer was registered with `register_notebook_renderer`
(``wsbridge.views`` registers `JupyterRenderer` when it is imported).
"""

from __future__ import annotations

import html
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Protocol, Tuple

from ..message import Message

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client

log = logging.getLogger("wsbridge")

Listener = Callable[["View"], None]


class NotebookRenderer(Protocol):
    """What `View.display` returns: a live rendering in a notebook cell (`JupyterRenderer`)."""

    widget: Any
    """The ``ipywidgets`` object shown."""

    def display(self) -> "NotebookRenderer": ...

    def refresh(self) -> None: ...

    def close(self) -> None: ...


_notebook_renderer: Optional[Callable[..., NotebookRenderer]] = None


def register_notebook_renderer(factory: Callable[..., NotebookRenderer]) -> None:
    """Make `View.display` build ``factory(view, **options)`` (the renderer's module
    registers itself, so the views need not import it)."""
    global _notebook_renderer
    _notebook_renderer = factory


class View:
    """Base class: subscriptions, a lock, change notification and the three renderings."""

    title = "view"

    def __init__(self, client: Optional["Client"] = None) -> None:
        self.lock = threading.RLock()
        """Held while the state changes; hold it to read several fields consistently."""
        self.changes = 0
        """How many times the state changed."""
        self.client: Optional["Client"] = None
        self._subscriptions: List[Tuple[str, Callable[[Message], Any]]] = []
        self._listeners: List[Listener] = []
        if client is not None:
            self.attach(client)

    # -- wiring ------------------------------------------------------------
    def subscriptions(self) -> List[Tuple[str, Callable[[Message], Any]]]:
        """``(message type, handler)`` pairs this view needs; subclasses list theirs."""
        return []

    def attach(self, client: "Client") -> "View":
        """Subscribe to ``client``'s messages (one client at a time). When a client
        of the same ``name`` takes this one's place (a notebook cell run again), the
        view moves to it, state and all, before it delivers anything."""
        if self.client is not None:
            self.detach()
        self.client = client
        self._subscriptions = self.subscriptions()
        for mtype, handler in self._subscriptions:
            client.on(mtype, handler)
        client.signals.stopped.connect(self._client_stopped)
        return self

    def detach(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.signals.stopped.disconnect(self._client_stopped)
            for mtype, handler in self._subscriptions:
                client.off(handler, mtype)
        self._subscriptions = []

    def _client_stopped(self, sender: Any, replaced_by: Optional["Client"] = None, **kw: Any) -> None:
        if replaced_by is not None and sender is self.client:
            self.attach(replaced_by)
            self.changed()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(view)`` after every change (on the thread that made it)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def changed(self) -> None:
        """Subclasses call this after changing their state (lock released)."""
        self.changes += 1
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:  # a renderer's bug must not stop the feed
                log.exception("wsbridge: view listener %r failed", listener)

    # -- renderings --------------------------------------------------------------
    def text(self) -> str:
        """The state as plain text."""
        raise NotImplementedError

    def __rich__(self) -> Any:
        """A ``rich`` renderable (plain text by default)."""
        from rich.panel import Panel
        from rich.text import Text

        return Panel(Text(self.text()), title=self.title, title_align="left")

    def to_html(self) -> str:
        """HTML for notebooks (escaped text by default)."""
        return f"<pre style='margin:0'>{html.escape(self.text())}</pre>"

    def display(self, **options: Any) -> NotebookRenderer:
        """Show the view in a notebook cell as a live widget; returns the renderer,
        a `JupyterRenderer` (``.close()`` it, or let `Client.stop` end the feed)."""
        if _notebook_renderer is None:  # pragma: no cover - importing wsbridge.views registers one
            raise RuntimeError("no notebook renderer is registered: import wsbridge.views.jupyter")
        return _notebook_renderer(self, **options).display()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} changes={self.changes}>"
