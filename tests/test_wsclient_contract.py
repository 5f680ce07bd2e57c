"""What wsbridge relies on in websocket-client beyond its documented API
(`wsbridge.wire.wsclient.CONTRACT`) still holds in the installed release: a release
that changes any of it fails here, by name, not somewhere in a connection."""

from __future__ import annotations

import ast
import pathlib

import pytest
import websocket

from wsbridge.testing.raw import RawServer
from wsbridge.wire.wsclient import CONTRACT, App

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "wsbridge"


@pytest.mark.parametrize("what,check", CONTRACT, ids=[name for name, _ in CONTRACT])
def test_websocket_client_still_offers(what, check):
    assert check(), f"websocket-client {websocket.__version__} no longer offers: {what}"


def test_only_wsclient_imports_websocket_clients_private_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            if any(name.startswith("websocket._") for name in names) and path.name != "wsclient.py":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_the_apps_websocket_follows_no_redirect_whatever_it_reads():
    """The upgrade check refuses redirects before websocket-client reads them; should one
    get through anyway, the `App`'s WebSocket fails rather than take every header to the
    new origin. Here websocket-client dials and reads the 302 itself, unchecked."""
    with RawServer() as other:
        answer = b"HTTP/1.1 302 Found\r\nLocation: " + other.url.encode() + b"\r\nContent-Length: 0\r\n\r\n"
        with RawServer(respond=lambda request: answer) as server:
            app = App(server.url)
            app.sock = websocket.WebSocket()
            with pytest.raises(websocket.WebSocketException):
                app.sock.connect(server.url, header=["Authorization: Bearer s3cr3t"], timeout=10)
            assert len(server.requests) == 1
        assert other.accepted == 0 and other.requests == []
