"""The wrong changes of ``run.py`` still apply: each replaced text occurs exactly once in src/.
(The runner itself is slow and not part of the default suite: ``python tests/mutations/run.py``.)"""
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
PKG = HERE.parents[1] / "src" / "hrmedseg"


def _wrong_changes():
    spec = importlib.util.spec_from_file_location("wrong_changes", HERE / "wrong_changes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.WRONG_CHANGES


def test_each_wrong_change_applies_exactly_once():
    changes = _wrong_changes()
    assert len({c.id for c in changes}) == len(changes)
    for c in changes:
        assert c.edits and c.tests, c.id
        for e in c.edits:
            text = (PKG / e.file).read_text()
            assert text.count(e.old) == 1, (
                f"{c.id}: {e.old!r} occurs {text.count(e.old)} times in src/hrmedseg/{e.file}; "
                f"update tests/mutations/wrong_changes.py")
            assert e.new != e.old
        for t in c.tests:
            assert (HERE.parents[1] / t.split("::")[0]).exists(), (c.id, t)
