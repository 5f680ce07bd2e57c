"""What the second hostile review of issue 20 found still leaking: websocket-client's
process-wide cookie jar, subprotocols (injection, and tokens carried in them), the frames
kept alive by a stored error (their locals hold the request's headers), query values and
passwords `redact_url` missed, and control characters in the URL.

Servers are built for the test on raw sockets (`RawServer`), on 127.0.0.1.
"""

from __future__ import annotations

import traceback
from typing import List

import pytest
import websocket

import wsbridge
from wsbridge import redact
from wsbridge.testing import RawServer
from wsbridge.testing.raw import accept_response, header

TOKEN = "k8s-t0ken-VALUE"
BEARER = "s3cr3t-bearer-value"


def cookie_setter(cookie: bytes):
    """A server that accepts the upgrade and sets ``cookie`` (a ``Set-Cookie`` value)."""
    return lambda request: accept_response(request, b"Set-Cookie: " + cookie + b"\r\n")


def connect_once(make_client, url: str, **kwargs) -> wsbridge.Client:
    client = make_client(url, backoff=wsbridge.NO_RETRY, **kwargs)
    client.start()
    client.wait_connected(timeout=10)
    return client


# -- websocket-client's cookie jar ------------------------------------------------------------


def test_a_cookie_set_on_one_connection_is_never_sent_by_another(make_client):
    """websocket-client keeps every Set-Cookie of a 101 in one jar for the process and adds
    it to every later upgrade to that host, whoever makes it: account A's session went out
    with account B's bearer token, a Secure cookie over ws://, and a cookie an attacker's
    host set for another domain."""
    with RawServer(respond=cookie_setter(b"session=ACCOUNT-A; Domain=127.0.0.1; Secure; HttpOnly")) as a_server:
        connect_once(make_client, a_server.url, headers={"Authorization": "Bearer token-A"}).stop()
    with RawServer() as b_server:
        connect_once(make_client, b_server.url, headers={"Authorization": "Bearer token-B"}).stop()
        [request] = b_server.requests
    assert header(request, b"cookie") is None, request


def test_a_cookie_with_control_characters_set_by_a_server_reaches_no_request(make_client):
    with RawServer(respond=cookie_setter(b'x="a\rInjected: 1\x00z"; Domain=127.0.0.1')) as first:
        connect_once(make_client, first.url).stop()
    with RawServer() as second:
        connect_once(make_client, second.url).stop()
        [request] = second.requests
    assert b"Injected" not in request and b"\x00" not in request


def test_other_users_of_websocket_client_keep_its_jar(make_client):
    """Only wsbridge's connections bypass the jar: a plain websocket-client connection in
    the same process behaves as it always did."""
    with RawServer(respond=cookie_setter(b"plain=kept; Domain=127.0.0.1")) as server:
        ws = websocket.create_connection(server.url, timeout=10)
        ws.close()
        ws = websocket.create_connection(server.url, timeout=10)
        ws.close()
        assert header(server.requests[1], b"cookie") == b"plain=kept"
        connect_once(make_client, server.url).stop()
        assert header(server.requests[2], b"cookie") is None


# -- subprotocols ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["chat\r\nEvil: 1", "chat\nEvil: 1", "chat\x00", "a,b", "a b", ""])
def test_a_subprotocol_that_is_not_a_token_is_refused_at_construction(protocol):
    with RawServer() as server:
        with pytest.raises(ValueError, match=r"subprotocols\[0\]"):
            wsbridge.Client(server.url, subprotocols=[protocol])
        assert server.accepted == 0


