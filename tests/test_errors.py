"""One error base class: every error class of the package is a HrmedsegError, keeps its builtin base,
and the command line turns any of them into one line and exit status 2."""
from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import hrmedseg
from hrmedseg.cli.main import main
from hrmedseg.errors import HrmedsegError

SRC = Path(hrmedseg.__file__).parent


def _module_names() -> list[str]:
    names = ["hrmedseg"]
    for info in pkgutil.walk_packages([str(SRC)], prefix="hrmedseg."):
        if not info.name.endswith("__main__"):   # importing it would run the command line
            names.append(info.name)
    return names


def _error_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined (not just imported) by a module of the package, by qualname."""
    found: dict[str, type[BaseException]] = {}
    for name in _module_names():
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:   # an optional third-party dependency that is absent
            if (exc.name or "").split(".")[0] == "hrmedseg":
                raise
            continue
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                found[f"{name}.{obj.__qualname__}"] = obj
    return found


def _error_class_names_in_source() -> set[str]:
    """Names of classes in the source whose name says they are errors (independent of importing)."""
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Error", "Exception")):
                names.add(node.name)
    return names


def test_every_error_class_is_a_hrmedseg_error():
    classes = _error_classes()
    assert {c.__name__ for c in classes.values()} >= _error_class_names_in_source()
    # The walk must see the classes the CLI relies on, not an empty set.
    assert {"InputSizeError", "UnknownModelError", "ImageReadError", "ConfigError",
            "UserError"} <= {c.__name__ for c in classes.values()}
    not_ours = sorted(q for q, c in classes.items() if not issubclass(c, HrmedsegError))
    assert not not_ours, f"error classes not deriving from HrmedsegError: {not_ours}"


@pytest.mark.parametrize("module,cls,builtin", [
    ("hrmedseg.models._base", "InputSizeError", ValueError),
    ("hrmedseg.models._base", "CheckpointingError", ValueError),
    ("hrmedseg.models._hub", "CheckpointError", RuntimeError),
    ("hrmedseg.models._pretrained", "PretrainedWeightError", RuntimeError),
    ("hrmedseg.models._registry", "UnknownModelError", KeyError),
    ("hrmedseg.models.baselines", "MissingDependencyError", ImportError),
    ("hrmedseg.data.io", "ImageReadError", ValueError),
    ("hrmedseg.training.config", "ConfigError", ValueError),
])
def test_errors_keep_their_builtin_base(module, cls, builtin):
    """Code that caught ``ValueError`` (etc.) before still catches the error."""
    err = getattr(importlib.import_module(module), cls)
    assert issubclass(err, HrmedsegError) and issubclass(err, builtin)


def test_base_class_is_exported():
    assert hrmedseg.HrmedsegError is HrmedsegError and "HrmedsegError" in hrmedseg.__all__


def test_unknown_model_is_one_line_and_exit_2(capsys):
    rc = main(["profile", "hrmedsg", "--device", "cpu", "--size", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1, err
    assert err[0].startswith("hrmedseg profile: error: unknown model 'hrmedsg'"), err
    assert "Did you mean: hrmedseg" in err[0]


def test_cli_catches_any_hrmedseg_error_but_not_bugs(monkeypatch, capsys):
    """The catch is by base class: a new error class needs no CLI change; a bug still raises."""
    import hrmedseg.cli.models as verb

    class NewError(HrmedsegError):
        pass

    def raise_(exc: BaseException):
        def run(args):  # noqa: ANN001, ANN202
            raise exc
        return run

    monkeypatch.setattr(verb, "run", raise_(NewError("first line\nsecond line")))
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["hrmedseg models: error: first line"]

    monkeypatch.setattr(verb, "run", raise_(PermissionError("/root/x: permission denied")))
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip() == "hrmedseg models: error: /root/x: permission denied"

    monkeypatch.setattr(verb, "run", raise_(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):
        main(["models"])
