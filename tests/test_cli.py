"""The wsbridge command, run as a person runs it (a subprocess), against servers on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys

import pytest
import trustme

import wsbridge
from wsbridge.testing import RawServer, Server

from conftest import Feed, Lines

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, "-m", "wsbridge"]


def run(*args, stdin=None, timeout=60):
    return subprocess.run([*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def start(*args):
    return subprocess.Popen([*CLI, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def ticks(n):
    return [{"type": "tick", "seq": i, "px": 100 + i} for i in range(1, n + 1)]


# -- listen -------------------------------------------------------------------
def test_listen_prints_json_lines_and_a_summary():
    with Server(script=ticks(5) + [{"type": "chat", "from": "ann", "text": "hi"}]) as server:
        result = run("listen", server.url, "--codec", "wsbridge", "--json-lines", "--max", "6", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in records] == ["tick"] * 5 + ["chat"]
    assert records[0]["seq"] == 1 and records[0]["payload"] == {"type": "tick", "seq": 1, "px": 101}
    assert "wsbridge: connected to ws://127.0.0.1:" in result.stderr
    assert "received 6, duplicates 0, gaps 0, lost 0, reconnects 0" in result.stderr


def test_listen_filters_by_type_and_prints_lines_for_people():
    with Server(script=ticks(3) + [{"type": "chat", "from": "ann", "text": "hi"}]) as server:
        result = run("listen", server.url, "--codec", "wsbridge", "--type", "chat", "--max", "1", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.endswith(' chat {"type": "chat", "from": "ann", "text": "hi"}')


def test_listen_with_a_store_then_history_reads_it_back(tmp_path):
    db = str(tmp_path / "feed.db")
    with Server(script=ticks(4)) as server:
        assert run("listen", server.url, "--codec", "wsbridge", "--store", db, "--max", "4", "--timeout", "30").returncode == 0
    result = run("history", db, "--after-seq", "2", "--json-lines")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [3, 4]
    assert "wsbridge: 2 message(s)" in result.stderr
    assert run("history", db, "--type", "nope").stdout == ""
    future = run("history", db, "--since", "2999-01-01T00:00")
    assert future.returncode == 0 and future.stdout == ""


def test_listen_with_a_store_and_max_marks_handled_only_what_it_printed(tmp_path):
    """Issue 16: --max 5 once stored 60 and marked them all handled; the next run skipped 6-60."""
    db = str(tmp_path / "feed.db")
    with Server(script=ticks(60)) as server:
        first = run("listen", server.url, "--codec", "wsbridge", "--store", db, "--max", "5", "--json-lines",
                    "--timeout", "30")
        assert [json.loads(line)["seq"] for line in first.stdout.splitlines()] == [1, 2, 3, 4, 5], first.stderr
        second = run("listen", server.url, "--codec", "wsbridge", "--store", db, "--max", "3", "--json-lines",
                     "--timeout", "30")
    assert [json.loads(line)["seq"] for line in second.stdout.splitlines()] == [6, 7, 8], second.stderr


def test_listen_with_a_type_filter_leaves_the_rest_unhandled_in_the_store(tmp_path):
    """Issue 16: --type trade on a feed without trades marked every message handled: a later
    run of the whole feed skipped them all. A filter moves a mark of its own."""
    db = str(tmp_path / "feed.db")
    script = [{"type": "trade" if i % 4 == 0 else "tick", "seq": i} for i in range(1, 41)]
    with Server(script=script) as server:
        trades = run("listen", server.url, "--codec", "wsbridge", "--store", db, "--type", "trade", "--max", "3",
                     "--json-lines", "--timeout", "30")
        assert [json.loads(line)["seq"] for line in trades.stdout.splitlines()] == [4, 8, 12], trades.stderr
        everything = run("listen", server.url, "--codec", "wsbridge", "--store", db, "--max", "20", "--json-lines",
                         "--timeout", "30")
        assert [json.loads(line)["seq"] for line in everything.stdout.splitlines()] == list(range(1, 21)), \
            everything.stderr
        more_trades = run("listen", server.url, "--codec", "wsbridge", "--store", db, "--type", "trade",
                          "--max", "2", "--json-lines", "--timeout", "30")
        assert [json.loads(line)["seq"] for line in more_trades.stdout.splitlines()] == [16, 20], more_trades.stderr
        # A filter new to this store starts where the main mark is (seq 20 was printed by the run of everything).
        ticks_only = run("listen", server.url, "--codec", "wsbridge", "--store", db, "--type", "tick", "--max", "2",
                         "--json-lines", "--timeout", "30")
    assert [json.loads(line)["seq"] for line in ticks_only.stdout.splitlines()] == [21, 22], ticks_only.stderr


def test_listen_max_served_from_the_store_alone_succeeds(tmp_path, free_port):
    """The second run's messages all come from the store, before any connection: exit 0."""
    db = str(tmp_path / "feed.db")
    with Server(script=ticks(20)) as server:
        assert run("listen", server.url, "--codec", "wsbridge", "--store", db, "--max", "2", "--timeout", "30").returncode == 0
    later = run("listen", f"ws://127.0.0.1:{free_port}/", "--codec", "wsbridge", "--store", db, "--max", "3",
                "--json-lines", "--timeout", "30")
    assert later.returncode == 0, later.stderr
    assert [json.loads(line)["seq"] for line in later.stdout.splitlines()] == [3, 4, 5]


