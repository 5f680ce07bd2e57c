"""Sphinx configuration of wsbridge's documentation site.

Build it with ``sphinx-build -W --keep-going docs docs/_build/html`` (``tests/test_docs.py``
does, with warnings as errors). The guide is Markdown (MyST), the API reference comes from the
docstrings (autodoc), the command-line reference from ``wsbridge.cli.build_parser``
(``docs/_ext/cli_reference.py``)."""

from __future__ import annotations

import inspect
import re
import sys
import typing
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
# Members inherited from wsbridge's own mixins are part of a class's API (`Client.on` comes from
# `Subscribable`); those of the builtins and the standard library are not repeated.
autodoc_default_options = {
    "members": True,
    "undoc-members": True,
    "inherited-members": "object,BaseException,Exception,tuple,str,int,dict,Enum,Protocol,Generic",
}
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"wsbridge {release}"
html_show_sourcelink = False


MADE_FOR_YOU = {"wsbridge.Session", "wsbridge.Subscription", "wsbridge.SendHandle", "wsbridge.Stats",
                "wsbridge.PerMessageDeflate"}
"""Classes a user is handed (by a hook, `subscribe`, `send`, `stats`, `deflate`), never builds: their
constructors name internals, so the page shows none."""


def _signature(app, what, name, obj, options, signature, return_annotation):  # noqa: ANN001, ANN202
    """No constructor for a receiver protocol (its page shows ``__call__``, not ``(*args, **kwargs)``) nor for
    a class in `MADE_FOR_YOU`; a method with overloads shows them (``on``), not its implementation's signature."""
    if what == "class" and (getattr(obj, "_is_protocol", False) or name in MADE_FOR_YOU):
        return "", None
    if what == "method" and hasattr(typing, "get_overloads"):
        overloads = typing.get_overloads(inspect.unwrap(obj))
        if overloads:
            shown = []
            for overload in overloads:
                sig = inspect.signature(overload)
                sig = sig.replace(parameters=list(sig.parameters.values())[1:])  # without self
                shown.append(str(sig).replace("'", ""))
            # Sphinx 9 takes one signature from this event: the others go on lines of their own in the directive,
            # indented under the first and named as autodoc names it (the class-qualified name).
            dotted = name.split(".", 1)[1] if name.startswith("wsbridge.") else name
            indent = " " * len(".. py:method:: ")
            return f"\n{indent}{dotted}".join(shown), None
    return None


def _drop_builtin_docstring(app, what, name, obj, options, lines):  # noqa: ANN001, ANN202
    """Docstrings Python writes, which say nothing: "Call self as a function." (a protocol's ``__call__``) and
    "Alias for field number N" (a named tuple's field without a docstring of its own)."""
    text = [line.strip() for line in lines if line.strip()]
    if text == ["Call self as a function."] or (len(text) == 1 and re.fullmatch(r"Alias for field number \d+", text[0])):
        lines.clear()


def setup(app):  # noqa: ANN001, ANN201
    app.connect("autodoc-process-signature", _signature)
    app.connect("autodoc-process-docstring", _drop_builtin_docstring)
