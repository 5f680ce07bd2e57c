"""The public API type-checks from a user's side: ``mypy --strict`` on the python examples of the
README and of the documentation site (docs/*.md), on a script that uses every name in
``wsbridge.__all__`` (tests/typing_user/every_name.py),
and on one whose marked mistakes it must report (tests/typing_user/mistakes.py): a misspelt
name, a decorated subscriber's result misused, a signal receiver with the wrong keywords."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

import wsbridge

from conftest import documentation_files

ROOT = Path(__file__).resolve().parent.parent
USER = Path(__file__).resolve().parent / "typing_user"
PREAMBLE = '''from typing import Any
import wsbridge
url = "ws://127.0.0.1:8765/"  # what the README's fragments take as defined
auth: Any = None
'''
"""Put before each README example: the fragments use ``wsbridge``, ``url`` and ``auth`` as given."""
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$", re.M)


def readme_examples() -> List[str]:
    """Every ```python block of the README and the docs, dedented (some sit in a bullet list)."""
    return [textwrap.dedent(block) for path in documentation_files()
            for block in re.findall(r"^ *```python\n(.*?)^ *```", path.read_text(encoding="utf-8"), re.S | re.M)]


def mypy_strict(files: List[Path], cwd: Path) -> Tuple[int, str]:
    """Run ``mypy --strict`` as a user would (no project config; wsbridge found on the path)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = cwd / "mypy.ini"
    config.write_text("[mypy]\n", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--show-error-codes",
         "--config-file", str(config), "--cache-dir", str(cwd / ".mypy_cache"), *map(str, files)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )
    return result.returncode, result.stdout + result.stderr


def test_every_readme_example_is_found() -> None:
    examples = readme_examples()
    assert len(examples) >= 5, examples
    assert any("@client.on(" in code for code in examples)


@pytest.mark.timeout(300)
def test_user_scripts_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for index, code in enumerate(readme_examples()):
        path = tmp_path / f"readme_example_{index}.py"
        path.write_text(PREAMBLE + code, encoding="utf-8")
        files.append(path)
    files.append(USER / "every_name.py")
    status, output = mypy_strict(files, tmp_path)
    assert status == 0, output


def test_the_script_uses_every_public_name() -> None:
    text = (USER / "every_name.py").read_text(encoding="utf-8")
    used = set(re.findall(r"\bwsbridge\.(\w+)", text))
    assert set(wsbridge.__all__) - used == set()


@pytest.mark.timeout(300)
def test_mypy_strict_reports_the_marked_mistakes(tmp_path: Path) -> None:
    script = USER / "mistakes.py"
    expected: Dict[int, Set[str]] = {}
    for number, line in enumerate(script.read_text(encoding="utf-8").splitlines(), 1):
        mark = re.search(r"# E: ([a-z-]+)$", line)
        if mark:
            expected[number] = {mark.group(1)}
    status, output = mypy_strict([script], tmp_path)
    found: Dict[int, Set[str]] = {}
    for match in ERROR.finditer(output):
        found.setdefault(int(match.group("line")), set()).add(match.group("code"))
    assert status == 1, output
    assert found == expected, output


def test_state_and_the_lazy_names_at_run_time() -> None:
    """What the types promise exists: `wsbridge.State` is the client's state, the lazy names resolve."""
    assert wsbridge.State is type(wsbridge.Client("ws://127.0.0.1:9/").state)
    assert wsbridge.SQLiteStore.__name__ == "SQLiteStore"
    with pytest.raises(AttributeError, match="Stat"):
        _ = wsbridge.Stat  # type: ignore[attr-defined]  # the misspelt name this test is about
