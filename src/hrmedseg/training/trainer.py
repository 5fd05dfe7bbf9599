"""The training loop: mixed precision, atomic checkpoints, exact resume, DDP, curves.

The trainer receives a :class:`~hrmedseg.training.config.Config` and datasets; it knows
neither the command line nor file formats (``data_setup`` builds the datasets).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..compiling import uses_cudagraphs
from ..metrics.tensor import logits_to_labels, per_image_dice_iou
from ..models._base import CheckpointingError
from ..provenance import source_commit
from .metrics_log import append_csv_row
from .checkpoint import find_checkpoint, load_state, save_checkpoint
from .config import Config, ConfigError, save_config
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .sampler import EpochBatchSampler, SeededDataset

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# The loop reads (and checks) the losses every this many steps, not every step: each read waits
# for the GPU, and a step under CUDA graphs is short enough that waiting every step idles it
# while the CPU prepares the next one.
LOSS_READ_EVERY = 10
CSV_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_dice", "val_iou", "lr",
              "epoch_time_s", "train_images_per_s", "peak_mem_gb"]


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    best_val_dice: float | None
    stopped_early: bool


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    import numpy as np
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def lr_factor(cfg: Config, epoch_float: float, time_fraction: float | None = None) -> float:
    """Learning-rate multiplier at a (fractional) epoch: warm-up, then the schedule.

    With ``schedule.horizon = "time"`` the cosine runs over the fraction of the time budget
    spent (``time_fraction``, 0…1) instead of over epochs; warm-up stays in epochs.
    """
    s = cfg.schedule
    if s.warmup_epochs > 0 and epoch_float < s.warmup_epochs:
        return max(epoch_float / s.warmup_epochs, 1e-3)
    e = epoch_float - s.warmup_epochs
    base = cfg.optim.lr
    floor = s.min_lr / base if base > 0 else 0.0
    if s.horizon == "time" and time_fraction is not None:
        if s.name == "cosine":
            return max(0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, time_fraction)))), floor)
        return 1.0
    if s.name == "exponential":
        f = s.gamma ** math.floor(e)          # decays once per epoch, as the papers do
    elif s.name == "step":
        f = s.gamma ** math.floor(e / max(1, s.step_epochs))
    elif s.name == "cosine":
        total = max(1e-9, cfg.train.epochs - s.warmup_epochs)
        f = 0.5 * (1 + math.cos(math.pi * min(1.0, e / total)))
    else:
        f = 1.0
    return max(f, floor)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    from ..data.datasets import collate_segmentation
    return collate_segmentation(items)


def _worker_init(_: int) -> None:
    # No OpenCV or torch intra-op threads inside a DataLoader worker: the workers already use
    # every core. (The parent turned OpenCV's pool off before forking: see opencv_fork_safe.)
    try:
        import cv2
        cv2.setNumThreads(0)
    except ImportError:
        pass
    torch.set_num_threads(1)


class Trainer:
    def __init__(self, cfg: Config, model: nn.Module, loss_fn: nn.Module, train_set: Dataset,
                 val_set: Dataset | None = None, dist_info: DistInfo | None = None,
                 preprocess: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        self.info = dist_info or init_distributed(cfg.train.device)
        self.device = self.info.device
        self.run_dir = Path(cfg.train.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.preprocess = preprocess or {}
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        self.model = model.to(self.device)
        # Parameters a model declares unused (e.g. SAM leftovers of the released HRMedSeg layout)
        # never receive gradients; freezing them keeps DDP's reducer and Adam's state exact.
        unused = set(getattr(self.model, "unused_parameter_names", lambda: [])())
        for name, p in self.model.named_parameters():
            if name in unused:
                p.requires_grad_(False)
        if cfg.model.grad_checkpointing and hasattr(self.model, "set_grad_checkpointing"):
            frac = cfg.model.grad_checkpointing_fraction
            try:
                self.model.set_grad_checkpointing(True, **({"fraction": frac} if frac != 1.0 else {}))
            except CheckpointingError as exc:
                raise ConfigError(f"model.grad_checkpointing_fraction: {exc}") from None
        if cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        self.sync_bn = False
        if self.info.enabled:
            has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules())
            # SyncBatchNorm runs on CUDA only; on CPU (gloo) BN statistics stay per process.
            if has_bn and self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
                self.net = self.model
                self.sync_bn = True
            # Gradients as views into the all-reduce buckets: no copy into the buckets after
            # backward and one gradient-sized buffer less.
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True)
        if cfg.train.compile:
            self.net = torch.compile(self.net, mode=cfg.train.compile_mode)
        self._cudagraphs = cfg.train.compile and uses_cudagraphs(cfg.train.compile_mode)
        self.loss_fn = loss_fn
        self.opt = build_optimizer(cfg, self.model)
        self.amp = AMP[cfg.train.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.train_set, self.val_set = train_set, val_set
        if cfg.data.workers > 0:
            from ..data.io import opencv_fork_safe
            opencv_fork_safe()
        self.sampler = EpochBatchSampler(len(train_set), cfg.train.batch_size, self.info.rank,  # type: ignore[arg-type]
                                         self.info.world_size, shuffle=True, seed=cfg.train.seed)
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best: float | None = None
        # Training time of earlier sessions of this run (resume) and the start of this one:
        # the time budget and a time-horizon schedule count both.
        self.elapsed_before = 0.0
        self._session_start: float | None = None
        self._train_loader: DataLoader | None = None

    # -- state ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step, "best_val_dice": self.best,
            "optimizer": self.opt.state_dict(), "scaler": self.scaler.state_dict(),
            "torch_rng": torch.get_rng_state(), "world_size": self.info.world_size,
            "global_batch": self.cfg.train.batch_size, "elapsed_s": self._elapsed(),
        }
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        return st

    def _metadata(self) -> dict[str, Any]:
        return {"preprocess": self.preprocess, "epoch": self.epoch, "global_step": self.global_step}

    def save(self, tag: str) -> None:
        if self.info.is_main:
            save_checkpoint(self.ckpt_dir, tag, self.model, self._state(), self._metadata())
        barrier(self.info)

    def resume(self) -> bool:
        """Load ``checkpoints/last`` if present; returns whether a run was resumed."""
        from ..models._hub import load_safetensors, load_state_dict_checked
        path = find_checkpoint(self.ckpt_dir, "last")
        if path is None:
            return False
        state = load_state(path)
        weights = load_safetensors(path / "model.safetensors")
        load_state_dict_checked(self.model, weights, source=str(path / "model.safetensors"))
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])
        if state.get("global_batch") != self.cfg.train.batch_size:
            raise RuntimeError(f"{path}: saved with global batch {state.get('global_batch')}, "
                               f"config says {self.cfg.train.batch_size}; resume needs the same")
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), state["best_val_dice"]
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        return True

    # -- one epoch --------------------------------------------------------------------------
    def _elapsed(self) -> float:
        now = time.monotonic()
        return self.elapsed_before + (now - self._session_start if self._session_start else 0.0)

    def _loader(self) -> DataLoader:
        # One loader for the whole run: its workers persist across epochs (a short epoch would
        # otherwise spend seconds restarting them). The epoch reaches the workers through the
        # sampler's (index, epoch) keys, so augmentation stays seeded per sample and epoch.
        # (The hang seen on the H100 in session 3 was OpenCV's pool at fork time, not this:
        # see hrmedseg.data.io.opencv_fork_safe.)
        if self._train_loader is None:
            self._train_loader = self._make_loader()
        return self._train_loader

    def _make_loader(self) -> DataLoader:
        workers = self.cfg.data.workers
        return DataLoader(SeededDataset(self.train_set, self.cfg.train.seed), batch_sampler=self.sampler,
                          num_workers=workers, collate_fn=_collate,
                          worker_init_fn=_worker_init if workers > 0 else None,
                          pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                          prefetch_factor=4 if workers > 0 else None,
                          # Own generator: creating an iterator must not draw from the global
                          # RNG, or a resumed run's dropout/drop-path draws would shift.
                          generator=torch.Generator().manual_seed(self.cfg.train.seed))

    def _set_lr(self) -> float:
        per_epoch = self.sampler.batches_per_epoch()
        frac = None
        if self.cfg.schedule.horizon == "time" and self.cfg.train.time_limit_min > 0:
            frac = self._elapsed() / (60.0 * self.cfg.train.time_limit_min)
        lr = self.cfg.optim.lr * lr_factor(self.cfg, self.epoch + self.batch_in_epoch / per_epoch, frac)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch to device; uint8 images are normalised there (cheaper than in the workers)."""
        x = batch["image"].to(self.device, non_blocking=True)
        if not batch.get("normalized", True):
            from ..data.gpu_normalize import normalize_batch
            x = normalize_batch(x, batch.get("normalization") or self.cfg.data.normalize)
        y = batch["mask"].to(self.device, non_blocking=True).long()
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def train_step(self, batch: dict[str, Any]) -> torch.Tensor:
        """One optimizer step; returns the loss as a detached device scalar. Nothing here
        waits for the GPU: the caller reads losses (and checks they are finite) every few
        steps, so the CPU queues the next step while the GPU runs this one."""
        x, y = self._inputs(batch)
        self.opt.zero_grad(set_to_none=True)
        if self._cudagraphs:
            # CUDA graphs reuse output buffers between replays: each step is a new one.
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            logits = self.net(x)
        loss = self.loss_fn(logits.float(), y)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        return loss.detach()

    def _read_losses(self, window: torch.Tensor, steps: int) -> float:
        """Mean of the last ``steps`` losses (summed on the device in ``window``): the one place
        the step loop waits for the GPU. A non-finite loss stops the run here, before any save."""
        total = float(window)
        if not math.isfinite(total):
            first = self.global_step - steps + 1
            raise FloatingPointError(f"loss became {total} within steps {first}-{self.global_step}; "
                                     "lower optim.lr or use train.precision=fp32")
        return total / max(1, steps)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:  # type: ignore[arg-type]
            return {}
        self.net.eval()
        num_classes = int(self.model.config.num_classes)
        idx = list(range(self.info.rank, len(self.val_set), self.info.world_size))  # type: ignore[arg-type]
        bs = max(1, self.cfg.train.batch_size // self.info.world_size)
        loader = DataLoader(torch.utils.data.Subset(self.val_set, idx), batch_size=bs,
                            num_workers=self.cfg.data.workers, collate_fn=_collate,
                            generator=torch.Generator().manual_seed(self.cfg.train.seed))
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # loss, dice, iou, count
        for batch in loader:
            x, y = self._inputs(batch)
            with self._autocast():
                logits = self.model(x)
            logits = logits.float()
            loss = self.loss_fn(logits, y)
            dice, iou = per_image_dice_iou(logits_to_labels(logits), y, num_classes)
            n = x.shape[0]
            sums += torch.tensor([float(loss) * n, dice.mean(1).sum().item(), iou.mean(1).sum().item(), n],
                                 dtype=torch.float64, device=self.device)
        sums = all_reduce_sum(sums, self.info)
        self.net.train()
        n = max(1.0, sums[3].item())
        return {"val_loss": sums[0].item() / n, "val_dice": 100 * sums[1].item() / n,
                "val_iou": 100 * sums[2].item() / n}

    # -- the run ------------------------------------------------------------------------------
    def _write_run_files(self, resumed: bool) -> None:
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        env = {
            "seed": self.cfg.train.seed, "deterministic": self.cfg.train.deterministic,
            "world_size": self.info.world_size, "global_batch": self.cfg.train.batch_size,
            "per_process_batch": self.cfg.train.batch_size // self.info.world_size,
            "base_lr": self.cfg.optim.lr,
            "lr_note": "the configured lr applies to the global batch; it is not rescaled with world size",
            "precision": self.cfg.train.precision, "device": str(self.device),
            "sync_batchnorm": self.sync_bn,
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "commit": source_commit(), "resumed": resumed, "argv": sys.argv,
            "train_samples": len(self.train_set),  # type: ignore[arg-type]
            "val_samples": len(self.val_set) if self.val_set is not None else 0,  # type: ignore[arg-type]
        }
        from ..atomic import atomic_write_bytes
        name = "env.json" if not resumed else f"env_resume_step{self.global_step}.json"
        atomic_write_bytes(self.run_dir / name, (json.dumps(env, indent=2) + "\n").encode())

    def _append_csv(self, row: dict[str, Any]) -> None:
        append_csv_row(self.run_dir / "metrics.csv", row, CSV_FIELDS)

    def fit(self, resume: bool = True) -> FitResult:
        from tqdm.auto import tqdm

        from .curves import plot_training_curves

        resumed = self.resume() if resume else False
        self._write_run_files(resumed)
        cfg = self.cfg
        # The training clock (time budget, time-horizon schedule) starts at this session's first
        # batch: DataLoader start-up is not training time, and counting it would decay a
        # time-horizon lr before the first step (9 s of an 18 s budget in one GPU run).
        self._session_start = None
        stopped = False
        self.net.train()
        while self.epoch < cfg.train.epochs and not stopped:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            loader = self._loader()
            t0 = time.monotonic()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            loss_sum, seen, n_imgs = 0.0, 0, 0
            window = torch.zeros((), dtype=torch.float64, device=self.device)
            in_window, shown = 0, "…"   # the bar's loss: the mean of the last window read
            bar = tqdm(total=self.sampler.batches_per_epoch(), initial=self.batch_in_epoch,
                       desc=f"epoch {self.epoch + 1}/{cfg.train.epochs}", unit="batch",
                       disable=not self.info.is_main, dynamic_ncols=True, file=sys.stderr)
            for batch in loader:
                if self._session_start is None:
                    self._session_start = time.monotonic()
                lr = self._set_lr()
                window += self.train_step(batch)
                self.batch_in_epoch += 1
                self.global_step += 1
                in_window += 1
                n_imgs += batch["image"].shape[0] * self.info.world_size
                saving = bool(cfg.train.save_every_steps
                              and self.global_step % cfg.train.save_every_steps == 0)
                last = self.batch_in_epoch >= self.sampler.batches_per_epoch()
                if in_window >= LOSS_READ_EVERY or saving or last:
                    mean = self._read_losses(window, in_window)
                    loss_sum, seen = loss_sum + mean * in_window, seen + in_window
                    window.zero_()
                    in_window, shown = 0, f"{mean:.4f}"
                rate = n_imgs / max(1e-9, time.monotonic() - t0)
                bar.set_postfix(loss=shown, lr=f"{lr:.2e}", img_s=f"{rate:.1f}")
                bar.update(1)
                if saving:
                    self.save("last")
                out_of_steps = cfg.train.max_steps and self.global_step >= cfg.train.max_steps
                out_of_time = (cfg.train.time_limit_min and
                               self._elapsed() > 60 * cfg.train.time_limit_min)
                if out_of_steps or out_of_time:
                    stopped = True
                    break
            if in_window:  # stopped early: the unread losses still count (and are checked)
                mean = self._read_losses(window, in_window)
                loss_sum, seen = loss_sum + mean * in_window, seen + in_window
            bar.close()
            train_dt = time.monotonic() - t0   # losses read: the GPU has finished the epoch
            epoch_done = self.batch_in_epoch >= self.sampler.batches_per_epoch()
            stats = torch.tensor([loss_sum, float(seen)], dtype=torch.float64, device=self.device)
            stats = all_reduce_sum(stats, self.info)
            train_loss = (stats[0] / stats[1].clamp_min(1)).item()
            if epoch_done:
                self.epoch += 1
                self.batch_in_epoch = 0
                row: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step,
                                       "train_loss": round(train_loss, 6), "lr": self.opt.param_groups[0]["lr"]}
                if self.val_set is not None and (self.epoch % cfg.train.val_every == 0
                                                 or self.epoch == cfg.train.epochs):
                    row.update({k: round(v, 4) for k, v in self.validate().items()})
                dt = time.monotonic() - t0
                row["epoch_time_s"] = round(dt, 2)
                # training only: validation and saving are in epoch_time_s, not in the rate
                row["train_images_per_s"] = round(n_imgs / max(train_dt, 1e-9), 2)
                if self.device.type == "cuda":
                    row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 3)
                if "val_dice" in row:
                    improved = self.best is None or row["val_dice"] > self.best
                    if improved:
                        self.best = row["val_dice"]
                else:  # no validation this epoch: the latest weights stand in as "best"
                    improved = self.val_set is None
                self.save("last")
                if improved:
                    self.save("best")
                if self.info.is_main:
                    self._append_csv(row)
                    plot_training_curves(self.run_dir / "metrics.csv", self.run_dir / "curve.png")
                    msg = ", ".join(f"{k}={v}" for k, v in row.items())
                    print(f"[epoch {self.epoch}] {msg}", file=sys.stderr, flush=True)
            else:
                self.save("last")  # stopped mid-epoch: resume continues at this exact batch
        return FitResult(self.run_dir, self.epoch, self.global_step, self.best, stopped)

    def close(self) -> None:
        self._train_loader = None   # ends persistent workers
        cleanup(self.info)
