"""wss:// through the client's own dialling: certificates and host names are verified."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from typing import Any, Dict

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

import wsbridge
from wsbridge import Message
from wsbridge.testing import ConnectProxy, Server

from conftest import Feed, PProxy, per_thread, send_from_threads


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


# -- issue 22, point 5: wss:// through proxies, an https:// proxy, client certificates ----------------------


@pytest.fixture
def ca_file(ca, tmp_path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
def test_wss_through_a_proxy_is_verified_end_to_end(tls_server, ca_file, make_client, scheme):
    with PProxy("socks5" if scheme.startswith("socks") else "http", auth="u:pw") as proxy:
        client = make_client(tls_server.url, sslopt={"ca_certs": ca_file}, proxy=proxy.url(scheme, "u:pw"))
        client.start().wait_connected(timeout=10)
        assert proxy.target() == f"127.0.0.1:{tls_server.port}"
        tls_server.send({"type": "secret", "n": 1})
        assert client.wait_for("secret", timeout=10).payload["n"] == 1


def test_an_https_proxy_is_spoken_to_over_tls_and_its_certificate_verified(ca, ca_file, make_client, tmp_path):
    files = [str(tmp_path / "proxy.pem"), str(tmp_path / "proxy.key")]
    proxy_cert = ca.issue_cert("127.0.0.1")
    proxy_cert.cert_chain_pems[0].write_to_path(files[0])
    proxy_cert.private_key_pem.write_to_path(files[1])
    with PProxy("http+ssl", auth="u:pw", ssl_files=files) as proxy, Server(echo=True) as server:
        client = make_client(server.url, sslopt={"ca_certs": ca_file}, proxy=proxy.url("https", "u:pw"))
        client.start().wait_connected(timeout=10)
        assert proxy.target() == f"127.0.0.1:{server.port}"
        client.send({"type": "back", "n": 2})
        assert client.wait_for("back", timeout=10).payload["n"] == 2
        client.stop()
        stranger = make_client(server.url, proxy=proxy.url("https", "u:pw"))  # the system's CAs do not know it
        stranger.start()
        with pytest.raises(wsbridge.ConnectError, match="TLS certificate verification failed: .*"
                           rf"\(the certificate of the proxy at 127.0.0.1:{proxy.port}\)"):
            stranger.wait_connected(timeout=10)
        assert stranger.stats.connect_attempts == 1


@pytest.fixture
def https_proxy(ca, tmp_path):
    """pproxy speaking HTTP CONNECT over TLS, its certificate issued by the test CA."""
    files = [str(tmp_path / "proxy.pem"), str(tmp_path / "proxy.key")]
    proxy_cert = ca.issue_cert("127.0.0.1")
    proxy_cert.cert_chain_pems[0].write_to_path(files[0])
    proxy_cert.private_key_pem.write_to_path(files[1])
    with PProxy("http+ssl", auth="u:pw", ssl_files=files) as proxy:
        yield proxy


@pytest.fixture
def wss_feed(ca):
    """A `websockets` wss:// server (not ours) that echoes, its certificate issued by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with Feed(ssl=context, max_size=None) as feed:
        yield feed


def test_wss_through_an_https_proxy_runs_tls_inside_tls(https_proxy, wss_feed, ca_file, make_client):
    """Both certificates verified, frames both ways (small ones in order, 1 MiB ones whole,
    so records and sends span many pieces), a drop reconnected through the proxy."""
    client = make_client(wss_feed.url, sslopt={"ca_certs": ca_file}, proxy=https_proxy.url("https", "u:pw"),
                         codec=wsbridge.RawCodec(), backoff=wsbridge.Backoff(initial=0.05, max_delay=0.2))
    client.start().wait_connected(timeout=10)
    assert https_proxy.target() == f"127.0.0.1:{wss_feed.port}"
    big = "x" * (1 << 20)
    for n in range(200):
        client.send(f"line {n}")
    client.send(big, timeout=10)
    client.send(big.encode(), timeout=10)
    echoed = [client.recv(timeout=20).payload for _ in range(202)]
    assert echoed == [f"line {n}" for n in range(200)] + [big, big.encode()]
    assert [data for _, data in wss_feed.wait_received(202)] == echoed
    wss_feed.drop()
    wss_feed.wait_opened(2)
    client.send("after the drop")
    assert client.wait_for("text", timeout=10).payload == "after the drop"
    assert https_proxy.target() == f"127.0.0.1:{wss_feed.port}"


