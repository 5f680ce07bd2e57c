"""Issue 26, point 1: the distribution builds under its own name, with its type marker and
without the tests, and `twine check` accepts both archives."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_wheel_and_the_sdist_build_and_pass_twine_check(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("twine")
    # From a copy of what a checkout holds (setuptools writes build/ and egg-info beside the sources),
    # with no isolation: the build uses this environment's setuptools and wheel (the test extra), offline.
    source = tmp_path / "source"
    shutil.copytree(ROOT / "wsbridge", source / "wsbridge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                           capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    assert re.match(r"wsbridge[-_]sync-", wheel.name) and re.match(r"wsbridge[-_]sync-", sdist.name), (wheel, sdist)
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsbridge/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "samples/", "benchmarks/"))], "the wheel carries only the package"
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: wsbridge-sync" in metadata and "Requires-Dist: websocket-client" in metadata
    assert any(n.endswith("/wsbridge/py.typed") for n in tarfile.open(sdist).getnames())
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
