"""The bundled test server's feed in a process of its own, driven over stdin,
so a benchmark's client does not share a GIL with the server.

Prints its port, then answers each command line with ``ok``:
``publish N [STREAM]`` (N ticks), ``drop`` (cut every client's TCP connection),
``wait-clients N``.
"""

from __future__ import annotations

import sys

from wsbridge.testing import Server


def main() -> None:
    resend = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    with Server(feed_from="now", resend=resend) as server:
        print(server.port, flush=True)
        for line in sys.stdin:
            cmd, *args = line.split()
            if cmd == "publish":
                stream = args[1] if len(args) > 1 else None
                server.publish_many(({"type": "tick", "sym": "ACME", "px": 101.25} for _ in range(int(args[0]))), stream=stream)
            elif cmd == "drop":
                server.drop_clients()
            elif cmd == "wait-clients":
                server.wait_clients(int(args[0]), timeout=30)
            print("ok", flush=True)


if __name__ == "__main__":
    main()
