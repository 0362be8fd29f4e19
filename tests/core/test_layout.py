"""The layout by role, checked on the source (no import runs): the top level holds the core, no module imports
another's private names, module-level imports run in no circle, the results format needs neither the engine nor
torch, the methods table stays pure data, and only the command line prints."""

from __future__ import annotations

import ast
from pathlib import Path

import tqstar

PACKAGE = Path(tqstar.__file__).parent
CORE = {"__init__", "_checks", "_files", "_http", "_schema", "blocks", "config", "decoder", "engine", "errors", "methods",
        "params", "prompts", "randomness", "state", "tail", "text", "trajectory"}


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__``'s)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("tqstar", *path.relative_to(PACKAGE).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def module_imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of each import that runs when the module is imported: module level, not under
    ``if TYPE_CHECKING:``; relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(body) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.extend((alias.name, []) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[:len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                found.append((base, [alias.name for alias in node.names]))

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the tqstar modules (and outside top-level packages) its import runs, submodules included; a
    module's own ancestor packages are left out (importing a submodule always runs them first)."""
    mods = modules()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        out = set()
        for target, names in module_imports(name, path):
            out.add(target if target.startswith("tqstar") else target.split(".")[0])
            out.update(f"{target}.{n}" for n in names if f"{target}.{n}" in mods)
        edges[name] = {t for t in out if not name.startswith(t + ".") and t != name}
    return edges


def test_the_top_level_holds_the_core_only():
    assert {p.stem for p in PACKAGE.glob("*.py")} == CORE


def test_no_module_imports_another_modules_private_names():
    offenders = [f"{name}: from {target} import {n}" for name, path in modules().items()
                 for target, names in module_imports(name, path) if target.startswith("tqstar")
                 for n in names if n.startswith("_")]
    assert not offenders


def test_module_level_imports_run_in_no_circle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt in edges and not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in edges:
        if not state.get(node):
            visit(node, [node])


def reach(start: str) -> set[str]:
    edges, seen, todo = graph(), set(), [start]
    while todo:
        node = todo.pop()
        for nxt in edges.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_results_format_needs_neither_the_engine_nor_torch():
    """tqstar.eval.results, and the report that reads files with it, import nothing that loads models. (Importing
    any tqstar module runs tqstar/__init__ first, which does: this is about the modules' own dependencies.)"""
    for start in ("tqstar.eval.results", "tqstar.eval.report", "tqstar.params", "tqstar.methods"):
        assert not reach(start) & {"torch", "transformers", "tqstar.engine", "tqstar.decoder"}, start


def test_the_methods_table_is_pure_data():
    assert reach("tqstar.methods") <= {"__future__", "dataclasses", "typing"}
    assert "tqstar.value" not in reach("tqstar.params")


def test_only_the_command_line_prints():
    printing = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in PACKAGE.rglob("*.py")
                if path.relative_to(PACKAGE).parts[0] != "cli"
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"]
    assert not printing, "library code logs (logging.getLogger('tqstar')); only tqstar.cli prints"
