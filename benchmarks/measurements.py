"""The GPU measurements the open issues still owe, as a table (``measurements.yaml``) and a runner
that works through it one device call at a time.

  python benchmarks/measurements.py --list                       # the table, with status
  python benchmarks/measurements.py run --minutes 9 --out $OUT   # pending entries, in order
  python benchmarks/measurements.py run hrmedseg-t1-dsb2018 --minutes 9 --out $OUT --dry-run

An entry is *done* when its result file exists under ``benchmarks/results/`` and holds every key
its ``require`` names (reproduce rows: every key of a reproduction result). ``run`` takes the
pending entries (all, or the ids given) in table order and runs their steps while the wall-clock
budget (``--minutes``) lasts: a step whose estimate does not fit what is left is not started
(``--fill`` tries later, shorter ones instead of stopping), a step still running at the budget is
stopped (train and reproduce steps stop themselves through their time limit first), a failing
step is reported in one line and the next entry runs.

Steps: a ``command`` entry is one step; a ``train`` entry is its run folder ``WORK/train/ID``,
resumed by the trainer each call until its epochs are done (``--partial`` starts it even when its
estimate does not fit, to be continued by the next call on the same machine); a ``reproduce``
entry is one step per seed (fold) through ``hrmedseg reproduce ROW --seeds N`` in
``WORK/reproduce`` (rows share runs there), then a step that writes the row's result.

What comes back (``--out``): ``results.tar`` (every entry's result file present, paths relative to
the repository root), ``state.tar`` (the small files of every *finished* run folder under WORK,
enough for ``reproduce`` to skip finished seeds on a fresh machine: unpack order is WORK first,
then this), ``weights-*.tar`` (best checkpoint weights of finished runs of rows marked
``weights_out``) and ``log.txt``. Unfinished run folders (checkpoints of tens of MiB) stay on
the machine: they continue only while it is warm. Give ``--state FILE`` (a carried
``state.tar``) to seed WORK on a fresh machine.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from hrmedseg.atomic import atomic_write_bytes, write_json_atomic

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(__file__).resolve().parent / "measurements.yaml"
KINDS = ("command", "train", "reproduce")
REPRODUCE_RESULTS = "benchmarks/results/reproductions"
REPRODUCE_KEYS = ("paper", "metric", "ours", "ours_mean", "ours_std", "device", "date", "commit",
                  "gpu_seconds")
STOP_GRACE_S = 20.0       # after the budget, a step gets this long to stop on SIGINT
OUT_FILE_LIMIT = 15 * 2 ** 20
SMALL_FILE = 2 * 2 ** 20  # state.tar keeps files up to this size (no checkpoints)
OUT_MAX_WEIGHT_TARS = 4   # with results.tar, state.tar and log.txt: within 8 files


class TableError(Exception):
    """The table or the arguments cannot be used (one line)."""


@dataclass
class Entry:
    id: str
    kind: str
    serves: str
    minutes: float
    result: str
    require: list[str] = field(default_factory=list)
    command: str = ""
    train: list[str] = field(default_factory=list)
    verb: str = "train"
    prepare: str = ""         # train: a command run before each call's step (idempotent)
    needs: list[str] = field(default_factory=list)   # dataset folders under {data}
    weights_out: bool = False
    # train: folders of the finished run that state.tar carries whatever their size (a
    # distilled student that a later entry, maybe on a fresh machine, starts from)
    keep: list[str] = field(default_factory=list)


@dataclass
class Context:
    data: str
    weights: str
    work: Path
    python: str = sys.executable
    device: str = "auto"


def load_table(path: Path = TABLE) -> list[Entry]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TableError(f"{path}: unreadable table ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, list):
        raise TableError(f"{path}: expected a list of entries")
    out, seen = [], set()
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "id" not in item:
            raise TableError(f"{path}: entry {i + 1} has no id")
        eid = str(item["id"])
        if eid in seen:
            raise TableError(f"{path}: id {eid} appears twice")
        seen.add(eid)
        kind = item.get("kind", "command")
        if kind not in KINDS:
            raise TableError(f"{path}: {eid}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "reproduce":
            item.setdefault("result", f"{REPRODUCE_RESULTS}/{eid}.json")
            item.setdefault("require", list(REPRODUCE_KEYS))
        missing = [k for k in ("serves", "minutes", "result") if k not in item]
        if missing or (kind == "command" and not item.get("command")) or \
                (kind == "train" and not item.get("train")):
            raise TableError(f"{path}: {eid}: missing {', '.join(missing) or ('command' if kind == 'command' else 'train')}")
        known = set(Entry.__dataclass_fields__)
        extra = set(item) - known
        if extra:
            raise TableError(f"{path}: {eid}: unknown field {sorted(extra)[0]!r}")
        out.append(Entry(**{**item, "id": eid, "kind": kind, "minutes": float(item["minutes"]),
                            "require": list(item.get("require") or []),
                            "needs": list(item.get("needs") or []),
                            "train": [str(a) for a in item.get("train") or []]}))
    return out


# ----------------------------------------------------------------------------- status
def result_state(entry: Entry, root: Path | None = None) -> str:
    """done | missing | incomplete (the file lacks a required key) | unreadable."""
    p = (root or ROOT) / entry.result
    if not p.is_file():
        return "missing"
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return "unreadable"
    if not isinstance(data, dict) or any(data.get(k) is None for k in entry.require):
        return "incomplete"
    return "done"


def format_list(entries: list[Entry], root: Path | None = None) -> str:
    rows = [("id", "kind", "status", "est. min", "result", "serves")]
    pending = 0.0
    for e in entries:
        st = result_state(e, root)
        if st != "done":
            pending += e.minutes * _steps_estimate(e)
        rows.append((e.id, e.kind, st, f"{e.minutes:g}" + (" /run" if e.kind == "reproduce" else ""),
                     e.result, e.serves))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    lines.append(f"pending: about {pending:.0f} GPU-minutes")
    return "\n".join(lines)


def _steps_estimate(entry: Entry) -> int:
    if entry.kind != "reproduce":
        return 1
    try:
        from hrmedseg.experiments.reproduce import load_row
        return len(load_row(entry.id).units())
    except Exception:  # noqa: BLE001 - the estimate only
        return 3


def needed_datasets(entry: Entry) -> list[str]:
    """The dataset folders an entry reads: its ``needs``, or a reproduce row's datasets."""
    if entry.kind != "reproduce":
        return list(entry.needs)
    try:
        from hrmedseg.experiments.reproduce import load_row
        return list(load_row(entry.id).datasets())
    except Exception:  # noqa: BLE001 - preparing the steps reports the row's problem
        return []


