"""What a task tells the training engine: its model, batches, losses and validation."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...compiling import (COMPILE_ARTIFACTS, load_compile_artifacts, resolve_compile,
                          use_compile_cache, uses_cudagraphs)


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
    compile_mode: str | None = None  # the torch.compile mode the steps run under; None: eager
    compile_reason = "compile off"
    cudagraphs = False              # steps replay CUDA graphs: each must be marked a new step
    grad_checkpointing = False      # the model recomputes its blocks in backward

    def setup(self, engine: Any) -> None:
        self.engine = engine

    def _compile_choice(self, cfg: Any, device: torch.device) -> tuple[str | None, str]:
        """``train.compile``/``train.compile_mode`` as they resolve for :attr:`model` on
        ``device``: ``auto`` compiles a model whose class is ``compile_verified`` (its compiled
        training passed the parity check), in one process."""
        info = getattr(getattr(self, "engine", None), "info", None)
        return resolve_compile(cfg.train.compile, cfg.train.compile_mode, device.type,
                               bool(getattr(self.model, "compile_verified", False)),
                               bool(getattr(info, "enabled", False)))

    def apply_grad_checkpointing(self, cfg: Any, device: torch.device) -> None:
        """``model.grad_checkpointing`` (and its fraction) on :attr:`model` where it can
        recompute its blocks; ``auto`` is on where the step will replay CUDA graphs. A fraction
        the model cannot honour is a config error."""
        from ...models._base import CheckpointingError
        from ..config import ConfigError
        setting = cfg.model.grad_checkpointing
        on = (uses_cudagraphs(self._compile_choice(cfg, device)[0]) if setting == "auto"
              else setting == "true")
        self.grad_checkpointing = on and hasattr(self.model, "set_grad_checkpointing")
        if not self.grad_checkpointing:
            return
        frac = cfg.model.grad_checkpointing_fraction
        try:
            self.model.set_grad_checkpointing(True, **({"fraction": frac} if frac != 1.0 else {}))
        except CheckpointingError as exc:
            raise ConfigError(f"model.grad_checkpointing_fraction: {exc}") from None

    def compile_net(self, net: nn.Module, cfg: Any, device: torch.device) -> nn.Module:
        """``net`` (the module the steps call: :attr:`model`, or a wrapper of it) compiled as
        :meth:`_compile_choice` says, or ``net``. Compiled kernels go to the persistent cache,
        seeded from the run folder's artefacts."""
        mode, self.compile_reason = self._compile_choice(cfg, device)
        self.compile_mode = mode
        self.cudagraphs = uses_cudagraphs(mode)
        self._eager_net = net
        if mode is None:
            return net
        use_compile_cache(cfg.train.compile_cache or None)
        load_compile_artifacts(Path(cfg.train.out_dir) / COMPILE_ARTIFACTS)
        return torch.compile(net, mode=mode)

    def disable_compile(self) -> bool:
        """Back to the eager module after a failed compile; False when nothing was compiled."""
        if self.compile_mode is None:
            return False
        torch._dynamo.reset()
        self.net = self._eager_net
        self.compile_mode, self.cudagraphs = None, False
        self.compile_reason = "compile failed: eager"
        return True

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


class ModelMethod(nn.Module):
    """``forward(*args) = model.<name>(*args)``: one method of a model as the module a task's
    steps call (what ``torch.compile`` wraps and the engine switches between train and eval)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name

    def forward(self, *args: Any) -> Any:
        return getattr(self.model, self.name)(*args)


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
