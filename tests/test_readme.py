"""The examples of the README and of the documentation site (docs/*.md) run as written: each ``python`` block marked
``<!-- readme-test: wsbridge serve ARGS [| expect: TEXT [&& TEXT ...]] -->`` runs in a fresh
interpreter against ``wsbridge serve ARGS`` and must print every TEXT. The server takes a
free port; its address stands in for the documented 127.0.0.1:8765 in the code. An
example that names ``redis://127.0.0.1:6379`` gets a redis-server of its own there
(`RedisServer`, on a free port too). The code is otherwise run as it is."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, Lines, documentation_files

MARK = re.compile(
    r"<!-- readme-test: wsbridge serve(?P<args>[^|>]*)(\| expect: (?P<expect>[^>]*?))?\s*-->\s*```python\n(?P<code>.*?)```",
    re.S,
)
MARKED = [(path.relative_to(ROOT).as_posix(), m) for path in documentation_files()
          for m in MARK.finditer(path.read_text(encoding="utf-8"))]
EXAMPLES = [(m.group("args").split(), m.group("expect"), m.group("code")) for _, m in MARKED]
IDS = [f"{name}-{index}" for index, (name, _) in enumerate(MARKED)]
REDIS = "redis://127.0.0.1:6379"


def test_the_readme_has_runnable_examples():
    assert any(name == "README.md" for name, _ in MARKED), "no marked example in README.md"
    assert len(EXAMPLES) >= 5, IDS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,expect,code", EXAMPLES, ids=IDS)
def test_a_readme_example_runs_as_written(args, expect, code):
    with contextlib.ExitStack() as stack:
        if REDIS in code:
            from wsbridge.testing.redis import RedisServer

            redis = stack.enter_context(RedisServer(appendonly=False))
            code = code.replace(REDIS, redis.url.rsplit("/", 1)[0])
        server = subprocess.Popen([sys.executable, "-m", "wsbridge", "serve", *args, "--port", "0"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stack.callback(server.wait, 15)
        stack.callback(server.send_signal, signal.SIGINT)
        url = Lines(server.stdout).next("serving", timeout=30).rsplit(" ", 1)[-1]
        address = url.split("//", 1)[1].split("/", 1)[0]
        assert "127.0.0.1:8765" in code
        result = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8765", address)], cwd=ROOT,
                                capture_output=True, text=True, timeout=40)
        assert result.returncode == 0, result.stderr
        for text in (expect or "").split(" && "):
            assert text.strip() in result.stdout, result.stdout
