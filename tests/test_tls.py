"""wss:// through the client's own dialling: certificates and host names are verified."""

from __future__ import annotations

import ssl

import pytest
import trustme

import wsbridge
from wsbridge.testing import ConnectProxy, Server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with Server(ssl=context) as srv:
        yield srv


def test_a_verified_connection_works_with_the_ca_passed_in(tls_server, ca, make_client, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = make_client(tls_server.url, sslopt={"ca_certs": str(ca_file)})
    client.start().wait_connected(timeout=10)
    tls_server.wait_clients(1)
    tls_server.send({"type": "secret", "n": 1})
    assert client.wait_for("secret", timeout=10).payload["n"] == 1
    client.send({"type": "back"})
    assert tls_server.wait_received(1)[0].data == '{"type":"back"}'


def test_wss_through_a_proxy_is_tunnelled_and_verified_end_to_end(tls_server, ca, make_client, tmp_path, monkeypatch):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with ConnectProxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        client = make_client(tls_server.url, sslopt={"ca_certs": str(ca_file)})
        client.start().wait_connected(timeout=10)
        tls_server.send({"type": "secret", "n": 1})
        assert client.wait_for("secret", timeout=10).payload["n"] == 1
        assert proxy.requests[0].startswith(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\n" % tls_server.port)


def test_an_unknown_ca_fails_clearly_and_is_not_retried(tls_server, make_client, collector):
    client = make_client(tls_server.url)  # the system's CAs do not know the test CA
    gave_up = collector()
    client.signals.gave_up.connect(gave_up)
    client.start()
    with pytest.raises(wsbridge.ConnectError, match="TLS certificate verification failed"):
        client.wait_connected(timeout=10)
    assert client.stats.connect_attempts == 1 and tls_server.connections_total == 0


def test_a_wrong_host_name_fails(ca, make_client, tmp_path):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.org").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with Server(ssl=context) as srv:
        client = make_client(srv.url, sslopt={"ca_certs": str(ca_file)})
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="IP address mismatch|hostname"):
            client.wait_connected(timeout=10)


def test_timed_sends_over_tls_arrive_whole(tls_server, ca, make_client, tmp_path):
    """A send with a timeout writes a TLS socket in pieces (issue 20, point 12): frames arrive whole, in order."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = make_client(tls_server.url, sslopt={"ca_certs": str(ca_file)})
    client.start().wait_connected(timeout=10)
    big = "b" * (1 << 20)
    for text in ("small", big, "last"):
        client.send(text, timeout=10)
    assert [m.data for m in tls_server.wait_received(3)] == ["small", big, "last"]