def test_subprotocols_must_be_a_list_of_distinct_names():
    with pytest.raises(ValueError, match="not one string"):
        wsbridge.Client("ws://127.0.0.1:9/", subprotocols="chat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        wsbridge.Client("ws://127.0.0.1:9/", subprotocols=["chat", "chat"])


def k8s_protocols() -> List[str]:
    return [f"base64url.bearer.authorization.k8s.io.{TOKEN}", "base64.binary.k8s.io"]


@pytest.mark.parametrize("chosen", [b"", b"Sec-WebSocket-Protocol: not-offered\r\n"], ids=["none-chosen", "unoffered"])
def test_a_token_carried_in_a_subprotocol_stays_out_of_errors_logs_and_reprs(make_client, caplog, chosen):
    caplog.set_level("DEBUG")
    with RawServer(respond=lambda request: accept_response(request, chosen)) as server:
        client = make_client(server.url, subprotocols=k8s_protocols(), backoff=wsbridge.NO_RETRY)
        client.start()
        with pytest.raises(wsbridge.ConnectError) as raised:
            client.wait_connected(timeout=10)
        assert TOKEN.encode() in server.requests[0]  # it was offered, to the server only
    shown = [str(raised.value), str(client.last_error), repr(client), repr(client.options), caplog.text]
    for text in shown:
        assert TOKEN not in text, text[:400]
    assert "base64url.bearer.authorization.k8s.io.***" in str(client.last_error)


def test_redact_protocol_keeps_what_names_the_protocol():
    assert redact.redact_protocol("graphql-transport-ws") == "graphql-transport-ws"
    assert redact.redact_protocol(f"base64url.bearer.authorization.k8s.io.{TOKEN}") == "base64url.bearer.authorization.k8s.io.***"
    assert redact.redact_protocol("mytoken123") == "***"


# -- a stored error keeps no frames -------------------------------------------------------------


def all_locals(error: BaseException) -> str:
    """What a tool that shows the locals of a traceback (Sentry, rich) would print."""
    return "".join(traceback.TracebackException.from_exception(error, capture_locals=True).format())


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: wrong\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: ws://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n",
], ids=["bad-accept", "redirect", "401"])
def test_the_errors_a_client_keeps_hold_no_frame_whose_locals_show_the_headers(make_client, answer):
    collected: List[BaseException] = []
    with RawServer(respond=lambda request: answer) as server:
        client = make_client(server.url, headers={"Authorization": f"Bearer {BEARER}"}, backoff=wsbridge.NO_RETRY)
        client.signals.gave_up.connect(lambda sender, **kw: collected.append(kw["error"]), weak=False)
        client.start()
        with pytest.raises(wsbridge.ConnectError) as raised:
            client.wait_connected(timeout=10)
        client.stop()
    assert BEARER.encode() in server.requests[0]
    for error in (client.last_error, raised.value, *collected):
        assert error is not None
        assert BEARER not in all_locals(error), f"{type(error).__name__}: the token is in a traceback's locals"


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, secret, shown", [
    ("ws://user:SEK/RIT@h:1/", "SEK/RIT", "ws://user:***@h:1/"),
    ("ws://user:SEK?RIT@h/", "SEK?RIT", "ws://user:***@h/"),
    ("ws://user:SEK#RIT@h/p", "SEK#RIT", "ws://user:***@h/p"),
    ("ws://h/p?t=VALUE1&ticket=VALUE2", "VALUE", "ws://h/p?t=***&ticket=***"),
    ("ws://h/p?otp=VALUE&hmac=VALUE&client_assertion=VALUE&nonce=VALUE", "VALUE", None),
    ("ws://h/p?BARE-SECRET", "BARE-SECRET", "ws://h/p?***"),
    ("ws://h/feed;token=VALUE/x", "VALUE", "ws://h/feed;token=***/x"),
])
def test_redact_url_masks_every_query_value_and_passwords_that_confuse_a_parser(url, secret, shown):
    text = redact.redact_url(url)
    assert secret not in text, text
    if shown is not None:
        assert text == shown


@pytest.mark.parametrize("url", ["ws://127.0.0.1:9/a\x00b", "ws://127.0.0.1:9/?q=\x1b[31m", "ws://127.0.0.1:9/\x7f",
                                 "ws://h\x01st:9/"])
def test_a_url_with_a_control_character_is_refused(url):
    with pytest.raises(ValueError, match="control character"):
        wsbridge.Client(url)


def test_a_host_that_is_not_ascii_is_refused_with_its_idna_form():
    with pytest.raises(ValueError, match="xn--bcher-kva.example"):
        wsbridge.Client("ws://bücher.example/")


def test_a_path_or_query_that_is_not_ascii_is_refused_with_its_encoded_form():
    with pytest.raises(ValueError, match=r"/caf%C3%A9\?q=\*\*\*"):  # the query value masked, as every one
        wsbridge.Client("ws://127.0.0.1:9/café?q=é")


def test_a_header_value_given_as_bytes_is_refused():
    """It went out as the text ``b'...'``, escapes and all."""
    with pytest.raises(ValueError, match="bytes"):
        wsbridge.Client("ws://127.0.0.1:9/", headers={"X-A": b"a\r\nEvil: 1"})  # type: ignore[dict-item]


def test_the_command_lines_arguments_do_not_show_the_messages_send_was_given():
    from wsbridge.cli import Arguments, build_parser

    args = build_parser().parse_args(["send", "ws://127.0.0.1:9/", "{\"token\": \"SEKRIT\"}"], namespace=Arguments())
    assert "SEKRIT" not in repr(args) and "<1 message(s)>" in repr(args)


# -- the second review: redaction the first fixes missed, no_proxy, proxy credentials --------------


