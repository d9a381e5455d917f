"""The package's modules import one another without cycles, and every one of them imports.

The graph is read from the source with `ast`, counting imports inside functions too: a lazy
import that closes a circle still ties the two modules into one (neither can be understood, tested
or moved without the other), and it breaks at import time as soon as someone hoists it.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node_server", "bridges")


def module_files() -> dict[str, Path]:
    """Every module of the packages, by dotted name (a package by its own name, for `__init__.py`)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The dotted name a relative `from` import (`level` dots) in `module` refers to."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]  # a module's relative imports start at its package
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its source (module level, functions,
    `try` blocks, `TYPE_CHECKING` blocks alike). `from X import Y` is an import of `X.Y` when that is
    a module, else of `X`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = node.module if not node.level else _absolute(module, is_package, node.level, node.module)
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a name inside a module
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: imports_of(m, p, set(files)) for m, p in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan), each as a sorted
    list; a module importing itself is skipped by `imports_of`."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_reader_finds_lazy_relative_imports_and_cycles(tmp_path):
    """The reader itself: imports inside functions and `try` blocks, relative ones one and two
    levels up, `from package import module`, and `import a.b` of a module are all edges."""
    source = tmp_path / "b.py"
    source.write_text(
        "import os\n"
        "from . import c\n"
        "def f():\n"
        "    from ..q import x\n"
        "    from .d import name\n"
        "try:\n"
        "    import p.e.inner\n"
        "except ImportError:\n"
        "    pass\n"
    )
    modules = {"p", "p.s", "p.s.b", "p.s.c", "p.s.d", "p.q", "p.e"}
    assert imports_of("p.s.b", source, modules) == {"p.s.c", "p.q", "p.s.d", "p.e"}
    assert find_cycles({"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}) == [["p.a", "p.b", "p.c"]]
    assert find_cycles({"p.a": {"p.b"}, "p.b": set()}) == []
    files = module_files()
    assert {"node_server", "node_server.engine.params", "bridges", "bridges.zmq_server"} <= set(files)


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles between modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_engine_imports_run_one_way():
    """`engine/`: the factory picks a family, a family folder builds on the shared modules, and
    the shared modules (and the LLLite adapter, which both families take) import no family."""
    graph = import_graph()
    families = ("node_server.engine.dreamlite", "node_server.engine.sd")

    def family_of(module: str):
        return next((f for f in families if module == f or module.startswith(f + ".")), None)

    wrong = []
    for module, targets in graph.items():
        if not module.startswith("node_server.engine") or module == "node_server.engine.factory":
            continue
        for target in targets:
            if family_of(target) not in (None, family_of(module)):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the engine's layering:\n" + "\n".join(sorted(wrong))


@pytest.mark.parametrize("module", sorted(m for m in module_files() if not m.endswith(".__main__")))
def test_every_module_imports(module):
    """Each module imports (a stale path after a move fails here); optional platform libraries
    (Spout, NDI) are imported lazily by design. `__main__` runs the command line, so it is only read."""
    importlib.import_module(module)
