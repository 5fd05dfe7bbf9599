"""The models wing imports one way: no circle among src/hrmedseg/models/*.py (imports at the
top and inside functions), and nothing above it (training, inference, ...) is imported."""
import ast
from pathlib import Path

import hrmedseg.models

MODELS = Path(hrmedseg.models.__file__).parent
PACKAGE = "hrmedseg"


def _module_name(path: Path) -> str:
    rel = path.relative_to(MODELS.parent.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in the file (absolute names)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            for alias in node.names:           # "from . import sam" names a module
                found.add(f"{mod}.{alias.name}")
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in MODELS.glob("*.py")}
    return {name: {m for m in _imports(path) if m in files and m != name}
            for name, path in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_planted_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_inside_models():
    graph = _graph()
    assert "hrmedseg.models._hub" in graph and graph["hrmedseg.models.sam"]
    # the package __init__ imports the families to register them; nothing imports it back
    graph = {k: v - {"hrmedseg.models"} for k, v in graph.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_models_import_nothing_above_them():
    above = ("training", "inference", "evaluation", "serve", "cli", "data", "profiling")
    bad = {str(p.name): sorted(m for m in _imports(p)
                               if m.startswith(tuple(f"{PACKAGE}.{a}" for a in above)))
           for p in MODELS.glob("*.py")}
    assert not {k: v for k, v in bad.items() if v}
