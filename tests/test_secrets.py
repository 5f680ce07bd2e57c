"""Secrets in URLs and headers never reach logs, reprs, errors or stats."""

from __future__ import annotations

import logging

import pytest

import wsbridge
from wsbridge.testing import Server

SECRETS = ("tok3n-in-query", "pa55word-in-url", "bearer-s3cret", "cookie-s3cret")


def url_with_secrets(server: Server) -> str:
    return f"ws://user:{SECRETS[1]}@127.0.0.1:{server.port}/feed?token={SECRETS[0]}&room=lobby"


def headers() -> dict:
    return {"Authorization": f"Bearer {SECRETS[2]}", "Cookie": f"session={SECRETS[3]}"}


def assert_clean(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into: {text[:300]}"


class ClientLogs:
    """Everything the client side logged, at every level: wsbridge's own
    loggers and websocket-client's (the test server's are the server's)."""

    def __init__(self, caplog) -> None:
        self.caplog = caplog

    @property
    def text(self) -> str:
        records = [r for r in self.caplog.records
                   if r.name == "websocket" or (r.name.startswith("wsbridge") and not r.name.startswith("wsbridge.testing"))]
        assert records, "nothing was logged: the test would prove nothing"
        formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")  # with tracebacks
        return "\n".join(formatter.format(r) for r in records)


@pytest.fixture
def all_logs(caplog):
    caplog.set_level(logging.DEBUG)
    return ClientLogs(caplog)


def test_a_refused_session_leaks_no_secret(all_logs, make_client, collector):
    with Server(reject_status=401) as server:
        client = make_client(url_with_secrets(server), headers=headers())
        errors = collector()
        client.signals.gave_up.connect(errors)
        client.start()
        with pytest.raises(wsbridge.ConnectError) as raised:
            client.wait_connected(timeout=10)
        gave_up = errors.wait(1)[0]["error"]
        client.stop()
        assert_clean(all_logs.text, repr(client), str(raised.value), str(gave_up), repr(client.last_error),
                     str(client.stats.as_dict()))
        assert "token=***" in repr(client) and "user:***@" in repr(client)


def test_a_working_session_with_reconnects_leaks_no_secret(all_logs, make_client, collector):
    with Server() as server:
        client = make_client(url_with_secrets(server), headers=headers())
        connected, disconnected = collector(), collector()
        client.signals.connected.connect(connected)
        client.signals.disconnected.connect(disconnected)
        client.start().wait_connected(timeout=10)
        server.wait_clients(1)
        server.drop_clients()
        connected.wait(2, timeout=10)
        client.send({"type": "hello"})
        server.wait_received(1)
        client.stop()
        events = [str(item) for item in connected.items + disconnected.items]
        assert_clean(all_logs.text, repr(client), *events, str(client.stats.as_dict()))
