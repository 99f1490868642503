"""The import graph of the project's packages has no circles.

Every module of ``rlm_wificore`` and ``batch_writer`` is parsed with :mod:`ast` (nothing
is imported), and each import of one of those packages is an edge: top-level imports,
imports inside functions (they run later, but a circle through them is still a circle
of dependencies), and imports under ``if TYPE_CHECKING:`` too. Those never run, so
they cannot fail at import time; they are counted anyway because a circle of types is
the same tangle of responsibilities (engine.py and background.py each knowing the
other was one). A room that needs to type what it is handed and would close a circle
names the few methods it uses in a ``typing.Protocol`` of its own instead.

An import of ``pkg.mod`` is an edge to ``pkg.mod`` only, not to ``pkg/__init__.py``
(both packages' ``__init__`` import nothing of their own).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rlm_wificore", "batch_writer")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of PACKAGES under ``root``, by dotted name."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path, root)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that module ``name`` (at ``path``) imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` mod.
            targets = [source] + [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            # `import a.b.c` runs a.b.c; keep the longest prefix that is one of ours.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target not in PACKAGES:
                found.add(target)
    return found


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


class TestImportGraph:
    def test_no_import_circles(self):
        """No module of rlm_wificore or batch_writer reaches itself through its imports."""
        edges = graph()
        assert "rlm_wificore.engine" in edges and "batch_writer.worker" in edges
        assert cycles(edges) == [], "import circles: " + "; ".join(
            " <-> ".join(c) for c in cycles(edges))

    def test_the_checker_sees_every_kind_of_import(self, tmp_path):
        """Relative, absolute, function-level and TYPE_CHECKING imports all make edges,
        so a circle through any of them is reported."""
        pkg = tmp_path / "rlm_wificore"
        pkg.mkdir()
        (tmp_path / "batch_writer").mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "a.py").write_text("def f():\n    from .b import g\n")
        (pkg / "b.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from rlm_wificore import c\n")
        (pkg / "c.py").write_text("import rlm_wificore.a\n")
        (pkg / "d.py").write_text("from . import a\n")
        edges = graph(tmp_path)
        assert edges["rlm_wificore.a"] == {"rlm_wificore.b"}
        assert edges["rlm_wificore.d"] == {"rlm_wificore.a"}
        assert cycles(edges) == [["rlm_wificore.a", "rlm_wificore.b", "rlm_wificore.c"]]

    def test_background_threads_know_no_engine(self):
        """background.py (threads only) imports neither the engine nor hooks, even for types."""
        edges = graph()
        assert not edges["rlm_wificore.background"] & {"rlm_wificore.engine", "rlm_wificore.hooks"}
