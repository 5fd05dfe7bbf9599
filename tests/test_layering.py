"""Imports run one way, down the floors of the package, and no modules import each other in a circle.

Every import is counted: at module level and inside functions, absolute and relative. A module's
floor is that of its top-level package (or of itself for top-level modules); the package root
``hrmedseg/__init__.py`` (it only gathers the public names) and ``__main__`` have none.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import hrmedseg

SRC = Path(hrmedseg.__file__).parent

# Bottom to top: a module may import from its own floor and the floors below it, never above.
FLOORS: list[tuple[str, ...]] = [
    ("_version", "_optional", "atomic", "errors", "provenance", "compiling", "progress", "devices"),   # small standalone helpers
    ("layers",),        # building blocks of models
    ("models",),        # networks, the registry, weights
    ("profiling",),     # measures models (speed, memory, MACs)
    ("data",),          # reading images, volumes, videos; datasets, splits, transforms
    ("metrics",),       # pure metric functions
    ("inference",),     # applying a model: whole images, tiles, volumes, videos, ONNX
    ("serve",),         # the HTTP front of inference
    ("evaluation",),    # a model on a dataset, written as tables
    ("training",),      # fitting models
    ("experiments",),   # runs that train and compare models
    ("cli",),           # the command line
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
EXEMPT = {"hrmedseg", "hrmedseg.__main__"}

# Upward imports accepted for good (at most one), each with the reason.
ALLOWED_UPWARD: list[tuple[str, str]] = []



def module_files(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``) for every ``.py`` under ``root``."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool, package: str,
             mods: dict[str, tuple[Path, bool]]) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        # ``from pkg import name``: the submodule ``pkg.name`` when there is one, else ``pkg``.
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
    out = []
    for name in names:
        if name.split(".")[0] != package:
            continue
        while name not in mods and "." in name:   # an attribute path: its module
            name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def import_edges(root: Path, package: str) -> dict[tuple[str, str], int]:
    """(importer, imported) -> first line number, for every import of the package by its modules."""
    mods = module_files(root, package)
    edges: dict[tuple[str, str], int] = {}
    for module, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, is_pkg, package, mods):
                    if target != module:
                        edges.setdefault((module, target), node.lineno)
    return edges


def circles(edges: dict[tuple[str, str], int], exempt: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = defaultdict(list)
    for a, b in edges:
        if a not in exempt and b not in exempt:
            graph[a].append(b)
            graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in list(graph):
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(graph[v]):
                work.append((v, i + 1))
                w = graph[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            for w in graph[v]:
                if w in on_stack:
                    low[v] = min(low[v], low[w])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def floor_of(module: str) -> int:
    top = module.split(".")[1]
    assert top in FLOOR, f"{module}: {top!r} has no floor; add it to FLOORS in {__file__}"
    return FLOOR[top]


def upward(edges: dict[tuple[str, str], int], exempt: set[str]) -> list[str]:
    return sorted(f"{a}:{line} imports {b} (floor {floor_of(a)} -> {floor_of(b)})"
                  for (a, b), line in edges.items()
                  if a not in exempt and b not in exempt and floor_of(b) > floor_of(a)
                  and (a, b) not in ALLOWED_UPWARD)


EDGES = import_edges(SRC, "hrmedseg")


def test_scan_sees_imports_at_every_depth():
    """Known imports of each kind are found: relative in a function, relative at the top, and
    ``from package import submodule``."""
    assert ("hrmedseg.cli.predict", "hrmedseg.inference.video") in EDGES          # in a function
    assert ("hrmedseg.metrics.volume", "hrmedseg.metrics.segmentation") in EDGES  # module level
    assert ("hrmedseg.serve.decode", "hrmedseg.data.io") in EDGES                 # from ..data import io
    assert len(EDGES) > 200


def test_every_module_has_a_floor():
    for module in {m for edge in EDGES for m in edge} - EXEMPT:
        floor_of(module)


def test_no_import_runs_up():
    assert len(ALLOWED_UPWARD) <= 1
    bad = upward(EDGES, EXEMPT)
    assert not bad, "imports from a lower floor into a higher one:\n" + "\n".join(bad)


def test_no_circles():
    found = circles(EDGES, EXEMPT)
    assert not found, f"modules importing each other in a circle: {found}"


def test_checks_catch_a_circle_and_an_upward_import_inside_functions(tmp_path):
    """The same analysis on a small package with a hidden circle and an upward import fails."""
    pkg = tmp_path / "hrmedseg"
    for d in ("data", "training"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "io.py").write_text("def f():\n    from ..training import loop\n")
    (pkg / "training" / "loop.py").write_text("from hrmedseg.training.steps import g\n")
    (pkg / "training" / "steps.py").write_text("def g():\n    from . import loop\n")
    edges = import_edges(pkg, "hrmedseg")
    assert set(edges) == {("hrmedseg.data.io", "hrmedseg.training.loop"),
                          ("hrmedseg.training.loop", "hrmedseg.training.steps"),
                          ("hrmedseg.training.steps", "hrmedseg.training.loop")}
    assert circles(edges, EXEMPT) == [["hrmedseg.training.loop", "hrmedseg.training.steps"]]
    assert upward(edges, EXEMPT) == [
        "hrmedseg.data.io:2 imports hrmedseg.training.loop (floor 4 -> 9)"]
