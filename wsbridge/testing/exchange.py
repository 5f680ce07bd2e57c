"""`ExchangeServer`: a market-data feed shaped like the ones real exchanges run.

It needs what real feeds need, so tests and samples can show the client copes:

* **A bearer token with an expiry.** `issue_token` (or ``GET /token`` over HTTP,
  answered with ``{"token": ..., "expires_in": ...}``) hands out a token valid for
  ``token_ttl`` seconds; the upgrade needs ``Authorization: Bearer <token>`` and is
  refused with 401 (and ``WWW-Authenticate``) when it is missing, unknown or expired.
  A connection already open outlives its token, as on most exchanges: only the next
  connection needs a fresh one. `expire_tokens` ends every token issued so far.
* **Subscriptions with an ack.** ``{"op": "subscribe", "channel": "ticker.BTC"}`` is
  answered with ``{"op": "subscribed", "channel": "ticker.BTC"}``; from then on the
  connection gets the channel's updates published after it (``"from": N`` in the
  subscribe: from sequence number N on). ``{"op": "unsubscribe", ...}`` is answered
  with ``unsubscribed``.
* **Sequence numbers per channel.** `update` numbers each update in its channel
  from 1: ``{"op": "update", "channel": "ticker.BTC", "seq": 7, "data": ...}``.
  Every update is kept, across restarts.
* **A resume request of its own shape.** ``{"op": "resume", "from": {"ticker.BTC": 8}}``
  sends the connection that channel's updates again from sequence number 8 on (then
  the live ones): the client drops what it already had. A channel the connection is
  not subscribed to is an ``{"op": "error", "reason": ...}``, as is any message the
  server does not understand.
* **Cuts on demand**: `drop_clients` (TCP, no close frame), `close_clients` (a close
  frame), `restart` (down, then up again on the same port), as `Server` has them.

The message type is the ``op`` field: ``JsonCodec(type_field="op", seq_field="seq",
stream_field="channel")`` reads the feed, positions per channel.
"""

from __future__ import annotations

import json
import secrets
import time
from http import HTTPStatus
from typing import Any, Dict, List, Optional, Union

from websockets.asyncio.server import ServerConnection

from ..codecs import JsonCodec
from .server import Server, _Peer


