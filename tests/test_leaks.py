"""No thread and no file descriptor outlives its client: start/stop cycles and forced reconnects.

The default run keeps these short; `benchmarks/soak.py` runs the long versions."""

from __future__ import annotations

import os
import threading

import wsbridge
from wsbridge.testing import Proxy

from conftest import wait_until


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def wsbridge_threads() -> list:
    return [t.name for t in threading.enumerate() if t.name.startswith("leak-")]


def test_start_stop_cycles_leave_no_thread_or_fd_behind(server):
    def cycle(i: int) -> None:
        client = wsbridge.Client(server.url, name=f"leak-{i}")
        client.start().wait_connected(timeout=10)
        assert client.stop(timeout=10)

    cycle(-1)  # warm-up: imports, lazily made objects
    fds = open_fds()
    for i in range(100):
        cycle(i)
    assert wsbridge_threads() == []
    wait_until(lambda: open_fds() <= fds, what=f"fds back to {fds} (now {open_fds()})")


def test_forced_reconnects_leave_no_thread_or_fd_behind(server, collector):
    with Proxy(("127.0.0.1", server.port)) as proxy:
        client = wsbridge.Client(proxy.url, name="leak-r", backoff=wsbridge.Backoff(initial=0.01, max_delay=0.02, jitter=0))
        connected = collector()
        client.signals.connected.connect(connected)
        client.start().wait_connected(timeout=10)
        connected.wait(1)
        fds = open_fds()
        for n in range(2, 52):
            proxy.cut()
            connected.wait(n, timeout=10)
        client.wait_connected(timeout=10)
        threads = [t for t in client.threads() if t.is_alive()]
        assert len(threads) == 3  # supervisor, dispatcher, the one live reader
        wait_until(lambda: open_fds() <= fds + 2, what=f"fds near {fds} (now {open_fds()})")  # the proxy's own pair
        assert client.stop(timeout=10)
    assert wsbridge_threads() == []
