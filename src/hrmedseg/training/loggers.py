"""Where a run's per-epoch rows go: ``metrics.csv`` always, TensorBoard on request, and any
object a Python user hands the engine.

The engine calls :meth:`RunLogger.log_row` once per row it writes to ``metrics.csv`` (the same
columns in the same order, ``""`` where a row has no value, e.g. no validation that epoch), with
``step`` = the row's optimizer step, and :meth:`RunLogger.close` once when ``fit`` ends (also
when it fails). Only the main process (rank 0 under ``torchrun``) logs. ``train.loggers`` names
the built-in ones (:data:`LOGGER_NAMES`); anything with these two methods plugs in through
``Engine(..., loggers=[...])`` or ``train(cfg, loggers=[...])``.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from .._optional import require
from ..atomic import write_csv_atomic

# csv: metrics.csv, the run's own record (curve.png, resume and the benchmarks read it), so
# every run keeps it; tensorboard: RUN/tensorboard/
LOGGER_NAMES = ("csv", "tensorboard")
TENSORBOARD_DIR = "tensorboard"


@runtime_checkable
class RunLogger(Protocol):
    """Receives every row of ``metrics.csv`` as it is written."""

    def log_row(self, row: Mapping[str, float | int | str], step: int) -> None: ...

    def close(self) -> None: ...


class CSVLogger:
    """Appends rows to ``path`` (header first when the file is new), one ``open`` per row so a
    crash loses at most the current epoch; a resumed run appends below the earlier rows."""

    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path = Path(path)
        self.fields = list(fields)
        self._upgrade_header()

    def _upgrade_header(self) -> None:
        """A file written with other columns (a run resumed after the package gained a column)
        is rewritten once with the new header, its old rows under it (new cells empty, columns
        only the old file had kept at the end), so appended rows line up."""
        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            old, rows = list(reader.fieldnames or []), list(reader)
        if not old or old == self.fields:
            return
        self.fields += [k for k in old if k not in self.fields]
        write_csv_atomic(self.path, self.fields, ({k: r.get(k) or "" for k in self.fields} for r in rows))

    def log_row(self, row: Mapping[str, Any], step: int) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in self.fields})

    def close(self) -> None:
        pass


def _tensorboard_writer_class() -> Any:
    require("tensorboard", extra="train", feature="TensorBoard logging")
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter


class TensorBoardLogger:
    """Each row's numeric columns as TensorBoard scalars in ``RUN/tensorboard/`` (tag = the
    ``metrics.csv`` column, x = the row's step; empty cells are skipped).

    ``resumed_step``: the step a resumed run continues from. Points the killed session logged
    after it are dropped (TensorBoard's ``purge_step``), those up to it stay, so the resumed
    run adds no duplicate points to the same folder.
    """

    def __init__(self, run_dir: Path, resumed_step: int | None = None) -> None:
        writer_class = _tensorboard_writer_class()
        purge = None if resumed_step is None else resumed_step + 1
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        self.writer = writer_class(log_dir=str(self.log_dir), purge_step=purge)

    def log_row(self, row: Mapping[str, Any], step: int) -> None:
        for key, value in row.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(key, float(value), global_step=step)
        self.writer.flush()     # one row per epoch: cheap, and a killed run loses nothing

    def close(self) -> None:
        self.writer.close()


def check_logger_packages(names: Sequence[str]) -> None:
    """Raise the one-line install hint for a named logger whose package is missing (before
    any run folder exists)."""
    if "tensorboard" in names:
        _tensorboard_writer_class()


def open_loggers(names: Sequence[str], run_dir: Path, fields: Sequence[str],
                 resumed_step: int | None = None) -> list[RunLogger]:
    """The built-in loggers ``names`` (a subset of :data:`LOGGER_NAMES`; csv always) of the run
    in ``run_dir``; ``fields`` are the columns of ``metrics.csv``."""
    out: list[RunLogger] = []
    for name in dict.fromkeys(["csv", *names]):
        if name == "csv":
            out.append(CSVLogger(Path(run_dir) / "metrics.csv", fields))
        elif name == "tensorboard":
            out.append(TensorBoardLogger(run_dir, resumed_step))
        else:
            raise ValueError(f"unknown logger {name!r} (known: {', '.join(LOGGER_NAMES)})")
    return out
