"""``train(cfg)``: the one entry point that runs a configured training of any task to its end.

It builds the task ``cfg.task`` names, fits it with the :class:`~hrmedseg.training.engine.Engine`
(resuming ``train.out_dir`` when it holds a checkpoint), lets the task finish (test split,
student or model folder) and writes ``summary.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from .config import Config
from .engine import Engine
from .tasks import build_task
from .tasks.base import Task
from .loggers import RunLogger
from .tasks.segment import build_model

__all__ = ["TrainResult", "build_model", "train"]


class TrainResult(dict):
    """The run's summary (also ``RUN/summary.json``), a dict with typed accessors:
    ``run_dir``, ``best`` (the best monitored validation value) and ``monitor`` (its name)."""

    @property
    def run_dir(self) -> Path:
        return Path(self["run_dir"])

    @property
    def best(self) -> float | None:
        return self.get("best")

    @property
    def monitor(self) -> str:
        return str(self.get("monitor", ""))


def train(cfg: Config, resume: bool = True, task: Task | None = None,
          progress: bool = True, loggers: Sequence[RunLogger] = ()) -> TrainResult:
    """Run (or continue) the training ``cfg`` describes; ``task`` replaces the one built from
    the config (e.g. a task given a teacher or a model in memory); ``loggers`` (objects with
    ``log_row(row, step)`` and ``close()``) receive every ``metrics.csv`` row beside those
    ``train.loggers`` names (:mod:`hrmedseg.training.loggers`)."""
    task = task if task is not None else build_task(cfg)
    engine = Engine(cfg, task, progress=progress, loggers=loggers)
    if engine.progress and task.compile_mode is not None:
        print(f"compiling the training step: torch.compile mode={task.compile_mode} "
              f"({task.compile_reason}); the first steps wait for the compile",
              file=sys.stderr, flush=True)
    try:
        result = engine.fit(resume=resume)
        summary = TrainResult(
            run_dir=str(result.run_dir), task=cfg.task, epochs_done=result.epochs_done,
            global_step=result.global_step, monitor=task.monitor, best=result.best,
            stopped_early=result.stopped_early, stop_reason=result.stop_reason,
            resumed=result.resumed, compile=task.compile_mode)
        # the name every earlier summary used for the task's monitored value
        summary[f"best_{task.monitor}"] = result.best
        summary.update(task.finish(result))
    finally:
        engine.close()
    if engine.info.is_main:
        from ..atomic import write_json_atomic
        write_json_atomic(Path(cfg.train.out_dir) / "summary.json", summary, default=str)
    return summary
