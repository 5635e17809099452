"""The package's import graph has no cycle (a module importing a sibling package's
``__init__`` counts) and no module imports another module's ``_private`` name; checked on the
source with ``ast``, so it stays that way as code is added."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[3] / "vlarl"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> tuple[set[str], list[tuple[str, str]]]:
    """(imported vlarl modules, [(module, private name)]) of one file, lazy imports included."""
    edges: set[str] = set()
    private: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vlarl":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in mods:
                    edges.add(sub)
                else:
                    edges.add(node.module)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((node.module, alias.name))
        elif isinstance(node, ast.Import):
            edges.update(a.name for a in node.names if a.name.split(".")[0] == "vlarl")
    return edges, private


def _graph():
    mods = _modules()
    graph, private = {}, {}
    for name, path in mods.items():
        edges, priv = _imports(path, mods)
        # a package importing its own submodules (its __init__ re-exporting them), and a
        # submodule's implied import of its parents, are how packages work: not edges
        graph[name] = {e for e in edges if e in mods and not e.startswith(name + ".")
                       and not name.startswith(e + ".")}
        private[name] = [p for p in priv if p[0] != name]
    return graph, private


def test_no_import_cycles():
    graph, _ = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append([*stack[stack.index(v):], v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert len(graph) > 40  # the walk saw the package


def test_no_module_imports_another_modules_private_names():
    _, private = _graph()
    bad = {m: p for m, p in private.items() if p}
    assert not bad, f"private names imported across modules: {bad}"


def test_modules_stay_small():
    """One idea per module: none grows past ~400 lines (split it by role instead)."""
    sizes = {str(p.relative_to(PKG.parent)): len(p.read_text().splitlines())
             for p in PKG.rglob("*.py")}
    assert len(sizes) > 40
    big = {p: n for p, n in sizes.items() if n > 410}
    assert not big, f"modules over 410 lines: {big}"