def test_listen_stops_cleanly_on_ctrl_c_with_a_summary():
    with Server() as server:
        proc = start("listen", server.url, "--codec", "wsbridge")
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            err.next("connected to")
            server.wait_clients(1)
            server.send(*ticks(3))
            assert "tick [3]" in out.next("[3]")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 130
            assert any("received 3, duplicates 0" in line for line in err.rest())
        finally:
            proc.kill()
            proc.wait(10)


def test_listen_reconnects_and_resumes_when_the_server_restarts():
    with Server(feed_from="now") as server:
        proc = start("listen", server.url, "--codec", "wsbridge", "--json-lines", "--max", "6", "--timeout", "60")
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        try:
            err.next("connected to")
            server.wait_clients(1)
            server.publish_many({"type": "tick"} for _ in range(3))
            out.next('"seq": 3')
            server.stop()
            server.publish_many({"type": "tick"} for _ in range(3))  # while the client is away
            server.start()
            assert proc.wait(60) == 0
            assert [json.loads(line)["seq"] for line in out.rest()] == [4, 5, 6]
            text = "\n".join(err.seen + err.rest())
            assert "disconnected" in text and "reconnecting in" in text and "reconnects 1" in text
        finally:
            proc.kill()
            proc.wait(10)


def test_listen_to_nothing_with_no_retry_says_connection_refused(free_port):
    result = run("listen", f"ws://127.0.0.1:{free_port}/", "--no-retry")
    assert result.returncode == 3
    assert f"connection refused: nothing accepts connections at ws://127.0.0.1:{free_port}/" in result.stderr


def test_listen_keeps_retrying_and_says_why_until_the_timeout(free_port):
    result = run("listen", f"ws://127.0.0.1:{free_port}/", "--timeout", "1")
    assert result.returncode == 3
    assert "reconnecting in" in result.stderr and "connection refused" in result.stderr


def test_a_refused_handshake_names_its_http_status():
    with Server(reject_status=401) as server:
        result = run("listen", server.url, "--codec", "wsbridge", "--header", "Authorization: Bearer s3cr3t-token")
    assert result.returncode == 3
    assert "refused the WebSocket handshake with HTTP 401 (check the credentials" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout


def test_a_bad_url_scheme_is_a_usage_error():
    result = run("listen", "http://127.0.0.1:1/")
    assert result.returncode == 2 and "a WebSocket URL starts with ws:// or wss://" in result.stderr


def test_a_bad_header_is_a_usage_error():
    result = run("listen", "ws://127.0.0.1:1/", "--header", "Bearer s3cr3t")
    assert result.returncode == 2 and "--header wants 'NAME: VALUE'" in result.stderr
    assert "s3cr3t" not in result.stderr  # a token passed without its name is not echoed


@pytest.mark.parametrize("value", ["Bearer s3cr3t\r\nCookie: admin=1", "Bearer s3cr3t\nX-Admin: 1", "Bearer s3cr3t\rX-Admin: 1"],
                         ids=["crlf", "lf", "cr"])
def test_a_header_that_would_inject_others_is_a_usage_error_and_nothing_is_sent(value):
    with RawServer() as server:
        result = run("listen", server.url, "--max", "1", "--timeout", "10", "--header", f"Authorization: {value}")
        assert server.accepted == 0
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsbridge: the value of header 'Authorization'"), result.stderr
    assert "s3cr3t" not in result.stderr


def test_bridge_refuses_such_a_header_before_it_starts():
    """The bridge makes its client only once it holds the lease: the header is checked first."""
    pytest.importorskip("redis")
    result = run("bridge", "ws://127.0.0.1:1/", "--redis", "redis://127.0.0.1:1/0", "--feed", "f",
                 "--header", "Authorization: Bearer s3cr3t\r\nCookie: admin=1", timeout=30)
    assert result.returncode == 2 and "the value of header 'Authorization'" in result.stderr, result.stderr
    assert "s3cr3t" not in result.stderr


