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
import weakref
from typing import TYPE_CHECKING, Any, Callable, Hashable, List, Optional, Protocol, Tuple

from ..message import Message
from ..runtime import registry

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


_views: "weakref.WeakSet[View]" = weakref.WeakSet()
"""Every view of the process (an attached one is also held by its client's signals)."""
_moves = threading.Lock()
"""Serialises attaching and moving views, so two clients of one name started at once
from two threads leave every view on the one that won."""


class View:
    """Base class: subscriptions, a lock, change notification and the three renderings.

    A notebook cell run again makes its client again: when a client of the same
    ``name`` takes the place of this view's client, the view moves to it with its
    state, before the new client delivers anything, and its widgets follow. If
    the new client already has the same view (same class, title, message types
    and options: the re-run cell made it again), or gets one later, that view
    takes over and this one is retired (`retired`; its widgets show their last
    state).
    """

    title = "view"

    def __init__(self, client: Optional["Client"] = None) -> None:
        self.lock = threading.RLock()
        """Held while the state changes; hold it to read several fields consistently."""
        self.changes = 0
        """How many times the state changed."""
        self.client: Optional["Client"] = None
        self.retired = False
        """A view of the same kind took over from this one (see the class doc)."""
        self._followed = False  # moved here from a replaced client (so a new view of its kind retires it)
        self._subscriptions: List[Tuple[str, Callable[[Message], Any]]] = []
        self._listeners: List[Listener] = []
        _views.add(self)
        if client is not None:
            self.attach(client)

    # -- wiring ------------------------------------------------------------
    def subscriptions(self) -> List[Tuple[str, Callable[[Message], Any]]]:
        """``(message type, handler)`` pairs this view needs; subclasses list theirs."""
        return []

    def identity(self) -> Hashable:
        """What makes two views the same: a view made again (same class, title, message
        types and `config`) for the client this one moved to takes over from it."""
        return type(self), self.title, tuple(sorted(mtype for mtype, _ in self.subscriptions())), self.config()

    def config(self) -> Hashable:
        """What the view was made with, besides its message types (subclasses add theirs)."""
        return ()

    def attach(self, client: "Client") -> "View":
        """Subscribe to ``client``'s messages (one client at a time; a client that was
        replaced by a same-named one stands for its successor)."""
        with _moves:
            while client.replaced_by is not None:
                client = client.replaced_by
            self._attach(client)
            self._followed = self.retired = False
            mine = self.identity()
            twins = [v for v in list(_views) if v is not self and v.client is client and v._followed
                     and v.identity() == mine]
        for twin in twins:  # a cell run again made this view again: the one that moved here retires
            twin._retire()
        return self

    def _attach(self, client: "Client") -> None:
        if self.client is not None:
            self._detach()
        self.client = client
        self._subscriptions = self.subscriptions()
        for mtype, handler in self._subscriptions:
            client.on(mtype, handler)

    def detach(self) -> None:
        """Stop following the client."""
        with _moves:
            self._detach()

    def _detach(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            for mtype, handler in self._subscriptions:
                client.off(handler, mtype)
        self._subscriptions = []

    def _retire(self) -> None:
        self.detach()
        self.retired = True
        self.changed()  # its renderers hear of it and stop

    @staticmethod
    def _client_replaced(earlier: "Client", client: "Client") -> None:
        """`registry.on_replace` hook: move ``earlier``'s views to ``client`` (or to the
        client that replaced it in turn, when two starts of one name race)."""
        retire, moved = [], []
        with _moves:
            while client.replaced_by is not None:
                client = client.replaced_by
            made_again = {v.identity() for v in list(_views) if v.client is client}
            for view in [v for v in list(_views) if v.client is earlier]:
                if view.identity() in made_again:
                    retire.append(view)
                    continue
                view._attach(client)
                view._followed = True
                moved.append(view)
        for view in retire:
            view._retire()
        for view in moved:
            view.changed()  # its renderers move to the view's new client

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


registry.on_replace(View._client_replaced)
