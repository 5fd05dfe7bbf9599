"""Apply each deliberate wrong change of ``wrong_changes.py`` to a copy of ``src/`` and run the
tests expected to catch it; exit 1 if any change leaves them passing.

    python tests/mutations/run.py                  # all changes
    python tests/mutations/run.py tiles-reversed   # some, by id
    python tests/mutations/run.py --list

The tests run from the repository root with ``PYTHONPATH`` pointing at the copy, so the working
tree is never modified. First the selected tests run once on the unchanged copy: a change only
counts as caught if those tests passed without it.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from wrong_changes import WRONG_CHANGES, WrongChange  # noqa: E402


def _pytest(src: Path, tests: list[str], timeout: int) -> tuple[int, str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src)] + [p for p in os.environ.get(
        "PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != (ROOT / "src").resolve()]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider",
           f"--timeout={timeout}", *tests]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0


def _imported_from(src: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run([sys.executable, "-c", "import hrmedseg; print(hrmedseg.__file__)"],
                          cwd=ROOT, env=env, capture_output=True, text=True).stdout.strip()


def _apply(pkg: Path, change: WrongChange) -> dict[Path, str]:
    """Apply the edits; return the original text of every edited file."""
    originals: dict[Path, str] = {}
    for e in change.edits:
        path = pkg / e.file
        text = path.read_text()
        originals.setdefault(path, text)
        n = text.count(e.old)
        if n != 1:
            raise SystemExit(f"{change.id}: {e.old!r} occurs {n} times in src/hrmedseg/{e.file} "
                             f"(expected once); update tests/mutations/wrong_changes.py")
        path.write_text(text.replace(e.old, e.new))
    return originals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ids", nargs="*", help="wrong changes to apply (default: all)")
    ap.add_argument("--list", action="store_true", help="list the wrong changes and exit")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run of the selected tests on the unchanged copy")
    ap.add_argument("--tests", nargs="+", metavar="NODE",
                    help="run these tests instead of each change's listed ones")
    ap.add_argument("--timeout", type=int, default=600, help="per-test timeout (s)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print pytest's output")
    args = ap.parse_args(argv)
    known = {c.id: c for c in WRONG_CHANGES}
    if args.list:
        for c in WRONG_CHANGES:
            print(f"{c.id}: {c.description}\n    caught by: {' '.join(c.tests)}")
        return 0
    unknown = [i for i in args.ids if i not in known]
    if unknown:
        print(f"unknown wrong change(s): {', '.join(unknown)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    changes = [known[i] for i in args.ids] if args.ids else list(WRONG_CHANGES)

    with tempfile.TemporaryDirectory(prefix="hrmedseg-mutations-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        pkg = src / "hrmedseg"
        where = _imported_from(src)
        if not where.startswith(str(src)):
            print(f"the copy is not what the tests import (hrmedseg from {where!r})", file=sys.stderr)
            return 2
        if not args.no_baseline:
            union = args.tests or list(dict.fromkeys(t for c in changes for t in c.tests))
            rc, out, dt = _pytest(src, union, args.timeout)
            if rc != 0:
                print(out[-4000:])
                print(f"baseline: the selected tests fail without any change (exit {rc}, {dt:.0f} s)",
                      file=sys.stderr)
                return 2
            print(f"baseline: selected tests pass on the unchanged copy ({dt:.0f} s)", flush=True)
        missed = []
        for c in changes:
            originals = _apply(pkg, c)
            try:
                rc, out, dt = _pytest(src, args.tests or list(c.tests), args.timeout)
            finally:
                for path, text in originals.items():
                    path.write_text(text)
            if args.verbose:
                print(out)
            failed = re.findall(r"^FAILED (\S+)", out, flags=re.M)
            if rc == 1:
                print(f"caught  {c.id:26s} {dt:6.1f} s  by {', '.join(failed) or '(see -v)'}", flush=True)
            else:
                missed.append(c.id)
                why = "tests pass" if rc == 0 else f"pytest exit {rc} (no test failure)"
                print(f"MISSED  {c.id:26s} {dt:6.1f} s  {why}: {' '.join(args.tests or c.tests)}", flush=True)
        print(f"{len(changes) - len(missed)}/{len(changes)} wrong changes caught"
              + (f"; missed: {', '.join(missed)}" if missed else ""))
        return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
