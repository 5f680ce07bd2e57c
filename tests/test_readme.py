"""The README's examples run as written: each ``python`` block marked
``<!-- readme-test: wsbridge serve ARGS -->`` runs in a fresh interpreter against
``wsbridge serve ARGS``. The server takes a free port; its address stands in for the
documented 127.0.0.1:8765 in the code, which is otherwise run as it is."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Lines

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"<!-- readme-test: wsbridge serve(?P<args>[^>]*)-->\s*```python\n(?P<code>.*?)```", re.S)
EXAMPLES = [(m.group("args").split(), m.group("code")) for m in MARK.finditer((ROOT / "README.md").read_text())]


def test_the_readme_has_runnable_examples():
    assert EXAMPLES, "no marked example in README.md"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,code", EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_a_readme_example_runs_as_written(args, code):
    server = subprocess.Popen([sys.executable, "-m", "wsbridge", "serve", *args, "--port", "0"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = Lines(server.stdout).next("serving", timeout=30).rsplit(" ", 1)[-1]
        address = url.split("//", 1)[1].split("/", 1)[0]
        assert "127.0.0.1:8765" in code
        result = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8765", address)], cwd=ROOT,
                                capture_output=True, text=True, timeout=40)
        assert result.returncode == 0, result.stderr
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(15)