# ----------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One thing to run: ``argv``; ``resumable`` steps are given ``time_limit(minutes)``."""

    entry: Entry
    label: str
    argv: list[str]
    minutes: float
    resumable: bool = False
    time_limit: Callable[[float], list[str]] | None = None
    after: Callable[[], str | None] | None = None   # writes the result; returns a problem or None
    complete: Callable[[], bool] | None = None      # False: stopped by its time limit, resumes later


def _fill(text: str, ctx: Context, entry: Entry) -> str:
    return text.format(python=ctx.python, data=ctx.data, weights=ctx.weights, work=str(ctx.work),
                       result=str(ROOT / entry.result))


def command_steps(entry: Entry, ctx: Context) -> list[Step]:
    return [Step(entry, entry.id, shlex.split(_fill(entry.command, ctx, entry)), entry.minutes)]


def _train_spent_min(run_dir: Path) -> float:
    """Training minutes a run folder has already spent (its last checkpoint's ``elapsed_s``)."""
    from hrmedseg.training.checkpoint import find_checkpoint, load_state
    last = find_checkpoint(run_dir / "checkpoints", "last")
    return float(load_state(last).get("elapsed_s", 0.0)) / 60.0 if last is not None else 0.0


def _train_finished(run_dir: Path) -> bool:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return int(summary.get("epochs_done", 0)) >= int(cfg["train"]["epochs"])


def train_result(entry: Entry, run_dir: Path, argv: list[str]) -> dict[str, Any]:
    """The result of a finished train entry: summary, per-epoch rows, rates, provenance."""
    from hrmedseg.provenance import source_commit
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    rates = [float(r["train_images_per_s"]) for r in rows if r.get("train_images_per_s")]
    # the reserved peak counts CUDA graphs' pools; run folders without it have the allocated one
    peaks = ([float(r["peak_reserved_gb"]) for r in rows if r.get("peak_reserved_gb")]
             or [float(r["peak_mem_gb"]) for r in rows if r.get("peak_mem_gb")])
    env = {}
    if (run_dir / "env.json").is_file():
        env = json.loads((run_dir / "env.json").read_text())
    batch = int(cfg["train"]["batch_size"])
    return {
        "id": entry.id, "serves": entry.serves, "command": shlex.join(argv),
        "device": env.get("gpu") or env.get("device"), "torch": env.get("torch"),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": source_commit() or env.get("commit"),
        "trainer_images_per_s": statistics.median(rates[1:] or rates) if rates else None,
        "train_images_per_s_by_epoch": rates,
        "peak_gb_per_image": max(peaks) / batch if peaks else None,
        **{k: v for k, v in summary.items() if k != "run_dir"},
        "config": cfg, "metrics": rows,
    }


