"""Issue 26, point 1: the distribution builds under its own name; the wheel carries the package with its
type marker and license and nothing else, the sdist also the docs and tests (the documentation site builds
from it), and `twine check` accepts both archives."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_the_wheel_and_the_sdist_build_and_pass_twine_check(tmp_path):
    pytest.importorskip("build")
    pytest.importorskip("twine")
    # From a copy of what the checkout tracks (setuptools writes build/ and egg-info beside the sources), so
    # that a setup.cfg or MANIFEST.in that let tests/ or docs/ into the wheel would show here; with no
    # isolation: the build uses this environment's setuptools and wheel (the test extra), offline.
    source = tmp_path / "source"
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                           capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    assert re.match(r"wsbridge[-_]sync-", wheel.name) and re.match(r"wsbridge[-_]sync-", sdist.name), (wheel, sdist)
    names = zipfile.ZipFile(wheel).namelist()
    assert "wsbridge/py.typed" in names
    assert [n for n in names if not n.startswith(("wsbridge/", "wsbridge_sync-"))] == [], "the wheel carries only the package"
    package = {name for name in tracked_files() if name.startswith("wsbridge/")}
    assert sorted(package - set(names)) == [], "the wheel carries the whole package (every module and py.typed)"
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Name: wsbridge-sync" in metadata and "Requires-Dist: websocket-client" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names), names
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # The sdist builds the documentation site as the checkout does (a packager's docs build), with warnings as errors.
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
        top = members[0].split("/")[0]
        for needed in ("wsbridge/py.typed", "LICENSE", "SECURITY.md", "docs/conf.py", "docs/_ext/cli_reference.py",
                       "docs/index.md", "tests/conftest.py", "samples/chat_pull.py", "benchmarks/receive.py",
                       "conformance/autobahn.sh"):
            assert f"{top}/{needed}" in members, needed
        archive.extractall(tmp_path / "unpacked", filter="data")
    unpacked = tmp_path / "unpacked" / top
    docs = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), str(unpacked / "docs"), str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=240)
    assert docs.returncode == 0, docs.stdout + docs.stderr


def tracked_files() -> List[str]:
    """The checkout's files as git sees them, tracked or new but not ignored (CI runs on a clean clone);
    without git, what is on disk minus what builds and tools leave."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, timeout=60)
        if listed.returncode == 0:
            return [name for name in listed.stdout.decode().split("\0") if name and (ROOT / name).is_file()]
    skip = {".git", ".venv", ".venv-min", "build", "dist", "__pycache__", "_build", ".pytest_cache", ".mypy_cache"}
    return [str(path.relative_to(ROOT)) for path in ROOT.rglob("*")
            if path.is_file() and not (set(path.relative_to(ROOT).parts) & skip)
            and not any(part.endswith(".egg-info") for part in path.parts)]
