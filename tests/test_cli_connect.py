"""The command line of issue 22 (point 8): what wscat and websocat users reach for.

``--send-on-connect`` on every connection, ``--origin``, ``--subprotocol``, ``--proxy``,
``--cert``/``--key``, ``--ping-interval``, the JSON field options, headers and tokens
from the environment, ``--type-field`` on ``send``, options between the positional
arguments, and ``wsbridge connect``: run as a person runs them (a subprocess, with
pipes or a pseudo-terminal) against servers on 127.0.0.1 that are not ours where it
matters: `Feed` (conftest.py: `websockets`' sync server), pproxy (HTTP CONNECT and
SOCKS5) and trustme's certificates; `RawServer` where the frames themselves are read.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import ssl
import subprocess
import sys
import termios
import time
from http import HTTPStatus
from typing import Any, List, Optional

import pytest
import trustme
from test_cli import CLI, ROOT, run, start

from wsbridge.testing import RawServer
from wsbridge.testing.proxy import Proxy
from wsbridge.testing.raw import PING, read_frame

from conftest import Feed, Lines, PProxy

TOKEN = "t0ken-s3cret-9f2"
API_KEY = "k3y-s3cret-71c"


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables the tests read secrets from (children inherit them)."""
    monkeypatch.setenv("FEED_TOKEN", TOKEN)
    monkeypatch.setenv("FEED_KEY", API_KEY)
    monkeypatch.delenv("NO_SUCH_VAR", raising=False)
    for name in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def assert_clean(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text and API_KEY not in text, text


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# -- options between the positional arguments; --type-field on send -------------------------------------------------
def test_send_takes_options_between_the_url_and_the_messages_and_a_type_field():
    """`send URL --timeout 3 MSG` was refused (exit 2: unrecognized arguments), and send had no --type-field."""
    ping, pong = '{"event": "ping", "n": 1}', '{"event": "pong", "n": 2}'
    with Feed() as feed:
        result = run("send", feed.url, "--timeout", "10", ping, "--type-field", "event", pong, "--wait-for", "pong")
        assert result.returncode == 0, result.stderr
        reply = json.loads(result.stdout)
        assert reply["type"] == "pong" and reply["payload"] == {"event": "pong", "n": 2}
        assert feed.on(1) == [ping, pong]


# -- --send-on-connect --------------------------------------------------------------------------------------------
def test_listen_sends_its_messages_first_on_every_connection_in_order_and_the_resume_after_them():
    subscribe_a, subscribe_b = '{"op": "subscribe", "channel": "a"}', '{"op": "subscribe", "channel": "b"}'
    with Feed() as feed:
        proc = start("listen", feed.url, "--codec", "wsbridge", "--type", "tick", "--json-lines", "--max", "2",
                     "--timeout", "60", "--send-on-connect", subscribe_a, "--send-on-connect", subscribe_b)
        out = Lines(proc.stdout)
        try:
            feed.wait_received(2, timeout=30)
            feed.send('{"type": "tick", "seq": 1}')
            assert json.loads(out.next('"seq": 1'))["seq"] == 1
            feed.drop()  # 1012: the listener reconnects, sends both again, then asks to resume after seq 1
            feed.wait_opened(2, timeout=30)
            feed.wait_received(5, timeout=30)
            feed.send('{"type": "tick", "seq": 2}')
            assert proc.wait(30) == 0, proc.stderr.read()
        finally:
            stop(proc)
        assert feed.on(1) == [subscribe_a, subscribe_b]
        again = feed.on(2)
        assert again[:2] == [subscribe_a, subscribe_b], again
        resume = json.loads(again[2])
        assert resume["type"] == "resume" and resume["positions"] == [{"stream": None, "seq": 1}], resume


@pytest.mark.parametrize("command", ["listen", "connect"])
@pytest.mark.parametrize("codec,message,words", [
    ("json", '{"op": "subscribe", ', "not valid JSON"),
    ("pipe", "sub|99|x", "not a valid pipe message"),
])
def test_a_message_the_codec_refuses_exits_2_before_connecting(command, codec, message, words):
    with RawServer() as server:
        result = run(command, server.url, "--codec", codec, "--send-on-connect", '{"op": "login"}' if codec == "json"
                     else "login|0|", "--send-on-connect", message)
        assert server.accepted == 0
    assert result.returncode == 2 and f"--send-on-connect 2: {words}" in result.stderr, result.stderr
    assert ("--codec raw sends text as it is" in result.stderr) == (codec == "json"), result.stderr


def test_the_command_line_does_not_show_the_messages_sent_on_connect_nor_secret_subprotocols():
    from wsbridge.cli import Arguments, build_parser

    args = build_parser().parse_args(["listen", "ws://127.0.0.1:9/", "--send-on-connect", '{"token": "SEKRIT"}',
                                      "--subprotocol", "base64url.bearer.authorization.k8s.io.SEKRIT2",
                                      "--proxy", "http://user:SEKRIT3@127.0.0.1:3128"], namespace=Arguments())
    text = repr(args)
    assert "SEKRIT" not in text and "send_on_connect='<1 message(s)>'" in text, text


# -- headers and tokens from the environment ---------------------------------------------------------------------
def test_headers_and_a_bearer_token_come_from_the_environment_and_are_never_shown(secrets):
    with Feed() as feed:
        result = run("-vv", "send", feed.url, '{"type": "hello"}', "--header-env", "X-Api-Key=FEED_KEY",
                     "--bearer-env", "FEED_TOKEN", "--wait-for", "hello")
        assert result.returncode == 0, result.stderr
        [request] = feed.wait_requests(1)
    assert request.headers["Authorization"] == f"Bearer {TOKEN}" and request.headers["X-Api-Key"] == API_KEY
    assert "wsbridge INFO" in result.stderr  # -vv logged the connection, and no secret with it
    assert_clean(result.stdout, result.stderr)


def test_a_refused_token_from_the_environment_is_not_shown(secrets):
    with Feed(lambda conn, request: conn.respond(HTTPStatus.UNAUTHORIZED, "expired\n")) as feed:
        result = run("listen", feed.url, "--bearer-env", "FEED_TOKEN", "--no-retry")
    assert result.returncode == 3 and "HTTP 401" in result.stderr and "--bearer-env" in result.stderr, result.stderr
    assert_clean(result.stdout, result.stderr)


@pytest.mark.parametrize("options,words", [
    (["--bearer-env", "NO_SUCH_VAR"], "--bearer-env: the environment variable NO_SUCH_VAR is not set"),
    (["--header-env", "X-Api-Key=NO_SUCH_VAR"], "--header-env X-Api-Key: the environment variable NO_SUCH_VAR is not set"),
    (["--header-env", "X-Api-Key"], "--header-env wants NAME=VAR"),
    (["--header", "authorization: x", "--bearer-env", "FEED_TOKEN"], "header 'Authorization' is given twice"),
    (["--header-env", "X-Api-Key=FEED_KEY", "--header-env", "x-api-key=FEED_TOKEN"], "header 'x-api-key' is given twice"),
])
@pytest.mark.parametrize("command", ["listen", "send", "connect"])
def test_an_environment_header_that_cannot_work_exits_2_naming_it_and_nothing_connects(secrets, command, options, words):
    with RawServer() as server:
        result = run(command, server.url, *options, *(['{"type": "x"}'] if command == "send" else []))
        assert server.accepted == 0
    assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert_clean(result.stderr)


def test_a_value_from_the_environment_that_would_inject_a_header_is_refused_unshown(secrets, monkeypatch):
    monkeypatch.setenv("FEED_TOKEN", TOKEN + "\r\nX-Admin: 1")
    with RawServer() as server:
        result = run("listen", server.url, "--bearer-env", "FEED_TOKEN")
        assert server.accepted == 0
    assert result.returncode == 2 and "the value of header 'Authorization'" in result.stderr, result.stderr
    assert_clean(result.stderr)


# -- --origin, --subprotocol, --proxy, --cert/--key, --ping-interval -------------------------------------------------
def test_origin_is_sent_and_a_server_that_checks_it_lets_it_in():
    with Feed(origins=["https://app.example.org"]) as feed:
        refused = run("send", feed.url, '{"type": "x"}')
        ok = run("send", feed.url, '{"type": "x"}', "--origin", "https://app.example.org", "--wait-for", "x")
        requests = feed.wait_requests(2)
    assert refused.returncode == 3 and "HTTP 403" in refused.stderr, refused.stderr
    assert ok.returncode == 0, ok.stderr
    assert requests[1].headers.get_all("Origin") == ["https://app.example.org"]


def test_subprotocols_are_offered_in_order_and_the_chosen_one_is_said():
    with Feed(subprotocols=["feed.v2"]) as feed:
        proc = start("listen", feed.url, "--subprotocol", "feed.v1", "--subprotocol", "feed.v2", "--max", "1",
                     "--timeout", "30")
        err = Lines(proc.stderr)
        try:
            assert err.next("connected to").endswith("(subprotocol feed.v2)")
            feed.send('{"type": "x"}')
            assert proc.wait(30) == 0
        finally:
            stop(proc)
        [request] = feed.wait_requests(1)
    assert request.headers["Sec-WebSocket-Protocol"] == "feed.v1,feed.v2"


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_proxy_takes_the_connection_through_a_real_proxy_with_credentials(secrets, scheme):
    with PProxy(scheme, auth="u:pr0xy-pa55") as proxy, Feed() as feed:
        result = run("send", feed.url, "--proxy", proxy.url(scheme, "u:pr0xy-pa55"), '{"type": "back"}',
                     "--wait-for", "back")
        assert proxy.target() == f"127.0.0.1:{feed.port}"
    assert result.returncode == 0 and json.loads(result.stdout)["type"] == "back", result.stderr
    assert "pr0xy-pa55" not in result.stdout + result.stderr


def test_a_proxy_that_refuses_the_credentials_exits_3():
    with PProxy("http", auth="u:pr0xy-pa55") as proxy, Feed() as feed:
        result = run("listen", feed.url, "--proxy", proxy.url("http", "u:wrong-pa55"))
    assert result.returncode == 3 and "407" in result.stderr, result.stderr
    assert "wrong-pa55" not in result.stderr


@pytest.fixture
def client_certs(tmp_path):
    """A CA, a wss:// `Feed` that requires a client certificate it issued, and the files."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    files = {name: str(tmp_path / name) for name in ("ca.pem", "me.pem", "me.key", "other.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    mine = ca.issue_cert("me@example.org")
    mine.cert_chain_pems[0].write_to_path(files["me.pem"])
    mine.private_key_pem.write_to_path(files["me.key"])
    ca.issue_cert("other@example.org").private_key_pem.write_to_path(files["other.key"])
    with Feed(ssl=context) as feed:
        yield feed, files


def test_a_client_certificate_is_presented_with_cert_and_key(client_certs):
    feed, files = client_certs
    message = ["send", feed.url, '{"type": "back"}', "--wait-for", "back", "--ca-file", files["ca.pem"]]
    ok = run(*message, "--cert", files["me.pem"], "--key", files["me.key"])
    assert ok.returncode == 0 and json.loads(ok.stdout)["type"] == "back", ok.stderr
    assert feed.opened == 1
    without = run(*message)
    assert without.returncode == 3 and feed.opened == 1, without.stderr  # not let in without one


def test_cert_and_key_that_cannot_work_exit_2(client_certs, tmp_path):
    feed, files = client_certs
    cases = [
        (["--cert", files["me.pem"], "--key", files["other.key"]], "--cert: "),
        (["--key", files["me.key"]], "--key goes with --cert"),
        (["--cert", str(tmp_path / "none.pem")], "--cert: there is no file"),
    ]
    for options, words in cases:
        result = run("listen", feed.url, "--ca-file", files["ca.pem"], *options)
        assert result.returncode == 2 and words in result.stderr, (options, result.stderr)
    plain = run("listen", "ws://127.0.0.1:9/", "--cert", files["me.pem"], "--key", files["me.key"])
    assert plain.returncode == 2 and "--cert goes with a wss:// URL" in plain.stderr, plain.stderr
    assert feed.opened == 0


def test_ping_interval_pings_and_a_peer_that_never_answers_is_left_for_a_new_connection():
    with RawServer() as server:
        proc = start("listen", server.url, "--ping-interval", "0.5", "--timeout", "60")
        err = Lines(proc.stderr)
        try:
            opcode, _ = read_frame(server.wait_connection(timeout=30), timeout=10)
            assert opcode == PING
            err.next("disconnected", timeout=30)  # no pong within 0.25 s: a dead peer
            server.wait_connections(2, timeout=30)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(15)
            stop(proc)
    for wrong in ("-1", "inf", "nan"):
        result = run("listen", server.url, "--ping-interval", wrong)
        assert result.returncode == 2 and "out of range" in result.stderr, result.stderr


# -- the JSON field options --------------------------------------------------------------------------------------
def test_seq_id_and_stream_fields_turn_on_dedup_and_order_for_any_json_feed():
    frames = [
        {"type": "t", "ch": "a", "n": 1, "uid": "a1"}, {"type": "t", "ch": "a", "n": 1, "uid": "a1"},
        {"type": "t", "ch": "b", "n": 1, "uid": "b1"}, {"type": "t", "ch": "a", "n": 2, "uid": "a2"},
        {"type": "t", "uid": "z"}, {"type": "t", "uid": "z"}, {"type": "t", "uid": "w"},
    ]
    with Feed() as feed:
        proc = start("listen", feed.url, "--seq-field", "n", "--stream-field", "ch", "--id-field", "uid", "--json-lines",
                     "--max", "5", "--timeout", "60")
        try:
            Lines(proc.stderr).next("connected to")
            feed.send(*(json.dumps(frame) for frame in frames))
            assert proc.wait(30) == 0
            records = [json.loads(line) for line in proc.stdout.read().splitlines()]
        finally:
            stop(proc)
    assert [(r.get("stream"), r.get("seq"), r["id"]) for r in records] == [
        ("a", 1, "a1"), ("b", 1, "b1"), ("a", 2, "a2"), (None, None, "z"), (None, None, "w")]
    wrong = run("listen", "ws://127.0.0.1:9/", "--codec", "raw", "--seq-field", "n")
    assert wrong.returncode == 2
    assert "--seq-field: these options go with --codec json, wsbridge, msgpack or protobuf" in wrong.stderr


# -- bridge takes the connection and handshake options too ------------------------------------------------------------
def test_bridge_sends_on_connect_with_a_token_from_the_environment(secrets):
    pytest.importorskip("redis")
    from wsbridge.testing.redis import RedisServer

    with RedisServer(appendonly=False) as redis_server, Feed() as feed:
        proc = subprocess.Popen([*CLI, "bridge", feed.url, "--redis", redis_server.url, "--feed", "f",
                                 "--send-on-connect", '{"op": "subscribe"}', "--bearer-env", "FEED_TOKEN"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert feed.wait_received(1, timeout=30) == [(1, '{"op": "subscribe"}')]
            assert feed.wait_requests(1)[0].headers["Authorization"] == f"Bearer {TOKEN}"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            stop(proc)
            err = proc.stderr.read()
    assert_clean(err)


# -- wsbridge connect ---------------------------------------------------------------------------------------------
def session(*args: str) -> subprocess.Popen:
    """``wsbridge connect`` with stdin, stdout and stderr as pipes."""
    return subprocess.Popen([*CLI, "connect", *args], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def type_line(proc: subprocess.Popen, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def test_connect_prints_what_comes_and_sends_each_line_plain_text_included():
    with Feed() as feed:
        proc = session(feed.url)
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            err.next("connected to")
            type_line(proc, "hello world")
            assert out.next("hello world").endswith(" text hello world")  # not JSON: sent and shown as text
            type_line(proc, "")
            type_line(proc, '{"type": "greet", "n": 1}')
            assert out.next("greet").endswith(' greet {"type": "greet", "n": 1}')
            feed.send("the server speaks", '{"type": "news", "n": 2}')
            out.next("text the server speaks")
            out.next(' news {"type": "news", "n": 2}')
            proc.stdin.close()  # Ctrl-D
            assert proc.wait(30) == 0
            assert any("received 4" in line and "sent 2 line(s)" in line for line in err.rest()), err.seen
        finally:
            stop(proc)
        assert feed.on(1) == ["hello world", '{"type": "greet", "n": 1}']


def test_connect_with_json_refuses_a_line_that_is_not_json_and_goes_on():
    with Feed() as feed:
        proc = session(feed.url, "--json", "--json-lines")
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            err.next("connected to")
            type_line(proc, "not json")
            refused = err.next("not sent")
            assert "not sent: not valid JSON" in refused and "without --json, a line is sent as typed" in refused
            type_line(proc, '{"type": "a"}')
            assert json.loads(out.next('"a"'))["payload"] == {"type": "a"}
            proc.stdin.close()
            assert proc.wait(30) == 1  # a line was not sent: 1, as send exits for a line it skipped
            assert any("sent 1 line(s), not sent 1" in line for line in err.rest()), err.seen
        finally:
            stop(proc)
        assert feed.on(1) == ['{"type": "a"}']


def test_connect_reconnects_and_sends_what_was_typed_meanwhile_after_the_hook(secrets):
    login = '{"op": "login"}'
    with Feed() as feed, Proxy(("127.0.0.1", feed.port)) as proxy:
        proc = session(proxy.url, "--send-on-connect", login, "--bearer-env", "FEED_TOKEN")
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            err.next("connected to")
            type_line(proc, "first")
            out.next("text first")
            proxy.refuse()
            proxy.cut()
            err.next("disconnected")
            type_line(proc, "second")  # the connection is down: these wait in the send buffer
            type_line(proc, "third")
            err.next("reconnecting")
            proxy.accept()
            out.next("text third")
            proc.stdin.close()
            assert proc.wait(30) == 0
            summary = err.rest()
        finally:
            stop(proc)
        assert feed.on(1) == [login, "first"]
        assert feed.on(2) == [login, "second", "third"]
        assert [r.headers["Authorization"] for r in feed.requests] == [f"Bearer {TOKEN}"] * 2
    assert any("reconnects 1" in line and "sent 3 line(s)" in line for line in summary), summary
    assert_clean("\n".join(err.seen))


def test_connect_at_the_end_of_input_says_what_could_not_be_sent():
    with Feed() as feed, Proxy(("127.0.0.1", feed.port)) as proxy:
        proc = session(proxy.url, "--connect-timeout", "1")
        err = Lines(proc.stderr)
        try:
            err.next("connected to")
            proxy.refuse()
            proxy.cut()
            err.next("disconnected")
            type_line(proc, "lost in the buffer")
            proc.stdin.close()
            assert proc.wait(30) == 1
            rest = err.rest()
        finally:
            stop(proc)
    assert "wsbridge: 1 of 1 line(s) were not sent (the connection was not back in time)" in rest, rest


def test_connect_ends_by_itself_when_the_client_gives_up_while_input_is_still_open(secrets):
    with Feed(lambda conn, request: conn.respond(HTTPStatus.FORBIDDEN, "no\n")) as feed:
        proc = session(feed.url, "--bearer-env", "FEED_TOKEN")
        try:
            assert proc.wait(30) == 3  # stdin is still open: the session ended without it
            err = proc.stderr.read()
        finally:
            stop(proc)
    assert "refused the WebSocket handshake with HTTP 403" in err, err
    assert_clean(err)


def test_connect_no_retry_ends_with_the_connection():
    with Feed() as feed:
        proc = session(feed.url, "--no-retry")
        err = Lines(proc.stderr)
        try:
            err.next("connected to")
            feed.wait_opened(1)  # the client may say so before the server's handler holds the connection
            feed.drop()
            assert proc.wait(30) == 0
        finally:
            stop(proc)


class Terminal:
    """``wsbridge connect`` on a pseudo-terminal: its stdin, stdout and stderr, as a person has them."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ, TERM="xterm", COLUMNS="200")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: only exec
            os.chdir(ROOT)
            os.execvpe(sys.executable, [*CLI, "connect", *args], env)
        self.seen = b""
        self.status: Optional[int] = None

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Read until ``text`` is seen; returns what came up to and with it (then forgets that)."""
        wanted = text.encode()
        deadline = time.monotonic() + timeout
        while wanted not in self.seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not seen within {timeout} s: {self.seen[-300:]!r}"
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed its end
                    chunk = b""
                assert chunk, f"the terminal closed before {text!r}: {self.seen[-300:]!r}"
                self.seen += chunk
        head, _, self.seen = self.seen.partition(wanted)
        return (head + wanted).decode(errors="replace")

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 30.0) -> int:
        """The child's exit code; what it still writes is read meanwhile (a full terminal would block it)."""
        deadline = time.monotonic() + timeout
        while self.status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                break
            assert time.monotonic() < deadline, f"the session did not end within {timeout} s: {self.seen[-300:]!r}"
            if select.select([self.fd], [], [], 0.05)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:  # the child closed its end: it is ending
                    pass
        return self.status

    def modes(self) -> List[Any]:
        return termios.tcgetattr(self.fd)

    def close(self) -> None:
        if self.status is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def assert_cooked(modes: List[Any]) -> None:
    """The terminal is left as it was found: line editing and echo on."""
    assert modes[3] & termios.ICANON and modes[3] & termios.ECHO, modes


def test_connect_on_a_terminal_prints_above_the_line_being_typed_and_ctrl_d_ends_it():
    with Feed() as feed:
        term = Terminal(feed.url)
        try:
            term.expect("connected to")
            term.expect("> ")
            term.type("abc")
            term.expect("abc")
            feed.send('{"type": "news", "n": 1}')
            shown = term.expect('news {"type": "news", "n": 1}')
            assert "\r\x1b[K" in shown  # the line being typed was erased, the message printed in its place
            term.expect("\r\n> abc")  # and the prompt drawn again below it, with what was typed
            term.type("def\r")
            term.expect("text abcdef")  # the echo of the line, sent whole
            term.type("\x04")  # Ctrl-D
            term.expect("sent 1 line(s)")
            assert term.wait() == 0
            assert_cooked(term.modes())
        finally:
            term.close()
        assert feed.on(1) == ["abcdef"]


def test_connect_on_a_terminal_ends_on_ctrl_c_with_a_summary():
    with Feed() as feed:
        term = Terminal(feed.url)
        try:
            term.expect("connected to")
            term.type("half a li")
            term.expect("half a li")
            term.type("\x03")  # Ctrl-C
            term.expect("received 0")
            assert term.wait() == 130
            assert_cooked(term.modes())
        finally:
            term.close()
        assert feed.on(1) == []


def test_connect_on_a_terminal_ends_when_the_client_gives_up_while_a_line_is_half_typed():
    def second_refused(connection: Any, request: Any) -> Any:
        return connection.respond(HTTPStatus.FORBIDDEN, "no\n") if feed.requests[1:] else None

    with Feed(second_refused) as feed:
        term = Terminal(feed.url)
        try:
            term.expect("connected to")
            term.type("half a li")
            term.expect("half a li")
            feed.wait_opened(1)  # the server's handler holds the connection: there is one to drop
            feed.drop()  # the next attempt is refused for good: the session ends without a key pressed
            term.expect("refused the WebSocket handshake with HTTP 403")
            assert term.wait() == 3
            assert_cooked(term.modes())  # readline was still waiting for the rest of the line
        finally:
            term.close()


@pytest.mark.parametrize("options", [
    ["--bearer-env", "Sekr1tTok3nXYZ"],                 # --bearer-env "$FEED_TOKEN": the value, where the name goes
    ["--header-env", "X-Key=Sekr1tTok3nXYZ"],
    ["--header-env", "X-Key:Sekr1tTok3nXYZ"],           # no '='
    ["--send-on-connect", '{"op": "login", "token": "Sekr1tTok3nXYZ"'],  # not valid JSON
], ids=["bearer-env-value", "header-env-value", "header-env-no-equals", "send-on-connect-bad-json"])
def test_a_secret_typed_where_a_name_or_a_message_goes_is_never_echoed(options):
    """Third review: the value given instead of a variable's name was printed as that
    name, and a --send-on-connect message that is not JSON was printed whole."""
    with RawServer() as server:
        result = run("listen", server.url, *options)
        assert server.accepted == 0
    assert result.returncode == 2 and "Sekr1tTok3nXYZ" not in result.stderr, result.stderr
