"""Views: state after scripted messages, through real clients, and the terminal rendering."""

from __future__ import annotations

import io
import threading

import pytest
from rich.console import Console

import wsbridge
from wsbridge import Message
from wsbridge.testing import DocumentServer, Server
from wsbridge.views import ChatView, DocumentView, PatchError, StatusView, TerminalRenderer, TickerView, render_text

from conftest import wait_until


def chat(sender, text, ts=1_700_000_000.0):
    return Message("chat", {"type": "chat", "from": sender, "text": text, "ts": ts}, received_at=1.0)


def test_chat_view_appends_in_order_and_keeps_the_last_lines():
    view = ChatView(max_lines=3)
    for i in range(5):
        view.handle(chat("ann", f"line {i}", 1_700_000_000.0 + i))
    assert [(line.sender, line.text) for line in view.lines] == [("ann", "line 2"), ("ann", "line 3"), ("ann", "line 4")]
    assert view.lines[0].time == 1_700_000_002.0 and view.changes == 5
    view.handle(Message("chat", "plain text", received_at=5.0))  # pipe/raw payloads are the text
    assert view.lines[-1] == ("?", 5.0, "plain text")


def test_document_view_applies_patches_and_a_snapshot_replaces_it():
    view = DocumentView()
    assert view.stale and view.document is None
    view.handle_snapshot(Message("doc", {"type": "doc", "doc": {"title": "a", "items": []}}))
    view.handle_patch(Message("patch", {"type": "patch", "patch": [{"op": "add", "path": "/items/-", "value": 1}]}))
    view.handle_patch(Message("patch", {"type": "patch", "patch": [{"op": "replace", "path": "/title", "value": "b"}]}))
    assert view.document == {"title": "b", "items": [1]} and view.applied == 2 and not view.stale


def test_a_patch_that_does_not_apply_leaves_the_document_as_it_was_and_marks_it_stale():
    view = DocumentView()
    view.handle_snapshot(Message("doc", {"doc": {"a": 1}}))
    bad = [{"op": "replace", "path": "/a", "value": 2}, {"op": "remove", "path": "/missing"}]
    view.handle_patch(Message("patch", {"patch": bad}))
    assert view.stale and view.failed == 1 and view.document == {"a": 1}  # not half-applied
    view.handle_patch(Message("patch", {"patch": [{"op": "add", "path": "/b", "value": 2}]}))
    assert view.ignored == 1 and view.document == {"a": 1}
    assert "stale" in view.text()


def test_ticker_view_keeps_the_latest_row_per_key():
    view = TickerView(fields=["px", "qty"])
    for sym, px in (("ACME", 1.0), ("INIT", 5.0), ("ACME", 2.0)):
        view.handle(Message("tick", {"type": "tick", "sym": sym, "px": px, "qty": 10}))
    assert view.rows == {"ACME": {"px": 2.0, "qty": 10}, "INIT": {"px": 5.0, "qty": 10}}
    assert view.text().splitlines() == ["sym  px  qty  updates", "ACME  2.0  10  2", "INIT  5.0  10  1"]


def test_a_chat_room_through_the_server_three_clients(make_client):
    with Server(broadcast=True) as room:
        views = {}
        for name in ("ann", "bob", "cy"):
            client = make_client(room.url)
            views[name] = ChatView(client)
            client.start().wait_connected(timeout=10)
        room.wait_clients(3)
        for name in ("ann", "bob", "cy"):
            views[name].say(f"hi from {name}", sender=name)
        for view in views.values():
            wait_until(lambda view=view: len(view.lines) == 3, what="3 chat lines")
        texts = {name: sorted(line.text for line in v.lines) for name, v in views.items()}
        assert all(t == ["hi from ann", "hi from bob", "hi from cy"] for t in texts.values())
        # one server order, so one order everywhere
        assert len({tuple(line.text for line in v.lines) for v in views.values()}) == 1


