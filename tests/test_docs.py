"""The documentation site (docs/) builds with Sphinx with warnings as errors, as CI builds it, and
its generated references are whole: every public name has its entry in the API reference, and
every command's ``--help`` (what the program itself prints) is in the CLI reference. The README
stays a first-hour page whose links lead somewhere, and every benchmark script is documented."""

from __future__ import annotations

import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wsbridge
import wsbridge.testing
import wsbridge.views
from wsbridge.cli import build_parser

from conftest import ROOT


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(ROOT / "docs"), str(out / "html")],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ERROR" not in result.stderr and "WARNING" not in result.stderr, result.stderr
    return out / "html"


def page_text(path: Path) -> str:
    """A page's text as a reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8"))).split())


@pytest.mark.timeout(300)
def test_the_site_builds_without_a_warning(site: Path) -> None:
    for page in ("index", "cli", "benchmarks", "conformance", "security", "api/index", "guide/delivery"):
        assert (site / f"{page}.html").is_file(), page


@pytest.mark.timeout(300)
def test_the_api_reference_has_an_entry_for_every_public_name(site: Path) -> None:
    ids = set()
    for page in (site / "api").glob("*.html"):
        ids.update(re.findall(r'<dt class="sig[^"]*" id="([\w.]+)"', page.read_text(encoding="utf-8")))
    missing = [f"{prefix}.{name}"
               for module, prefix in ((wsbridge, "wsbridge"), (wsbridge.views, "wsbridge.views"),
                                      (wsbridge.testing, "wsbridge.testing"))
               for name in module.__all__ if f"{prefix}.{name}" not in ids]
    assert missing == []
    # and the client's whole public surface, method by method
    public = [name for name in vars(wsbridge.Client) if not name.startswith("_")]
    assert [name for name in public if f"wsbridge.Client.{name}" not in ids] == []


@pytest.mark.timeout(300)
def test_the_cli_reference_holds_every_commands_help_as_the_program_prints_it(site: Path) -> None:
    page = page_text(site / "cli.html")
    parser = build_parser()
    names = list(parser._subparsers._group_actions[0].choices) if parser._subparsers else []
    assert {"listen", "connect", "send", "serve", "history", "replay", "bridge", "consume", "demo"} <= set(names)
    env = {**os.environ, "COLUMNS": "100"}
    for command in [[], *[[name] for name in names]]:
        result = subprocess.run([sys.executable, "-m", "wsbridge", *command, "--help"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        printed = " ".join(result.stdout.split())
        assert printed in page, f"`wsbridge {' '.join(command)} --help` is not in docs/cli.md's reference"


def test_the_readme_is_a_first_hour_page_whose_links_lead_somewhere() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "the README keeps to what a first hour needs; the rest goes in docs/"
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert links
    for target in links:
        if not re.match(r"[a-z]+://", target):
            assert (ROOT / target).exists(), target


def test_every_benchmark_script_is_documented() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    helpers = {"feedserver.py", "blaster.py"}  # servers the benchmarks start, not benchmarks
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in helpers)
    assert [name for name in scripts if f"benchmarks/{name}" not in page] == []
