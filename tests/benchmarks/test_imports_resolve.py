"""Every ``from hrmedseg... import name`` of the benchmark scripts, also those inside functions
(most scripts import the package lazily), names a module and an attribute the package has: a
renamed or removed API breaks this test, not a GPU run hours later."""
import ast
import importlib
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py"))


def package_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every absolute ``from hrmedseg... import name`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and node.module.split(".")[0] == "hrmedseg":
            out += [(node.lineno, node.module, a.name) for a in node.names]
    return out


def test_the_parser_sees_imports_inside_functions(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import os\nfrom hrmedseg.a import b\n\ndef f():\n"
                      "    from hrmedseg.c.d import e, g\n    from .x import y\n")
    assert package_imports(script) == [(2, "hrmedseg.a", "b"), (5, "hrmedseg.c.d", "e"),
                                       (5, "hrmedseg.c.d", "g")]


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_package_names_exist(script):
    missing = []
    for line, module, name in package_imports(script):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] == "hrmedseg":
                missing.append(f"{script.name}:{line}: no module {exc.name}")
            continue   # an optional third-party dependency this machine lacks
        if not hasattr(mod, name):
            try:       # ``from pkg import submodule`` where the package does not import it itself
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError as exc:
                if (exc.name or "").split(".")[0] == "hrmedseg":
                    missing.append(f"{script.name}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
