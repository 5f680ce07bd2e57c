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
