"""samples/notebook.ipynb runs headless (nbclient, an ipykernel kernel) and shows what it should."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "samples" / "notebook.ipynb"


def test_the_sample_notebook_runs_and_its_outputs_hold_the_messages():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    # Raises CellExecutionError, naming the cell, if any cell fails.
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(NOTEBOOK.parent))
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
        if out.get("output_type") == "stream"
    )
    assert "\n".join(f"notebook: message {i}" for i in range(5)) in text, text
    assert "{'title': 'plan (edited)', 'items': ['write the notebook']}" in text, text
    assert "stopped cleanly: True" in text, text
    assert "wsbridge threads left: []" in text, text  # the clients started in a cell were stopped by a later one
    widgets = [cell_out for cell in nb.cells if cell.cell_type == "code" for cell_out in cell.get("outputs", [])
               if "application/vnd.jupyter.widget-view+json" in cell_out.get("data", {})]
    assert len(widgets) == 3, widgets  # status, chat, document
    # The widget was updated live, from the client's thread, while the cells ran. (Read in the
    # kernel: nbclient keeps widget messages sent between cells only by chance.)
    assert "the chat widget shows message 4: True" in text, text


def test_a_cell_that_makes_a_named_client_can_be_run_again_without_leaking():
    """Three runs of the same cell leave one client; `wsbridge.clients()` finds it and
    `wsbridge.stop_all()` stops it (issue 16: each run used to leave a client running). A
    view's widget made in another cell follows the client that replaced its own."""
    setup = ("import threading, time, wsbridge\nfrom wsbridge.testing import Server\n"
             "from wsbridge.views import ChatView\nserver = Server(echo=True).start()")
    cell = (
        "client = wsbridge.Client(server.url, name='feed')\n"
        "client.start().wait_connected(timeout=10)\n"
        "print('threads after a run:', sum(t.name.startswith('feed-') for t in threading.enumerate()))"
    )
    view = "chat = ChatView(client)\nwidget = chat.display(min_interval=0.01)"
    widget_check = (
        "client.send({'type': 'chat', 'from': 'ann', 'text': 'after two re-runs'})\n"
        "deadline = time.monotonic() + 10\n"
        "while 'after two re-runs' not in widget.widget.value and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print('the widget shows the new client:', 'after two re-runs' in widget.widget.value)"
    )
    check = (
        "print('clients:', [c.name for c in wsbridge.clients()])\n"
        "print('stopped:', wsbridge.stop_all(timeout=10))\n"
        "print('left:', [t.name for t in threading.enumerate() if t.name.startswith('feed-')])\n"
        "server.stop()"
    )
    nb = nbformat.v4.new_notebook()
    sources = [setup, cell, view, cell, cell, widget_check, check]
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(NOTEBOOK.parent))
    text = "".join(out.get("text", "") for c in nb.cells for out in c.get("outputs", []) if out.get("output_type") == "stream")
    assert text.count("threads after a run: 3") == 3, text  # supervisor, dispatcher, reader: never more
    assert "the widget shows the new client: True" in text, text
    assert "clients: ['feed']" in text and "stopped: True" in text and "left: []" in text, text


def test_the_status_widget_stays_live_and_handlers_follow_a_rerun_client_cell():
    """Issue 26, point 3. (a) The status widget redraws at its own pace while messages flow:
    "received" counts them with no lifecycle event in between (it stayed at 0). (b) A plain
    `client.on` handler registered in another cell follows the client its cell made again (it
    was left on the stopped one), and that cell run again replaces the moved handler: each
    message reaches it once."""
    setup = (
        "import threading, time, wsbridge\nfrom wsbridge.testing import Server\n"
        "from wsbridge.views import StatusView\nserver = Server(echo=True).start()\n"
        "seen = []\narrived = threading.Condition()\n"
        "def send_and_wait(text, count=1):\n"
        "    for i in range(count):\n"
        "        client.send({'type': 'chat', 'text': text})\n"
        "    with arrived:\n"
        "        return arrived.wait_for(lambda: seen.count(text) >= count, timeout=10)"
    )
    client_cell = "client = wsbridge.Client(server.url, name='feed')\nclient.start().wait_connected(timeout=10)"
    status_cell = "status = StatusView(client)\nrenderer = status.display()"
    handler_cell = (
        "def on_chat(message):\n"
        "    with arrived:\n"
        "        seen.append(message.payload['text'])\n"
        "        arrived.notify_all()\n"
        "client.on('chat', on_chat)"
    )
    live_check = (
        "print('delivered:', send_and_wait('one', 5))\n"
        "deadline = time.monotonic() + 10\n"
        "while 'received 5 ' not in renderer.widget.value and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "print('the status widget counts them:', 'received 5 ' in renderer.widget.value)"
    )
    follow_check = "print('the moved handler still hears:', send_and_wait('two'))"
    once_check = (
        "print('the handler made again hears:', send_and_wait('three'), send_and_wait('four'))\n"
        "print('runs per message:', seen.count('three'), seen.count('four'))"
    )
    check = "print('stopped:', wsbridge.stop_all(timeout=10))\nserver.stop()"
    nb = nbformat.v4.new_notebook()
    sources = [setup, client_cell, status_cell, handler_cell, live_check, client_cell, follow_check,
               handler_cell, once_check, check]
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    NotebookClient(nb, timeout=120, kernel_name="python3").execute(cwd=str(NOTEBOOK.parent))
    text = "".join(out.get("text", "") for c in nb.cells for out in c.get("outputs", []) if out.get("output_type") == "stream")
    assert "delivered: True" in text and "the status widget counts them: True" in text, text
    assert "the moved handler still hears: True" in text, text
    assert "the handler made again hears: True True" in text and "runs per message: 1 1" in text, text
    assert "stopped: True" in text, text