def test_two_clients_editing_one_document_converge(make_client):
    with DocumentServer({"title": "plan", "items": []}) as server:
        a, b = make_client(server.url), make_client(server.url)
        va, vb = DocumentView(a), DocumentView(b)
        for client in (a, b):
            client.start().wait_connected(timeout=10)
        wait_until(lambda: not va.stale and not vb.stale, what="snapshots")
        for i in range(20):
            (va if i % 2 else vb).edit([{"op": "add", "path": "/items/-", "value": i}])
        wait_until(lambda: va.applied == vb.applied == 20, what="20 patches on both")
        assert va.document == vb.document == server.document
        assert sorted(va.document["items"]) == list(range(20))


def test_a_bad_patch_is_reported_and_a_fresh_snapshot_repairs_the_view(make_client, collector):
    with DocumentServer({"n": 1}) as server:
        client = make_client(server.url)
        view = DocumentView(client)
        errors = collector()
        client.signals.error.connect(errors)
        client.start().wait_connected(timeout=10)
        wait_until(lambda: not view.stale, what="snapshot")
        server.inject_patch([{"op": "remove", "path": "/nope"}])
        report = errors.wait(1)[0]
        assert report["context"] == "view" and isinstance(report["error"], PatchError)
        wait_until(lambda: server.snapshot_requests == 1, what="snapshot request")
        wait_until(lambda: not view.stale, what="fresh snapshot")
        assert view.document == {"n": 1} and view.failed == 1
        view.edit([{"op": "replace", "path": "/n", "value": 2}])
        wait_until(lambda: view.document == {"n": 2}, what="edit after repair")


def test_status_view_tells_connected_and_reconnecting(make_client, down_server):
    client = make_client(down_server.url, backoff=wsbridge.Backoff(initial=30, jitter=0))
    ticks = iter(range(1000))
    status = StatusView(client, clock=lambda: float(next(ticks)))
    reconnecting = threading.Event()
    client.signals.reconnecting.connect(lambda sender, **kw: reconnecting.set())
    client.start()
    assert reconnecting.wait(10)
    wait_until(lambda: status.attempt == 1, what="status saw the retry")
    text = status.text()
    assert text.startswith("reconnecting (attempt 1, next retry in ") and "outbox 0" in text


def test_status_view_shows_rate_and_last_seq(make_client, server):
    client = make_client(server.url, **wsbridge.conventions())
    now = [0.0]
    status = StatusView(client, clock=lambda: now[0])
    got = threading.Event()
    client.on("tick", lambda m: m.seq == 100 and got.set())
    client.start().wait_connected(timeout=10)  # no draw before the end: the rate counts from attach (t=0)
    server.send_many({"type": "tick", "seq": i} for i in range(1, 101))
    assert got.wait(10)
    now[0] = 2.0
    text = status.text()
    assert text.startswith("connected | 50 msg/s | last seq -:100 | outbox 0"), text


def test_terminal_rendering_shows_every_view():
    chat_view, doc_view, ticker = ChatView(), DocumentView(), TickerView()
    chat_view.handle(chat("ann", "hello there"))
    doc_view.handle_snapshot(Message("doc", {"doc": {"title": "plan"}}))
    ticker.handle(Message("tick", {"sym": "ACME", "px": 101.5}))
    text = render_text([chat_view, doc_view, ticker])
    assert "ann: hello there" in text and '"title": "plan"' in text and "ACME" in text and "101.5" in text