def test_too_few_messages_before_the_timeout_is_a_failure():
    with Server(script=ticks(2)) as server:
        result = run("listen", server.url, "--codec", "wsbridge", "--max", "5", "--timeout", "1")
    assert result.returncode == 1 and "2 of 5 messages arrived within 1 s" in result.stderr


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    folder = tmp_path_factory.mktemp("tls")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return str(folder / "ca.pem"), context


def test_tls_with_an_unknown_ca_fails_clearly_and_ca_file_fixes_it(tls_files):
    ca_file, context = tls_files
    with Server(ssl=context, script=ticks(1)) as server:
        failed = run("listen", server.url, "--codec", "wsbridge", "--max", "1", "--timeout", "20")
        assert failed.returncode == 3
        assert "TLS certificate verification failed" in failed.stderr and "--ca-file" in failed.stderr
        ok = run("listen", server.url, "--codec", "wsbridge", "--max", "1", "--timeout", "20", "--ca-file", ca_file,
                 "--json-lines")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["seq"] == 1


# -- send ---------------------------------------------------------------------
def test_send_and_wait_for_the_reply():
    with Server(echo=True) as server:
        result = run("send", server.url, '{"type": "ping", "n": 1}', '{"type": "pong", "n": 2}', "--wait-for", "pong")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["payload"] == {"type": "pong", "n": 2}
        assert [m.payload["n"] for m in server.received_messages()] == [1, 2]


def test_send_reads_stdin():
    with Server() as server:
        result = run("send", server.url, stdin='{"type": "a"}\n\n{"type": "b"}\n')
        assert result.returncode == 0, result.stderr
        server.wait_received(2)
        assert [m.type for m in server.received_messages()] == ["a", "b"]


def test_send_streams_stdin_as_lines_arrive():
    """`tail -f log | wsbridge send URL`: each line goes out when it comes, not at EOF."""
    with Server() as server:
        proc = subprocess.Popen([*CLI, "send", server.url], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            proc.stdin.write('{"type": "a"}\n')
            proc.stdin.flush()
            server.wait_received(1, timeout=20)  # stdin is still open
            proc.stdin.write('{"type": "b"}\n')
            proc.stdin.close()
            assert proc.wait(20) == 0, proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        server.wait_received(2)
        assert [m.type for m in server.received_messages()] == ["a", "b"]


def test_send_refuses_invalid_json_before_connecting():
    result = run("send", "ws://127.0.0.1:1/", "{not json")
    assert result.returncode == 2 and "not valid JSON" in result.stderr


def test_send_says_when_no_reply_came():
    with Server() as server:
        result = run("send", server.url, '{"type": "ping"}', "--wait-for", "pong", "--timeout", "0.5")
    assert result.returncode == 1 and "no 'pong' message came back within 0.5 s" in result.stderr


def test_send_to_nothing_exits_3(free_port):
    result = run("send", f"ws://127.0.0.1:{free_port}/", '{"type": "x"}', "--timeout", "5")
    assert result.returncode == 3 and "connection refused" in result.stderr


# -- serve --------------------------------------------------------------------
def serving(proc):
    """The URL a ``wsbridge serve`` process listens on, and its stdout's lines."""
    out = Lines(proc.stdout)
    return out.next("serving").rsplit(" ", 1)[-1], out


def test_serve_a_chat_room_until_ctrl_c(make_client):
    proc = start("serve", "--port", "0", "--mode", "broadcast")
    try:
        url, out = serving(proc)
        a, b = make_client(url), make_client(url)
        a.start().wait_connected(timeout=10)
        b.start().wait_connected(timeout=10)
        a.send({"type": "chat", "text": "hello room"})
        assert b.wait_for("chat", timeout=10).payload["text"] == "hello room"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130  # Ctrl-C: interrupted, after a clean stop (the exit codes of docs/cli.md)
        assert any("2 connection(s), 1 message(s) received" in line for line in out.rest())
    finally:
        proc.kill()
        proc.wait(10)


def test_serve_a_feed_with_cuts_a_listener_loses_nothing(make_client, collector):
    proc = start("serve", "--port", "0", "--mode", "feed", "--ticks", "400", "--cut-every", "0.5", "--resend", "3",
                 "--duration", "30")
    try:
        url, _ = serving(proc)
        got = collector()
        client = make_client(url, **wsbridge.conventions())
        client.on("tick", got)
        client.start()
        items = got.wait(1200, timeout=30)
        assert [m.seq for m in items[:1200]] == list(range(1, 1201))
        assert client.stats.reconnects >= 1 and client.stats.lost == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(15)


def test_serve_refuses_feed_options_in_other_modes():
    result = run("serve", "--mode", "echo", "--resend", "2")
    assert result.returncode == 2 and "go with --mode feed" in result.stderr


# -- history and help -----------------------------------------------------------
@pytest.mark.parametrize("command", ["history", "listen"])
def test_a_store_path_that_can_never_work_is_a_usage_error(tmp_path, command, free_port):
    """Issue 16 (3), found in review: listen --store on a folder exited 1 with "unable to open database file"."""
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 1000)
    cases = {str(tmp_path): "is a folder, not a store", str(bad): "is not a store",
             str(tmp_path / "no" / "such.db"): "there is no folder" if command == "listen" else "no store at"}
    fifo = tmp_path / "fifo.db"
    os.mkfifo(fifo)  # reading it to check it would block for ever
    cases[str(fifo)] = "is not a store"
    if command == "history":
        (tmp_path / "empty.db").write_bytes(b"")
        cases[str(tmp_path / "empty.db")] = "is empty, not a store"
    else:
        cases["/proc/feed.db"] = "/proc"  # a folder where no file can be made
    for path, words in cases.items():
        args = ["history", path] if command == "history" else ["listen", f"ws://127.0.0.1:{free_port}/", "--store", path]
        result = run(*args, timeout=30)
        assert result.returncode == 2 and words in result.stderr, (path, result.stderr)
    assert run("history", str(tmp_path / "none.db")).returncode == 2


