"""Reproductions of the papers' table rows, each at its paper's protocol.

A *row* is one number of one table of one paper (``reproductions/<row_id>.yaml``, shipped with
the package): the paper's value(s) and protocol, our protocol as a training recipe plus
overrides, the seeds (or folds) to run, and the deviations we cannot avoid here. ``run_row``
trains and tests every seed/fold through the package's own trainer and evaluation and, once all
are done, writes one result file (``OUT/<row_id>.json``) with the fields of :data:`RESULT_KEYS`;
``format_report`` turns committed result files into ``docs/reproductions.md``.

Every run is one call of :func:`hrmedseg.training.run.train` with the row's ``task``
(``Config.task``): ``segment``, or ``esp`` for ESP-MedSAM, whose one run trains on all the
datasets ``overrides.esp.datasets`` names (folders under ``--data``) and is tested on each, so
the ESP rows of different datasets share it.

Run folders. Every seed/fold of every arm trains in ``OUT/runs/<model>-<label>-<digest>/``,
where the digest is a hash of the resolved training configuration (without paths, device,
worker count, where augmentation runs and time budget). Rows that ask for the same training (HRMedSeg Table 1, the
Table 5 "P" arm and the Table 9 full-δ row) therefore share their runs when given the same
OUT. A finished run has ``reproduce.json`` (its test metrics) and is read back, not rerun; an
unfinished one continues from its last checkpoint (the trainer's exact resume). With a time
limit, a call stops after the step that crosses it and the next call continues there.

Folds (QTSeg): ``data.kfold = 5`` — the sorted image names cut into five contiguous slices,
fold *i* is the test set (:func:`hrmedseg.data.splits.kfold_splits`; the same lists as the
``folds5`` key of ``../shared/data/dsb2018/splits.json``); no validation set, the final
weights are tested, as in QTSeg.

Metrics come from :func:`hrmedseg.evaluation.evaluate.evaluate_samples` on the test split,
per image then averaged, at the row's ``resolution`` (the papers resize to the model input and
evaluate there: ``model_resolution``). Dice, IoU, MAE and pixel accuracy are given in percent,
as the papers print them; HD/HD95 in pixels. ``gpu_seconds`` is the wall time of the calls that
trained and tested the row's runs (model building, training, validation, test), summed over
calls and runs, on the device the runs used (a run shared by several rows counts in each).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from ..atomic import atomic_write_bytes, write_json_atomic
from ..data.datasets import discover_pairs
from ..provenance import source_commit
from ..training.checkpoint import find_checkpoint, load_state
from ..training.config import Config, ConfigError, load_config
from ..training.run import train
from ..training.tasks.esp import NORMALIZE as ESP_NORMALIZE

PROTOCOL_FIELDS = ("epochs", "optimizer", "lr", "schedule", "batch", "size", "split", "loss",
                   "pretrained", "normalisation")
RESULT_KEYS = ("paper", "table", "dataset", "model", "metric", "paper_value", "ours", "ours_mean",
               "ours_std", "protocol", "paper_protocol", "deviations", "device", "date", "commit",
               "gpu_seconds")
PERCENT_METRICS = ("dice", "iou", "mae", "pixel_accuracy")
TASKS = ("segment", "esp")      # the training task a row runs (Config.task)
RESOLUTIONS = ("model_resolution", "original_resolution")
DONE_NAME = "reproduce.json"          # a finished run's test metrics
TIME_NAME = "reproduce_time.json"     # seconds of training/testing spent on a run, all calls
DEFAULT_RESULTS_DIR = "benchmarks/results/reproductions"
# Keys that say where or how fast a run happens, not what it trains: left out of the run digest.
_NOT_IN_DIGEST = {("train", "out_dir"), ("train", "device"), ("train", "time_limit_min"),
                  ("train", "eval_test"), ("data", "root"), ("data", "workers"),
                  ("data", "cache_dir"), ("data", "augment_device")}
# Config sections only one task reads: left out of the digest of the other tasks' runs.
_TASK_SECTIONS = {"distill": "distill", "esp": "esp"}
# The task word a segmentation run's digest carries: the one its run folders were named with
# before the config had a task, so they still resume.
_SEGMENT_DIGEST_WORD = "train"
_WEIGHT_KEYS = ("teacher", "medical_teacher", "init")   # esp section: files in --weights


class ReproduceError(ConfigError):
    """A row, recipe, dataset folder or result file that cannot be used (one-line message)."""


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Arm:
    """One training of a row (most rows have one; Table 5 "P" has two: with/without pretraining)."""

    name: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Unit:
    """One run of a row: an arm at one seed or one fold."""

    arm: Arm
    label: str          # "seed0" or "fold3"
    seed: int
    fold: int | None


@dataclass
class Row:
    id: str
    paper: str
    table: str
    dataset: str
    model: str
    metric: str
    paper_value: float | None
    paper_values: dict[str, Any]
    paper_protocol: dict[str, Any]
    task: str = "segment"                       # Config.task: segment | esp
    recipe: str = "default"                     # training recipe the overrides apply to
    # Config sections; task esp: esp.datasets lists {name, modality}, ``name`` the dataset folder
    overrides: dict[str, Any] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)    # reported besides the primary one
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    folds: int = 0
    arms: list[Arm] = field(default_factory=list)
    combine: str = ""                           # "difference": arm 0 minus arm 1
    base_metric: str = ""                       # the metric the arms are compared on
    resolution: str = "model_resolution"
    paper_dataset: str = ""                     # where the paper measured, if not `dataset`
    deviations: list[str] = field(default_factory=list)
    path: str = ""

    # -- runs -----------------------------------------------------------------------------
    def all_arms(self) -> list[Arm]:
        return list(self.arms) or [Arm()]

    def units(self, seeds: list[int] | None = None) -> list[Unit]:
        out: list[Unit] = []
        for arm in self.all_arms():
            if self.folds:
                folds = list(range(self.folds)) if seeds is None else list(seeds)
                bad = [f for f in folds if not 0 <= f < self.folds]
                if bad:
                    raise ReproduceError(f"{self.id}: fold {bad[0]} out of range (folds 0..{self.folds - 1})")
                seed = self.seeds[0] if self.seeds else 0
                out += [Unit(arm, f"fold{f}", seed, f) for f in folds]
            else:
                out += [Unit(arm, f"seed{s}", int(s), None)
                        for s in (self.seeds if seeds is None else seeds)]
        return out

    def datasets(self) -> list[str]:
        if self.task == "esp":
            return [str(d["name"]) for d in self.esp_datasets()]
        return [self.dataset]

    def esp_datasets(self) -> list[dict[str, Any]]:
        return list((self.overrides.get("esp") or {}).get("datasets") or [])

    def reported_metrics(self) -> list[str]:
        base = self.base_metric or self.metric
        names = [self.metric] + [m for m in self.metrics if m != self.metric]
        if self.combine:
            names = [self.metric] + [f"{base}/{a.name}" for a in self.all_arms()]
        return names


_ROW_KEYS = {f.name for f in dataclasses.fields(Row)} - {"path"}
_REQUIRED = ("id", "paper", "table", "dataset", "model", "metric", "paper_value", "paper_protocol")


def reproductions_dir() -> Path:
    return Path(str(resources.files("hrmedseg") / "experiments" / "reproductions"))


def load_row_file(path: str | Path) -> Row:
    """One recipe file → :class:`Row`; one-line errors name the file and the key."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ReproduceError(f"{p}: cannot read ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ReproduceError(f"{p}: top level must be a mapping")
    unknown = sorted(set(data) - _ROW_KEYS)
    if unknown:
        raise ReproduceError(f"{p}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_ROW_KEYS))})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ReproduceError(f"{p}: missing key {missing[0]!r}")
    if data["id"] != p.stem:
        raise ReproduceError(f"{p}: id {data['id']!r} differs from the file name")
    arms = [Arm(str(a.get("name", "")), dict(a.get("overrides") or {})) for a in data.pop("arms", []) or []]
    row = Row(**data, arms=arms, path=str(p))
    if row.task not in TASKS:
        raise ReproduceError(f"{p}: task must be one of {', '.join(TASKS)}, got {row.task!r}")
    if row.resolution not in RESOLUTIONS:
        raise ReproduceError(f"{p}: resolution must be one of {', '.join(RESOLUTIONS)}")
    missing_p = [k for k in PROTOCOL_FIELDS if k not in row.paper_protocol]
    if missing_p:
        raise ReproduceError(f"{p}: paper_protocol lacks {missing_p[0]!r}")
    if row.combine not in ("", "difference"):
        raise ReproduceError(f"{p}: combine must be 'difference' or absent, got {row.combine!r}")
    if row.combine and (len(row.arms) != 2 or not row.base_metric):
        raise ReproduceError(f"{p}: combine: difference needs two arms and a base_metric")
    if row.task == "esp":
        ds = row.esp_datasets()
        if not ds:
            raise ReproduceError(f"{p}: task esp needs overrides.esp.datasets")
        bad = [d for d in ds if not isinstance(d, dict) or set(d) != {"name", "modality"}]
        if bad:
            raise ReproduceError(f"{p}: overrides.esp.datasets entry {bad[0]!r} must be "
                                 f"{{name: DATASET FOLDER, modality: ID}}")
    if not row.folds and not row.seeds:
        raise ReproduceError(f"{p}: give seeds or folds")
    return row


def list_rows() -> list[Row]:
    """Every shipped row, in file-name order."""
    return [load_row_file(p) for p in sorted(reproductions_dir().glob("*.yaml"))]


def load_row(row_id: str) -> Row:
    p = reproductions_dir() / f"{row_id}.yaml"
    if not p.is_file():
        known = ", ".join(sorted(q.stem for q in reproductions_dir().glob("*.yaml")))
        raise ReproduceError(f"no reproduction row {row_id!r}; rows: {known}")
    return load_row_file(p)


# ---------------------------------------------------------------------------------------------
# Configurations of one run
# ---------------------------------------------------------------------------------------------

@dataclass
class RunSpec:
    """Everything one run needs: its training :class:`Config` (``config.task`` says which)."""

    config: Config

    @property
    def task(self) -> str:
        return self.config.task


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _flatten(obj: Any, data: dict[str, Any], prefix: str = "") -> list[str]:
    """Nested overrides → ``a.b=<json>`` strings, descending only into config sections (a
    dict-valued field such as ``model.overrides`` is given whole)."""
    out: list[str] = []
    for key, value in data.items():
        current = getattr(obj, key, None)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            out += _flatten(current, value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def dataset_root(data_dir: str | Path, name: str, only: bool) -> Path:
    """``DATA/<name>``; or DATA itself when it is the one dataset a row uses."""
    d = Path(data_dir)
    if (d / name).is_dir():
        return d / name
    if only and d.is_dir() and d.name == name:
        return d
    raise ReproduceError(f"{d / name}: dataset folder not found (--data is the folder holding "
                         f"{name}/)")


def build_spec(row: Row, unit: Unit, data_dir: str | Path | None = None,
               overrides: list[str] | tuple[str, ...] = (), weights_dir: str | Path | None = None,
               device: str = "auto") -> RunSpec:
    """The run of ``unit``: the row's recipe ← row overrides ← arm overrides ← ``overrides``
    (``a.b=value``), then seed/fold, dataset roots, weight files and device."""
    base = Config()
    strings = (["task=" + row.task] + _flatten(base, _deep_merge(row.overrides, unit.arm.overrides))
               + list(overrides))
    try:
        cfg = load_config(row.recipe, strings)
    except ConfigError as exc:
        raise ReproduceError(f"{row.path}: {exc}") from None
    if cfg.task != row.task:
        raise ReproduceError(f"{row.path}: recipe {row.recipe!r} and overrides give task "
                             f"{cfg.task!r}, the row is task {row.task!r}")
    cfg.train.seed = unit.seed
    if unit.fold is not None:
        cfg.data.kfold, cfg.data.fold = row.folds, unit.fold
    if cfg.task == "esp":
        only = len(cfg.esp.datasets) == 1
        cfg.esp.datasets = [
            {**d, "root": str(dataset_root(data_dir, d["name"], only) if data_dir else d["name"])}
            for d in cfg.esp.datasets]
        for key in _WEIGHT_KEYS:
            v = getattr(cfg.esp, key)
            if v and weights_dir and not Path(v).is_absolute():
                setattr(cfg.esp, key, str(Path(weights_dir) / v))
    elif data_dir is not None:
        cfg.data.root = str(dataset_root(data_dir, row.dataset, True))
    cfg.train.device = device
    return RunSpec(cfg)


def spec_digest(spec: RunSpec) -> str:
    """Hash of what a run trains (not where, on what device or how long per call)."""
    d = spec.config.to_dict()
    for sec, key in _NOT_IN_DIGEST:
        d[sec].pop(key, None)
    for sec, task in _TASK_SECTIONS.items():
        if spec.task != task:
            d.pop(sec)
    if spec.task == "esp":
        d["esp"]["datasets"] = [{k: v for k, v in x.items() if k != "root"}
                                for x in d["esp"]["datasets"]]
    d["task"] = _SEGMENT_DIGEST_WORD if spec.task == "segment" else spec.task
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_folder(out_dir: str | Path, row: Row, unit: Unit, spec: RunSpec) -> Path:
    return Path(out_dir) / "runs" / f"{spec.config.model.name}-{unit.label}-{spec_digest(spec)}"


# ---------------------------------------------------------------------------------------------
# Protocols, as comparable fields
# ---------------------------------------------------------------------------------------------

_LOSS_WORDS = {"dice_focal": "dice + focal", "dice_ce": "dice + ce", "dice": "dice", "ce": "ce",
               "focal": "focal"}


def _schedule_words(name: str, gamma: float, step_epochs: int, warmup: float) -> str:
    words = {"exponential": f"exponential x{gamma:g} per epoch",
             "step": f"step x{gamma:g} every {step_epochs} epochs"}.get(name, name)
    return words + (f", {warmup:g} warm-up epochs" if warmup else "")


def protocol_of(spec: RunSpec) -> dict[str, Any]:
    """Our protocol in the words ``paper_protocol`` uses (so the two can be compared)."""
    c = spec.config
    common = {"epochs": c.train.epochs, "optimizer": c.optim.name, "lr": c.optim.lr,
              "schedule": _schedule_words(c.schedule.name, c.schedule.gamma,
                                          c.schedule.step_epochs, c.schedule.warmup_epochs),
              "batch": c.train.batch_size, "size": list(c.data.size)}
    if spec.task == "esp":
        e = c.esp
        pre = []
        if e.init:
            pre.append(f"init {Path(e.init).name}")
        if e.teacher:
            pre.append(f"MMDKD teacher {Path(e.teacher).name}")
        return {**common,
                "split": "splits.json train/val/test; official split where a dataset has one",
                "loss": f"focal x{e.focal_weight:g} + dice + sppg bce + mmdkd",
                "pretrained": ", ".join(pre) or "none", "normalisation": ESP_NORMALIZE}
    split = (f"{c.data.kfold}-fold cross-validation (sorted names, contiguous slices)"
             if c.data.kfold else f"{c.data.train_split}/{c.data.val_split}/{c.data.test_split} "
                                  f"of {c.data.splits or 'splits.json'}")
    pre = c.model.pretrained
    return {**common, "split": split,
            "loss": _LOSS_WORDS.get(c.loss.name, c.loss.name),
            "pretrained": {"none": "none", "default": "shipped default weight"}.get(pre, pre),
            "normalisation": c.data.normalize}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return str(a).strip().casefold() == str(b).strip().casefold()


def compare_protocols(paper: dict[str, Any], ours: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fields that differ, fields the paper does not state) over :data:`PROTOCOL_FIELDS`."""
    differ, unstated = [], []
    for k in PROTOCOL_FIELDS:
        p = paper.get(k)
        if p is None or "not stated" in str(p):
            unstated.append(k)
        elif not _same(p, ours.get(k)):
            differ.append(k)
    return differ, unstated


def protocol_summary(p: dict[str, Any]) -> str:
    size = p.get("size") or []
    size_s = "x".join(str(s) for s in size) if isinstance(size, list) else str(size)
    return (f"{p.get('epochs')} epochs, {p.get('optimizer')} {p.get('lr'):g}, {p.get('schedule')}, "
            f"batch {p.get('batch')}, {size_s}, {p.get('loss')}, {p.get('split')}, "
            f"pretrained: {p.get('pretrained')}")


def row_protocol(row: Row) -> dict[str, Any]:
    """Our protocol for ``row`` (its first arm), without a dataset at hand."""
    return protocol_of(build_spec(row, row.units()[0]))


# ---------------------------------------------------------------------------------------------
# Training one run: the one place that calls the package's trainer
# ---------------------------------------------------------------------------------------------

@dataclass
class RunOutcome:
    finished: bool
    test: dict[str, dict[str, dict[str, float]]]   # dataset → resolution → metric (fractions)
    seconds: float
    device: str


def _device_name(device: str) -> str:
    if device in ("auto", "cuda") or device.startswith("cuda"):
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0 if device in ("auto", "cuda") else device)
    return "cpu"


def train_and_test(spec: RunSpec, run_dir: Path, dataset: str, minutes: float | None) -> RunOutcome:
    """Train (or continue) one run in ``run_dir`` for at most ``minutes`` of this call, and test
    it when its epochs are done. The only function here that calls the trainer,
    :func:`hrmedseg.training.run.train`: its ``train.time_limit_min`` counts the run's training
    time over all resumes, so this call's budget is added to the time already spent (the
    ``elapsed_s`` of ``checkpoints/last``). The summary's ``test`` is ``{resolution: {metric:
    mean}}`` of the test split (task segment) or ``{dataset name: {..., resolution: {metric:
    mean}}}`` (task esp).
    """
    t0 = time.monotonic()
    cfg = spec.config
    cfg.train.out_dir = str(run_dir)
    spent = 0.0
    last = find_checkpoint(run_dir / "checkpoints", "last")
    if last is not None:
        spent = float(load_state(last).get("elapsed_s", 0.0))
    cfg.train.time_limit_min = (spent + 60.0 * minutes) / 60.0 if minutes else 0.0
    try:
        summary = train(cfg)
    except (ConfigError, FileNotFoundError) as exc:
        raise ReproduceError(f"{run_dir}: {str(exc).splitlines()[0]}") from None
    finished = int(summary["epochs_done"]) >= cfg.train.epochs
    if "test" not in summary:
        test = {}
    elif spec.task == "esp":
        test = {name: {r: v[r] for r in RESOLUTIONS if r in v} for name, v in summary["test"].items()}
    else:
        test = {dataset: summary["test"]}
    return RunOutcome(finished, test, time.monotonic() - t0, _device_name(cfg.train.device))


# ---------------------------------------------------------------------------------------------
# Running a row
# ---------------------------------------------------------------------------------------------

def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReproduceError(f"{p}: unreadable ({exc})") from None


def _write_json(p: Path, data: dict[str, Any]) -> None:
    write_json_atomic(p, data)


def _check_data(row: Row, data_dir: str | Path) -> None:
    """Every dataset of the row is a readable layout, before any training starts."""
    for name in row.datasets():
        root = dataset_root(data_dir, name, len(row.datasets()) == 1)
        try:
            index = discover_pairs(root)
        except (OSError, ValueError) as exc:
            raise ReproduceError(f"{root}: {str(exc).splitlines()[0]}") from None
        if not len(index.samples):
            raise ReproduceError(f"{root}: no image/mask pairs")


def _metric_value(test: dict[str, Any], dataset: str, resolution: str, metric: str, where: Path) -> float:
    try:
        v = float(test[dataset][resolution][metric])
    except (KeyError, TypeError, ValueError):
        raise ReproduceError(f"{where}: no test {metric!r} for {dataset} at {resolution}") from None
    return 100.0 * v if metric in PERCENT_METRICS else v


def run_row(row_id: str, data_dir: str | Path, out_dir: str | Path,
            time_limit_min: float | None = None, device: str = "auto",
            seeds: list[int] | None = None, overrides: list[str] | tuple[str, ...] = (),
            weights_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every seed/fold of ``row_id`` not yet finished (resumable; ``time_limit_min`` bounds
    this call) and, when all are done, write ``OUT/<row_id>.json``.

    ``seeds`` (folds for a fold row) replaces the row's list; ``overrides`` (``a.b=value``)
    change the training configuration on top of the row's (the result then states the protocol
    that actually ran). Returns ``{"row", "done", "total", "result"}`` (``result`` None until
    every run is finished).
    """
    row = load_row(row_id)
    out = Path(out_dir)
    _check_data(row, data_dir)
    if weights_dir is None and row.task == "esp":
        guess = Path(data_dir).resolve().parent / "weights"
        weights_dir = guess if guess.is_dir() else None
    units = row.units(seeds)
    specs = [build_spec(row, u, data_dir, overrides, weights_dir, device) for u in units]
    for spec in specs:
        for key in _WEIGHT_KEYS if spec.task == "esp" else ():
            v = getattr(spec.config.esp, key)
            if v and not Path(v).exists():
                raise ReproduceError(f"{v}: {key} of {row.id} not found (pass --weights DIR)")
    half = sorted({str(getattr(spec.config.esp, key)) for spec in specs if spec.task == "esp"
                   for key in _WEIGHT_KEYS
                   if getattr(spec.config.esp, key) and _holds_half_weights(getattr(spec.config.esp, key))})
    deadline = None if not time_limit_min else time.monotonic() + 60.0 * time_limit_min
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for unit, spec in zip(units, specs):
        folder = run_folder(out, row, unit, spec)
        done = folder / DONE_NAME
        if done.is_file():
            records[(unit.arm.name, unit.label)] = _read_json(done)
            continue
        left = None if deadline is None else (deadline - time.monotonic()) / 60.0
        if left is not None and left <= 0:
            break
        folder.mkdir(parents=True, exist_ok=True)
        outcome = train_and_test(spec, folder, row.dataset, left)
        spent = _read_json(folder / TIME_NAME) if (folder / TIME_NAME).is_file() else {"seconds": 0.0}
        spent["seconds"] = round(float(spent["seconds"]) + outcome.seconds, 3)
        _write_json(folder / TIME_NAME, spent)
        if not outcome.finished:
            break
        if not outcome.test:
            raise ReproduceError(f"{folder}: the run finished without a test evaluation "
                                 f"(a test split and train.eval_test=true are needed)")
        rec = {"row": row.id, "arm": unit.arm.name, "unit": unit.label, "seed": unit.seed,
               "fold": unit.fold, "test": outcome.test, "seconds": spent["seconds"],
               "device": outcome.device, "protocol": protocol_of(spec)}
        _write_json(done, rec)
        records[(unit.arm.name, unit.label)] = rec
    status: dict[str, Any] = {"row": row.id, "done": len(records), "total": len(units), "result": None}
    if len(records) == len(units):
        result = build_result(row, units, records, out, specs)
        wanted = [u.label for u in row.units()]
        if [u.label for u in units] != wanted:
            result["deviations"].append(f"Ran {', '.join(dict.fromkeys(u.label for u in units))}, "
                                        f"not the row's {', '.join(dict.fromkeys(wanted))}.")
        if overrides:
            result["deviations"].append("Run with these changes to the row's configuration: "
                                        f"{', '.join(overrides)}.")
        for path in half:
            result["deviations"].append(f"The weights in {Path(path).name} were float16 (a "
                                        "half-size copy of the released float32 checkpoint).")
        path = out / f"{row.id}.json"
        _write_json(path, result)
        status["result"] = str(path)
    return status


