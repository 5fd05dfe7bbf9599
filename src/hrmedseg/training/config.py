"""The one typed training configuration, read from YAML with ``section.key=value`` overrides.

A run is described by a :class:`Config`; the CLI reads it (``hrmedseg train --config FILE
a.b=c ...``), the training engine receives it, and a resolved copy is written to the run folder.
Unknown keys and wrong types are errors that name the key, never silently ignored.

``task`` picks what is trained (:mod:`hrmedseg.training.tasks`): ``segment`` (supervised
segmentation, the sections ``model``/``data``/``loss``), ``distill`` (a student's image
embedding learns a teacher's; section ``distill``) or ``esp`` (ESP-MedSAM on several datasets of
one modality each, with MMDKD; section ``esp``). ``optim``, ``schedule`` and ``train`` apply to
every task: one budget, one resume, one images/s rule. Recipes: ``distill`` and ``esp_medsam``.

The dataclass defaults ARE the default recipe (``recipes/default.yaml`` spells them out):
HRMedSeg with its shipped distilled encoder, AdamW (lr 5e-4, weight decay 1e-4), one warm-up
epoch then cosine decay, Dice + cross-entropy, strong augmentation, bf16, batch 16. The lr is the
best of a sweep on Kvasir-SEG train → val (benchmarks/results/equal_time_h200x2_90s/); the loss
stayed because no early-training variant beat it by the 2-point margin fixed beforehand
(benchmarks/results/kvasir_early_training_h200/). The published recipe is ``--config paper``.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..compiling import COMPILE_MODES, normalize_switch
from ..errors import HrmedsegError
from .loggers import LOGGER_NAMES


class ConfigError(HrmedsegError, ValueError):
    """A configuration file or override that cannot be used (message names the key)."""


class TrainingSetupError(HrmedsegError, ValueError):
    """A training that cannot start or resume as configured: a run folder made with another
    batch, task or data; a teacher or dataset that does not fit the model (one line, exit 2)."""


@dataclass
class ModelConfig:
    name: str = "hrmedseg"
    num_classes: int = 1
    in_chans: int = 3
    pretrained: str = "default"       # "none", "default" (shipped weight) or a weight tag / folder
    # Recompute the encoder's blocks in backward (exact). auto: on when the step replays CUDA
    # graphs (train.compile resolved to reduce-overhead on CUDA): HRMedSeg's compiled step at
    # 1024² then runs 567 img/s in 0.194 GB/img against 657 img/s in 0.327 GB/img without
    # (benchmarks/results/speed_hrmedseg_1024_h200/cudagraphs_checkpointing_parity.json);
    # eager it costs about a third of the speed and stays off.
    grad_checkpointing: str = "auto"  # auto | true | false
    # With grad_checkpointing: the share (0, 1] of the encoder's blocks recomputed in backward,
    # spread evenly (HRMedSeg-family models); between the memory of all and the speed of none.
    grad_checkpointing_fraction: float = 1.0
    overrides: dict[str, Any] = field(default_factory=dict)   # model config fields


@dataclass
class DataConfig:
    root: str = ""                    # dataset folder (images/+masks/ or nnU-Net raw layout)
    splits: str = ""                  # splits JSON; "" = <root>/splits.json if present
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    kfold: int = 0                    # >0: QTSeg protocol (sorted names, contiguous folds)
    fold: int = 0
    size: list[int] = field(default_factory=lambda: [1024, 1024])
    normalize: str = "imagenet"       # imagenet | minmax | none
    augment: str = "strong"           # none | paper | strong
    # Where the training augmentation runs: "cpu" per item in the DataLoader workers; "device"
    # batched on the training device (workers only decode, the batch moves as uint8 and is
    # augmented and normalised there; the same parameters per (seed, epoch, index) as "cpu");
    # "auto" = device when training on CUDA, cpu otherwise. Images that are not uint8 after
    # loading (float sources) and 3-D slices are augmented per item either way.
    augment_device: str = "auto"      # auto | cpu | device
    cache_dir: str = ""               # pre-resized cache; "" = <out_dir>/../.cache/<dataset>
    # DataLoader processes; "auto" = min(8, CPU count - 1) (0 on a single core)
    workers: Any = "auto"
    on_error: str = "raise"           # raise | skip (bad files)
    # 3-D cases (nnU-Net raw layout with .nii.gz volumes) sampled as 2-D slices
    volumes: bool = False
    window: str = "abdomen"           # CT preset (abdomen|lung|bone|brain|soft_tissue) or percentile
    axis: int = 2                     # voxel axis to slice along
    empty_ratio: float = -1.0         # <0 keeps every empty slice; r keeps r x foreground slices


@dataclass
class OptimConfig:
    name: str = "adamw"               # adam | adamw | sgd
    lr: float = 5e-4
    weight_decay: float = 1e-4
    momentum: float = 0.9
    clip_grad_norm: float = 0.0


@dataclass
class ScheduleConfig:
    name: str = "cosine"              # exponential | step | cosine | constant
    gamma: float = 0.98               # exponential: per epoch; step: factor
    step_epochs: int = 50
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    # "epochs": the schedule runs over train.epochs; "time": over train.time_limit_min of
    # training (cosine/constant only) — for runs given a GPU-time budget instead of epochs.
    horizon: str = "epochs"


@dataclass
class LossConfig:
    name: str = "dice_ce"             # dice_focal | dice_ce | dice | ce | focal
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 16              # global batch (split across ranks under torchrun)
    precision: str = "bf16"           # fp32 | bf16 | fp16 (autocast)
    seed: int = 0
    deterministic: bool = False
    out_dir: str = "runs/hrmedseg"
    val_every: int = 1
    save_every_steps: int = 0         # 0 = only at epoch ends
    max_steps: int = 0                # stop early after this many optimizer steps (0 = off)
    time_limit_min: float = 0.0       # training budget in minutes, resumes included (0 = off)
    channels_last: bool = False
    # auto: compiled on CUDA (CUDA graphs, the compile cached across runs) for models whose
    # compiled training passed the parity check, eager elsewhere; true/false force it.
    compile: str = "auto"             # auto | true | false
    # torch.compile mode; auto = reduce-overhead on CUDA (CUDA graphs, for steps bound by kernel
    # launches: HRMedSeg at 512² ran slower than a U-Net with far more FLOPs in
    # benchmarks/results/equal_time_h200x2_90s/), default elsewhere. CUDA graphs need a fixed
    # batch shape (the sampler drops the last one).
    compile_mode: str = "auto"        # auto | default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_cache: str = ""           # compiled kernels kept across runs; "": ~/.cache/hrmedseg/torch-compile
    eval_test: bool = True            # evaluate the best checkpoint on the test split at the end
    device: str = "auto"              # auto | cpu | cuda
    # where each epoch's row goes: csv (metrics.csv, required) | tensorboard (RUN/tensorboard/)
    loggers: list[str] = field(default_factory=lambda: ["csv"])


@dataclass
class DistillConfig:
    """``task: distill``: the student (``model.name`` or a model folder, ``model.overrides``)
    learns the teacher's image embedding at ``data.size`` (square, a multiple of 16);
    ``data.augment`` none (teacher embeddings cached) or strong (teacher on every view)."""

    images: list[str] = field(default_factory=list)       # image folders (recursive) or files
    val_images: list[str] = field(default_factory=list)   # explicit held-out images
    val_fraction: float = 0.05                            # else this share of ``images``
    teacher: str = ""                                     # MobileSAM checkpoint (mobile_sam.pt)
    teacher_cache: str = ""                               # "" = <out_dir>/teacher_cache


@dataclass
class ESPConfig:
    """``task: esp``: ESP-MedSAM (``model.name``, ``model.overrides``) on ``datasets``, each a
    mapping {root, modality[, name, splits]}; square inputs of ``data.size`` (a multiple of 32)."""

    datasets: list[dict[str, Any]] = field(default_factory=list)
    teacher: str = ""                     # f_ViT-SAM: MobileSAM .pt or model folder; "": no MMDKD
    medical_teacher: str = ""             # f_ViT-Med: model folder or .pt; "": ``teacher``
    natural_images: list[str] = field(default_factory=list)   # x_nat folders; []: the medical batch
    num_modalities: int = 0               # 0: largest dataset id + 1
    init: str = ""                        # MobileSAM checkpoint for the encoder/decoder
    w_seg: float = 1.0
    w_universal: float = 1.0              # MMDKD part 1
    w_modality: float = 1.0               # MMDKD part 2
    modality_reduction: str = "sum"       # sum (eq. 1: s_n = B/B_n) | mean (s_n = 1)
    decoupled: bool = True
    focal_weight: float = 20.0            # λ of eq. 8
    sppg_weight: float = 1.0
    eval_hd: bool = True                  # Hausdorff distances in the final test evaluation


TASKS = ("segment", "distill", "esp")


@dataclass
class Config:
    task: str = "segment"                 # segment | distill | esp
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    esp: ESPConfig = field(default_factory=ESPConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any:
        return value
    if origin is list:
        (inner,) = typing.get_args(typ)
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, inner, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def apply_overrides(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Set the fields of the config dataclass ``obj`` from a nested mapping, coercing each
    value to the field's type; an unknown key or a wrong type raises :class:`ConfigError`
    naming ``prefix`` + the key."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {path!r} (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            apply_overrides(current, value, path + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], path))



def resolve_workers(value: Any) -> int:
    """``data.workers``: an integer >= 0, or "auto" = min(8, CPU count - 1), at least 0 (so a
    2-core machine gets one worker, under PyTorch's suggested maximum)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        import os
        return max(0, min(8, (os.cpu_count() or 1) - 1))
    return int(value)


def recipe_path(name: str) -> Path:
    """Path of a shipped recipe (``paper``, ``herseg``, ``qtseg``, ...)."""
    res = resources.files("hrmedseg") / "training" / "recipes" / f"{name}.yaml"
    if not res.is_file():
        avail = sorted(p.name[:-5] for p in (resources.files("hrmedseg") / "training" / "recipes").iterdir()
                       if p.name.endswith(".yaml"))
        raise ConfigError(f"no recipe named {name!r}; shipped recipes: {', '.join(avail)}")
    return Path(str(res))


def read_yaml_mapping(p: Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; one-line errors name the file."""
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Config | None = None) -> Config:
    """Defaults ← YAML file (a path or a recipe name) ← ``a.b=value`` overrides."""
    cfg = base or Config()
    if path:
        p = Path(path)
        if not p.exists() and not str(path).endswith((".yaml", ".yml")):
            p = recipe_path(str(path))
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        data = read_yaml_mapping(p)
        data.pop("recipe", None)
        apply_overrides(cfg, data)
    for ov in overrides:
        keys, value = parse_override(ov)
        nested: dict[str, Any] = {}
        cur = nested
        for k in keys[:-1]:
            cur = cur.setdefault(k, {})
        cur[keys[-1]] = value
        apply_overrides(cfg, nested)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    if cfg.task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    w = cfg.data.workers
    if isinstance(w, bool) or not (
            (isinstance(w, str) and (w.strip().lower() == "auto" or w.strip().isdigit()))
            or (isinstance(w, int) and w >= 0)):
        raise ConfigError(f"data.workers must be an integer >= 0 or auto, got {w!r}")
    if isinstance(w, str) and w.strip().isdigit():
        cfg.data.workers = int(w)
    if cfg.train.val_every < 1:
        raise ConfigError("train.val_every must be >= 1")
    for section, key in (("train", "compile"), ("model", "grad_checkpointing")):
        try:
            setattr(getattr(cfg, section), key,
                    normalize_switch(getattr(getattr(cfg, section), key)))
        except ValueError as exc:
            raise ConfigError(f"{section}.{key}: {exc}") from None
    if cfg.train.compile_mode not in ("auto", *COMPILE_MODES):
        raise ConfigError(f"train.compile_mode must be one of auto, {', '.join(COMPILE_MODES)}, "
                          f"got {cfg.train.compile_mode!r}")
    if cfg.train.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {cfg.train.precision!r}")
    if len(cfg.data.size) not in (1, 2) or min(cfg.data.size) <= 0:
        raise ConfigError(f"data.size must be S or [H, W], got {cfg.data.size}")
    if len(cfg.data.size) == 1:
        cfg.data.size = [cfg.data.size[0], cfg.data.size[0]]
    if cfg.optim.name not in ("adam", "adamw", "sgd"):
        raise ConfigError(f"optim.name must be adam, adamw or sgd, got {cfg.optim.name!r}")
    if cfg.schedule.name not in ("exponential", "step", "cosine", "constant"):
        raise ConfigError(f"schedule.name must be exponential, step, cosine or constant, "
                          f"got {cfg.schedule.name!r}")
    if cfg.schedule.horizon not in ("epochs", "time"):
        raise ConfigError(f"schedule.horizon must be epochs or time, got {cfg.schedule.horizon!r}")
    if cfg.schedule.horizon == "time":
        if cfg.train.time_limit_min <= 0:
            raise ConfigError("schedule.horizon=time needs a budget: train.time_limit_min > 0")
        if cfg.schedule.name not in ("cosine", "constant"):
            raise ConfigError(f"schedule.horizon=time works with cosine or constant, not "
                              f"{cfg.schedule.name!r}")
    if cfg.data.augment_device not in ("auto", "cpu", "device"):
        raise ConfigError(f"data.augment_device must be auto, cpu or device, "
                          f"got {cfg.data.augment_device!r}")
    if cfg.data.on_error not in ("raise", "skip"):
        raise ConfigError(f"data.on_error must be raise or skip, got {cfg.data.on_error!r}")
    unknown = [n for n in cfg.train.loggers if n not in LOGGER_NAMES]
    if unknown:
        raise ConfigError(f"train.loggers: unknown logger {unknown[0]!r} "
                          f"(known: {', '.join(LOGGER_NAMES)})")
    if "csv" not in cfg.train.loggers:
        raise ConfigError(f"train.loggers must include csv (metrics.csv is the run's record: "
                          f"curve.png and resume read it), got {cfg.train.loggers}")
    cfg.train.loggers = list(dict.fromkeys(cfg.train.loggers))
    if cfg.train.batch_size < 1 or cfg.train.epochs < 0:
        raise ConfigError("train.batch_size must be >= 1 and train.epochs >= 0")


def save_config(cfg: Config, path: Path) -> None:
    from ..atomic import atomic_write_bytes
    atomic_write_bytes(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False).encode())
