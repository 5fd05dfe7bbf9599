"""What a task tells the training engine: its model, batches, losses and validation."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn


class Task:
    """Base of the engine's tasks. :meth:`setup` receives the engine (device, autocast, rank)
    and builds ``model`` (the module checkpointed and optimised) and the data."""

    name = "task"
    monitor = "val_dice"            # validation value that picks checkpoints/best
    mode = "max"                    # max | min
    # loss term -> metrics.csv column; "total" (train_loss) is the one that is optimised
    loss_fields: dict[str, str] = {"total": "train_loss"}
    validate_at_start = False       # a row "epoch 0" before the first step
    round_digits = 6
    log_loss_axis = False           # curve.png: losses on a log scale
    model: nn.Module
    net: nn.Module | None = None    # the module the steps call (e.g. DDP-wrapped); None: model

    def setup(self, engine: Any) -> None:
        self.engine = engine

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def before_fit(self) -> None:
        """Checks before anything is written (e.g. teacher and student shapes agree)."""

    def prepare(self, resumed: bool) -> None:
        """After resume, before the first batch (e.g. fill a teacher cache)."""

    def batches_per_epoch(self) -> int:
        raise NotImplementedError

    def train_batches(self, epoch: int, start: int) -> Iterable[Any]:
        """The batches of ``epoch`` from batch ``start`` on (this rank's share under DDP)."""
        raise NotImplementedError

    def batch_images(self, batch: Any) -> int:
        """Images of ``batch`` on this rank (for images/s and gradient weights)."""
        raise NotImplementedError

    def losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss terms of one batch with their graphs; ``total`` is optimised."""
        raise NotImplementedError

    def backward(self, terms: dict[str, torch.Tensor], scaler: torch.amp.GradScaler) -> None:
        scaler.scale(terms["total"]).backward()

    def validate(self) -> dict[str, float]:
        return {}

    def has_validation(self) -> bool:
        return False

    def val_fields(self) -> list[str]:
        return []

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the saved one (checked on resume)."""
        return {}

    def metadata(self) -> dict[str, Any]:
        """Stored in each checkpoint's config.json."""
        return {}

    def run_info(self) -> dict[str, Any]:
        """Extra facts for env.json."""
        return {}

    def on_improved(self) -> None:
        """After checkpoints/best was written (main process only)."""

    def finish(self, result: Any) -> dict[str, Any]:
        """After fit: summary entries (e.g. the test split's metrics)."""
        return {}

    def close(self) -> None:
        pass


@contextlib.contextmanager
def probing(model: nn.Module) -> Iterator[None]:
    """A forward pass to check shapes before training: eval mode, no gradients, the model's
    training mode restored afterwards."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)