def test_listen_refuses_a_store_another_client_writes(tmp_path, free_port):
    db = str(tmp_path / "feed.db")
    with wsbridge.SQLiteStore(db):
        result = run("listen", f"ws://127.0.0.1:{free_port}/", "--store", db, "--type", "t")
    assert result.returncode == 1 and "in use by another client" in result.stderr, result.stderr


def test_listen_says_once_why_messages_are_skipped_and_how_to_read_them():
    """Found in review: a feed without a `type` field printed nothing, exit 0, and only
    'protocol errors 5' in the summary."""
    script = [{"event": "trade", "n": i} for i in range(5)]
    with Server(script=script) as server:
        skipped = run("listen", server.url, "--timeout", "3", "--max", "5")
        typed = run("listen", server.url, "--type-field", "event", "--max", "5", "--timeout", "30")
        defaulted = run("listen", server.url, "--default-type", "event", "--max", "5", "--json-lines", "--timeout", "30")
    assert skipped.returncode == 1 and skipped.stdout == ""
    assert skipped.stderr.count("decode error:") == 1 and "--type-field NAME" in skipped.stderr, skipped.stderr
    assert "protocol errors 5" in skipped.stderr
    assert typed.returncode == 0 and typed.stdout.count(" trade ") == 5, typed.stderr
    assert defaulted.returncode == 0 and [json.loads(line)["type"] for line in defaulted.stdout.splitlines()] == ["event"] * 5
    wrong = run("listen", "ws://127.0.0.1:1/", "--codec", "raw", "--type-field", "event")
    assert wrong.returncode == 2 and "go with --codec json, wsbridge, msgpack or protobuf" in wrong.stderr


def test_the_commands_report_store_failures_once_and_count_them(tmp_path):
    """What `listen --store` shows when the disk fills up (here: the store's max_size)."""
    import io

    from wsbridge.cli.common import Lifecycle, summary

    store = wsbridge.SQLiteStore(str(tmp_path / "feed.db"), max_size=64 * 1024)
    out = io.StringIO()
    with Server() as server:
        client = wsbridge.Client(server.url, store=store, name="cli-store")
        lifecycle = Lifecycle(client, out=out)
        got = []
        client.on("t", got.append)
        with client:
            client.wait_connected(timeout=10)
            server.wait_clients(1)
            for burst in range(2):  # two batches at least: two failed writes
                server.send_many({"type": "t", "pad": "x" * 4000, "n": burst * 50 + i} for i in range(50))
                client.wait_for("t", predicate=lambda m, last=burst * 50 + 49: m.payload["n"] == last, timeout=30)
        lifecycle.say(summary(client))
    text = out.getvalue()
    assert len(got) == 100 and text.count("store error:") == 1, text
    assert "still printed, but not kept" in text and f"store errors {client.stats.store_errors}" in text, text
    assert lifecycle.errors["store"] == client.stats.store_errors > 1


