"""The package's shape, checked from its source with ``ast``: its folders are layers that
import only downwards, no import cycles, view models that do not import their renderers,
and every exception class in errors.py."""

from __future__ import annotations

import ast
import builtins
import importlib
import itertools
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

import wsbridge

PACKAGE = Path(wsbridge.__file__).resolve().parent
RENDERERS = {"wsbridge.views.terminal", "wsbridge.views.jupyter"}
"""The view renderers; every other module under wsbridge.views but the package is a view model."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: Dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES: Dict[str, ast.Module] = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in MODULES.items()}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str) -> Iterator[Tuple[str, int]]:
    """The package's modules that ``name`` imports, with the line: anywhere in the file
    (top level, functions, ``if TYPE_CHECKING:`` blocks, ``try:``)."""
    package = name if is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
                if f"{source}.{alias.name}" in MODULES:
                    yield f"{source}.{alias.name}", node.lineno
                elif source in MODULES:
                    yield source, node.lineno


def import_graph() -> Dict[str, Dict[str, int]]:
    """module -> {imported module: first line}."""
    graph: Dict[str, Dict[str, int]] = {name: {} for name in MODULES}
    for name in MODULES:
        for target, line in imports(name):
            if target != name:
                graph[name].setdefault(target, line)
    return graph


def path_between(graph: Dict[str, Dict[str, int]], start: str, goal: str,
                 within: Optional[Set[str]] = None) -> Optional[List[str]]:
    """A shortest import path from ``start`` to ``goal`` (breadth first), or None."""
    previous: Dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if within is not None and target not in within:
                    continue
                if target == goal:
                    path = [goal, node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return path[::-1]
                if target not in previous and target != start:
                    previous[target] = node
                    following.append(target)
        frontier = following
    return None


def strongly_connected(graph: Dict[str, Dict[str, int]]) -> List[Set[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[Set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def show(graph: Dict[str, Dict[str, int]], path: List[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(path)) + f" -> {path[-1]}"


def test_graph_sees_the_imports() -> None:
    """The walker finds imports of every form (so the tests below can fail)."""
    graph = import_graph()
    assert "wsbridge.client" in graph["wsbridge"]  # from .client import Client (package __init__)
    assert "wsbridge.message" in graph["wsbridge.views.base"]  # from ..message import Message
    assert "wsbridge.views.base" in graph["wsbridge.views.jupyter"]  # a renderer imports its model
    assert "wsbridge.redis.conn" in graph["wsbridge.cli.common"]  # an import inside a function
    assert "wsbridge.client" in graph["wsbridge.views.chat"]  # an import under TYPE_CHECKING
    cycle = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert strongly_connected(cycle) == [{"a", "b", "c"}]
    assert path_between(cycle, "a", "a") == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = []
    for component in strongly_connected(graph):
        start = min(component)
        path = path_between(graph, start, start, within=component)
        assert path is not None
        cycles.append(f"{sorted(component)}: {show(graph, path)}")
    assert not cycles, "modules of wsbridge import each other in a cycle:\n" + "\n".join(cycles)


LAYERS: List[Tuple[str, ...]] = [
    ("wsbridge.errors", "wsbridge.message", "wsbridge.redact"),  # the shared vocabulary
    ("wsbridge.codecs",),                                          # pure wire formats
    ("wsbridge.wire", "wsbridge.tracking"),                       # bytes and sockets; what is kept and counted
    ("wsbridge.runtime",),                                         # the threads and their hand-offs
    ("wsbridge.client", "wsbridge.presets"),                       # the facade
    ("wsbridge", "wsbridge.redis", "wsbridge.views"),              # the package's names; built on the facade
    ("wsbridge.testing",),                                         # servers for tests and the demo
    ("wsbridge.demo",),
    ("wsbridge.cli",),
    ("wsbridge.__main__",),
]
"""Layers from the bottom up, each a tuple of folders or modules. A module imports only from
its own folder (or module) and from lower layers: never upwards, and never sideways into
another folder of its layer (the wire and tracking know nothing of each other)."""


def home(name: str) -> Tuple[int, str]:
    """The layer and the folder (or top-level module) that ``name`` belongs to: the longest
    entry of `LAYERS` that is ``name`` or a package above it."""
    found = [(len(entry), rank, entry) for rank, layer in enumerate(LAYERS) for entry in layer
             if name == entry or name.startswith(entry + ".")]
    assert found, f"{name} is in no layer of tests/test_structure.py's LAYERS: give it one"
    _, rank, entry = max(found)
    return rank, entry


def layering_violations(graph: Dict[str, Dict[str, int]]) -> List[str]:
    found = []
    for name in sorted(graph):
        rank, folder = home(name)
        for target, line in sorted(graph[name].items()):
            target_rank, target_folder = home(target)
            if target_rank > rank or (target_rank == rank and target_folder != folder):
                found.append(f"{name} (line {line}) imports {target}: {folder} may not import from {target_folder}")
    return found


TYPING_ONLY_SIDEWAYS = {("wsbridge", "wsbridge.redis")}
"""Sideways imports allowed under ``if TYPE_CHECKING:`` only, as (module, folder). The package's
names include the Redis classes, imported on first use (its ``__getattr__``) so that ``import
wsbridge`` never loads the ``redis`` extra; type checkers must see them as the classes they are
(and a misspelt name as an error), which only an import can say. Such an import never runs: it
adds no dependency at run time. Cycles still count it; every other import is layered as it is."""


def type_checking_lines(name: str) -> Set[int]:
    """The lines of the imports of ``name`` under ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    lines: Set[int] = set()
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            lines.update(inner.lineno for part in node.body for inner in ast.walk(part)
                         if isinstance(inner, (ast.Import, ast.ImportFrom)))
    return lines


