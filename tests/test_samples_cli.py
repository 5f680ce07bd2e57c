"""The samples and the command line, run as a user runs them (subprocesses)."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=60):
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_sample_chat_callbacks():
    result = run("samples/chat_callbacks.py")
    assert result.returncode == 0, result.stderr
    assert "*** ada joined" in result.stdout
    assert "ada: bye" in result.stdout
    assert "received 4 messages" in result.stdout


def test_sample_chat_pull():
    result = run("samples/chat_pull.py")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(": ", 1)[1] for line in lines[:5]] == [f"message {i}" for i in range(1, 6)]
    assert "me: hello?" in result.stdout
    assert "presence: {'type': 'presence', 'who': 'bot', 'online': False}" in result.stdout


def test_sample_chat_room():
    result = run("samples/chat_room.py")
    assert result.returncode == 0, result.stderr
    assert "cy: bye" in result.stdout  # the chat view, drawn
    assert "3 clients, 12 of 12 lines each, same order everywhere: True" in result.stdout


def run_on_a_terminal(*args, timeout=60):
    """Run with stdout on a pseudo-terminal (80x40), as a person runs it; return all it wrote,
    without colours and cursor moves."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="80", LINES="40", TERM="xterm")
    proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.PIPE, env=env)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, proc.stderr.read().decode()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode("utf-8", "replace"))  # colours and cursor moves


def test_sample_chat_room_on_a_terminal_shows_each_line_before_the_next():
    """Issue 16: the room was over before anyone saw it. On a terminal every line is drawn
    before the next is typed: at least one frame each (each frame holds the whole room so far)."""
    out = run_on_a_terminal("samples/chat_room.py")
    assert out.count("ann: hello!") >= 12, out[-2000:]
    assert "3 clients, 12 of 12 lines each, same order everywhere: True" in out


def test_sample_document_on_a_terminal_draws_every_edit():
    out = run_on_a_terminal("samples/document.py")
    assert out.count("editor A") >= 20, out[-2000:]  # a frame after each of the 20 task edits, at least
    assert "converged: True; 20 tasks; bad patches caught: 2; errors reported: 2" in out


def test_sample_document():
    result = run("samples/document.py")
    assert result.returncode == 0, result.stderr
    assert '"b-9"' in result.stdout and "editor A" in result.stdout
    assert "converged: True; 20 tasks; bad patches caught: 2; errors reported: 2" in result.stdout


def test_sample_ticker():
    result = run("samples/ticker.py")
    assert result.returncode == 0, result.stderr
    assert re.search(r"ACME\s+│\s+[\d.]+\s+│", result.stdout)
    assert re.search(r"^\d+ ticks, 3 symbols, duplicates 0, lost 0$", result.stdout, re.M)


def test_sample_redis_failover():
    result = run("samples/redis_failover.py", timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "killing the leader" in out and out.count("took the lease") == 2
    assert "every seq 1..6000 exactly once: True" in out
    assert "all 6000 handled: True" in out


# Without pproxy (the import refused), the sample puts wsbridge.testing's CONNECT proxy in the path.
WITHOUT_PPROXY = ("import runpy, sys; sys.modules['pproxy'] = None; sys.argv[0] = sys.argv.pop(1); "
                  "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.parametrize("command, proxy", [(["samples/exchange_feed.py", "--seconds", "8"], "pproxy"),
                                            (["-c", WITHOUT_PPROXY, "samples/exchange_feed.py", "--seconds", "5"],
                                             "wsbridge.testing.ConnectProxy")], ids=["pproxy", "own-proxy"])
def test_sample_exchange_feed_loses_nothing_through_expiring_tokens_a_proxy_and_cuts(command, proxy):
    result = run(*command, timeout=90)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for channel in ("ticker.BTC", "ticker.ETH"):
        assert re.search(rf"^{re.escape(channel)}: (\d+) updates published, \1 received, each once and in order: True$",
                         out, re.M), out
    tally = re.search(r"^(\d+) cuts, (\d+) connections through (.+), a token of its own each: True, refused: 0$", out, re.M)
    assert tally and int(tally.group(1)) >= 3 and int(tally.group(2)) >= 2 and tally.group(3) == proxy, out
    assert re.search(r"^duplicates dropped \d+, lost 0$", out, re.M), out
    assert "cut 1 (drop)" in out and "cut 2 (restart)" in out


def test_sample_graphql_subscription_is_restored_after_the_server_restarts():
    """Against strawberry-graphql under uvicorn (not ours): connection_init with the token
    and its ack on both connections, then the subscription, sent again by the handshake."""
    result = run("samples/graphql_subscription.py", timeout=90)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("connection_init sent, connection_ack received: {'welcome': True}") == 2, out
    assert "subprotocol: graphql-transport-ws" in out
    assert "subscription 1, ticks: [1, 2, 3, 4, 5]" in out and "subscription 2, ticks: [1, 2, 3, 4, 5]" in out, out
    assert "disconnected, close code 1012" in out  # uvicorn's "service restart"
    assert "2 connections; the subscription restored by the handshake" in out


def test_demo_runs_through_chaos_and_loses_nothing():
    result = run("-m", "wsbridge", "demo", "--burst", "3000", "--seconds", "3", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "alice: hello, is the feed live?" in out  # the chat view
    assert re.search(r"ACME\s+│", out)  # the ticker view
    assert "connection cut by the chaos proxy" in out and "reconnected; resuming after" in out
    tally = re.search(r"sent ([\d,]+) sequenced messages, received ([\d,]+), lost 0\n\s+each once and in order: True", out)
    assert tally and tally.group(1) == tally.group(2), out[-800:]
    assert re.search(r"duplicates dropped [\d,]+, reconnects [1-9]", out)
    assert "0 protocol errors, 0 subscriber errors" in out
    assert "messages/s" in out


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"]])
def test_help(args):
    result = run("-m", "wsbridge", *args)
    assert result.returncode == 0 and "usage: wsbridge" in result.stdout


def test_no_command_prints_help_and_exits_2():
    result = run("-m", "wsbridge")
    assert result.returncode == 2 and "COMMAND" in result.stdout
