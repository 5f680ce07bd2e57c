"""Issue 26, points 4 and 5: errors that say what to try, and the CLI's rough edges
(a summary on Ctrl-C, relative and clock times, what --type printed and left out),
against servers on 127.0.0.1: the `websockets` one of conftest, the bundled one, raw
sockets. The CLI runs as a subprocess, as a person runs it."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import threading
import time
from typing import Any, List

import pytest
from test_cli import CLI, ROOT, run, start, ticks

import wsbridge
from wsbridge.cli.history import parse_time
from wsbridge.errors import CliError
from wsbridge.testing import RawServer, Server

from conftest import Feed, Lines, wait_until


def stopped(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def quiet(connection: int, data: Any) -> List[str]:
    """A `Feed` that only listens: an echo to a sender that already closed would end
    the server's reading before it kept every frame."""
    return []


# -- 4: errors that say what to try ---------------------------------------------
def test_a_feed_object_without_the_type_field_names_type_field_and_default_type(make_client):
    """The library's ProtocolError says what to pass (the CLI's message already did)."""
    errors: List[BaseException] = []
    seen = threading.Event()

    def on_error(sender: Any, error: BaseException, context: str, **kw: Any) -> None:
        errors.append(error)
        seen.set()

    with Feed() as feed:
        client = make_client(feed.url)
        client.signals.error.connect(on_error, weak=False)
        client.start()
        client.wait_connected(timeout=10)
        feed.send(json.dumps({"event": "trade", "px": 1}))
        assert seen.wait(10), "no decode error came"
    assert isinstance(errors[0], wsbridge.ProtocolError)
    text = str(errors[0])
    assert "JSON object has no 'type' field" in text and "type_field=" in text and "default_type=" in text, text


def test_the_cli_says_it_in_its_own_words():
    with Feed() as feed:
        proc = start("listen", feed.url, "--timeout", "30")
        err = Lines(proc.stderr)
        try:
            err.next("connected to")
            feed.send(json.dumps({"event": "trade"}))
            line = err.next("decode error")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 130
        finally:
            stopped(proc)
    assert "--type-field NAME" in line and "--default-type T" in line, line
    assert "type_field=" not in line and "default_type=" not in line, line


def test_send_with_plain_text_points_at_codec_raw():
    with Feed(respond=quiet) as feed:
        refused = run("send", feed.url, "hello")
        sent = run("send", feed.url, "hello", "--codec", "raw")
        assert sent.returncode == 0, sent.stderr
        assert [data for _, data in feed.wait_received(1)] == ["hello"]
    assert refused.returncode == 2 and "not valid JSON" in refused.stderr, refused.stderr
    assert "--codec raw" in refused.stderr and "nothing was sent" in refused.stderr
    assert feed.opened == 1  # the refused one never connected


def test_a_bad_stdin_line_is_reported_by_number_and_skipped_and_the_rest_sent():
    lines = '{"type": "a"}\nhello\n{"type": "b"}\n\n{"type": \n{"type": "c"}\n'
    with Feed(respond=quiet) as feed:
        result = run("send", feed.url, stdin=lines)
        received = [json.loads(data)["type"] for _, data in feed.wait_received(3)]
    assert received == ["a", "b", "c"], result.stderr
    assert result.returncode == 1, result.stderr
    assert "stdin line 2: not valid JSON" in result.stderr and "--codec raw" in result.stderr
    assert "stdin line 5: not valid JSON" in result.stderr
    assert "3 message(s) written to the socket" in result.stderr
    assert "2 stdin line(s) were not sent" in result.stderr and "(line(s) 2, 5)" in result.stderr
    assert "hello" not in result.stderr  # where, never what: a line may carry a secret


# -- 5: CLI polish ----------------------------------------------------------------
def test_listen_interrupted_before_it_connected_prints_a_summary():
    """A server that takes the upgrade request and never finishes its answer: Ctrl-C
    while the client waits for it."""
    with RawServer(respond=lambda request: b"HTTP/1.1 101 Switching Protocols\r\n", keep_refused=True) as server:
        proc = start("listen", server.url, "--connect-timeout", "60")
        try:
            wait_until(lambda: len(server.requests) >= 1, timeout=30, what="the upgrade request")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 130
            err = proc.stderr.read()
        finally:
            stopped(proc)
    assert "connected to" not in err, err
    assert "wsbridge: interrupted before a connection opened" in err, err
    assert "wsbridge: received 0, duplicates 0, gaps 0, lost 0, reconnects 0" in err, err