def layered_graph() -> Dict[str, Dict[str, int]]:
    """`import_graph` without the imports `TYPING_ONLY_SIDEWAYS` allows."""
    graph = import_graph()
    for name, folder in TYPING_ONLY_SIDEWAYS:
        checking = type_checking_lines(name)
        runtime = {target for target, line in imports(name) if line not in checking}
        graph[name] = {target: line for target, line in graph[name].items()
                       if home(target)[1] != folder or target in runtime}
    return graph


def test_folders_are_layers() -> None:
    violations = layering_violations(layered_graph())
    assert not violations, "an import runs upwards or sideways between the package's layers:\n" + "\n".join(violations)


def test_only_type_checking_imports_are_excused() -> None:
    """The exemption covers the typing-only imports of the Redis classes, and nothing at run time."""
    assert "wsbridge.redis.store" in import_graph()["wsbridge"]  # seen by the walker...
    assert "wsbridge.redis.store" not in layered_graph()["wsbridge"]  # ...and excused, being TYPE_CHECKING-only
    assert not any(home(target)[1] == "wsbridge.redis" for target, line in imports("wsbridge")
                   if line not in type_checking_lines("wsbridge"))


def test_layering_check_sees_violations() -> None:
    """The check fails on an upward and a sideways import (so the test above can fail), and
    every folder the issue names is where it belongs."""
    upward = {"wsbridge.wire.reader": {"wsbridge.runtime.supervisor": 3}, "wsbridge.runtime.supervisor": {}}
    sideways = {"wsbridge.tracking.store": {"wsbridge.wire.dial": 7}, "wsbridge.wire.dial": {}}
    assert layering_violations(upward) == [
        "wsbridge.wire.reader (line 3) imports wsbridge.runtime.supervisor: wsbridge.wire may not import from wsbridge.runtime"]
    assert len(layering_violations(sideways)) == 1
    assert layering_violations({"wsbridge.client": {"wsbridge.runtime.pull": 1, "wsbridge.codecs.json": 2}}) == []
    for folder in ("wire", "runtime", "tracking", "codecs", "redis", "views", "cli", "testing"):
        assert is_package(f"wsbridge.{folder}"), folder
    assert {"wsbridge.wire.frames", "wsbridge.runtime.supervisor", "wsbridge.tracking.store",
            "wsbridge.codecs.json", "wsbridge.redis.bridge"} <= set(MODULES)


def test_view_models_do_not_import_renderers() -> None:
    graph = import_graph()
    models = [name for name in MODULES if name.startswith("wsbridge.views.") and name not in RENDERERS]
    assert {"wsbridge.views.base", "wsbridge.views.chat", "wsbridge.views.document"} <= set(models)
    found = []
    for model in models:
        for renderer in sorted(RENDERERS):
            path = path_between(graph, model, renderer)
            if path is not None:
                found.append(show(graph, path))
    assert not found, "view models reach their renderers (renderers import models, not the other way round):\n" + "\n".join(found)


EXCEPTION_NAME = re.compile(r"(Error|Exception|Exit|Interrupt|Warning)$")


def base_is_exception(base: ast.expr, namespace: Dict[str, object]) -> bool:
    """Whether a class's base is an exception: evaluated in the module's namespace
    (builtins, imports, the module's own classes); a base that cannot be evaluated
    there (a name local to a function) is judged by its name."""
    try:
        value = eval(compile(ast.Expression(base), "<base>", "eval"), {"__builtins__": builtins, **namespace})
    except Exception:
        text = ast.unparse(base)
        return bool(EXCEPTION_NAME.search(text.rpartition(".")[2]))
    return isinstance(value, type) and issubclass(value, BaseException)


def namespace_of(name: str) -> Dict[str, object]:
    if name.endswith("__main__"):  # running it runs the command line
        return {}
    try:
        return vars(importlib.import_module(name))
    except ImportError:  # an optional extra is missing: builtins and names only
        return {}


def test_every_exception_is_defined_in_errors() -> None:
    defined = []
    for name, tree in TREES.items():
        if name == "wsbridge.errors":
            continue
        namespace = namespace_of(name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(base_is_exception(base, namespace) for base in node.bases):
                defined.append(f"{MODULES[name].relative_to(PACKAGE.parent)}:{node.lineno}: {node.name}")
    assert not defined, ("exception classes outside wsbridge/errors.py (define them there, re-export where needed):\n"
                         + "\n".join(defined))


@pytest.mark.parametrize("source", ["class Oops(ValueError): pass", "class Oops(errors.WsbridgeError): pass",
                                    "def f():\n    class Oops(LocalError): pass"])
def test_exception_check_sees_exceptions(source: str) -> None:
    from wsbridge import errors

    [node] = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]
    assert any(base_is_exception(base, {"errors": errors}) for base in node.bases)
    assert not base_is_exception(ast.parse("object", mode="eval").body, {})


def test_old_homes_of_the_exceptions_still_work() -> None:
    from wsbridge import errors
    from wsbridge.cli import common
    from wsbridge.redis import store as redis_store
    from wsbridge.tracking import store
    from wsbridge.views import document

    assert store.StoreError is errors.StoreError is wsbridge.StoreError
    assert redis_store.LeaseLost is errors.LeaseLost is wsbridge.LeaseLost
    assert document.PatchError is errors.PatchError
    assert common.CliError is errors.CliError and errors.CliError("x").code == common.EXIT_FAILURE
    for name in ("REDIS_ERRORS", "connect", "feed_key", "load_redis"):  # live in redis.conn, still importable here
        assert getattr(redis_store, name) is getattr(importlib.import_module("wsbridge.redis.conn"), name)
