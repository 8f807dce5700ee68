"""The layout's rules, checked from the source: imports point one way, and functions stay short."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "trainlab"
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path) -> set[str]:
    """trainlab modules that ``name`` imports anywhere (functions included), except under ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_of_sees_function_level_imports_and_skips_type_checking_ones():
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    # runs.py imports the trainer inside train() and Trainer only for type checking: the first counts.
    assert "trainlab.trainer" in graph["trainlab.runs"]
    assert "trainlab.runs" not in graph["trainlab.trainer"]


def test_no_import_cycle_in_trainlab():
    graph = {name: imports_of(name, path) for name, path in MODULES.items()}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def long_functions(modules: dict[str, Path]) -> list[str]:
    out = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(f"{name}.{node.name} ({length} lines)")
    return out


def test_long_functions_counts_a_function_from_def_to_last_line(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    (tmp_path / "ok.py").write_text(f"def fits():\n{body}\n")
    (tmp_path / "long.py").write_text(f"def too_long():\n{body}\n    return x0\n")
    assert long_functions({"ok": tmp_path / "ok.py", "long": tmp_path / "long.py"}) == [
        f"long.too_long ({MAX_FUNCTION_LINES + 1} lines)"]


def test_no_function_is_longer_than_the_limit():
    assert long_functions(MODULES) == []


def test_the_package_lists_and_resolves_every_public_name():
    import trainlab

    import importlib

    names = dir(trainlab)
    assert set(trainlab.__all__) <= set(names)
    for name, module in trainlab._EXPORTS.items():  # each public name is the object its module defines
        assert getattr(trainlab, name) is getattr(importlib.import_module(module), name), name
    assert trainlab.OPTIMIZERS.kind == "optimizer" and "adamw" in trainlab.OPTIMIZERS
