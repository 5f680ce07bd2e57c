"""Issue 26, points 1 and 4: a missing optional part says what to install, by the distribution's name
(`wsbridge-sync[EXTRA]`: PyPI's `wsbridge` is another project), wherever it is first needed. Each case
runs in a fresh interpreter where the extra's module cannot be imported (``sys.modules[name] = None``)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

CASES = [
    ("jsonpatch", "import wsbridge.views", "views"),
    ("rich", "from wsbridge.views import ChatView", "views"),
    ("websockets", "import wsbridge.testing", "server"),
    ("ipywidgets", "import wsbridge; from wsbridge.views import ChatView, JupyterRenderer\n"
                   "JupyterRenderer(ChatView(wsbridge.Client('ws://127.0.0.1:9/'), type='chat'))", "jupyter"),
    ("msgpack", "import wsbridge; wsbridge.MsgpackCodec()", "msgpack"),
    ("google.protobuf", "import wsbridge; wsbridge.ProtobufCodec(object)", "protobuf"),
    ("redis", "import wsbridge; wsbridge.RedisStreamStore('redis://127.0.0.1:9/0', feed='f').open()", "redis"),
    ("websockets", "import sys; from wsbridge.cli import main; sys.exit(main(['serve', '--port', '0']))", "server"),
    ("jsonpatch", "import sys; from wsbridge.cli import main; sys.exit(main(['demo', '--plain']))", "server,views"),
]


@pytest.mark.parametrize("blocked,code,extra", CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_a_missing_extra_names_what_to_install(blocked: str, code: str, extra: str) -> None:
    script = f"import sys\nsys.modules[{blocked!r}] = None\n{code}\n"
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"pip install 'wsbridge-sync[{extra}]'" in result.stderr, result.stderr
