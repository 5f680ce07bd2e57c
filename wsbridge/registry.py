"""Every started client of this process, for stopping them all (at exit, or on request),
and for a client started with the name of a running one to take its place.

A client inherited through ``fork()`` is skipped: it belongs to the parent.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from typing import Any, Callable, Dict, List

log = logging.getLogger("wsbridge")

_clients: Dict[int, Any] = {}
_lock = threading.Lock()
_replace_hooks: List[Callable[[Any, Any], None]] = []


def on_replace(hook: Callable[[Any, Any], None]) -> None:
    """Call ``hook(earlier, client)`` when ``client`` takes the place of ``earlier``: on
    the thread that starts ``client``, before ``earlier`` is stopped and before ``client``
    delivers anything (the views use it to move to the new client)."""
    _replace_hooks.append(hook)


def replaced(earlier: Any, client: Any) -> None:
    for hook in list(_replace_hooks):
        try:
            hook(earlier, client)
        except Exception:  # a hook's bug must not stop the new client from starting
            log.exception("wsbridge: replacing %s: hook %r failed", earlier.name, hook)


def discard(client: Any) -> None:
    with _lock:
        _clients.pop(id(client), None)


def live() -> List[Any]:
    """The started, not yet stopped clients made by this process."""
    with _lock:
        return [c for c in _clients.values() if c._pid == os.getpid()]


def claim(client: Any) -> List[Any]:
    """Register ``client``; return the live clients it replaces (a client given an
    explicit ``name`` replaces the running ones of that name), in one step, so two
    threads starting same-named clients at once cannot both keep theirs."""
    with _lock:
        pid = os.getpid()
        earlier = [c for c in _clients.values() if c._named and client._named and c.name == client.name
                   and c._pid == pid and c is not client]
        for c in earlier:
            _clients.pop(id(c), None)
        _clients[id(client)] = client
        return earlier


def stop_all(timeout: float = 5.0) -> bool:
    """Stop every live client of this process, all within ``timeout``; True if every thread ended."""
    import time

    deadline = time.monotonic() + timeout
    return all([c.stop(timeout=max(0.0, deadline - time.monotonic())) for c in live()])


def _reset_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork(): it never lets go here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


@atexit.register
def _stop_at_exit() -> None:
    for client in live():
        client.stop(timeout=2.0)