@pytest.mark.parametrize("protocols, secret", [
    (["token", "0f1e2d3c4b5a69788796a5b4c3d2e1f0a1b2c3d4"], "0f1e2d3c4b5a"),  # Deepgram's form
    (["access_token", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"], "eyJhbGci"),
    (["chat", "A" * 40], "AAAAAAAA"),  # long enough to be a key itself
])
def test_a_key_offered_as_a_subprotocol_after_its_name_is_masked_everywhere(make_client, caplog, protocols, secret):
    caplog.set_level("DEBUG")
    with RawServer(respond=lambda request: accept_response(request)) as server:  # chooses none
        client = make_client(server.url, subprotocols=protocols, backoff=wsbridge.NO_RETRY)
        client.start()
        with pytest.raises(wsbridge.ConnectError) as raised:
            client.wait_connected(timeout=10)
    for text in (str(raised.value), str(client.last_error), repr(client.options), caplog.text):
        assert secret not in text, text[:400]
    assert redact.redact_protocols(["graphql-transport-ws", "chat"]) == ["graphql-transport-ws", "chat"]


@pytest.mark.parametrize("url, secret", [
    ("ws://APIKEY-VALUE:@h:1/", "APIKEY-VALUE"),
    ("http://APIKEY-VALUE:@proxy:8011", "APIKEY-VALUE"),
    ("http://user:8080/Se-cret@127.0.0.1:3128", "Se-cret"),
    ("ws://user:2024/Se-cret@h/", "Se-cret"),
])
def test_redact_url_masks_a_key_in_the_user_part_and_a_password_urllib_reads_as_a_port(url, secret):
    assert secret not in redact.redact_url(url), redact.redact_url(url)


def test_a_proxy_given_a_key_as_its_user_shows_it_nowhere():
    client = wsbridge.Client("ws://127.0.0.1:9/", proxy="http://APIKEY-VALUE:@127.0.0.1:8011")
    assert "APIKEY-VALUE" not in repr(client.options) and "APIKEY-VALUE" not in repr(client.options.proxy_url)


def test_a_signed_url_that_is_not_ascii_is_refused_without_showing_its_signature():
    with pytest.raises(ValueError) as raised:
        wsbridge.Client("ws://127.0.0.1:9/feed?sig=SIGNATURE-VALUE&room=café")
    assert "SIGNATURE-VALUE" not in str(raised.value) and "percent-encode" in str(raised.value)


@pytest.mark.parametrize("host, no_proxy, bypassed", [
    ("localhost", [".host"], False),
    ("evilinternal.example", [".internal.example"], False),
    ("api.internal.example", [".internal.example"], True),
    ("internal.example", [".internal.example"], True),
    ("internal.example", ["internal.example"], True),
    ("a.internal.example", ["internal.example"], True),
    ("Example.COM", ["example.com:8080"], True),
    ("10.1.2.3", ["10.0.0.0/8"], True),
    ("11.1.2.3", ["10.0.0.0/8"], False),
    ("::1", ["[::1]:80"], True),
    ("anything", ["*"], True),
    ("anything", [], False),
])
def test_no_proxy_names_a_host_at_a_label_boundary(host, no_proxy, bypassed):
    from wsbridge.wire.proxies import bypasses

    assert bypasses(host, no_proxy) is bypassed


def test_an_empty_no_proxy_option_does_not_fall_back_to_the_environment(monkeypatch):
    from wsbridge.wire.proxies import bypasses

    monkeypatch.setenv("no_proxy", "example.com")
    assert bypasses("example.com", None) and not bypasses("example.com", ())


def test_a_proxy_user_without_a_password_sends_rfc_7617_basic_credentials(make_client):
    """``user:`` (user-id, colon, empty password), never ``user`` alone."""
    import base64

    from wsbridge.testing import ConnectProxy

    with RawServer() as server, ConnectProxy() as proxy:
        client = make_client(server.url, proxy=f"http://KEY@127.0.0.1:{proxy.port}", backoff=wsbridge.NO_RETRY)
        client.start().wait_connected(timeout=10)
        [connect] = proxy.requests
    assert f"Proxy-Authorization: Basic {base64.b64encode(b'KEY:').decode()}".encode() in connect


def test_an_environment_proxy_that_cannot_work_gives_up_at_once(make_client, monkeypatch):
    monkeypatch.setenv("http_proxy", "socks4://127.0.0.1:1080")
    client = make_client("ws://127.0.0.1:9/", backoff=wsbridge.Backoff(initial=0.01))
    client.start()
    with pytest.raises(wsbridge.ConnectError, match="socks5"):
        client.wait_connected(timeout=10)
    assert client.state == "gave_up"