def test_the_server_behind_an_https_proxy_is_verified_too(https_proxy, ca_file, make_client, tmp_path):
    """The proxy's certificate passes, the server's (another CA, or another name) does not."""
    stranger = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger.issue_cert("127.0.0.1").configure_cert(context)
    with Feed(ssl=context) as feed:
        client = make_client(feed.url, sslopt={"ca_certs": ca_file}, proxy=https_proxy.url("https", "u:pw"))
        client.start()
        with pytest.raises(wsbridge.ConnectError, match="TLS certificate verification failed: .*"
                           rf"\(the certificate of the server at 127.0.0.1:{feed.port}\)"):
            client.wait_connected(timeout=10)
        assert client.stats.connect_attempts == 1 and feed.opened == 0


def test_stop_cuts_a_tls_inside_tls_handshake_that_is_never_answered(https_proxy, ca_file, make_client):
    """A server that accepts the tunnel but never answers TLS: stop() returns at once."""
    silent = socket.create_server(("127.0.0.1", 0))
    try:
        port = silent.getsockname()[1]
        client = make_client(f"wss://127.0.0.1:{port}/", sslopt={"ca_certs": ca_file},
                             proxy=https_proxy.url("https", "u:pw"), connect_timeout=60)
        client.start()
        assert https_proxy.target() == f"127.0.0.1:{port}"
        started = time.monotonic()
        client.stop(timeout=10)
        assert time.monotonic() - started < 5
        assert not [t for t in threading.enumerate() if t.name.startswith(client.name + "-")]
    finally:
        silent.close()


@pytest.fixture
def client_cert_server(ca):
    """A wss:// server that requires a certificate the test CA issued."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    with Server(ssl=context, echo=True) as srv:
        yield srv


def client_cert_files(ca: trustme.CA, folder: Any, name: str = "client") -> Dict[str, str]:
    cert = ca.issue_cert(f"{name}@example.org")
    files = {"certfile": str(folder / f"{name}.pem"), "keyfile": str(folder / f"{name}.key")}
    cert.cert_chain_pems[0].write_to_path(files["certfile"])
    cert.private_key_pem.write_to_path(files["keyfile"])
    return files


def test_a_client_certificate_from_sslopt_is_presented(client_cert_server, ca, ca_file, make_client, tmp_path):
    client = make_client(client_cert_server.url, sslopt={"ca_certs": ca_file, **client_cert_files(ca, tmp_path)})
    client.start().wait_connected(timeout=10)
    client.send({"type": "back"})
    assert client.wait_for("back", timeout=10).payload == {"type": "back"}
    refused = make_client(client_cert_server.url, sslopt={"ca_certs": ca_file}, backoff=wsbridge.NO_RETRY)
    refused.start()
    with pytest.raises(wsbridge.ConnectError):
        refused.wait_connected(timeout=10)
    assert refused.stats.connects == 0 and client_cert_server.connections_total == 1  # without one: not let in


def test_a_client_certificate_that_does_not_load_with_its_key_is_refused_at_construction(ca, tmp_path):
    mine, other = client_cert_files(ca, tmp_path, "mine"), client_cert_files(ca, tmp_path, "other")
    with pytest.raises(ValueError, match=r"sslopt\['certfile'\]: .* does not load as a PEM client certificate"):
        wsbridge.Client("wss://127.0.0.1:9/", sslopt={"certfile": mine["certfile"], "keyfile": other["keyfile"]})
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(ca.issue_cert("x@example.org").private_key_pem.bytes(), None)
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"k3y-pass")))
    with pytest.raises(ValueError, match=r"an encrypted key needs sslopt\['password'\]"):  # OpenSSL does not prompt
        wsbridge.Client("wss://127.0.0.1:9/", sslopt={"certfile": mine["certfile"], "keyfile": str(encrypted)})


def test_tls_inside_tls_carries_both_directions_at_once_from_many_threads(https_proxy, ca, ca_file, make_client):
    """4 threads send while the server pings every 20 ms, sends 64 KiB frames and echoes
    everything: the reader's pongs and the writers' records interleave on the proxy's socket,
    and nothing is lost or torn."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with Feed(ssl=context, max_size=None, ping_interval=0.02, ping_timeout=20) as feed:
        _both_directions(feed, make_client(feed.url, sslopt={"ca_certs": ca_file}, proxy=https_proxy.url("https", "u:pw")))


def _both_directions(wss_feed: Feed, client: wsbridge.Client) -> None:
    client.start().wait_connected(timeout=10)
    block = json.dumps({"type": "block", "fill": "y" * 65536})
    pusher = threading.Thread(target=wss_feed.send, args=(*[block] * 100,), name="test-pusher")
    pusher.start()
    send_from_threads(client, threads=4, each=500)
    pusher.join(30)
    echoes = [client.wait_for("m", timeout=20) for _ in range(2000)]
    assert per_thread(echoes) == {k: list(range(500)) for k in range(4)}
    assert sorted(per_thread([Message("m", json.loads(d)) for _, d in wss_feed.wait_received(2000)])) == [0, 1, 2, 3]
    assert client.stats.received >= 2100 and client.stats.connects == 1
