"""A client process for the crash test: records every tick it handles, and
can block forever inside the subscriber of one sequence id (to be killed)."""

from __future__ import annotations

import sys
import threading

import wsbridge


def main() -> int:
    url, store_path, record_path, block_at, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    done = threading.Event()
    record = open(record_path, "a", buffering=1)

    def on_tick(msg: wsbridge.Message) -> None:
        if msg.seq == block_at:
            print("BLOCKED", flush=True)
            threading.Event().wait()  # killed in here, before the side effect
        record.write(f"{msg.seq}\n")  # line-buffered: in the file once written
        if msg.seq == total:
            done.set()

    client = wsbridge.Client(url, store=wsbridge.SQLiteStore(store_path), backoff=wsbridge.Backoff(initial=0.05, max_delay=0.2),
                             **wsbridge.conventions())
    client.on("tick", on_tick)
    with client:
        if not done.wait(60):
            print(f"TIMEOUT {client.stats}", flush=True)
            return 1
    print(f"DONE {client.stats.replayed} {client.stats.resumes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