def test_send_interrupted_prints_what_was_written():
    with Feed(respond=quiet) as feed:
        proc = subprocess.Popen([*CLI, "send", feed.url], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdin is not None
            proc.stdin.write('{"type": "a"}\n{"type": "b"}\n')
            proc.stdin.flush()
            feed.wait_received(2, timeout=20)  # stdin stays open: send waits for more
            proc.send_signal(signal.SIGINT)
            assert proc.wait(15) == 130
            err = proc.stderr.read()
        finally:
            stopped(proc)
    assert "interrupted: 2 message(s) written to the socket" in err, err


def test_listen_with_type_and_max_counts_printed_and_filtered_out_apart():
    script = [{"type": "tick", "seq": i} for i in range(1, 4)] + [{"type": "trade", "n": 1}] + \
        [{"type": "tick", "seq": i} for i in range(4, 7)] + [{"type": "trade", "n": 2}]
    with Server(script=script) as server:
        result = run("listen", server.url, "--type", "trade", "--max", "2", "--json-lines", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["payload"]["n"] for line in result.stdout.splitlines()] == [1, 2]
    assert "printed 2, filtered out 6 (other types), duplicates 0" in result.stderr, result.stderr
    assert "received" not in result.stderr


def test_history_since_and_until_take_relative_and_clock_times(tmp_path):
    db = str(tmp_path / "feed.db")
    before = time.time() - 1.5  # every message is newer than this
    with Server(script=ticks(3)) as server:
        assert run("listen", server.url, "--codec", "wsbridge", "--store", db, "--max", "3", "--timeout", "30").returncode == 0
    clock = datetime.datetime.fromtimestamp(before).strftime("%H:%M:%S")

    def seqs(*args: str) -> List[int]:
        result = run("history", db, "--json-lines", *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["seq"] for line in result.stdout.splitlines()]

    assert seqs("--since", "10m") == [1, 2, 3]
    assert seqs("--since", "1d", "--limit", "2") == [1, 2]
    assert seqs("--until", "2h") == []
    assert seqs("--since", clock) == [1, 2, 3]
    assert seqs("--until", clock) == []
    assert seqs("--since", "30s", "--until", "0s", "--limit", "2") == [1, 2]
    replayed = run("replay", db, "--speed", "max", "--since", "10m", "--json-lines", "--codec", "wsbridge")
    assert replayed.returncode == 0, replayed.stderr
    assert [json.loads(line)["seq"] for line in replayed.stdout.splitlines()] == [1, 2, 3]
    assert run("replay", db, "--speed", "max", "--since", "0s").stdout == ""
    bad = run("history", db, "--until", "ten minutes")
    assert bad.returncode == 2 and "--until wants 10m, 2h, 30s or 1d ago; 21:01" in bad.stderr, bad.stderr
    assert run("history", db, "--since", "25:00").returncode == 2


def test_a_clock_time_is_today_or_yesterday_if_that_is_still_to_come():
    now = datetime.datetime(2026, 12, 7, 21, 30, 0).timestamp()
    assert parse_time("21:01", now=now) == datetime.datetime(2026, 12, 7, 21, 1).timestamp()
    assert parse_time("21:01:30", now=now) == datetime.datetime(2026, 12, 7, 21, 1, 30).timestamp()
    assert parse_time("22:00", now=now) == datetime.datetime(2026, 12, 6, 22, 0).timestamp()
    assert parse_time("10m", now=now) == now - 600
    assert parse_time("2h", now=now) == now - 7200
    assert parse_time("1d", now=now) == now - 86400
    assert parse_time("1700000000", now=now) == 1700000000.0
    assert parse_time("2026-11-28T09:00", now=now) == datetime.datetime(2026, 11, 28, 9, 0).timestamp()


def test_a_time_in_utc_is_read_and_nan_or_inf_is_refused():
    """ISO 8601's "Z" (which `fromisoformat` reads only from Python 3.11) means UTC; "nan" and "inf", which
    `float()` takes, are no moment: a usage error, not an empty history."""
    utc = datetime.datetime(2026, 12, 7, 5, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert parse_time("2026-12-07T05:00Z") == parse_time("2026-12-07T05:00+00:00") == utc
    for text in ("nan", "inf", "-inf", "NaN"):
        with pytest.raises(CliError) as refused:
            parse_time(text, "--since")
        assert refused.value.code == 2 and "--since wants" in str(refused.value)
