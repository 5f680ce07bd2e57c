"""Views: plain state fed by a client's messages, shown in a terminal or a notebook::

    from wsbridge.views import ChatView, DocumentView, StatusView, TerminalRenderer

    chat = ChatView(client, type="chat")          # appends chat lines
    doc = DocumentView(client, type="patch", snapshot_type="doc")   # JSON Patch
    with TerminalRenderer([StatusView(client), chat, doc]):
        ...
    chat.display()                                 # in a notebook: a live widget

Needs the ``views`` extra (``rich``, ``jsonpatch``); notebooks also ``ipywidgets``
(the ``jupyter`` extra).
"""

try:  # both are imported by the views and renderers below: say what to install, not only what is missing
    import jsonpatch  # noqa: F401
    import rich  # noqa: F401
except ImportError as _missing:
    from ..errors import install_hint

    raise ImportError(f"wsbridge.views needs rich and jsonpatch ({_missing.name} is missing): {install_hint('views')}") \
        from _missing

from ..errors import PatchError
from .base import View
from .chat import ChatLine, ChatView
from .document import DocumentView
from .jupyter import JupyterRenderer  # registers itself as what View.display builds (ipywidgets is imported on use)
from .status import StatusView
from .terminal import TerminalRenderer, render_text
from .ticker import TickerView

__all__ = [
    "ChatLine",
    "ChatView",
    "DocumentView",
    "JupyterRenderer",
    "PatchError",
    "StatusView",
    "TerminalRenderer",
    "TickerView",
    "View",
    "render_text",
]
