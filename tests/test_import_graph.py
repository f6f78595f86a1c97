"""The package's import graph: no cycles, and the layers import only downwards.

Imports are read from the source (no module is run). An import under `if TYPE_CHECKING:` is
left out: it never runs. An import inside a function counts: it runs when the function does,
and a cycle hidden in a function is still a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import mongars_edge

_ROOT = Path(mongars_edge.__file__).resolve().parent
_PKG = "mongars_edge"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in _ROOT.rglob("*.py"):
        parts = [_PKG, *path.relative_to(_ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> Iterator[str]:
    """Modules `tree` imports when it runs (type-only imports left out)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_only(node):
            for other in node.orelse:
                yield from _imported(
                    ast.Module(body=[other], type_ignores=[]), name, is_package, modules
                )
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                here = here[: len(here) - (node.level - 1)]
                base = ".".join([*here, base] if base else here)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in modules else base
        else:
            yield from _imported(node, name, is_package, modules)


def _graph(*, type_only_too: bool = False) -> dict[str, set[str]]:
    """Each package module -> the package modules its import runs (parent packages included)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if type_only_too:
            targets = _all_imports(tree)
        else:
            targets = set(_imported(tree, name, path.name == "__init__.py", set(modules)))
        deps: set[str] = set()
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                ancestor = ".".join(parts[:i])
                # Importing a.b.c runs a/__init__ and a/b/__init__ first; a module's own
                # parents are already running when it is imported, so they are no edge.
                if ancestor in modules and not _within(name, ancestor):
                    deps.add(ancestor)
        graph[name] = deps
    return graph


def _all_imports(tree: ast.AST) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_package_has_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 50
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_a_type_only_import_is_no_edge_and_a_function_import_is_one() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from mongars_edge.mesh import service\n"
        "def f():\n    from mongars_edge.web import app\n"
    )
    found = set(_imported(tree, "mongars_edge.x", False, {"mongars_edge.web.app"}))
    assert "mongars_edge.web.app" in found
    assert not any(name.startswith("mongars_edge.mesh") for name in found)


def test_inference_knows_nothing_of_the_mesh() -> None:
    """Not even for types: the mesh builds on the engine, never the other way."""
    graph = _graph(type_only_too=True)
    leaks = {
        (name, dep)
        for name, deps in graph.items()
        if _within(name, f"{_PKG}.inference")
        for dep in deps
        if _within(dep, f"{_PKG}.mesh")
    }
    assert leaks == set()


def test_only_the_cli_imports_click() -> None:
    users = {
        name
        for name, path in _modules().items()
        if "click" in _all_imports(ast.parse(path.read_text(encoding="utf-8")))
    }
    assert users and all(_within(name, f"{_PKG}.cli") for name in users), users
