"""The training engine: the one fit loop every task runs (segmentation, distillation, ESP-MedSAM).

A :class:`~hrmedseg.training.tasks.base.Task` says what is trained: the model, the batches of an
epoch, the losses of a batch and the validation. The :class:`Engine` does everything else, by one
rule for every task:

* **time budget** (``train.time_limit_min``): training time only (the clock starts at a
  session's first batch; validation and saving are not training), summed over resumes; a run
  whose budget is already spent does not train again;
* **images/s** (``train_images_per_s``): images of the epoch over its training time, validation
  and saving excluded;
* **resume**: ``checkpoints/last`` holds the weights, optimizer, grad scaler, RNG, the epoch and
  the batch within it, the training time spent and the task's fingerprint; a rerun continues at
  the exact batch (``checkpoints/best`` holds the best monitored value);
* **NaN check**: losses are read every :data:`LOSS_READ_EVERY` steps and before every save; a
  non-finite loss stops the run before any checkpoint holds the broken weights;
* ``metrics.csv`` (one row per epoch; a run stopped by its budget mid-epoch adds a row for the
  partial epoch, its epoch fractional), ``curve.png``, ``config.yaml`` and ``env.json``; every
  row also goes to the loggers ``train.loggers`` names (``tensorboard``: ``RUN/tensorboard/``)
  and to any logger object given to the engine (:mod:`hrmedseg.training.loggers`);
* **DDP** under ``torchrun`` for every task: the segmentation model is wrapped in
  ``DistributedDataParallel``; tasks whose steps call several forward methods (distillation,
  ESP-MedSAM) shard each global batch and average gradients weighted by each rank's images.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..compiling import (COMPILE_ARTIFACTS, compile_error_line, is_compile_error,
                         save_compile_artifacts)
from ..provenance import source_commit
from .checkpoint import find_checkpoint, load_state, save_checkpoint
from .config import Config, TrainingSetupError, save_config
from .curves import SCORE_PREFIXES, plot_training_curves
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .loggers import RunLogger, check_logger_packages, open_loggers

# One autocast table for every task.
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
# The loop reads (and checks) the losses every this many steps, not every step: each read waits
# for the GPU, and a step under CUDA graphs is short enough that waiting every step idles it
# while the CPU prepares the next one.
LOSS_READ_EVERY = 10
# peak_mem_gb: the allocator's peak of live tensors; peak_reserved_gb: its reserved peak, which
# also counts CUDA graphs' private memory pools (the only honest figure for a compiled step).
RATE_FIELDS = ["lr", "epoch_time_s", "train_images_per_s", "peak_mem_gb", "peak_reserved_gb"]


@dataclass
class FitResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    best: float | None
    stopped_early: bool
    stop_reason: str
    resumed: bool


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


def build_optimizer(cfg: Config, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def worker_init(_: int) -> None:
    """DataLoader workers: no OpenCV or torch intra-op threads (the workers already use every
    core; the parent turned OpenCV's pool off before forking: see opencv_fork_safe)."""
    try:
        import cv2
        cv2.setNumThreads(0)
    except ImportError:
        pass
    torch.set_num_threads(1)


def _fresh_acc() -> dict[str, Any]:
    return {"sums": {}, "counts": {}, "images": 0, "train_s": 0.0}


class Engine:
    """Fits ``task`` as ``cfg`` says (see the module docstring for the rules).

    ``loggers``: objects with ``log_row(row, step)`` and ``close()``
    (:class:`~hrmedseg.training.loggers.RunLogger`) that receive every ``metrics.csv`` row
    beside the loggers ``train.loggers`` names; called on the main process only, closed when
    :meth:`fit` ends.
    """

    def __init__(self, cfg: Config, task: Any, dist_info: DistInfo | None = None,
                 progress: bool = True, loggers: Sequence[RunLogger] = ()) -> None:
        self.cfg = cfg
        self.task = task
        check_logger_packages(cfg.train.loggers)    # a missing package: before any file is made
        for lg in loggers:
            if not (callable(getattr(lg, "log_row", None)) and callable(getattr(lg, "close", None))):
                raise TypeError(f"logger {lg!r} needs log_row(row, step) and close() methods")
        self.extra_loggers = list(loggers)
        self._loggers: list[RunLogger] = []
        self.info = dist_info or init_distributed(cfg.train.device)
        self.device = self.info.device
        self.progress = progress and self.info.is_main
        self.run_dir = Path(cfg.train.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.amp = AMP[cfg.train.precision]
        seed_everything(cfg.train.seed, cfg.train.deterministic)  # the initial weights depend on it
        task.setup(self)
        self.model: nn.Module = task.model
        self.net: nn.Module = task.net if getattr(task, "net", None) is not None else self.model
        self.ddp_wrapped = isinstance(self.net, nn.parallel.DistributedDataParallel) or (
            hasattr(self.net, "_orig_mod")
            and isinstance(self.net._orig_mod, nn.parallel.DistributedDataParallel))
        self.params = list(task.parameters())
        self.opt = build_optimizer(cfg, self.params)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16")
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best: float | None = None
        # Training time of earlier sessions of this run (resume) and the start of this one:
        # the time budget and a time-horizon schedule count both.
        self.elapsed_before = 0.0
        self._session_start: float | None = None
        self.local_images = 0     # images of the current step on this rank (gradient weights)
        self._logged = set(task.loss_fields) | {"total"}
        self._restored_acc: dict[str, Any] | None = None
        self._artifacts_saved = False
        self._compile_ran = False

    # -- helpers for tasks ------------------------------------------------------------------
    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def shard(self, items: list[Any]) -> list[Any]:
        """This rank's contiguous share of one global batch (all of it in one process)."""
        if not self.info.enabled:
            return list(items)
        per = -(-len(items) // self.info.world_size)
        return list(items[self.info.rank * per:(self.info.rank + 1) * per])

    # -- state ------------------------------------------------------------------------------
    def _elapsed(self) -> float:
        now = time.monotonic()
        return self.elapsed_before + (now - self._session_start if self._session_start else 0.0)

    def _fingerprint(self) -> str:
        return json.dumps(self.task.fingerprint(), sort_keys=True, default=str)

    def _state(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "global_step": self.global_step, "best": self.best,
            # the key the segmentation trainer always wrote (run folders read it)
            f"best_{self.task.monitor}": self.best,
            "monitor": self.task.monitor, "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "world_size": self.info.world_size, "global_batch": self.cfg.train.batch_size,
            "elapsed_s": self._elapsed(), "task": self.cfg.task, "fingerprint": self._fingerprint(),
            "epoch_progress": self._acc_state(),
            "score_units": "fraction",
        }
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        return st

    def save(self, tag: str) -> None:
        if self.info.is_main:
            meta = {**self.task.metadata(), "epoch": self.epoch, "global_step": self.global_step}
            save_checkpoint(self.ckpt_dir, tag, self.model, self._state(), meta)
        barrier(self.info)

    def resume(self) -> Path | None:
        """Load ``checkpoints/last`` if present; returns its folder (None: nothing to resume)."""
        from ..models._hub import load_safetensors, load_state_dict_checked
        path = find_checkpoint(self.ckpt_dir, "last")
        if path is None:
            return None
        state = load_state(path)
        if state.get("global_batch", state.get("batch_size")) != self.cfg.train.batch_size:
            raise TrainingSetupError(f"{path}: saved with global batch {state.get('global_batch')}, "
                               f"config says {self.cfg.train.batch_size}; resume needs the same")
        saved_task = state.get("task", "segment")
        if saved_task != self.cfg.task:
            raise TrainingSetupError(f"{path}: a {saved_task} run, the config says task={self.cfg.task}; "
                             f"use a new output folder")
        now = self._fingerprint()
        # Run folders of the segmentation trainer before the engine carry no fingerprint.
        if "fingerprint" in state and state["fingerprint"] != now:
            raise TrainingSetupError(f"{path}: saved with {state['fingerprint']}, now {now}; resume needs "
                             f"the same data, sizes, seed and teachers (or use a new output folder)")
        weights = load_safetensors(path / "model.safetensors")
        load_state_dict_checked(self.model, weights, source=str(path / "model.safetensors"))
        self.opt.load_state_dict(state["optimizer"])
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best = state.get("best", state.get(f"best_{self.task.monitor}"))
        if state.get("score_units") != "fraction":
            self._scores_to_fractions()
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        prog = state.get("epoch_progress")
        if prog and self.batch_in_epoch > 0:
            keys = list(prog["keys"])
            vals = prog["values"].tolist()
            # Only the main process saves: its sums stand for the earlier session's steps
            # (the other ranks' share of them is not kept).
            keep = self.info.is_main
            self._restored_acc = {
                "sums": {k: v[0] for k, v in zip(keys, vals)} if keep else {},
                "counts": {k: int(v[1]) for k, v in zip(keys, vals)} if keep else {},
                "images": int(prog["images"]) if keep else 0, "train_s": float(prog["train_s"])}
        return path

    def _acc_state(self) -> dict[str, Any] | None:
        """The running epoch's sums (losses, images, training seconds) for a mid-epoch resume."""
        acc = getattr(self, "acc", None)
        if acc is None or self.batch_in_epoch == 0:
            return None
        keys = sorted(acc["sums"])
        values = torch.tensor([[acc["sums"][k], float(acc["counts"][k])] for k in keys],
                              dtype=torch.float64).reshape(-1, 2)
        return {"keys": keys, "values": values, "images": acc["images"],
                "train_s": acc["train_s"] + time.monotonic() - self._t0}

    # -- one step ---------------------------------------------------------------------------
    def _set_lr(self) -> float:
        per_epoch = max(1, self.task.batches_per_epoch())
        frac = None
        if self.cfg.schedule.horizon == "time" and self.cfg.train.time_limit_min > 0:
            frac = self._elapsed() / (60.0 * self.cfg.train.time_limit_min)
        lr = self.cfg.optim.lr * lr_factor(self.cfg, self.epoch + self.batch_in_epoch / per_epoch, frac)
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    def _reduce_gradients(self, local: int) -> float:
        """Tasks not wrapped in DDP: average gradients over ranks, weighted by each rank's
        images in this step (= the gradient of the global batch's mean loss). A parameter
        without a gradient on every rank keeps none (the optimizer skips it)."""
        total = all_reduce_sum(torch.tensor([float(local)], device=self.device), self.info)
        n = max(1.0, float(total))
        has = torch.tensor([p.grad is not None for p in self.params], dtype=torch.float32,
                           device=self.device)
        has = all_reduce_sum(has, self.info)
        for p, h in zip(self.params, has.tolist()):
            if h == 0:
                continue
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            g = g * (local / n)
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            p.grad = g
        return n

    def _global_terms(self, terms: dict[str, torch.Tensor], local: int, n: float
                      ) -> dict[str, torch.Tensor]:
        """The step's logged terms over the global batch (image-weighted over ranks), the same
        on every rank: the epoch means are then those of one process."""
        keys = sorted(self._logged)
        t = torch.tensor([[float(terms[k]) * local if k in terms else 0.0, float(k in terms)]
                          for k in keys], dtype=torch.float64, device=self.device)
        t = all_reduce_sum(t, self.info) / self.info.world_size
        return {k: t[i, 0] * self.info.world_size / n for i, k in enumerate(keys) if t[i, 1] > 0}

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimizer step; returns the task's loss terms as detached device scalars.
        Nothing here waits for the GPU: the loop reads the losses every few steps."""
        self.opt.zero_grad(set_to_none=True)   # untouched parameters keep grad None
        if getattr(self.task, "cudagraphs", False):
            # CUDA graphs reuse output buffers between replays: each step is a new one.
            torch.compiler.cudagraph_mark_step_begin()
        self.local_images = self.task.batch_images(batch)
        if self.local_images > 0:
            terms = self._losses_and_backward(batch)
        else:   # an empty shard of a short global batch: no gradient and no loss to log
            terms = {}
        if self.info.enabled and not self.ddp_wrapped:
            n = self._reduce_gradients(self.local_images)
            terms = self._global_terms({k: v.detach() for k, v in terms.items() if k in self._logged},
                                       self.local_images, n)
        if self.cfg.optim.clip_grad_norm > 0:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.params, self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        return {k: v.detach().float() for k, v in terms.items() if k in self._logged}

    def _losses_and_backward(self, batch: Any) -> dict[str, torch.Tensor]:
        """The task's losses and their backward; a failed compile (raised at the first forward
        or, as AOTAutograd compiles it lazily, the first backward) costs one line and the
        step is redone eager."""
        # Until a compiled step has run through, the buffers (BatchNorm statistics) are kept:
        # a forward that ran before the compile failed must not count twice.
        kept = ({k: b.detach().clone() for k, b in self.model.named_buffers()}
                if self.task.compile_mode is not None and not self._compile_ran else None)
        try:
            terms = self.task.losses(batch)
            self.task.backward(terms, self.scaler)
            self._compile_ran = True
            return terms
        except Exception as exc:
            if not (is_compile_error(exc) and self.task.disable_compile()):
                raise
            failure = compile_error_line(exc)
        if kept:
            with torch.no_grad():
                for k, b in self.model.named_buffers():
                    b.copy_(kept[k])
        self.net = self.task.net if self.task.net is not None else self.model
        print(f"torch.compile failed ({failure}); training continues without compiling",
              file=sys.stderr, flush=True)
        self.opt.zero_grad(set_to_none=True)
        terms = self.task.losses(batch)
        self.task.backward(terms, self.scaler)
        return terms

    def _save_compile_artifacts(self) -> None:
        """Once per session, after its first epoch (every graph compiled by then): the compiled
        artefacts into the run folder, for a resume on a machine with an empty cache."""
        if self._artifacts_saved or self.task.compile_mode is None or not self.info.is_main:
            return
        self._artifacts_saved = True
        save_compile_artifacts(self.run_dir / COMPILE_ARTIFACTS)

    def _check_finite(self, total: float, steps: int) -> None:
        if not math.isfinite(total):
            first = self.global_step - steps + 1
            raise FloatingPointError(f"loss became {total} within steps {first}-{self.global_step}; "
                                     "lower optim.lr or use train.precision=fp32")

    # -- files ------------------------------------------------------------------------------
    def csv_fields(self) -> list[str]:
        parts = [c for k, c in self.task.loss_fields.items() if k != "total"]
        return ["epoch", "step", "train_loss", *parts, *self.task.val_fields(), *RATE_FIELDS]

    def _write_run_files(self, resumed_from: Path | None) -> None:
        if not self.info.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        c = self.cfg
        env = {
            "task": c.task, "seed": c.train.seed, "deterministic": c.train.deterministic,
            "world_size": self.info.world_size, "global_batch": c.train.batch_size,
            "per_process_batch": c.train.batch_size // self.info.world_size,
            "base_lr": c.optim.lr,
            "lr_note": "the configured lr applies to the global batch; it is not rescaled with world size",
            "precision": c.train.precision, "device": str(self.device),
            "workers": self.task.workers if hasattr(self.task, "workers") else None,
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "torch": torch.__version__, "python": platform.python_version(),
            "commit": source_commit(), "resumed": resumed_from is not None,
            "resumed_from": None if resumed_from is None else
            {"checkpoint": str(resumed_from), "epoch": self.epoch, "step": self.global_step},
            "argv": sys.argv, "compile": self.task.compile_mode,
            "compile_reason": self.task.compile_reason,
            "grad_checkpointing": self.task.grad_checkpointing, **self.task.run_info(),
        }
        from ..atomic import write_json_atomic
        name = "env.json" if resumed_from is None else f"env_resume_step{self.global_step}.json"
        write_json_atomic(self.run_dir / name, env, default=str)
        if resumed_from is not None and (self.run_dir / "env.json").is_file():
            # env.json says the run was resumed (the first session's facts stay in it)
            first = json.loads((self.run_dir / "env.json").read_text())
            first["resumed"] = True
            first.setdefault("resumes", []).append(env["resumed_from"])
            write_json_atomic(self.run_dir / "env.json", first)

    def _open_loggers(self, resumed_from: Path | None) -> None:
        if not self.info.is_main:
            return
        self._loggers = [*open_loggers(self.cfg.train.loggers, self.run_dir, self.csv_fields(),
                                       None if resumed_from is None else self.global_step),
                         *self.extra_loggers]

    def _close_loggers(self) -> None:
        loggers, self._loggers = self._loggers, []
        for lg in loggers:
            lg.close()

    def _append_row(self, row: dict[str, Any]) -> None:
        if not self.info.is_main:
            return
        record = {k: row.get(k, "") for k in self.csv_fields()}   # metrics.csv's columns
        for lg in self._loggers:
            lg.log_row(dict(record), int(row["step"]))
        plot_training_curves(self.run_dir / "metrics.csv", self.run_dir / "curve.png",
                             log_loss=self.task.log_loss_axis)

    def _scores_to_fractions(self) -> None:
        """A run folder written when validation Dice/IoU were logged in percent: its best value
        and the score columns of its metrics.csv become fractions, as every file now holds."""
        from ..atomic import write_csv_atomic
        if self.best is not None and self.task.monitor.startswith(SCORE_PREFIXES):
            self.best = self.best / 100.0
        csv_path = self.run_dir / "metrics.csv"
        if not (self.info.is_main and csv_path.is_file()):
            return
        with open(csv_path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields, rows = list(reader.fieldnames or []), list(reader)
        for r in rows:
            for k in fields:
                if k.startswith(SCORE_PREFIXES) and r.get(k) not in (None, ""):
                    r[k] = str(round(float(r[k]) / 100.0, self.task.round_digits))
        write_csv_atomic(csv_path, fields, rows)

    def _improved(self, vals: dict[str, float]) -> bool:
        m = self.task.monitor
        if m not in vals:
            return not self.task.has_validation()  # the latest weights stand in as "best"
        v = vals[m]
        better = self.best is None or (v > self.best if self.task.mode == "max" else v < self.best)
        if better:
            self.best = v
        return better

    def _validate(self) -> dict[str, float]:
        self.net.eval()
        try:
            return self.task.validate()
        finally:
            self.net.train()

    def _score(self, row: dict[str, Any]) -> None:
        """Validation into ``row``; saves last, and best when the monitored value improved."""
        vals = self._validate()
        row.update({k: round(v, self.task.round_digits) for k, v in vals.items()})
        improved = self._improved(vals)
        self.save("last")
        if improved:
            self.save("best")
            if self.info.is_main:
                self.task.on_improved()

    # -- the run ----------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> FitResult:
        task = self.task
        task.before_fit()
        resumed_from = self.resume() if resume else None
        if resumed_from is not None and self.progress:
            print(f"resuming from {resumed_from} (epoch {self.epoch}, batch {self.batch_in_epoch}, "
                  f"step {self.global_step})", file=sys.stderr, flush=True)
        self._write_run_files(resumed_from)
        self._open_loggers(resumed_from)
        try:
            return self._train(resumed_from)
        finally:
            self._close_loggers()

    def _train(self, resumed_from: Path | None) -> FitResult:
        """:meth:`fit` after the run folder and the loggers are ready."""
        from ..progress import progress

        cfg, task = self.cfg, self.task
        task.prepare(resumed=resumed_from is not None)
        if (task.validate_at_start and resumed_from is None and self.info.is_main
                and not (self.run_dir / "metrics.csv").exists()):
            vals = self._validate()             # epoch 0: the starting point of the curve
            self.best = vals.get(task.monitor)
            self._append_row({"epoch": 0, "step": 0,
                              **{k: round(v, task.round_digits) for k, v in vals.items()}})
        budget = 60.0 * cfg.train.time_limit_min
        # The training clock starts at this session's first batch: DataLoader start-up is not
        # training time (counting it would decay a time-horizon lr before the first step).
        self._session_start = None
        stopped, why = False, ""
        if budget and self.elapsed_before >= budget:
            stopped, why = True, "time_limit"   # budget spent: a rerun does not train again
        steps_at_start = self.global_step
        per_epoch = task.batches_per_epoch()
        self.net.train()
        while self.epoch < cfg.train.epochs and not stopped:
            t0 = time.monotonic()
            self._t0 = t0
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            # The epoch's running sums; a run resumed mid-epoch (or killed between the epoch's
            # last batch and its validation) continues the ones it saved.
            acc = self.acc = self._restored_acc or _fresh_acc()
            self._restored_acc = None
            sums, counts = acc["sums"], acc["counts"]
            window: dict[str, torch.Tensor] = {}
            wcount: dict[str, int] = {}
            in_window, shown, lr = 0, "…", self.opt.param_groups[0]["lr"]
            bar = progress(total=per_epoch, initial=self.batch_in_epoch, unit="batch",
                       desc=f"{task.name} {self.epoch + 1}/{cfg.train.epochs}",
                       disable=not self.progress, dynamic_ncols=True, file=sys.stderr)

            def read() -> None:
                nonlocal in_window, shown
                if not in_window:
                    return
                for k, v in window.items():
                    total = float(v)
                    if k == "total":
                        self._check_finite(total, in_window)
                        shown = f"{total / max(1, wcount[k]):.4f}"
                    sums[k] = sums.get(k, 0.0) + total
                    counts[k] = counts.get(k, 0) + wcount[k]
                window.clear()
                wcount.clear()
                in_window = 0

            for batch in task.train_batches(self.epoch, self.batch_in_epoch):
                if self._session_start is None:
                    self._session_start = time.monotonic()
                lr = self._set_lr()
                terms = self.train_step(batch)
                for k, v in terms.items():
                    window[k] = window[k] + v if k in window else v.clone().double()
                    wcount[k] = wcount.get(k, 0) + 1
                self.batch_in_epoch += 1
                self.global_step += 1
                in_window += 1
                acc["images"] += self.local_images
                saving = bool(cfg.train.save_every_steps
                              and self.global_step % cfg.train.save_every_steps == 0)
                last = self.batch_in_epoch >= per_epoch
                if in_window >= LOSS_READ_EVERY or saving or last:
                    read()
                bar.set_postfix(loss=shown, lr=f"{lr:.2e}",
                                img_s=f"{acc['images'] / max(1e-9, time.monotonic() - t0):.1f}")
                bar.update(1)
                if saving:
                    self.save("last")
                if cfg.train.max_steps and self.global_step >= cfg.train.max_steps:
                    stopped, why = True, "max_steps"
                elif budget and self._elapsed() > budget:
                    stopped, why = True, "time_limit"
                if stopped:
                    break
            read()      # stopped early: the unread losses still count (and are checked)
            bar.close()
            # losses read: the device has finished the epoch; earlier sessions' share included
            train_dt = acc["train_s"] + time.monotonic() - t0
            stats = torch.tensor([float(acc["images"])], dtype=torch.float64, device=self.device)
            n_all = int(all_reduce_sum(stats, self.info)[0].item())
            means = self._epoch_means(sums, counts)
            if self.batch_in_epoch >= per_epoch:
                self.epoch += 1
                self.batch_in_epoch = 0
                row: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step,
                                       **means, "lr": lr}
                validating = self.epoch % cfg.train.val_every == 0 or self.epoch == cfg.train.epochs
                self._rates(row, t0, train_dt, n_all)
                if validating:
                    self._score(row)
                else:
                    improved = self._improved({})
                    self.save("last")
                    if improved:
                        self.save("best")
                        if self.info.is_main:
                            task.on_improved()
                row["epoch_time_s"] = round(time.monotonic() - t0, 2)
                self._append_row(row)
                self._save_compile_artifacts()
                if self.progress:
                    msg = ", ".join(f"{k}={_console(k, v)}" for k, v in row.items() if v != "")
                    print(f"[{task.name} epoch {self.epoch}] {msg}", file=sys.stderr, flush=True)
            elif why == "time_limit" and self.global_step > steps_at_start:
                # The budget ran out mid-epoch: score those steps too, so the best weights
                # are the best of everything trained.
                row = {"epoch": round(self.epoch + self.batch_in_epoch / per_epoch, 3),
                       "step": self.global_step, **means, "lr": lr}
                self._rates(row, t0, train_dt, n_all)
                self._score(row)
                row["epoch_time_s"] = round(time.monotonic() - t0, 2)
                self._append_row(row)
            else:
                self.save("last")  # stopped mid-epoch: resume continues at this exact batch
        return FitResult(self.run_dir, self.epoch, self.global_step, self.best, stopped, why,
                         resumed_from is not None)

    def _epoch_means(self, sums: dict[str, float], counts: dict[str, int]) -> dict[str, Any]:
        """Epoch means of the logged loss terms, averaged over ranks."""
        keys = sorted(self._logged)
        t = torch.tensor([[sums.get(k, 0.0), float(counts.get(k, 0))] for k in keys],
                         dtype=torch.float64, device=self.device)
        t = all_reduce_sum(t, self.info)
        out: dict[str, Any] = {}
        for (s, c), k in zip(t.tolist(), keys):
            col = "train_loss" if k == "total" else self.task.loss_fields.get(k)
            if col and c > 0:
                out[col] = round(s / c, 6)
        return out

    def _rates(self, row: dict[str, Any], t0: float, train_dt: float, n_imgs: int) -> None:
        # training only: validation and saving are in epoch_time_s, not in the rate; an epoch
        # with no image trained (nothing left of it on resume) gives no rate rather than 0
        if n_imgs > 0:
            row["train_images_per_s"] = round(n_imgs / max(train_dt, 1e-9), 2)
        if self.device.type == "cuda":
            row["peak_mem_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 1e9, 3)
            row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(self.device) / 1e9, 3)

    def close(self) -> None:
        self.task.close()
        cleanup(self.info)


def _console(key: str, value: Any) -> Any:
    """A metrics row's value as the console shows it (scores in percent)."""
    if key.startswith(SCORE_PREFIXES) and isinstance(value, float):
        return f"{100 * value:.2f}%"
    return value