def train_steps(entry: Entry, ctx: Context) -> list[Step]:
    run_dir = ctx.work / "train" / entry.id
    args = [_fill(a, ctx, entry) for a in entry.train]
    argv = [ctx.python, "-m", "hrmedseg", entry.verb, "--out", str(run_dir), *args]
    if entry.verb == "train" and ctx.device != "auto":
        argv.append(f"train.device={ctx.device}")

    def time_limit(minutes: float) -> list[str]:
        total = round(_train_spent_min(run_dir) + minutes, 2)
        return (["--time-limit-min", str(total)] if entry.verb in ("train-esp", "distill")
                else [f"train.time_limit_min={total}"])

    def after() -> str | None:
        if not _train_finished(run_dir):
            return None
        from hrmedseg.profiling.speed import write_result
        write_result(ROOT / entry.result, train_result(entry, run_dir, argv))
        return None

    steps = [Step(entry, entry.id, argv, entry.minutes, True, time_limit, after,
                  lambda: _train_finished(run_dir))]
    if entry.prepare:
        steps.insert(0, Step(entry, f"{entry.id} prepare", shlex.split(_fill(entry.prepare, ctx, entry)), 0.5))
    return steps


def reproduce_steps(entry: Entry, ctx: Context) -> list[Step]:
    from hrmedseg.experiments.reproduce import DONE_NAME, build_spec, load_row, run_folder
    row = load_row(entry.id)
    out = ctx.work / "reproduce"
    base = [ctx.python, "-m", "hrmedseg", "reproduce", entry.id, "--data", ctx.data, "-o", str(out),
            "--device", ctx.device]
    if row.task == "esp":
        base += ["--weights", ctx.weights]
    weights = ctx.weights if row.task == "esp" else None
    by_label: dict[str, list[Any]] = {}
    for unit in row.units():
        by_label.setdefault(unit.label, []).append(unit)
    steps = []
    for label, units in by_label.items():
        folders = [run_folder(out, row, u, build_spec(row, u, ctx.data, (), weights, ctx.device))
                   for u in units]
        pending = sum(not (f / DONE_NAME).is_file() for f in folders)
        if not pending:
            continue
        n = units[0].fold if units[0].fold is not None else units[0].seed
        steps.append(Step(entry, f"{entry.id} {label}", [*base, "--seeds", str(n)],
                          entry.minutes * pending, True,
                          lambda m: ["--time-limit-min", f"{m:.2f}"],
                          complete=lambda fs=folders: all((f / DONE_NAME).is_file() for f in fs)))

    def after() -> str | None:
        made = out / f"{entry.id}.json"
        if not made.is_file():
            return f"{made} was not written"
        atomic_write_bytes(ROOT / entry.result, made.read_bytes())
        return None

    steps.append(Step(entry, f"{entry.id} result", base, 0.5, after=after))
    return steps


STEP_MAKERS = {"command": command_steps, "train": train_steps, "reproduce": reproduce_steps}


# ----------------------------------------------------------------------------- running
def run_step(argv: list[str], deadline_s: float, log: Callable[[str], None],
             env: dict[str, str] | None = None) -> int | None:
    """Run ``argv`` in its own process group; at the deadline SIGINT, then SIGKILL after a grace.
    Returns the exit status, or None when it was stopped at the budget."""
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    stopped = False
    import threading

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            log("    " + line.rstrip())
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    while proc.poll() is None:
        left = deadline_s - time.monotonic()
        if left <= 0 and not stopped:
            stopped = True
            os.killpg(proc.pid, signal.SIGINT)
            deadline_s = time.monotonic() + STOP_GRACE_S
            continue
        if left <= 0 and stopped:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(min(0.2, max(left, 0.01)))
    reader.join(timeout=5)
    return None if stopped else proc.returncode


