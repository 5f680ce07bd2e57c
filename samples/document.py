"""A collaborative JSON document: two clients edit it at once and converge.

    python samples/document.py                 # against a bundled document server
    python samples/document.py ws://HOST/doc   # a server speaking the same shape

Each client holds the document in a `DocumentView`: it starts from the
server's snapshot and applies every JSON Patch (RFC 6902) the server
broadcasts, in the server's order, so both end with the same document. Two
threads edit at the same time; a bad patch, injected by the server, is caught,
reported, and repaired with a fresh snapshot. Needs the ``server`` and
``views`` extras. On a terminal the edits come at a pace you can follow
(about 3 s in all); piped, as fast as they go. Exits by itself.
"""

import sys
import threading
import time

import wsbridge
from wsbridge.views import DocumentView, TerminalRenderer


def wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def main(url=None, pace=None):
    if pace is None:  # seconds between two edits of one editor: a person watches a terminal, a pipe does not
        pace = 0.15 if sys.stdout.isatty() else 0.0
    server = None
    if url is None:
        from wsbridge.testing import DocumentServer

        server = DocumentServer({"title": "launch plan", "tasks": [], "owners": {}}).start()
        url = server.url
    a, b = wsbridge.Client(url, name="doc-a"), wsbridge.Client(url, name="doc-b")
    va, vb = DocumentView(a), DocumentView(b)
    va.title, vb.title = "editor A", "editor B"
    errors = []
    for client in (a, b):
        client.signals.error.connect(lambda sender, **kw: errors.append(kw["error"]))
        client.start()
    try:
        wait(lambda: not va.stale and not vb.stale)

        def edit(view, who, n):
            for i in range(n):
                view.edit([{"op": "add", "path": "/tasks/-", "value": f"{who}-{i}"}])
                if pace:
                    screen.refresh()
                    time.sleep(pace)
            view.edit([{"op": "add", "path": f"/owners/{who}", "value": n}])

        with TerminalRenderer([va, vb], refresh_per_second=8) as screen:
            editors = [threading.Thread(target=edit, args=(v, who, 10), name=f"editor-{who}")
                       for v, who in ((va, "a"), (vb, "b"))]
            for t in editors:
                t.start()
            for t in editors:
                t.join(30)
            wait(lambda: va.applied == vb.applied == 22)
            if server is not None:  # a patch that cannot apply: the views must not show a broken document
                server.inject_patch([{"op": "remove", "path": "/no/such/path"}])
                wait(lambda: va.failed and vb.failed and not va.stale and not vb.stale)
            time.sleep(pace * 4)  # the repaired document, on screen a moment before the summary
        print(f"converged: {va.document == vb.document}; {len(va.document['tasks'])} tasks; "
              f"bad patches caught: {va.failed + vb.failed}; errors reported: {len(errors)}")
    finally:
        a.stop()
        b.stop()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
