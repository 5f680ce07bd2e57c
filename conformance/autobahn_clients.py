"""The two Autobahn echo clients that conformance/autobahn.sh runs, one after the other.

    python autobahn_clients.py bare     --url ws://127.0.0.1:PORT --log OUT/bare.jsonl
    python autobahn_clients.py wsbridge --url ws://127.0.0.1:PORT --log OUT/wsbridge.jsonl
    python autobahn_clients.py update-reports --url ws://127.0.0.1:PORT --agent NAME

For each case of the fuzzing server: connect to /runCase?case=N&agent=AGENT, echo
every message back as the frame type it came in (text as text, binary as binary)
until the server closes; then /updateReports (the server writes reports/index.json).

* ``bare``: websocket-client's ``WebSocketApp`` (the baseline), echoing from
  ``on_message`` (text as validated ``str``, binary as ``bytes``; not ``on_data``,
  which gets the opcode of a fragmented message's last frame, not the message's).
* ``wsbridge``: ``wsbridge.Client(url, codec=RawCodec(), backoff=NO_RETRY,
  pull_buffer=0)``, a subscriber echoing with ``send(msg.payload)`` (``str`` ->
  text frame, ``bytes`` -> binary frame); every other option at its default. The
  case ends when the client gives up (the server closed; NO_RETRY connects once).

A case that has not ended within its limit is recorded as hung, its client is
stopped, and the run goes on. The server's bookkeeping (case count, case ids,
reports) goes through plain websocket-client, so a wsbridge bug only shows up
in the cases themselves. One JSON line per case goes to --log (echoes, errors,
seconds, hung); --log's folder also gets AGENT.meta.json (versions, case count).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from typing import Any, Callable, Dict, Optional
from urllib.parse import quote

import websocket
from websocket import ABNF

# -- the fuzzing server's bookkeeping endpoints ----------------------------------------


def _fetch(url: str, timeout: float = 15.0) -> Optional[str]:
    ws = websocket.create_connection(url, timeout=timeout)
    try:
        try:
            return ws.recv()
        except websocket.WebSocketConnectionClosedException:
            return None
    finally:
        ws.close()


def update_reports(base: str, agent: str) -> None:
    ws = websocket.create_connection(f"{base}/updateReports?agent={quote(agent)}", timeout=120)
    try:
        while True:  # the server writes the reports, then closes
            ws.recv()
    except (websocket.WebSocketConnectionClosedException, websocket.WebSocketTimeoutException, OSError):
        pass
    finally:
        ws.close()


# -- the two clients: run_case(url, case_id, limit) -> record --------------------------


def run_bare(url: str, case_id: str, limit: float) -> Dict[str, Any]:
    rec: Dict[str, Any] = {"echoed": 0, "errors": []}

    def on_message(ws: websocket.WebSocketApp, message: Any) -> None:
        ws.send(message, ABNF.OPCODE_TEXT if isinstance(message, str) else ABNF.OPCODE_BINARY)
        rec["echoed"] += 1

    def on_error(ws: websocket.WebSocketApp, error: BaseException) -> None:
        rec["errors"].append(f"{type(error).__name__}: {str(error)[:200]}")

    def on_close(ws: websocket.WebSocketApp, code: Any, reason: Any) -> None:
        rec["close_code"] = code

    app = websocket.WebSocketApp(url, on_message=on_message, on_error=on_error, on_close=on_close)
    thread = threading.Thread(target=app.run_forever, name=f"bare-{case_id}", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        rec["timed_out"] = True
        app.close()
        thread.join(5)
    return rec


def run_wsbridge(url: str, case_id: str, limit: float) -> Dict[str, Any]:
    import wsbridge

    # echoed: send() calls that returned; sent: frames the socket took; unsent: left in the send buffer.
    rec: Dict[str, Any] = {"echoed": 0, "errors": [], "disconnects": []}
    ended = threading.Event()
    client = wsbridge.Client(url, codec=wsbridge.RawCodec(), backoff=wsbridge.NO_RETRY, pull_buffer=0)

    def echo(msg: Any) -> None:
        try:
            client.send(msg.payload)  # str -> text frame, bytes -> binary frame
            rec["echoed"] += 1
        except wsbridge.ClientClosed:
            rec["errors"].append("send after close")

    def on_error(sender: Any, error: Optional[BaseException] = None, context: str = "", **kw: Any) -> None:
        rec["errors"].append(f"{context}: {type(error).__name__}: {str(error)[:200]}")

    def on_disconnected(sender: Any, code: Any = None, reason: Any = None, error: Any = None, **kw: Any) -> None:
        rec["disconnects"].append({"code": code,
                                   "error": None if error is None else f"{type(error).__name__}: {str(error)[:200]}"})

    client.on_any(echo)
    client.signals.error.connect(on_error)
    client.signals.disconnected.connect(on_disconnected)
    client.signals.gave_up.connect(lambda sender, **kw: ended.set())
    client.signals.stopped.connect(lambda sender, **kw: ended.set())
    client.start()
    if not ended.wait(limit):
        rec["timed_out"] = True
        rec["state_at_timeout"] = client.state
    rec["stopped_cleanly"] = client.stop(timeout=5)
    rec["sent"] = client.stats.sent
    rec["unsent"] = len(client.unsent())
    return rec


CLIENTS: Dict[str, Callable[[str, str, float], Dict[str, Any]]] = {"bare": run_bare, "wsbridge": run_wsbridge}


# -- per-case limits -------------------------------------------------------------------


def load_times(path: str) -> Dict[str, float]:
    """case id -> seconds, from a driver's log (the baseline's, for the 9.* limits)."""
    times: Dict[str, float] = {}
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    times[rec["case"]] = float(rec["seconds"])
    return times


def case_limit(case_id: str, args: argparse.Namespace, baseline: Dict[str, float]) -> float:
    """Seconds a case may take from connect to close before its client is stopped (hung).

    The server's own waits are 1-10 s for most cases (--timeout, 30 s, is well
    above them) and 100 s for 9.*, where it closes as soon as the echo is back.
    websocket-client needs up to some 15 s for the slowest 9.* cases (joining the
    65,536 fragments of 9.3.1 is quadratic), so a 9.* case gets --slow-timeout or
    --slow-factor times the baseline's time for it, whichever is larger, and never
    more than the server's 100 s plus 10.
    """
    if not case_id.startswith("9."):
        return args.timeout
    limit = args.slow_timeout
    if case_id in baseline:
        limit = max(limit, args.slow_factor * baseline[case_id])
    return min(limit, 110.0)


# -- the run ---------------------------------------------------------------------------


def versions(client: str) -> Dict[str, str]:
    out = {"python": platform.python_version(), "websocket-client": websocket.__version__}
    if client == "wsbridge":
        import wsbridge

        out["wsbridge"] = wsbridge.__version__
    return out


def run_all(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    agent = args.agent or args.client
    run_case = CLIENTS[args.client]
    baseline = load_times(args.baseline_log)
    count = int(json.loads(_fetch(f"{base}/getCaseCount") or "0"))
    meta = {"agent": agent, "client": args.client, "case_count": count, "versions": versions(args.client)}
    with open(os.path.join(os.path.dirname(os.path.abspath(args.log)), f"{agent}.meta.json"), "w") as f:
        json.dump(meta, f)
    print(f"[{agent}] {count} cases; {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}", flush=True)
    hung = 0
    started = time.monotonic()
    with open(args.log, "a") as log:
        for n in range(1, count + 1):
            cid = json.loads(_fetch(f"{base}/getCaseInfo?case={n}") or "{}")["id"]
            limit = case_limit(cid, args, baseline)
            t0 = time.monotonic()
            try:
                rec = run_case(f"{base}/runCase?case={n}&agent={quote(agent)}", cid, limit)
            except Exception as exc:  # a driver failure is recorded, the run goes on
                rec = {"driver_error": repr(exc)}
            rec.update(case=cid, n=n, agent=agent, seconds=round(time.monotonic() - t0, 3), limit=limit)
            if rec.get("timed_out"):
                hung += 1
                print(f"[{agent}] case {cid}: no close within {limit:g} s (hung)", flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
    update_reports(base, agent)
    print(f"[{agent}] done in {time.monotonic() - started:.0f} s; hung cases: {hung}", flush=True)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("client", choices=[*CLIENTS, "update-reports"])
    p.add_argument("--url", required=True, help="the fuzzing server's base URL (loopback)")
    p.add_argument("--agent", default="", help="agent name in the reports (default: the client's name)")
    p.add_argument("--log", default="", help="JSON-lines file: one record per case")
    p.add_argument("--timeout", type=float, default=30.0, help="per-case limit (s) outside 9.*")
    p.add_argument("--slow-timeout", type=float, default=20.0, help="least per-case limit (s) in 9.*")
    p.add_argument("--slow-factor", type=float, default=4.0, help="9.*: at least this many times the baseline's time")
    p.add_argument("--baseline-log", default="", help="the baseline's JSON-lines log (its per-case times)")
    args = p.parse_args()
    if args.client == "update-reports":
        update_reports(args.url.rstrip("/"), args.agent)
        return 0
    if not args.log:
        p.error("--log is required")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
