"""Servers with a little state of their own, for the samples and view tests."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any, Optional, Union

from websockets.asyncio.server import ServerConnection

from .server import Server

log = logging.getLogger("wsbridge.testing")


class DocumentServer(Server):
    """One shared JSON document that clients edit with RFC 6902 patches.

    A client gets ``{"type": "doc", "doc": ..., "version": N}`` when it
    connects and when it sends ``{"type": "snapshot_request"}``. A patch
    (``{"type": "patch", "patch": [...]}``) that applies to the document is
    numbered (``version``) and broadcast to every client, its sender
    included, so all apply the same patches in the same order; one that does
    not apply goes back to its sender alone as
    ``{"type": "patch_rejected", "reason": ...}``. `inject_patch` broadcasts
    a patch without checking it (to test how views handle a bad one).
    Needs ``jsonpatch`` (the ``views`` extra).
    """

    def __init__(self, document: Optional[Any] = None, **options: Any) -> None:
        super().__init__(**options)
        self.document: Any = copy.deepcopy(document) if document is not None else {}
        self.version = 0
        self.snapshot_requests = 0

    def snapshot(self) -> dict:
        return {"type": "doc", "doc": self.document, "version": self.version}

    async def on_connect(self, ws: ServerConnection) -> None:
        await super().on_connect(ws)
        await ws.send(json.dumps(self.snapshot()))

    async def on_frame(self, ws: ServerConnection, data: Union[str, bytes]) -> None:
        await super().on_frame(ws, data)
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if not isinstance(msg, dict):
            return
        if msg.get("type") == "snapshot_request":
            self.snapshot_requests += 1
            await ws.send(json.dumps(self.snapshot()))
        elif msg.get("type") == "patch":
            import jsonpatch

            try:
                patch = msg.get("patch")
                if patch is None:
                    raise jsonpatch.InvalidJsonPatch("the message has no patch")
                self.document = jsonpatch.apply_patch(self.document, patch, in_place=False)
            except Exception as exc:  # noqa: BLE001 - any bad patch is the sender's to hear about
                await ws.send(json.dumps({"type": "patch_rejected", "reason": str(exc)}))
                return
            self.version += 1
            await self.send_to_all({"type": "patch", "patch": msg["patch"], "version": self.version})

    def inject_patch(self, patch: Any, timeout: float = 10.0) -> None:
        """Broadcast ``patch`` as is, without applying it to the server's document."""
        self.send({"type": "patch", "patch": patch, "version": self.version}, timeout=timeout)
