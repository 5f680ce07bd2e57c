"""Every started client of this process, for stopping them all (at exit, or on request),
and for a client started with the name of a running one to take its place.

A client inherited through ``fork()`` is skipped: it belongs to the parent.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

from blinker import ANY

from .signals import Subscriber
from .state import WAIT_MAX, timeout_arg

log = logging.getLogger("wsbridge")

_clients: Dict[int, Any] = {}
_lock = threading.Lock()
_named: Dict[str, "weakref.WeakSet[Any]"] = {}
"""Every client that started under a name given explicitly, running or not (their threads may
outlive `stop`'s timeout: a successor that shares their store waits for them)."""
_last: Dict[str, "weakref.ref[Any]"] = {}
"""The client that last started under a name: its views go to the next one, even if it failed
to start or was stopped by hand."""
_replace_hooks: List[Callable[[Any, Any], None]] = []


def on_replace(hook: Callable[[Any, Any], None]) -> None:
    """Call ``hook(earlier, client)`` when ``client`` takes the place of ``earlier``: on
    the thread that starts ``client``, before ``earlier`` is stopped and before ``client``
    delivers anything (the views use it to move to the new client)."""
    _replace_hooks.append(hook)


def replaced(earlier: Any, client: Any) -> None:
    """``client`` takes the place of ``earlier`` (on the thread that starts it): the hooks
    run (the views move), then the plain subscribers move."""
    for hook in list(_replace_hooks):
        try:
            hook(earlier, client)
        except Exception:  # a hook's bug must not stop the new client from starting
            log.exception("wsbridge: replacing %s: hook %r failed", earlier.name, hook)
    _move_subscribers(earlier, client)


def _move_subscribers(earlier: Any, client: Any) -> None:
    """Move the ``on`` / ``on_any`` subscribers of ``earlier`` to ``client`` (or to the
    client that replaced it in turn), as the views move: a handler registered in another
    notebook cell keeps its messages when the client's cell is run again. One that
    ``client`` already has (same module and qualified name: the re-run cell registered it
    again before starting) stays behind; one registered again later takes the moved one's
    place (`Signals.subscribe`). Either way it runs once a message."""
    while client.replaced_by is not None:
        client = client.replaced_by
    old, new = earlier.signals, client.signals
    sources: List[Tuple[Any, Optional[str]]] = [(old.message, None), *((s, t) for t, s in old.types.items())]
    for source, mtype in sources:
        moving = [r for r in source.receivers_for(ANY) if isinstance(r, Subscriber)]
        if not moving:
            continue
        target = new.message if mtype is None else new.for_type(mtype)
        made_again = [r.key() for r in target.receivers_for(ANY) if isinstance(r, Subscriber) and not r.moved]
        for subscriber in moving:
            source.disconnect(subscriber)
            if subscriber.key() in made_again:
                made_again.remove(subscriber.key())
                continue
            subscriber.moved = True
            target.connect(subscriber)


def discard(client: Any) -> None:
    with _lock:
        _clients.pop(id(client), None)


def live() -> List[Any]:
    """The started, not yet stopped clients made by this process."""
    with _lock:
        return [c for c in _clients.values() if c._pid == os.getpid()]


def claim(client: Any) -> List[Any]:
    """Register ``client``; return the clients it takes the place of (a client given an
    explicit ``name`` replaces the running ones of that name, and inherits the views of
    the last one that started under it), in one step, so two threads starting
    same-named clients at once cannot both keep theirs."""
    with _lock:
        pid = os.getpid()
        earlier = [c for c in _clients.values() if c._named and client._named and c.name == client.name
                   and c._pid == pid and c is not client]
        for c in earlier:
            _clients.pop(id(c), None)
        _clients[id(client)] = client
        if client._named:
            ref = _last.get(client.name)
            last = ref() if ref is not None else None
            if last is not None and last is not client and last not in earlier and last._pid == pid:
                earlier.append(last)
            _last[client.name] = weakref.ref(client)
            _named.setdefault(client.name, weakref.WeakSet()).add(client)
        return earlier


def namesakes(client: Any) -> List[Any]:
    """The other clients of this process that started under ``client``'s name."""
    with _lock:
        pid = os.getpid()
        return [c for c in list(_named.get(client.name, ())) if c is not client and c._pid == pid]


def stop_all(timeout: Optional[float] = 5.0) -> bool:
    """Stop every live client of this process, all within one ``timeout`` (None or
    ``inf``: no limit): each is asked to stop first, then waited for, so they end side
    by side (a busy client does not take the others' time). True if every thread ended."""
    limit = timeout_arg(timeout)
    deadline = time.monotonic() + (WAIT_MAX if limit is None else limit)
    asked = [(c, c._ask_stop(deadline)) for c in live()]
    return all([c._await_stop(before, deadline) for c, before in asked])


def _reset_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork(): it never lets go here


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)


EXIT_TIMEOUT = 2.0
"""Seconds the interpreter's exit gives every client still running, all together."""


@atexit.register
def _stop_at_exit() -> None:
    stop_all(EXIT_TIMEOUT)
