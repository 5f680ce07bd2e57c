"""`DocumentView`: a JSON document kept current by RFC 6902 patches."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any, Callable, Dict, Hashable, List, Optional, Tuple, Union

import jsonpatch
import jsonpointer

from ..errors import PatchError  # defined in errors.py; importable from here as before
from ..message import Message
from .base import View

if TYPE_CHECKING:  # pragma: no cover
    from ..client import Client, Sendable


Request = Union[bool, Callable[[], "Sendable"], None]


class DocumentView(View):
    """A JSON document: set whole by ``snapshot_type`` messages (the document
    in ``doc_field``), changed by ``type`` messages (a JSON Patch in
    ``patch_field``), applied in arrival order, so every client that sees
    the same patches in the same order holds the same document.

    A patch that does not apply is reported on the client's ``error``
    signal (context ``"view"``); the view then marks itself ``stale``,
    ignores further patches and asks for a fresh snapshot (``request``:
    True sends ``{"type": "snapshot_request", "doc": snapshot_type}``; a
    callable returns the message to send; None only waits), instead of
    showing a document that may be wrong.
    """

    title = "document"

    def __init__(
        self,
        client: Optional["Client"] = None,
        type: str = "patch",
        snapshot_type: str = "doc",
        *,
        doc_field: str = "doc",
        patch_field: str = "patch",
        request: Request = True,
    ) -> None:
        self.type = type
        self.snapshot_type = snapshot_type
        self.doc_field = doc_field
        self.patch_field = patch_field
        self.request = request
        self._doc: Any = None
        self.stale = True
        """No snapshot yet, or a patch failed: the document is not to be trusted."""
        self.applied = 0
        """Patches applied since the last snapshot."""
        self.applied_total = 0
        """Patches applied since the view was made (what the renderings show)."""
        self.failed = 0
        self.ignored = 0
        """Patches that arrived while stale."""
        super().__init__(client)

    def config(self) -> Hashable:
        return self.type, self.snapshot_type, self.doc_field, self.patch_field

    def subscriptions(self) -> List[Tuple[str, Callable[[Message], Any]]]:
        return [(self.snapshot_type, self.handle_snapshot), (self.type, self.handle_patch)]

    @property
    def document(self) -> Any:
        """A copy of the current document (None before the first snapshot)."""
        with self.lock:
            return copy.deepcopy(self._doc)

    def handle_snapshot(self, msg: Message) -> None:
        doc = msg.payload.get(self.doc_field) if isinstance(msg.payload, dict) else _json(msg.payload)
        with self.lock:
            self._doc = doc
            self.stale = False
            self.applied = 0
        self.changed()

    def handle_patch(self, msg: Message) -> None:
        payload = msg.payload
        with self.lock:
            if self.stale:
                self.ignored += 1
                return
            try:
                ops = payload.get(self.patch_field) if isinstance(payload, dict) else _json(payload)
                if ops is None:
                    raise jsonpatch.InvalidJsonPatch(f"the message has no patch ({self.patch_field!r})")
                # in_place=False: a patch that fails half-way leaves the document as it was
                self._doc = jsonpatch.apply_patch(self._doc, ops, in_place=False)
                self.applied += 1
                self.applied_total += 1
                failure = None
            except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, ValueError, KeyError) as exc:
                self.failed += 1
                self.stale = True
                failure = exc
        if failure is not None:
            self._recover(msg, failure)
        self.changed()

    def _recover(self, msg: Message, exc: BaseException) -> None:
        error = PatchError(f"patch does not apply ({type(exc).__name__}: {exc}); waiting for a fresh snapshot")
        client = self.client
        if client is None:
            return
        client.report_error(error, "view", message=msg)
        request = self.request
        if request is True:
            client.send({"type": "snapshot_request", "doc": self.snapshot_type})
        elif callable(request):
            client.send(request())

    def edit(self, patch: List[Dict[str, Any]]) -> None:
        """Send a patch to the server; the view applies it when it comes back
        (in the server's order, like everyone else's)."""
        if self.client is None:
            raise RuntimeError("the view is not attached to a client")
        jsonpatch.JsonPatch(patch)  # a malformed patch raises here, not on every client
        self.client.send({"type": self.type, self.patch_field: patch})

    def text(self) -> str:
        with self.lock:
            doc, stale = self._doc, self.stale
        head = "(stale: waiting for a snapshot)\n" if stale else ""
        return head + json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False)

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.json import JSON
        from rich.panel import Panel
        from rich.text import Text

        with self.lock:
            doc, stale, applied = self._doc, self.stale, self.applied_total
        body: Any = JSON(json.dumps(doc, ensure_ascii=False))
        if stale:
            body = Group(Text("stale: waiting for a snapshot", style="bold red"), body)
        return Panel(body, title=f"{self.title} ({applied} patches)", title_align="left")


def _json(payload: Any) -> Any:
    if isinstance(payload, (str, bytes)):
        return json.loads(payload)
    return payload