def test_listen_prints_no_control_characters_from_the_feed():
    with Server(script=[{"type": "a\nb\x1b[31m", "text": "x\x1b[2Jy \u202egnp.exe \u2028 日本語 👩‍💻 שלום"}]) as server:
        result = run("listen", server.url, "--max", "1", "--timeout", "30")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1, result.stdout
    assert "\x1b" not in result.stdout and "a\\x0ab\\x1b[31m" in result.stdout, repr(result.stdout)
    assert "\u202e" not in result.stdout and "\\u202e" in result.stdout and "\\u2028" in result.stdout
    assert "日本語 👩‍💻 שלום" in result.stdout  # text is text: only controls are escaped


def test_ca_file_that_is_missing_or_with_ws_is_a_usage_error(tmp_path):
    missing = run("listen", "wss://127.0.0.1:1/", "--ca-file", str(tmp_path / "none.pem"))
    assert missing.returncode == 2 and "--ca-file: there is no file" in missing.stderr, missing.stderr
    folder = run("listen", "wss://127.0.0.1:1/", "--ca-file", str(tmp_path))
    assert folder.returncode == 2 and "is not a file" in folder.stderr, folder.stderr
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    not_pem = run("listen", "wss://127.0.0.1:1/", "--ca-file", str(tmp_path / "bad.pem"))  # it retried for ever
    assert not_pem.returncode == 2 and "is not a PEM file of CA certificates" in not_pem.stderr, not_pem.stderr
    plain = run("listen", "ws://127.0.0.1:1/", "--ca-file", str(tmp_path / "none.pem"))
    assert plain.returncode == 2 and "--ca-file goes with a wss:// URL" in plain.stderr


def test_an_invalid_url_is_shown_with_secrets_masked():
    result = run("listen", "ws://user:hunter2@[::1/feed?token=abc#access_token=xyz")
    assert result.returncode == 2 and "ws://user:***@[::1/feed?token=***" in result.stderr, result.stderr
    assert "hunter2" not in result.stderr and "abc" not in result.stderr and "xyz" not in result.stderr


@pytest.mark.parametrize("command", ["listen", "connect", "send", "serve", "history", "replay", "demo", "bridge",
                                     "consume"])
def test_every_command_has_help_with_exit_codes(command):
    result = run(command, "--help")
    assert result.returncode == 0 and f"usage: wsbridge {command}" in result.stdout
    assert "exit codes:" in result.stdout and "could not connect" in result.stdout


# -- input that can never work exits at once (issue 16) ----------------------------------------
@pytest.mark.parametrize("url,words", [
    ("ws://", "names no host"),
    ("ws://127.0.0.1:99999/", "port is not a number from 1 to 65535"),
    ("ws://127.0.0.1:0/", "port is not a number from 1 to 65535"),
    ("ws://[::1/", "not a valid URL"),
    ("ws://127.0.0.1/a b", "no spaces"),
])
def test_a_url_that_can_never_work_exits_2_at_once(url, words):
    result = run("listen", url)
    assert result.returncode == 2 and words in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("args", [
    ["listen", "ws://127.0.0.1:1/", "--max", "0"], ["listen", "ws://127.0.0.1:1/", "--max", "-3"],
    ["listen", "ws://127.0.0.1:1/", "--timeout", "-1"], ["listen", "ws://127.0.0.1:1/", "--timeout", "0"],
    ["send", "ws://127.0.0.1:1/", "x", "--timeout", "-1"], ["serve", "--port", "70000"],
    ["demo", "--burst", "-5"], ["history", "x.db", "--limit", "0"],
])
def test_numeric_options_are_range_checked(args):
    result = run(*args)
    assert result.returncode == 2 and "out of range" in result.stderr, result.stderr


def test_a_plain_http_server_exits_3_saying_it_is_no_websocket_server():
    from wsbridge.testing.raw import RawServer

    with RawServer(respond=lambda req: b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello") as server:
        result = run("listen", server.url, "--timeout", "30")
    assert result.returncode == 3 and "is not a WebSocket server" in result.stderr, result.stderr


@pytest.mark.parametrize("flag", [[], ["--no-compression"]])
def test_listen_offers_permessage_deflate_unless_told_not_to(flag):
    """A `websockets` server (compression on, as by default) sees the offer, or none."""
    with Feed() as feed:
        proc = start("listen", feed.url, "--max", "1", "--timeout", "30", *flag)
        try:
            [request] = feed.wait_requests(1, timeout=30)
            feed.send('{"type": "tick", "n": 1}')
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    offered = request.headers.get("Sec-WebSocket-Extensions") or ""
    assert ("permessage-deflate" in offered) == (not flag), offered
    assert proc.returncode == 0, err
    assert out.endswith(' tick {"type": "tick", "n": 1}\n')