def test_the_live_renderer_redraws_at_its_own_rate_and_stops(make_client, server):
    console = Console(record=True, file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    client = make_client(server.url)

    class CountingChat(ChatView):
        draws = 0

        def __rich__(self):
            self.draws += 1
            return super().__rich__()

    view = CountingChat(client)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    with TerminalRenderer([StatusView(client), view], console=console, refresh_per_second=20):
        server.send_many({"type": "chat", "from": "srv", "text": f"m{i}"} for i in range(200))
        wait_until(lambda: len(view.lines) == 200, what="200 lines")
    output = console.export_text()
    assert "srv: m199" in output  # the last draw, at stop, shows the end state
    assert 1 <= view.draws < 200  # redrawn at the renderer's rate, not once per message
    assert not [t for t in threading.enumerate() if "Live" in type(t).__name__ or "Refresh" in type(t).__name__]


def test_the_jupyter_widget_follows_the_view_at_a_bounded_rate_and_ends_with_the_client(make_client, server):
    from wsbridge.views.jupyter import JupyterRenderer

    client = make_client(server.url)
    view = ChatView(client)
    renderer = JupyterRenderer(view, min_interval=0.05)
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send_many({"type": "chat", "from": "srv", "text": f"m{i}"} for i in range(300))
    wait_until(lambda: "m299" in renderer.widget.value, what="the last line in the widget")
    assert renderer.updates < 300  # a burst costs a few widget updates, not one each
    assert client.stop(timeout=10)
    assert renderer._closed and not [t for t in threading.enumerate() if t.name == "wsbridge-view-refresh"]


def test_views_and_their_widget_follow_a_client_replaced_by_one_of_the_same_name(make_client, server):
    """Issue 16: a notebook cell that makes a named client, run again, replaces the client;
    the views made in other cells, and their widgets, move to the new one with their state."""
    from wsbridge.views.jupyter import JupyterRenderer

    first = make_client(server.url, name="feed")
    chat_view, status = ChatView(first), StatusView(first)
    renderer = JupyterRenderer(chat_view, min_interval=0.01)
    first.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send({"type": "chat", "from": "srv", "text": "before"})
    wait_until(lambda: "before" in renderer.widget.value, what="the first line in the widget")
    second = make_client(server.url, name="feed").start()  # the cell, run again
    assert first.state == "stopped"
    assert chat_view.client is second and status.client is second and renderer._client is second
    second.wait_connected(timeout=10)
    server.wait_clients(1)
    server.send({"type": "chat", "from": "srv", "text": "after"})
    wait_until(lambda: "after" in renderer.widget.value, what="the new client's line in the widget")
    assert [text for _, _, text in chat_view.lines] == ["before", "after"]
    assert "connected" in status.text() and not renderer._closed
    assert second.stop(timeout=10)
    assert renderer._closed  # the new client's own end still ends the widget


def test_the_status_widget_redraws_at_its_own_pace_while_messages_flow(make_client, server):
    """Issue 26: the status line reads the client's counters when drawn, and changes only on
    lifecycle events; the widget redrew only on changes, so it showed "received 0" while
    messages flowed. Its pacing thread redraws it; `stop` ends (and joins) that thread."""
    from wsbridge.views.jupyter import JupyterRenderer

    client = make_client(server.url)
    status = StatusView(client)
    renderer = JupyterRenderer(status)  # redraws twice a second by default
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    wait_until(lambda: status.changes >= 1, what="the connected signal's change")
    changes = status.changes
    server.send_many({"type": "tick", "n": i} for i in range(50))
    wait_until(lambda: "received 50 " in renderer.widget.value, what="the count in the status widget")
    assert status.changes == changes  # no lifecycle event drew it
    assert client.stop(timeout=10)
    assert not [t for t in threading.enumerate() if t.name == "wsbridge-view-pacer"]
    for bad in (0, -1, "2", True, 1000):
        with pytest.raises(ValueError, match="refresh_per_second"):
            JupyterRenderer(status, refresh_per_second=bad)


def test_plain_subscribers_follow_a_same_named_client_and_one_made_again_replaces_the_moved_one(
        make_client, server):
    """Issue 26: `on` / `on_any` handlers of a client replaced by one of the same name move to
    it (they stayed on the stopped client); the same handler registered again (same module and
    qualified name: the cell run again) takes the moved one's place, before or after `start`."""
    calls = []

    def make_handlers():
        def on_chat(message):
            calls.append(("chat", message.payload["text"]))

        def on_every(message):
            calls.append(("any", message.payload["text"]))

        return on_chat, on_every

    def other(message):
        calls.append(("other", message.payload["text"]))

    first = make_client(server.url, name="feed")
    on_chat, on_every = make_handlers()
    first.on("chat", on_chat)
    first.on_any(on_every)
    first.on("chat", other)
    first.start().wait_connected(timeout=10)
    second = make_client(server.url, name="feed")
    second.on("chat", make_handlers()[0])  # made again before start: the moved one stays behind
    second.start().wait_connected(timeout=10)
    assert first.state == "stopped"
    server.wait_clients(1)
    server.send({"type": "chat", "text": "a"})
    wait_until(lambda: len(calls) >= 3, what="the handlers of the new client")
    second.on_any(make_handlers()[1])  # made again after start: the moved one gives way
    server.send_many([{"type": "chat", "text": "b"}, {"type": "end", "text": "end"}])
    wait_until(lambda: ("any", "end") in calls, what="the last message")
    assert sorted(calls) == sorted([("chat", "a"), ("any", "a"), ("other", "a"),
                                    ("chat", "b"), ("any", "b"), ("other", "b"), ("any", "end")])


def test_a_cell_that_makes_a_client_and_its_views_run_again_leaves_one_of_each(make_client, server):
    """Found in review: the views of the earlier run moved to the new client beside the
    views the re-run made, so every run added a ticker and a status line to the feed."""
    from wsbridge.views.jupyter import JupyterRenderer

    runs = []
    for _ in range(3):  # the cell: client, views (before or after start), widgets
        client = make_client(server.url, name="feed")
        ticker, status = TickerView(client, type="tick", key="sym"), StatusView(client)
        client.start()
        chat_view = ChatView(client)
        runs.append((client, [ticker, status, chat_view], JupyterRenderer(ticker, min_interval=0.01)))
    live, views, renderer = runs[-1]
    live.wait_connected(timeout=10)
    for client, old_views, old_renderer in runs[:-1]:
        assert client.state == "stopped" and client.replaced_by is not None
        assert all(v.retired and v.client is None for v in old_views), old_views
        assert old_renderer._closed
    assert all(v.client is live and not v.retired for v in views)
    server.wait_clients(1)
    server.send({"type": "tick", "sym": "ACME", "px": 1})
    wait_until(lambda: "ACME" in renderer.widget.value, what="the tick in the live widget")
    assert all("ACME" not in v.text() for _, (v, *_), _ in runs[:-1])


def hold_a_subscriber(client, server):
    """Start ``client`` and keep its dispatcher in a subscriber (at most 20 s) until the
    returned event is set: a client whose stop() will outlive its timeout."""
    busy, release = threading.Event(), threading.Event()
    client.on("chat", lambda msg: (busy.set(), release.wait(20)))
    client.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send({"type": "chat", "from": "srv", "text": "hold"})
    assert busy.wait(10)
    return release


def test_views_move_before_a_slow_subscriber_lets_the_old_client_stop(make_client, server):
    first = make_client(server.url, name="feed")
    chat_view = ChatView(first)
    release = hold_a_subscriber(first, server)
    try:
        second = make_client(server.url, name="feed")
        # the old client's stop waits for its subscriber (bounded by stop's timeout): start it from a thread
        starter = threading.Thread(target=second.start, name="test-starter")
        starter.start()
        wait_until(lambda: chat_view.client is second, what="the view on the new client")
        assert any(t.is_alive() for t in first.threads())  # moved while the earlier client is still stopping
    finally:
        release.set()
        starter.join(15)
    assert not starter.is_alive()
    second.wait_connected(timeout=10)
    assert second.stop(timeout=10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("with_store", [False, True])
def test_two_threads_starting_one_name_at_once_leave_every_view_on_the_winner(make_client, server, tmp_path, with_store):
    """With a store too (found in review: the winner found the store still held by the client
    its loser had replaced, and nothing ran)."""
    def store():
        return wsbridge.SQLiteStore(str(tmp_path / "feed.db")) if with_store else None

    for _ in range(5):
        base = make_client(server.url, name="race", store=store())
        chat_view, status = ChatView(base), StatusView(base)
        base.start().wait_connected(timeout=10)
        contenders = [make_client(server.url, name="race", store=store()) for _ in range(2)]
        go = threading.Barrier(2)
        threads = [threading.Thread(target=lambda c=c, go=go: (go.wait(10), c.start()), name=f"test-start-{i}")
                   for i, c in enumerate(contenders)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        [winner] = [c for c in contenders if c.state != "stopped"]
        assert chat_view.client is winner and status.client is winner
        assert wsbridge.clients() == [winner]
        assert winner.stop(timeout=10)


def test_views_of_one_kind_made_with_other_options_are_not_taken_for_each_other(make_client, server):
    """Found in review: a ticker by symbol retired a ticker by venue of the same type."""
    first = make_client(server.url, name="feed")
    by_sym, by_venue = TickerView(first, key="sym"), TickerView(first, key="venue")
    twins = [ChatView(first), ChatView(first)]  # two alike, made on purpose: both move
    first.start()
    second = make_client(server.url, name="feed").start()
    assert all(v.client is second and not v.retired for v in (by_sym, by_venue, *twins))
    TickerView(second, key="sym", fields=["px"])  # another table of the same ticks: not a re-made one
    assert not by_sym.retired
    TickerView(second, key="sym")  # this one is
    assert by_sym.retired and not by_venue.retired


def test_a_view_attached_to_a_replaced_client_goes_to_its_successor(make_client, server):
    first = make_client(server.url, name="feed").start()
    second = make_client(server.url, name="feed").start()
    assert ChatView(first).client is second


def test_a_failed_start_keeps_the_views_for_the_next_client_of_the_name(make_client, server, tmp_path):
    """Found in review: the replacement's store could not open; its start raised, the old
    client was stopped, and the views stayed with the failed client, out of reach."""
    first = make_client(server.url, name="feed")
    chat_view = ChatView(first)
    first.start().wait_connected(timeout=10)
    broken = make_client(server.url, name="feed", store=wsbridge.SQLiteStore(str(tmp_path / "no" / "feed.db")))
    with pytest.raises(wsbridge.StoreError, match="there is no folder"):
        broken.start()
    third = make_client(server.url, name="feed", store=wsbridge.SQLiteStore(str(tmp_path / "feed.db"))).start()
    assert chat_view.client is third and wsbridge.clients() == [third]


@pytest.mark.timeout(60)
def test_a_replacement_with_a_store_waits_for_a_slow_subscriber_to_let_go_of_it(make_client, server, tmp_path):
    """Found in review: the new client's store was still held by the old one, whose
    subscriber outlived stop()'s timeout: StoreError 'in use'."""
    db = str(tmp_path / "feed.db")
    first = make_client(server.url, name="feed", store=wsbridge.SQLiteStore(db))
    release = hold_a_subscriber(first, server)
    second = make_client(server.url, name="feed", store=wsbridge.SQLiteStore(db))
    starter = threading.Thread(target=second.start, name="test-starter")
    starter.start()
    wait_until(lambda: first.state == "stopped", what="the old client told to stop")
    threading.Timer(0.5, release.set).start()  # the subscriber returns after stop()'s own wait began
    starter.join(40)
    assert not starter.is_alive()
    assert second.wait_connected(timeout=10) and [m.payload["text"] for m in second.store.history()] == ["hold"]


def test_a_subscriber_cannot_start_the_replacement_of_its_own_client_when_they_share_a_store(make_client, server,
                                                                                          tmp_path):
    db = str(tmp_path / "feed.db")
    first = make_client(server.url, name="feed", store=wsbridge.SQLiteStore(db))
    outcome = []

    def replace(msg):
        try:
            make_client(server.url, name="feed", store=wsbridge.SQLiteStore(db)).start()
        except wsbridge.UsageError as exc:
            outcome.append(exc)

    first.on("chat", replace)
    first.start().wait_connected(timeout=10)
    server.wait_clients(1)
    server.send({"type": "chat", "from": "srv", "text": "now"})
    wait_until(lambda: outcome, what="the refused start")
    assert "cannot take the place of the client whose subscriber starts it" in str(outcome[0])
    assert first.state == "connected" and wsbridge.clients() == [first]


def test_display_builds_the_registered_notebook_renderer():
    """`View.display` builds a `JupyterRenderer` without the view module importing it
    (the renderer registers itself when wsbridge.views is imported)."""
    from wsbridge.views import JupyterRenderer

    view = ChatView(max_lines=3)
    view.handle(chat("ann", "hello"))
    renderer = view.display(min_interval=0.01)
    try:
        assert isinstance(renderer, JupyterRenderer) and renderer.min_interval == 0.01
        assert "hello" in renderer.widget.value
    finally:
        renderer.close()


@pytest.mark.parametrize("field", ["body", "message", "content"])
def test_chat_view_finds_the_text_in_common_fields(field):
    view = ChatView(None, type="chat")
    view.handle(wsbridge.Message("chat", {"from": "ann", field: "hello"}))
    view.handle(wsbridge.Message("chat", {"from": "bob", "n": 1}))
    assert [line.text for line in view.lines] == ["hello", '{"from": "bob", "n": 1}']
