"""A chaos run: a sequenced feed through a `Proxy` that cuts the connection
in the middle of the flow, and a check that every message arrived once, in
order. Used by the tests, the delivery benchmark and the demo."""

from __future__ import annotations

import functools
import random
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from ..client import Client
from ..message import Message
from .proxy import Proxy


class ChaosReport(NamedTuple):
    sent: int
    delivered: int
    in_order: bool
    """Every stream's sequence ids arrived exactly once each, 1, 2, 3, ..."""
    duplicates: int
    gaps: int
    lost: int
    cuts: int
    reconnects: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{'OK' if self.in_order and self.delivered == self.sent else 'FAILED'}: sent {self.sent:,}, "
            f"delivered {self.delivered:,} (each once, in order: {self.in_order}), duplicates dropped "
            f"{self.duplicates:,}, gaps {self.gaps}, lost {self.lost}, cuts {self.cuts}, reconnects "
            f"{self.reconnects}, {self.seconds:.2f} s"
        )


def run_chaos(
    make_client: Callable[..., Client],
    proxy: Proxy,
    publish: Callable[[int, Optional[str]], None],
    *,
    messages: int = 20_000,
    cuts: int = 25,
    streams: Sequence[Optional[str]] = ("a", "b"),
    mtype: str = "tick",
    seed: int = 0,
    timeout: float = 120.0,
    **client_options: Any,
) -> ChaosReport:
    """Publish ``messages`` over ``streams`` in ``cuts`` chunks; in each chunk
    the proxy cuts the connection at a random point of the flow (from the
    subscriber, so the rest of the chunk is still on its way).

    ``make_client(url, **options)`` builds the client (not started; it is
    stopped before this returns); ``publish(n, stream)`` makes the server
    publish ``n`` messages of type ``mtype`` on ``stream``.
    """
    rng = random.Random(seed)
    per_chunk = messages // cuts // len(streams)
    if per_chunk < 2:
        raise ValueError("too few messages for that many cuts")
    total = per_chunk * len(streams) * cuts
    lock = threading.Condition()
    seen: Dict[Optional[str], List[int]] = {s: [] for s in streams}
    state = {"n": 0, "cut_at": 0, "cuts": 0}

    def on_message(msg: Message) -> None:
        with lock:
            seen.setdefault(msg.stream, []).append(msg.seq)  # type: ignore[arg-type]
            state["n"] += 1
            cut = state["cut_at"] and state["n"] >= state["cut_at"]
            if cut:
                state["cut_at"] = 0
            lock.notify_all()
        if cut and proxy.cut():
            with lock:
                state["cuts"] += 1
                lock.notify_all()

    connects = threading.Semaphore(0)
    opened = [0]

    def on_connected(sender: Any, **kw: Any) -> None:
        opened[0] += 1
        connects.release()

    client = make_client(proxy.url, **client_options)
    client.on(mtype, on_message)
    client.signals.connected.connect(on_connected)
    deadline = time.monotonic() + timeout

    def delivered(count: int) -> bool:
        return state["n"] >= count

    def wait(predicate: Callable[[], bool], what: str) -> None:
        with lock:
            if not lock.wait_for(predicate, max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"chaos run: {what} not reached in {timeout} s; {client.stats}")

    start = time.perf_counter()
    try:
        client.start()
        for chunk in range(cuts):
            if not connects.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"chaos run: no reconnect in {timeout} s; {client.stats}")
            done_before = chunk * per_chunk * len(streams)
            with lock:
                state["cut_at"] = done_before + rng.randint(1, per_chunk * len(streams) - 1)
            for stream in streams:
                publish(per_chunk, stream)
            wait(functools.partial(delivered, done_before + per_chunk * len(streams)), f"chunk {chunk + 1} delivered")
        if state["cuts"] and not connects.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"chaos run: no reconnect after the last cut in {timeout} s; {client.stats}")
        elapsed = time.perf_counter() - start
        stats = client.stats
    finally:
        client.stop()
    in_order = all(ids == list(range(1, len(ids) + 1)) for ids in seen.values())
    return ChaosReport(total, state["n"], in_order, stats.duplicates, stats.gaps, stats.lost, state["cuts"], opened[0] - 1,
                       elapsed)
