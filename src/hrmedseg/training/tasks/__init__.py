"""The training engine's tasks: ``segment``, ``distill``, ``esp`` (``Config.task``)."""
from __future__ import annotations

from ..config import Config, ConfigError
from .base import Task
from .distill import DistillTask
from .esp import ESPTask
from .segment import SegmentTask

TASK_CLASSES: dict[str, type[Task]] = {"segment": SegmentTask, "distill": DistillTask,
                                       "esp": ESPTask}


def build_task(cfg: Config) -> Task:
    """The task ``cfg.task`` names, built from the config."""
    try:
        return TASK_CLASSES[cfg.task](cfg)
    except KeyError:
        raise ConfigError(f"task must be one of {', '.join(TASK_CLASSES)}, got {cfg.task!r}") from None


__all__ = ["DistillTask", "ESPTask", "SegmentTask", "Task", "TASK_CLASSES", "build_task"]
