"""Markdown summary of an Autobahn fuzzingserver run: the baseline client against wsbridge.

    python autobahn_summary.py OUT [--baseline bare] [--candidate wsbridge] [--json OUT/summary.json]

Reads OUT/reports/index.json (and the per-case reports), OUT/*.jsonl and
OUT/*.meta.json (the drivers' logs). Prints:

1. per section group, each client's OK / NON-STRICT / FAILED counts; OK also
   counts Autobahn's INFORMATIONAL and UNIMPLEMENTED verdicts (the numbers are
   given under the table); a case with no verdict (never run) is reported apart;
2. every case where the candidate did worse than the baseline (verdict ranked
   OK = INFORMATIONAL = UNIMPLEMENTED < NON-STRICT < FAILED < no verdict; or
   hung where the baseline did not), with description, expected vs received;
3. every NON-STRICT case of the candidate, with Autobahn's reason;
4. the cases each driver gave up waiting on (hung).

Exit status: 0 when the candidate has no FAILED case and is no worse than the
baseline in any case, 1 otherwise, 2 when the baseline's run is incomplete or
the reports are missing (a harness failure).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
from typing import Any, Dict, List, Tuple

GROUPS: List[Tuple[str, Tuple[str, ...]]] = [
    ("1 framing, 2 ping/pong", ("1", "2")),
    ("3 reserved bits, 4 opcodes", ("3", "4")),
    ("5 fragmentation", ("5",)),
    ("6 UTF-8", ("6",)),
    ("7 close", ("7",)),
    ("9 limits", ("9",)),
    ("10 misc", ("10",)),
]
OK_LIKE = ("OK", "INFORMATIONAL", "UNIMPLEMENTED")
RANK = {"OK": 0, "INFORMATIONAL": 0, "UNIMPLEMENTED": 0, "NON-STRICT": 1, "FAILED": 2, None: 3}
LABEL = {"bare": "bare WebSocketApp", "wsbridge": "wsbridge"}


def case_key(cid: str) -> List[int]:
    return [int(p) if p.isdigit() else 0 for p in cid.split(".")]


def plain(html: Any) -> str:
    """Autobahn's HTML fragments (descriptions, reasons) as one line of text."""
    text = re.sub(r"<br\s*/?>", " ", str(html or ""))
    return " ".join(re.sub(r"</?\w+[^>]*>", "", text).split())


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def event(ev: Any) -> str:
    """One of Autobahn's recorded events, short: message(text, 16 B: "Hello"), pong(4 B), ..."""
    if isinstance(ev, list) and ev and ev[0] in ("message", "ping", "pong"):
        payload = ev[1] if len(ev) > 1 else ""
        binary = len(ev) > 2 and bool(ev[2])
        size = len(payload) if isinstance(payload, (str, bytes, list)) else 0
        if ev[0] != "message":
            return f"{ev[0]}({size} B)"
        kind = "binary" if binary else "text"
        if binary or size > 40:
            return f"message({kind}, {size} B)"
        return f"message({kind}, {json.dumps(payload, ensure_ascii=False)})"
    if isinstance(ev, list) and ev and isinstance(ev[0], str):  # ["timeout", "A"] -> timeout(A)
        return cut(f"{ev[0]}({', '.join(str(x) for x in ev[1:])})", 80)
    return cut(json.dumps(ev, ensure_ascii=False), 80)


def events(evs: Any) -> str:
    if not isinstance(evs, list):
        return cut(json.dumps(evs, ensure_ascii=False), 200)
    if len(evs) > 6:  # long runs of identical events (fragments, pings) as one
        out: List[str] = []
        for ev in evs:
            s = event(ev)
            if out and out[-1].split(" ×")[0] == s:
                n = int(out[-1].split(" ×")[1]) + 1 if " ×" in out[-1] else 2
                out[-1] = f"{s} ×{n}"
            else:
                out.append(s)
        return cut("[" + ", ".join(out) + "]", 300)
    return cut("[" + ", ".join(event(ev) for ev in evs) + "]", 300)


def expected(exp: Any) -> str:
    if isinstance(exp, dict):
        return "; ".join(f"{k}: {events(v)}" for k, v in exp.items()) or "(nothing)"
    return events(exp)