def _holds_half_weights(path: str | Path) -> bool:
    """Whether a .pt checkpoint stores its floating-point tensors in float16 (a packed copy)."""
    import torch
    p = Path(path)
    if p.suffix != ".pt" or not p.is_file():
        return False
    state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    state = state.get("model", state) if isinstance(state, dict) else {}
    floats = [t for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    return bool(floats) and all(t.dtype == torch.float16 for t in floats)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build_result(row: Row, units: list[Unit], records: dict[tuple[str, str], dict[str, Any]],
                 out: Path, specs: list[RunSpec]) -> dict[str, Any]:
    """The row's result file (keys :data:`RESULT_KEYS`, then ``row``, ``metrics``,
    ``paper_values``, ``paper_dataset``, ``resolution``, ``runs``)."""
    labels = list(dict.fromkeys(u.label for u in units))
    arms = row.all_arms()

    folders = {(u.arm.name, u.label): run_folder(out, row, u, s) for u, s in zip(units, specs)}

    def value(arm: Arm, label: str, metric: str) -> float:
        rec = records[(arm.name, label)]
        return _metric_value(rec["test"], row.dataset, row.resolution, metric,
                             folders[(arm.name, label)] / DONE_NAME)

    def measured(metric: str) -> bool:
        return all(metric in (r["test"].get(row.dataset) or {}).get(row.resolution, {})
                   for r in records.values())

    per_metric: dict[str, dict[str, float]] = {}
    if row.combine == "difference":
        per_metric[row.metric] = {lb: value(arms[0], lb, row.base_metric) - value(arms[1], lb, row.base_metric)
                                  for lb in labels}
        for arm in arms:
            per_metric[f"{row.base_metric}/{arm.name}"] = {lb: value(arm, lb, row.base_metric) for lb in labels}
    else:
        for m in row.reported_metrics():   # a secondary metric the runs skipped is left out
            if m == row.metric or measured(m):
                per_metric[m] = {lb: value(arms[0], lb, m) for lb in labels}
    metrics = {}
    for m, per in per_metric.items():
        mean, std = _mean_std(list(per.values()))
        metrics[m] = {"per_run": {k: round(v, 4) for k, v in per.items()},
                      "mean": round(mean, 4), "std": round(std, 4)}
    primary = metrics[row.metric]
    devices = sorted({str(r.get("device")) for r in records.values()})
    runs = {f"{a}/{lb}" if a else lb: os.path.relpath(f, out) for (a, lb), f in folders.items()}
    return {
        "paper": row.paper, "table": row.table, "dataset": row.dataset, "model": row.model,
        "metric": row.metric, "paper_value": row.paper_value, "ours": primary["per_run"],
        "ours_mean": primary["mean"], "ours_std": primary["std"],
        "protocol": protocol_of(specs[0]), "paper_protocol": dict(row.paper_protocol),
        "deviations": list(row.deviations), "device": ", ".join(devices),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": source_commit(),
        "gpu_seconds": round(sum(float(r.get("seconds", 0.0)) for r in records.values()), 1),
        "row": row.id, "metrics": metrics, "paper_values": dict(row.paper_values),
        "paper_dataset": row.paper_dataset or row.dataset, "resolution": row.resolution,
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------
# --list and --report
# ---------------------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return "—" if v is None else (f"{v:+.2f}" if isinstance(v, float) and v < 0 else
                                  f"{v:.2f}" if isinstance(v, float) else str(v))


def format_list(rows: list[Row]) -> str:
    """A plain-text table of the catalogue (``hrmedseg reproduce --list``)."""
    head = ("row", "paper", "table", "dataset", "metric", "paper value", "runs", "protocol")
    lines = []
    for r in rows:
        n = f"{r.folds} folds" if r.folds else f"{len(r.seeds)} seeds"
        if len(r.all_arms()) > 1:
            n += f" x {len(r.all_arms())} arms"
        lines.append((r.id, r.paper, r.table, r.dataset, r.metric, _fmt(r.paper_value), n,
                      protocol_summary(row_protocol(r))))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    return "\n".join(fmt.format(*x) for x in [head, *lines])


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _match_words(paper: dict[str, Any], ours: dict[str, Any]) -> str:
    differ, unstated = compare_protocols(paper, ours)
    words = ("matches" if not differ else "differs: " + ", ".join(
        f"{k} ({_fmt(paper.get(k))} vs {_fmt(ours.get(k))})" for k in differ))
    if unstated:
        words += "; paper does not state: " + ", ".join(unstated)
    return words


def format_report(rows: list[Row], results_dir: str | Path, link_from: str | Path) -> str:
    """``docs/reproductions.md``: one line per row, from the result files in ``results_dir``
    (``<row_id>.json``) alone; rows without one are listed as not run yet, with the protocol
    their recipe will run. Links are relative to the folder ``link_from``."""
    results_dir = Path(results_dir)
    lines = [
        "# Reproductions of the papers' tables",
        "",
        "Generated by `hrmedseg reproduce --report` from the result files in "
        f"`{DEFAULT_RESULTS_DIR}/`; do not edit by hand. Each row is one number of one paper, "
        "trained and tested by `hrmedseg reproduce ROW --data DIR -o OUT` at the paper's protocol "
        "(`hrmedseg reproduce --list`; recipes in `src/hrmedseg/experiments/reproductions/`). "
        "Ours: mean ± sample standard deviation over the seeds or folds (n); Dice, IoU and MAE "
        "in percent, per image, on the test split(s). Protocol: the fields where our run differs "
        "from the paper's (paper vs ours), and those the paper leaves unstated.",
        "",
        "| row | paper, table | dataset | metric | paper | ours | ours − paper | protocol | deviations | result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        path = results_dir / f"{row.id}.json"
        dataset = row.dataset if not row.paper_dataset else f"{row.dataset} (paper: {row.paper_dataset})"
        if path.is_file():
            res = _read_json(path)
            missing = [k for k in RESULT_KEYS if k not in res]
            if missing:
                raise ReproduceError(f"{path}: result file lacks {missing[0]!r}")
            n = len(res["ours"])
            ours = f"{res['ours_mean']:.2f} ± {res['ours_std']:.2f} (n={n})"
            pv = res["paper_value"]
            delta = "—" if pv is None else f"{res['ours_mean'] - pv:+.2f}"
            proto = _match_words(res["paper_protocol"], res["protocol"])
            devs = " ".join(res["deviations"]) or "none"
            link = f"[{path.name}]({Path(os.path.relpath(path, link_from)).as_posix()})"
            cells = (row.id, f"{res['paper']}, {res['table']}", dataset, res["metric"], _fmt(pv),
                     ours, delta, proto, devs, link)
        else:
            proto = protocol_summary(row_protocol(row))
            cells = (row.id, f"{row.paper}, {row.table}", dataset, row.metric, _fmt(row.paper_value),
                     "not run yet", "—", f"will run: {proto}; vs paper: "
                     f"{_match_words(row.paper_protocol, row_protocol(row))}",
                     " ".join(row.deviations) or "none", "—")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(results_dir: str | Path, out_path: str | Path, rows: list[Row] | None = None) -> Path:
    out = Path(out_path)
    text = format_report(list_rows() if rows is None else rows, results_dir, out.parent)
    return atomic_write_bytes(out, text.encode())
