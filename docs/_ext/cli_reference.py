"""``.. cli-reference:: MODULE:FUNCTION``: the command-line reference, generated from the
argparse parser that FUNCTION builds: a section per command with its one-line help and its
``--help`` exactly as the terminal prints it (descriptions, options, examples, exit codes).
``.. cli-synopsis:: MODULE:FUNCTION``: every command's usage line, in one block.

The help text is argparse's own, so it can never drift from what the program accepts;
it is rendered verbatim because it is written for a terminal, not as reStructuredText."""

from __future__ import annotations

import argparse
import importlib
import os
from typing import Any, Iterator, List, Tuple

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

WIDTH = "100"  # columns argparse wraps at (it reads COLUMNS), so the page does not depend on the terminal


def commands(parser: argparse.ArgumentParser) -> Iterator[Tuple[str, str, argparse.ArgumentParser]]:
    """(full name, one-line help, parser) of the program and of each subcommand, in order, recursively."""
    yield parser.prog, parser.description or "", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                for full, summary, parser_ in commands(sub):
                    yield full, (summary if parser_ is not sub else helps.get(name, "")), parser_


def help_text(parser: argparse.ArgumentParser, usage_only: bool = False) -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_usage() if usage_only else parser.format_help()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def build(target: str) -> argparse.ArgumentParser:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)()


class CliSynopsis(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> List[nodes.Node]:
        parser = build(self.arguments[0])
        prefix = "usage: "
        lines = []
        for _, _, sub in commands(parser):
            if sub is not parser:  # argparse indents continuation lines under the text after "usage: "
                first, *rest = help_text(sub, usage_only=True).rstrip("\n").splitlines()
                lines += [first.removeprefix(prefix)] + [line.removeprefix(" " * len(prefix)) for line in rest]
        block = nodes.literal_block(text="\n".join(lines))
        block["language"] = "text"
        return [block]


class CliReference(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self) -> List[nodes.Node]:
        parser = build(self.arguments[0])
        sections: List[nodes.Node] = []
        for full, summary, sub in commands(parser):
            section = nodes.section(ids=[nodes.make_id(f"cli {full}")], names=[nodes.fully_normalize_name(full)])
            section += nodes.title(full, "", nodes.literal(full, full))
            if summary and sub is not parser:
                section += nodes.paragraph(summary, summary)
            block = nodes.literal_block(text=help_text(sub).rstrip("\n"))
            block["language"] = "text"
            section += block
            self.state.document.note_implicit_target(section)
            sections.append(section)
        return sections


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("cli-reference", CliReference)
    app.add_directive("cli-synopsis", CliSynopsis)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
