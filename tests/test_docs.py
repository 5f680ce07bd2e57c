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
from typing import List

import pytest

import wsbridge
import wsbridge.testing
import wsbridge.views
from wsbridge.cli import build_parser

from conftest import ROOT, documentation_files


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


PUBLIC = ((wsbridge, "wsbridge"), (wsbridge.views, "wsbridge.views"), (wsbridge.testing, "wsbridge.testing"))


def public_members(cls: type) -> List[str]:
    """What a user reaches on ``cls``: its public names and those of wsbridge's own bases (mixins such as
    `Subscribable` give `Client.on`), not those of the builtins or the standard library."""
    names = {name for klass in cls.__mro__ if klass.__module__.startswith("wsbridge")
             for name in vars(klass) if not name.startswith("_")}
    return sorted(names)


@pytest.mark.timeout(300)
def test_the_api_reference_has_an_entry_for_every_public_name_and_member(site: Path) -> None:
    ids = set()
    for page in (site / "api").glob("*.html"):
        ids.update(re.findall(r'<dt class="sig[^"]*" id="([\w.]+)"', page.read_text(encoding="utf-8")))
    missing = []
    for module, prefix in PUBLIC:
        for name in module.__all__:
            if f"{prefix}.{name}" not in ids:
                missing.append(f"{prefix}.{name}")
            value = getattr(module, name)
            if isinstance(value, type):
                missing += [f"{prefix}.{name}.{member}" for member in public_members(value)
                            if f"{prefix}.{name}.{member}" not in ids]
    assert missing == []
    assert "wsbridge.Client.on" in ids and "wsbridge.Client.messages" in ids  # from the mixins


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
        if command:  # and its usage line in the synopsis at the top, as well as in its --help
            usage = " ".join(result.stdout.split("\n\n", 1)[0].removeprefix("usage: ").split())
            assert page.count(usage) >= 2, usage


def slug(heading: str) -> str:
    """A heading's anchor as GitHub and MyST (``myst_heading_anchors``) make it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> List[str]:
    text = re.sub(r"^(```|~~~).*?^\1", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)  # no "#" of code
    return [slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)]


def test_the_readme_is_a_first_hour_page_whose_links_lead_somewhere() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200, "the README keeps to what a first hour needs; the rest goes in docs/"
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) >= 10
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target if target else readme
        assert path.exists(), link
        if anchor:
            assert anchor in anchors(path), f"{link}: no such heading in {path.name}"


def test_every_table_row_has_as_many_cells_as_its_header() -> None:
    """An unescaped ``|`` splits a cell even inside backticks (GitHub and MyST alike): a row that comes out
    with more cells than its header loses its last column."""
    for path in [*documentation_files(), ROOT / "SECURITY.md"]:
        header, fence = None, ""
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            marker = re.match(r"\s*(```|~~~)", line)
            if marker and (not fence or marker.group(1) == fence):
                fence = "" if fence else marker.group(1)  # a code block: its lines are not a table
                continue
            if fence or not line.startswith("|"):
                header = None
                continue
            cells = len(re.findall(r"(?<!\\)\|", line))
            if header is None:
                header = cells
            assert cells == header, f"{path.name}:{number}: {cells - 1} cells, its header {header - 1}"


def test_every_benchmark_script_is_documented() -> None:
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    helpers = {"feedserver.py", "blaster.py"}  # servers the benchmarks start, not benchmarks
    scripts = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name not in helpers)
    assert [name for name in scripts if f"benchmarks/{name}" not in page] == []


def wrong_install_lines(text: str) -> List[str]:
    """The install commands in ``text`` that name ``wsbridge`` (with or without extras) as a package: each
    command's words up to a backtick, a double quote or the end of the line. The README's own warning,
    "`pip install wsbridge` does not install this one", is what it says, not advice."""
    wrong = []
    word = r"""(?:"[^"\n]*"|'[^'\n]*'|[^\s`"']+)"""  # a quoted argument, or one up to a backtick or quote
    for match in re.finditer(rf"(?:\bpip3?|\buv pip|-m pip) install((?:[ \t]+{word})+)", text):
        if "does not install" in text[match.end():match.end() + 30]:
            continue
        words = [word.strip("'\"") for word in match.group(1).split()]
        if any(word == "wsbridge" or word.startswith("wsbridge[") for word in words):
            wrong.append(match.group(0))
    return wrong


def test_every_install_line_names_the_distribution() -> None:
    """PyPI's `wsbridge` is another project: an install hint that says `pip install 'wsbridge[...]'` (in an
    error message or a page) installs it. Every one names `wsbridge-sync`."""
    files = [*documentation_files(), ROOT / "SECURITY.md", *(ROOT / "wsbridge").rglob("*.py"),
             *(ROOT / "samples").rglob("*.py")]
    wrong = [f"{path.relative_to(ROOT)}: {line}" for path in files
             for line in wrong_install_lines(path.read_text(encoding="utf-8"))]
    assert wrong == []


@pytest.mark.parametrize("text,found", [
    ("`pip install wsbridge[views]`", True), ("python -m pip install wsbridge", True), ("pip3 install wsbridge\n", True),
    ("uv pip install wsbridge", True), ("pip install 'wsbridge[redis, msgpack]'", True), ('pip install "wsbridge[x]"', True),
    ("pip install -q -e '.[test]' wsbridge-sync", False), ("pip install 'wsbridge-sync[views]'", False),
    ("(`pip install wsbridge` does not install this one)", False), ("pip install wsbridgex", False),
])
def test_the_install_line_check_sees_the_usual_spellings(text: str, found: bool) -> None:
    assert bool(wrong_install_lines(text)) == found, text