def load_jsonl(out: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    logs: Dict[str, Dict[str, Dict[str, Any]]] = collections.defaultdict(dict)
    for path in glob.glob(os.path.join(out, "*.jsonl")):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    logs[rec["agent"]][rec["case"]] = rec
    return logs


def load_meta(out: str) -> Dict[str, Dict[str, Any]]:
    meta = {}
    for path in glob.glob(os.path.join(out, "*.meta.json")):
        with open(path) as f:
            m = json.load(f)
        meta[m["agent"]] = m
    return meta


def detail(reports: str, entry: Dict[str, Any]) -> Dict[str, Any]:
    path = os.path.join(reports, entry.get("reportfile", "").replace(".html", ".json"))
    if entry.get("reportfile") and os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def close_note(d: Dict[str, Any]) -> str:
    exp = d.get("expectedClose") or {}
    code, why = d.get("remoteCloseCode"), d.get("remoteCloseReason")
    got = f"{code}" + (f" {json.dumps(why, ensure_ascii=False)}" if why else "") if code is not None else "none"
    return f"Close code expected {exp.get('closeCode')}, the client's {got}"


def reason(d: Dict[str, Any], entry: Dict[str, Any], expectation: bool = True) -> str:
    """Why Autobahn gave its verdict: its result, which expectation the events matched, the close."""
    parts = [plain(d.get("result", ""))]
    exp, got = d.get("expected"), d.get("received")
    if entry.get("behavior") == "NON-STRICT" and isinstance(exp, dict) and "NON-STRICT" in exp:
        parts = []  # the result says only "Actual events match at least one expected."
        if got == exp["NON-STRICT"]:
            parts.append(f"Received {events(got)}: the NON-STRICT expectation, not the OK one {events(exp.get('OK'))}.")
        else:
            parts.append(f"Received {events(got)}; expected {expected(exp)}.")
    if entry.get("behaviorClose") not in (None, "OK", "INFORMATIONAL"):
        parts.append(f"Close {entry.get('behaviorClose')}: {plain(d.get('resultClose', ''))}")
    parts.append(close_note(d) + ".")
    if expectation and d.get("expectation"):
        parts.append(f"Autobahn expects: {plain(d['expectation'])}")
    return " ".join(p for p in parts if p)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="the run's folder (reports/, *.jsonl, *.meta.json)")
    ap.add_argument("--baseline", default="bare")
    ap.add_argument("--candidate", default="wsbridge")
    ap.add_argument("--title", default="", help="a line printed above the table")
    ap.add_argument("--json", default="", help="also write the summary as JSON here")
    args = ap.parse_args()

    reports = os.path.join(args.out, "reports")
    try:
        with open(os.path.join(reports, "index.json")) as f:
            index = json.load(f)
    except (OSError, ValueError) as exc:
        print(f"summary: no usable reports/index.json in {args.out}: {exc}", file=sys.stderr)
        return 2
    logs, meta = load_jsonl(args.out), load_meta(args.out)
    agents = [args.baseline, args.candidate]
    count = max([m.get("case_count", 0) for m in meta.values()] + [len(index.get(a, {})) for a in agents])
    all_ids = sorted({cid for a in agents for cid in index.get(a, {})} | {cid for a in agents for cid in logs.get(a, {})},
                     key=case_key)
    verdict = {a: {cid: index.get(a, {}).get(cid, {}).get("behavior") for cid in all_ids} for a in agents}
    hung = {a: sorted((c for c, r in logs.get(a, {}).items() if r.get("timed_out") or r.get("driver_error")), key=case_key)
            for a in agents}

    # -- the table -----------------------------------------------------------------------
    if args.title:
        print(args.title + "\n")
    head = " | ".join(f"{LABEL.get(a, a)} OK / NON-STRICT / FAILED" for a in agents)
    print(f"| section | {head} |")
    print("|---|" + "---|" * len(agents))
    groups = list(GROUPS)
    known = {s for _, secs in GROUPS for s in secs}
    for sec in sorted({cid.split(".")[0] for cid in all_ids} - known, key=int):
        groups.append((sec, (sec,)))
    summary: Dict[str, Any] = {"cases": count, "sections": {}, "worse": [], "non_strict": [], "hung": hung}

    def counts(agent: str, ids: List[str]) -> Dict[str, int]:
        c = collections.Counter(verdict[agent][cid] for cid in ids)
        return {"OK": sum(c[b] for b in OK_LIKE), "NON-STRICT": c["NON-STRICT"], "FAILED": c["FAILED"],
                "INFORMATIONAL": c["INFORMATIONAL"], "UNIMPLEMENTED": c["UNIMPLEMENTED"], "no verdict": c[None]}

    def fmt(c: Dict[str, int]) -> str:
        s = f"{c['OK']} / {c['NON-STRICT']} / {c['FAILED']}"
        return s + (f" ({c['no verdict']} not run)" if c["no verdict"] else "")

    for name, secs in groups:
        ids = [cid for cid in all_ids if cid.split(".")[0] in secs]
        if not ids:
            continue
        per = {a: counts(a, ids) for a in agents}
        summary["sections"][name] = per
        print(f"| {name} | " + " | ".join(fmt(per[a]) for a in agents) + " |")
    total = {a: counts(a, all_ids) for a in agents}
    for a in agents:  # cases a client never got to (the run's time limit) have no id here either
        total[a]["no verdict"] = count - sum(v is not None for v in verdict[a].values())
    summary["total"] = total
    print(f"| all {count} | " + " | ".join(f"**{fmt(total[a])}**" for a in agents) + " |")
    extra = [f"{b} {', '.join(f'{LABEL.get(a, a)} {total[a][b]}' for a in agents)}" for b in ("INFORMATIONAL", "UNIMPLEMENTED")]
    print(f"\nOK counts Autobahn's OK plus INFORMATIONAL and UNIMPLEMENTED verdicts ({'; '.join(extra)}).")
    times = {a: sum(r.get("seconds", 0) for r in logs.get(a, {}).values()) for a in agents}
    print("Time in the cases: " + ", ".join(f"{LABEL.get(a, a)} {times[a]:.0f} s" for a in agents) + ".")

    # -- worse than the baseline ----------------------------------------------------------------
    b, c = args.baseline, args.candidate
    worse = [cid for cid in all_ids
             if RANK.get(verdict[c][cid], 3) > RANK.get(verdict[b][cid], 3)
             or (cid in hung[c] and cid not in hung[b])]
    print(f"\n### {LABEL.get(c, c)} worse than {LABEL.get(b, b)}: {len(worse) or 'none'}")
    if worse:
        print(f"\n| case | {LABEL.get(b, b)} | {LABEL.get(c, c)} | description | expected vs received "
              f"| Autobahn's result | {c} driver |")
        print("|---|---|---|---|---|---|---|")
    for cid in worse:
        entry = index.get(c, {}).get(cid, {})
        d = detail(reports, entry)
        rec = logs.get(c, {}).get(cid, {})
        drv = []
        if rec.get("timed_out"):
            drv.append(f"hung ({rec.get('limit', 0):g} s limit)")
        if rec.get("driver_error"):
            drv.append(f"driver error {rec['driver_error']}")
        errs = rec.get("errors") or []
        if errs:
            drv.append(f"error: {errs[0]}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""))
        if rec:
            drv.append(f"echoed {rec.get('echoed', 0)}")
        exp_rec = f"expected {expected(d.get('expected'))}<br>received {events(d.get('received', []))}" if d else "(no report)"
        result = reason(d, entry, expectation=False) if d else ""
        item = {"case": cid, "baseline": verdict[b][cid], "candidate": verdict[c][cid],
                "description": plain(d.get("description", "")),
                "reason": reason(d, entry) if d else "", "expected": d.get("expected"), "received": d.get("received"),
                "driver": rec}
        summary["worse"].append(item)
        print(f"| {cid} | {verdict[b][cid] or 'not run'}{' (hung)' if cid in hung[b] else ''} "
              f"| {verdict[c][cid] or 'not run'}{' (hung)' if cid in hung[c] else ''} "
              f"| {cell(cut(item['description'], 200))} | {cell(exp_rec)} | {cell(cut(result, 300))} "
              f"| {cell(cut('; '.join(drv), 160))} |")

    # -- NON-STRICT -----------------------------------------------------------------------
    ns = [cid for cid in all_ids if verdict[c][cid] == "NON-STRICT"]
    print(f"\n### {LABEL.get(c, c)} NON-STRICT: {len(ns) or 'none'}")
    if ns:
        print(f"\n| case | {LABEL.get(b, b)} | description | Autobahn's reason |")
        print("|---|---|---|---|")
    for cid in ns:
        entry = index[c][cid]
        d = detail(reports, entry)
        item = {"case": cid, "baseline": verdict[b][cid], "description": plain(d.get("description", "")),
                "reason": reason(d, entry)}
        summary["non_strict"].append(item)
        print(f"| {cid} | {verdict[b][cid] or 'not run'} | {cell(cut(item['description'], 200))} "
              f"| {cell(cut(item['reason'], 500))} |")

    # -- hung ----------------------------------------------------------------------------
    print()
    for a in agents:
        print(f"Hung (stopped at the per-case limit) or driver error, {LABEL.get(a, a)}: {', '.join(hung[a]) or 'none'}")
        cut_short = [cid for cid in all_ids if verdict[a][cid] and cid not in logs.get(a, {})]
        if cut_short:  # a verdict, but the driver never logged the case: it was stopped during it
            print(f"Cut short by RUN_LIMIT during the case (its verdict is not the client's), {LABEL.get(a, a)}: "
                  f"{', '.join(cut_short)}")

    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, default=str)
    sys.stdout.flush()
    if not count or total[b]["no verdict"]:
        print(f"\nsummary: the baseline has a verdict for {count - total[b]['no verdict']} of {count} cases: harness failure",
              file=sys.stderr)
        return 2
    return 1 if worse or total[c]["FAILED"] or total[c]["no verdict"] else 0


if __name__ == "__main__":
    sys.exit(main())