def run(entries: list[Entry], ctx: Context, minutes: float, out: Path | None, *, dry_run: bool = False,
        fill: bool = False, partial: bool = False, margin_min: float = 1.5,
        log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """Run the pending entries' steps within ``minutes``; returns {"done", "failed", "left"} ids."""
    start = time.monotonic()
    deadline = start + 60.0 * minutes
    report: dict[str, list[str]] = {"done": [], "failed": [], "left": []}
    stop = False
    for entry in entries:
        if result_state(entry) == "done":
            log(f"{entry.id}: done, skipped")
            continue
        if stop:
            report["left"].append(entry.id)
            continue
        absent = [n for n in needed_datasets(entry) if not (Path(ctx.data) / n).is_dir()]
        if absent:
            log(f"{entry.id}: skipped, {Path(ctx.data) / absent[0]} is not here (carry it)")
            report["left"].append(entry.id)
            continue
        try:
            steps = STEP_MAKERS[entry.kind](entry, ctx)
        except Exception as exc:  # noqa: BLE001 - one line, the next entry runs
            log(f"{entry.id}: FAILED to prepare: {' '.join(str(exc).split())}")
            report["failed"].append(entry.id)
            continue
        failed = finished = False
        for step in steps:
            left = (deadline - time.monotonic()) / 60.0
            fits = step.minutes <= left
            if not fits and not (partial and step.resumable and left > 2 * margin_min + 0.5):
                log(f"{step.label}: needs ~{step.minutes:g} min, {max(left, 0):.1f} left; not started")
                if not fill:
                    stop = True
                break
            argv = list(step.argv)
            if step.time_limit is not None:
                argv += step.time_limit(max(0.1, min(step.minutes, left) - margin_min) if fits
                                        else max(0.1, left - 2 * margin_min))
            log(f"{step.label}: {'would run' if dry_run else 'running'} (~{step.minutes:g} min, "
                f"{left:.1f} left): {shlex.join(argv)}")
            if dry_run:
                continue
            (ROOT / entry.result).parent.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            rc = run_step(argv, deadline, log)
            took = (time.monotonic() - t0) / 60.0
            if rc is None:
                log(f"{step.label}: stopped at the budget after {took:.1f} min")
                stop = True
                break
            if rc != 0:
                log(f"{step.label}: FAILED (exit {rc}) after {took:.1f} min")
                failed = True
                break
            if step.complete is not None and not step.complete():
                log(f"{step.label}: stopped by its time limit after {took:.1f} min; the next call continues it")
                stop = True
                break
            problem = step.after() if step.after is not None else None
            if problem:
                log(f"{step.label}: FAILED: {problem}")
                failed = True
                break
            log(f"{step.label}: finished in {took:.1f} min")
            if out is not None:
                write_out(entries, ctx, out, log)
        else:
            finished = not dry_run
        if failed:
            report["failed"].append(entry.id)
        elif finished and result_state(entry) == "done":
            report["done"].append(entry.id)
            log(f"{entry.id}: done -> {entry.result}")
        else:
            report["left"].append(entry.id)
    if out is not None and not dry_run:
        write_out(entries, ctx, out, log)
    log(f"done {len(report['done'])}, failed {len(report['failed'])}, left {len(report['left'])} "
        f"({', '.join(report['left']) or 'none'}) in {(time.monotonic() - start) / 60.0:.1f} min")
    return report


# ----------------------------------------------------------------------------- what comes back
def _finished_run_dirs(work: Path) -> list[Path]:
    """Run folders under WORK that are finished: reproduce runs with reproduce.json, train runs
    whose epochs are done."""
    from hrmedseg.experiments.reproduce import DONE_NAME
    found = [p.parent for p in (work / "reproduce" / "runs").glob(f"*/{DONE_NAME}")]
    found += [p for p in (work / "train").glob("*") if p.is_dir() and _train_finished(p)]
    return sorted(found)


def _tar_bytes(files: list[tuple[Path, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, name in files:
            tar.add(path, arcname=name, recursive=False)
    return buf.getvalue()


def write_out(entries: list[Entry], ctx: Context, out: Path, log: Callable[[str], None] = print) -> None:
    """results.tar, state.tar and weights-*.tar in ``out`` (see the module text)."""
    out.mkdir(parents=True, exist_ok=True)
    results = [(ROOT / e.result, e.result) for e in entries if (ROOT / e.result).is_file()]
    atomic_write_bytes(out / "results.tar", _tar_bytes(results))
    small: list[tuple[Path, str]] = []
    keep = {e.id: e.keep for e in entries if e.kind == "train" and e.keep}
    for run_dir in _finished_run_dirs(ctx.work):
        kept = keep.get(run_dir.name, []) if run_dir.parent == ctx.work / "train" else []
        for p in sorted(run_dir.rglob("*")):
            rel = p.relative_to(run_dir).parts
            if p.is_file() and "checkpoints" not in rel and (
                    p.stat().st_size <= SMALL_FILE or rel[0] in kept):
                small.append((p, str(p.relative_to(ctx.work))))
    exported_file = ctx.work / "weights_exported.json"
    exported = set(json.loads(exported_file.read_text())) if exported_file.is_file() else set()
    weight_rows = {e.id for e in entries if e.weights_out}
    made = len(list(out.glob("weights-*.tar")))
    for run_dir in _finished_run_dirs(ctx.work):
        rec = run_dir / "reproduce.json"
        if not rec.is_file() or str(run_dir.name) in exported or made >= OUT_MAX_WEIGHT_TARS:
            continue
        if json.loads(rec.read_text()).get("row") not in weight_rows:
            continue
        best = run_dir / "checkpoints" / "best"
        files = [(p, f"{run_dir.name}/{p.name}") for p in (best / "model.safetensors", best / "config.json")
                 if p.is_file()]
        data = _tar_bytes(files)
        if len(data) > OUT_FILE_LIMIT:
            log(f"{run_dir.name}: best weights {len(data) / 2 ** 20:.1f} MiB exceed what comes back; kept here")
            continue
        atomic_write_bytes(out / f"weights-{run_dir.name}.tar", data)
        exported.add(run_dir.name)
        made += 1
    if exported:
        exported_file.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(exported_file, sorted(exported), indent=None)
        small.append((exported_file, exported_file.name))
    atomic_write_bytes(out / "state.tar", _tar_bytes(small))


def unpack_state(state: Path, work: Path, log: Callable[[str], None] = print) -> int:
    """Extract a carried state.tar into WORK without replacing files already there (a warm
    machine's own are newer); returns how many files were added."""
    added = 0
    with tarfile.open(state) as tar:
        for member in tar.getmembers():
            target = (work / member.name).resolve()
            if not member.isfile() or not str(target).startswith(str(work.resolve()) + os.sep):
                continue
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src:  # type: ignore[union-attr]
                target.write_bytes(src.read())
            added += 1
    log(f"{state}: {added} files added to {work}")
    return added


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="print the table with each entry's status")
    ap.add_argument("--table", default=str(TABLE), help="the table (YAML)")
    sub = ap.add_subparsers(dest="verb")
    r = sub.add_parser("run", help="run pending entries within a wall-clock budget")
    r.add_argument("ids", nargs="*", help="entries to run (default: every pending one)")
    r.add_argument("--minutes", type=float, required=True, help="wall-clock budget of this call")
    r.add_argument("--out", type=Path, help="folder for results.tar, state.tar, weights-*.tar, log.txt")
    r.add_argument("--data", default=".gpu/data", help="packed datasets (benchmarks/pack_data.py)")
    r.add_argument("--weights", default=".gpu/weights", help="folder with mobile_sam.pt")
    r.add_argument("--work", type=Path, default=Path(".gpu/work"), help="run folders")
    r.add_argument("--state", type=Path, default=Path(".gpu/state.tar"),
                   help="a state.tar from an earlier call, unpacked into WORK (if present)")
    r.add_argument("--device", default="auto")
    r.add_argument("--commit", default=os.environ.get("HRMEDSEG_COMMIT"),
                   help="source commit recorded in results (the device copy has no .git)")
    r.add_argument("--margin-min", type=float, default=1.5,
                   help="minutes a resumable step leaves for start-up, test and writing")
    r.add_argument("--fill", action="store_true", help="after a step that does not fit, try later ones")
    r.add_argument("--partial", action="store_true",
                   help="start resumable steps that do not fit (continued by the next call on a warm machine)")
    r.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    try:
        entries = load_table(Path(args.table))
        if args.list or args.verb is None:
            print(format_list(entries))
            return 0
        known = {e.id for e in entries}
        unknown = [i for i in args.ids if i not in known]
        if unknown:
            raise TableError(f"unknown id {unknown[0]} (see --list)")
        if args.minutes <= 0:
            raise TableError("--minutes must be > 0")
        chosen = [e for e in entries if not args.ids or e.id in args.ids]
    except TableError as exc:
        print(f"measurements: {exc}", file=sys.stderr)
        return 2
    if args.commit:
        os.environ["HRMEDSEG_COMMIT"] = args.commit
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
        if args.out is not None and not args.dry_run:
            args.out.mkdir(parents=True, exist_ok=True)
            with open(args.out / "log.txt", "a") as fh:
                fh.write(line + "\n")

    work = args.work if args.work.is_absolute() else ROOT / args.work
    ctx = Context(data=str(Path(args.data).resolve()), weights=str(Path(args.weights).resolve()),
                  work=work, device=args.device)
    if args.state.is_file() and not args.dry_run:
        unpack_state(args.state, work, log)
    report = run(chosen, ctx, args.minutes, args.out, dry_run=args.dry_run, fill=args.fill,
                 partial=args.partial, margin_min=args.margin_min, log=log)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
