"""The package's import graph: one way up, the command line on top.

Read from the source with ``ast`` (nothing is imported), so the test also sees imports that
only run inside functions. Rules:

- no cycle between augreg_nb's modules, counting function-local imports too;
- only ``augreg_nb.cli`` (the top floor) imports argparse; nothing below it imports the cli;
- no ``__import__`` calls: a module that needs a sibling imports it;
- the product never imports ``augreg_nb.testing`` (the fakes the tests write): fake
  checkpoints are the ``fake:`` source, the digits an ordinary task, and smoke mode's
  loopback bucket lives in ``augreg_nb.loopback``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "augreg_nb"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The augreg_nb module that ``name`` (a module or an object in one) lives in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            parts = module.split(".")
            if MODULES[module].name != "__init__.py":
                parts = parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, base] if base else parts)
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    owners = {_owner(n) for n in names}
    # Importing augreg_nb.widgets.common runs augreg_nb/widgets/__init__.py first.
    parents = {".".join(o.split(".")[:i]) for o in owners if o
               for i in range(2, len(o.split(".")))}
    return {o for o in owners | parents if o and o != module}


def _walk_imports():
    """(module, ast node) for every import and call in the package."""
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            yield module, node


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, node in _walk_imports():
        if isinstance(node, ast.Import | ast.ImportFrom):
            # A submodule runs its own packages' __init__ by construction: those edges are
            # no dependency (a package importing its submodules is one, and is kept).
            graph[module] |= {d for d in _imported(module, node)
                              if not module.startswith(d + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_import_graph_has_no_cycle():
    graph = _graph()
    assert graph["augreg_nb.sweep"] >= {"augreg_nb.train"}  # the graph sees real edges
    assert _cycles(graph) == []


def test_only_the_command_line_parses_arguments():
    users = set()
    for module, node in _walk_imports():
        if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
            users.add(module)
        if isinstance(node, ast.ImportFrom) and node.module == "argparse":
            users.add(module)
    assert users, "argparse is not used at all: the cli moved? update this test"
    below = sorted(m for m in users if m != "augreg_nb.cli" and not m.startswith("augreg_nb.cli."))
    assert below == [], f"modules below augreg_nb.cli import argparse: {below}"


def test_nothing_below_the_command_line_imports_it():
    graph = _graph()
    importers = sorted(m for m, deps in graph.items()
                       if not m.startswith("augreg_nb.cli") and m != "augreg_nb.__main__"
                       and any(d == "augreg_nb.cli" or d.startswith("augreg_nb.cli.")
                               for d in deps))
    assert importers == []


def test_the_product_never_imports_the_test_fakes():
    graph = _graph()
    assert graph["augreg_nb.testing.checkpoints"]  # the graph sees the package's own edges
    importers = sorted(m for m, deps in graph.items()
                       if not m.startswith("augreg_nb.testing")
                       and any(d == "augreg_nb.testing" or d.startswith("augreg_nb.testing.")
                               for d in deps))
    assert importers == [], f"modules of the product import augreg_nb.testing: {importers}"


def test_no_dunder_import_calls():
    calls = sorted({module for module, node in _walk_imports()
                    if isinstance(node, ast.Call) and getattr(node.func, "id", None)
                    == "__import__"})
    assert calls == []


def test_building_the_command_line_loads_no_domain_module():
    """``augreg-nb --help`` stays fast: handlers import what they drive when they run."""
    import subprocess
    import sys

    code = ("import sys; from augreg_nb.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('jax', 'pandas', 'tensorflow', 'augreg_nb.train', "
            "'augreg_nb.index') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
