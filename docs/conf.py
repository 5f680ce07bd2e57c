"""Sphinx configuration of wsbridge's documentation site.

Build it with ``sphinx-build -W --keep-going docs docs/_build/html`` (``tests/test_docs.py``
does, with warnings as errors). The guide is Markdown (MyST), the API reference comes from the
docstrings (autodoc), the command-line reference from ``wsbridge.cli.build_parser``
(``docs/_ext/cli_reference.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout's wsbridge, whatever else is installed
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import wsbridge  # noqa: E402

project = "wsbridge"
author = "the wsbridge developers"
copyright = "2026, the wsbridge developers"  # noqa: A001
version = release = wsbridge.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "cli_reference",  # docs/_ext: the command-line reference from wsbridge.cli.build_parser
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
root_doc = "index"

# `name` in a docstring is code (docstrings are written for help() and editors as much as for the site).
default_role = "code"
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True}
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"wsbridge {release}"
html_show_sourcelink = False