class ExchangeServer(Server):
    """A feed on 127.0.0.1 that wants a fresh token, subscriptions and its own resume
    request (the protocol: this module's docstring, and the guide's Test server page). ``path`` is where the WebSocket is
    served (``GET /token`` gives tokens); ``token_ttl`` how long a token is valid."""

    def __init__(self, *, token_ttl: float = 60.0, path: str = "/ws", name: str = "wsbridge-exchange",
                 **options: Any) -> None:
        if not token_ttl > 0:
            raise ValueError(f"token_ttl is > 0 seconds, not {token_ttl!r}")
        super().__init__(codec=JsonCodec(type_field="op", seq_field="seq", stream_field="channel"), path=path,
                         name=name, **options)
        self.token_ttl = token_ttl
        self.updates: Dict[str, List[str]] = {}
        """channel -> its updates as sent (seq N at index N-1); appended on the server's loop (or while stopped)."""
        self.tokens_accepted: List[str] = []
        """The token of every upgrade let in, in order (under ``_cond``)."""
        self.tokens_refused = 0
        self.resume_requests: List[Dict[str, int]] = []
        """The ``from`` of every resume request, in order (under ``_cond``)."""
        self._tokens: Dict[str, float] = {}  # token -> when it expires (time.monotonic); under _cond
        self._wants: Dict[ServerConnection, Dict[str, int]] = {}  # connection -> channel -> next seq to send; the loop's

    @property
    def token_url(self) -> str:
        """Where ``GET`` gives a token, as an HTTP URL."""
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}/token"

    # -- tokens -------------------------------------------------------------------------
    def issue_token(self, ttl: Optional[float] = None) -> str:
        """A new token, valid for ``ttl`` seconds (default ``token_ttl``). From any thread."""
        token = secrets.token_urlsafe(16)
        with self._cond:
            self._tokens[token] = time.monotonic() + (self.token_ttl if ttl is None else ttl)
        return token

    def expire_tokens(self) -> None:
        """Every token issued so far expires now (connections open stay open)."""
        with self._cond:
            self._tokens.clear()

    def _token_valid(self, token: str) -> bool:
        with self._cond:
            expires = self._tokens.get(token)
            return expires is not None and time.monotonic() < expires

    def _process_request(self, connection: ServerConnection, request: Any) -> Any:
        path = request.path.split("?", 1)[0]
        if path == "/token":
            body = json.dumps({"token": self.issue_token(), "expires_in": self.token_ttl})
            response = connection.respond(HTTPStatus.OK, body + "\n")
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
            return response
        if path != self.path:
            return connection.respond(HTTPStatus.NOT_FOUND, f"no WebSocket at {path}; it is at {self.path}\n")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self._token_valid(token.strip()):
            with self._cond:
                self.tokens_refused += 1
                self._cond.notify_all()
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "a valid bearer token is needed: GET /token\n")
            response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
            return response
        refused = super()._process_request(connection, request)
        if refused is None:
            with self._cond:
                self.tokens_accepted.append(token.strip())
                self._cond.notify_all()
        return refused

    # -- the feed -----------------------------------------------------------------------
    def update(self, channel: str, *data: Any, timeout: float = 30.0) -> List[int]:
        """Publish ``data`` (each JSON-able) as updates of ``channel``, numbered on from
        the channel's last; returns their sequence numbers. From any thread; works
        while stopped, too (a connection gets them once it resumes)."""

        def add() -> List[int]:
            updates = self.updates.setdefault(channel, [])
            first = len(updates) + 1
            for seq, item in enumerate(data, first):
                updates.append(json.dumps({"op": "update", "channel": channel, "seq": seq, "data": item}))
            for peer in self._peers.values():
                peer.wake.set()
            return list(range(first, len(updates) + 1))

        if self._loop is None:
            return add()

        async def go() -> List[int]:
            return add()

        numbers: List[int] = self._call(go, timeout)
        return numbers

    async def on_connect(self, ws: ServerConnection) -> None:
        self._wants[ws] = {}
        await super().on_connect(ws)

    def on_disconnect(self, ws: ServerConnection) -> None:
        self._wants.pop(ws, None)

    async def on_frame(self, ws: ServerConnection, data: Union[str, bytes]) -> None:
        await super().on_frame(ws, data)
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self._send_error(ws, "not a JSON object")
            return
        wants = self._wants[ws]
        op, channel = message.get("op"), message.get("channel")
        if op == "resume":
            await self._resume(ws, wants, message.get("from"))
        elif op not in ("subscribe", "unsubscribe"):
            await self._send_error(ws, f"unknown op {op!r}")
        elif not isinstance(channel, str):
            await self._send_error(ws, f"{op} needs a channel")
        elif op == "subscribe":
            start = message.get("from")
            wants[channel] = start if type(start) is int and start > 0 else len(self.updates.get(channel, ())) + 1
            await ws.send(json.dumps({"op": "subscribed", "channel": channel}))
        else:
            wants.pop(channel, None)
            await ws.send(json.dumps({"op": "unsubscribed", "channel": channel}))
        self._peers[ws].wake.set()

    async def _resume(self, ws: ServerConnection, wants: Dict[str, int], start: Any) -> None:
        if not isinstance(start, dict) or not start:
            await self._send_error(ws, 'resume needs "from": {channel: first sequence number wanted}')
            return
        bad = [c for c, n in start.items() if c not in wants or type(n) is not int or n < 1]
        if bad:
            await self._send_error(ws, f"resume: not subscribed, or not a sequence number: {sorted(bad)}")
            return
        wants.update(start)
        with self._cond:
            self.resume_requests.append(dict(start))
            self._cond.notify_all()

    @staticmethod
    async def _send_error(ws: ServerConnection, reason: str) -> None:
        await ws.send(json.dumps({"op": "error", "reason": reason}))

    async def _feed(self, peer: _Peer) -> None:
        """Send ``peer`` each subscribed channel's updates from the next it wants, in
        order; woken by `update`, a subscribe and a resume (which may move it back)."""
        while True:
            peer.wake.clear()
            wants = self._wants.get(peer.ws, {})
            for channel in list(wants):
                updates = self.updates.get(channel, [])
                while channel in wants and wants[channel] <= len(updates):
                    seq = wants[channel]
                    wants[channel] = seq + 1
                    await peer.ws.send(updates[seq - 1])
            await peer.wake.wait()
