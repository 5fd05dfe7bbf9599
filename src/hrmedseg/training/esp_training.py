"""ESP-MedSAM training across several datasets (one modality each) with MMDKD distillation.

Paper: Xu, Li et al., "ESP-MedSAM" (papers/esp-medsam.txt; SPEC "ESP-MedSAM"). The model is
:class:`hrmedseg.models.esp_medsam.ESPMedSAM`; this module trains it. Written from the paper —
the authors never released their distillation code.

**Batches.** Every dataset ``(root, modality id)`` is an ``images/`` + ``masks/`` folder read
by :func:`~hrmedseg.data.datasets.discover_pairs`; its split comes from ``ROOT/splits.json``
(or a given file; keys train/val/test), else the layout's official split (DRIVE-style), else
the seeded 80/10/10 split — the order ``hrmedseg train`` uses. An epoch shows every training image once: each dataset's
training images are shuffled and cut into batches (the last one may be smaller), and the
batches of all datasets are then shuffled together. **A batch never mixes datasets**, so each
forward routes through exactly one controller bag, query and hypernetwork (``modality`` is an
int for the whole batch). The order depends only on (seed, epoch), so a resumed run sees
exactly the batches, augmentations and natural images an uninterrupted one would.

**Loss of one step** on a batch ``x`` of modality ``n``::

    L = w_seg · [λ·focal + Dice + w_sppg·BCE_SPPG]               esp_medsam_loss (eq. 8 + eq. 5)
      + w_uni · MSE( f_LIE(x_nat),  f_ViT-SAM(x_nat) )            MMDKD part 1 (eq. 1, first term)
      + w_mod · s_n · MSE( f_MC(x, n), f_ViT-Med(x, n) )          MMDKD part 2 (eq. 1, n-th summand)

* Part 1, *universal* distillation: the **bare** light encoder (TinyViT + neck, no controller
  bag: ``ESPMedSAM.image_embeddings(x, None)``) learns the natural-image SAM encoder's
  embedding. ``x_nat`` are natural images (``natural_images``, SA-1B in the paper; one batch of
  them per step); without such a folder the medical batch itself is used.
* Part 2, *modality-specific* distillation: the light encoder **driven by bag n**
  (``image_embeddings(x, n)``, the same E^n the decoder uses) learns the medical teacher's
  embedding of the same batch. The medical teacher ``f_ViT-Med`` is a SAM fine-tuned on medical
  images (``medical_teacher``); a modality-aware teacher (an ESP-MedSAM-style model with
  ``image_embeddings(x, n)``) is called with the batch's modality. No fine-tuned medical SAM is
  shipped, so when none is given the natural teacher stands in (MobileSAM-style distillation of
  the controlled encoder).
* Weights: eq. 1 adds both parts with unit weight, and part 2 is a **sum** over the N
  modalities, not a mean. One step holds one modality, so its term is scaled by
  ``s_n = B / B_n`` (B batches per epoch, B_n of them of modality n): over an epoch the mean
  step loss is then exactly ``w_uni·Ū + w_mod·Σ_n M̄_n`` — eq. 1 with each modality at weight 1
  whatever the dataset sizes. ``modality_reduction="mean"`` uses s_n = 1 instead (each batch's
  term at weight 1, i.e. modalities weighted by their number of batches).
* Decoupled (``decoupled=True``, the paper's "decoupled" KD: the common knowledge goes "to a
  lightweight image encoder and a modality controller *respectively*"): part 1's gradient
  reaches the shared encoder only (it never touches a bag), part 2's gradient is applied to bag
  n only (the shared encoder is treated as fixed for it). The segmentation loss trains
  everything (encoder, bag n, SPPG, QDMD). ``decoupled=False`` lets part 2 train the shared
  encoder too.
* ``‖·‖²₂`` of eq. 1 is taken as the mean squared error over all embedding elements (SPEC:
  "MSE"); a sum would only rescale the weights by 256·64·64.
* Teachers are frozen (``requires_grad=False``, eval mode) and run under ``no_grad`` on the
  very tensor the student sees: images resized (squashed) to SIZE² and normalised with the
  ImageNet mean/std on 0-1, which equals SAM's pixel mean/std on 0-255. They run on the fly on
  every (augmented) view, never cached.

Optimisation follows the paper: Adam, lr 1e-4, exponential decay (``lr·γ^epoch``, γ = 0.98 by
default — the paper names no γ), batch 4, images at 1024². ``init`` loads MobileSAM weights
into the light encoder and decoder (:func:`~hrmedseg.models.esp_medsam.load_mobile_sam_weights`).

**Evaluation** is prompt-free: the model gets only the image and its dataset's declared
modality id (no point, box or mask). Per epoch, each dataset's val split gives Dice/IoU at the
model resolution (``val_dice/NAME``; ``val_dice`` is their mean over datasets and picks the
best checkpoint). At the end each dataset's test split is evaluated per modality with
:func:`hrmedseg.evaluation.evaluate.evaluate_samples` (Dice, IoU, HD, HD95 … at the original
and the model resolution; ``RUN/test/NAME/``). The paper's protocol of running all N heads and
keeping the one with the best Dice *against the ground truth* is not used: it needs the answer
to choose the head.

Run folder: ``checkpoints/last`` and ``checkpoints/best`` (atomic: ``model.safetensors`` +
``config.json`` + ``state.pt`` with epoch, batch, optimizer, scaler and RNG, loadable with
``weights_only=True``), ``metrics.csv`` (one row per epoch), ``curve.png``,
``esp_config.json``, ``model/`` (``save_pretrained`` folder of the best model, metadata
``modalities`` = {dataset name: id}), ``test/`` and ``summary.json``. Rerunning the same command
continues from ``checkpoints/last`` at the exact batch where it stopped.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["ESPDataset", "ESPTrainConfig", "ESPTrainer", "train_esp", "mmdkd_mse",
           "EmbeddingTeacher", "plot_esp_curves"]

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
NORMALIZE = "imagenet"      # = SAM's pixel mean/std on 0-255; the teachers see the same tensor


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

@dataclass
class ESPDataset:
    """One dataset of one modality: ``root`` (images/ + masks/), its 0-based ``modality`` id,
    a ``name`` (default: the folder name) and an optional ``splits`` JSON (default
    ROOT/splits.json if present, else a seeded 80/10/10 split)."""

    root: str
    modality: int
    name: str = ""
    splits: str = ""

    def __post_init__(self) -> None:
        self.root = str(self.root)
        if isinstance(self.modality, bool) or not isinstance(self.modality, (int, np.integer)):
            raise ValueError(f"{self.root}: modality must be an integer id, got {self.modality!r}")
        self.modality = int(self.modality)
        if self.modality < 0:
            raise ValueError(f"{self.root}: modality ids start at 0, got {self.modality}")
        self.name = self.name or Path(self.root).resolve().name
        self.splits = str(self.splits or "")


def _as_dataset(d: Any) -> ESPDataset:
    if isinstance(d, ESPDataset):
        return d
    if isinstance(d, dict):
        return ESPDataset(**d)
    if isinstance(d, (tuple, list)) and 2 <= len(d) <= 4:
        return ESPDataset(*d)
    raise ValueError(f"a dataset is (root, modality_id[, name[, splits]]) or a dict, got {d!r}")


@dataclass
class ESPTrainConfig:
    """Everything a multi-modality ESP-MedSAM run needs (saved as ``esp_config.json``)."""

    datasets: list[ESPDataset]                # also accepts (root, modality[, name]) or dicts
    out_dir: str
    teacher: str | None = None                # f_ViT-SAM: MobileSAM .pt or model folder; None: no MMDKD
    medical_teacher: str | None = None        # f_ViT-Med: model folder or .pt; None: ``teacher``
    natural_images: list[str] = field(default_factory=list)   # x_nat folders; []: the medical batch
    model: str = "esp_medsam"                 # registered name or a save_pretrained folder
    model_overrides: dict[str, Any] = field(default_factory=dict)
    num_modalities: int = 0                   # 0: largest dataset id + 1
    init: str | None = None                   # MobileSAM checkpoint for the encoder/decoder
    # loss weights
    w_seg: float = 1.0
    w_universal: float = 1.0                  # MMDKD part 1
    w_modality: float = 1.0                   # MMDKD part 2
    modality_reduction: str = "sum"           # sum (eq. 1: s_n = B/B_n) | mean (s_n = 1)
    decoupled: bool = True
    focal_weight: float = 20.0                # λ of eq. 8
    sppg_weight: float = 1.0
    # optimisation
    lr: float = 1e-4
    lr_gamma: float = 0.98                    # exponential decay per epoch
    weight_decay: float = 0.0
    epochs: int = 200
    batch_size: int = 4
    precision: str = "bf16"                   # fp32 | bf16 | fp16
    size: int = 1024
    augment: str = "paper"                    # none | paper | strong
    device: str = "auto"
    seed: int = 0
    max_steps: int = 0                        # stop (resumable) after this many steps in total
    time_limit_min: float = 0.0               # stop (resumable) after this many minutes
    workers: int = 2
    cache_dir: str = ""                       # pre-resize caches; "" = OUT/../.cache
    val_every: int = 1
    eval_test: bool = True
    eval_hd: bool = True

    def __post_init__(self) -> None:
        self.datasets = [_as_dataset(d) for d in self.datasets]
        if not self.datasets:
            raise ValueError("give at least one dataset (root, modality id)")
        names = [d.name for d in self.datasets]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"dataset names must be unique, got {dup} more than once "
                             f"(name them: NAME=DIR:ID)")
        roots = [str(Path(d.root).resolve()) for d in self.datasets]
        if len(set(roots)) != len(roots):
            raise ValueError("the same dataset folder is given twice")
        if isinstance(self.natural_images, (str, Path)):
            self.natural_images = [self.natural_images]
        self.natural_images = [str(p) for p in self.natural_images]
        for key in ("teacher", "medical_teacher", "init"):
            v = getattr(self, key)
            setattr(self, key, None if v in (None, "", "none") else str(v))
        if self.precision not in AMP:
            raise ValueError(f"precision must be one of {list(AMP)}, got {self.precision!r}")
        if self.modality_reduction not in ("sum", "mean"):
            raise ValueError(f"modality_reduction must be 'sum' or 'mean', got "
                             f"{self.modality_reduction!r}")
        if self.augment not in ("none", "paper", "strong"):
            raise ValueError(f"augment must be none, paper or strong, got {self.augment!r}")
        if self.size <= 0 or self.size % 32:
            raise ValueError(f"size must be a positive multiple of 32 (ESP-MedSAM: 16 × the SPPG "
                             f"patch merge), got {self.size}")
        if self.batch_size < 1 or self.epochs < 0 or self.val_every < 1:
            raise ValueError("batch_size and val_every must be >= 1, epochs >= 0")
        for key in ("w_seg", "w_universal", "w_modality", "focal_weight", "sppg_weight"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        top = max(d.modality for d in self.datasets)
        if self.num_modalities and top >= self.num_modalities:
            raise ValueError(f"modality id {top} needs num_modalities > {top}, "
                             f"got {self.num_modalities}")


# ---------------------------------------------------------------------------------------------
# Teachers
# ---------------------------------------------------------------------------------------------

def _digest(module: nn.Module) -> str:
    """sha256 of a module's tensors (names, shapes, values): a resumed run must use the same
    teacher."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


class EmbeddingTeacher:
    """A frozen teacher: maps the student's input (B, 3, S, S) to embeddings (B, C, S/16, S/16).

    * an :class:`~hrmedseg.models.esp_medsam.ESPMedSAM` (or anything whose
      ``image_embeddings`` takes a modality) is called as ``image_embeddings(x, n)`` when used
      as the medical teacher (modality-aware) and ``image_embeddings(x, None)`` otherwise;
    * a SAM-family model (:class:`~hrmedseg.models.sam.SamModel`): ``image_embeddings(x)``;
    * a model with ``forward_embedding`` (HRMedSeg): ``forward_embedding(x)``;
    * any other module: ``module(x)``.
    """

    def __init__(self, module: nn.Module, source: str = "python") -> None:
        from ..models.esp_medsam import ESPMedSAM
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.source = source
        self.modality_aware = isinstance(module, ESPMedSAM)
        self.digest = _digest(module)

    def to(self, device: torch.device) -> "EmbeddingTeacher":
        self.module.to(device)
        return self

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, modality: int | None = None) -> torch.Tensor:
        m = self.module
        if self.modality_aware:
            return m.image_embeddings(x, modality)
        if hasattr(m, "image_embeddings"):
            return m.image_embeddings(x)
        if hasattr(m, "forward_embedding"):
            return m.forward_embedding(x)
        return m(x)


def load_teacher(spec: Any, size: int) -> EmbeddingTeacher | None:
    """A teacher from a module, a model folder (``save_pretrained``) or a MobileSAM checkpoint
    file (built at ``size``)."""
    if spec is None:
        return None
    if isinstance(spec, EmbeddingTeacher):
        return spec
    if isinstance(spec, nn.Module):
        return EmbeddingTeacher(spec)
    path = Path(spec)
    if path.is_dir():
        from ..models._hub import from_pretrained
        return EmbeddingTeacher(from_pretrained(path), str(path))
    if path.is_file():
        from ..models._registry import create_model
        return EmbeddingTeacher(create_model("mobile_sam", pretrained=str(path), img_size=size),
                                str(path))
    raise FileNotFoundError(f"{path}: teacher not found (a MobileSAM checkpoint file or a model "
                            f"folder)")


def mmdkd_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖teacher − student‖²₂ of eq. 1 as a mean over all elements (float32)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student embedding {tuple(student.shape)} and teacher embedding "
                         f"{tuple(teacher.shape)} differ")
    return F.mse_loss(student.float(), teacher.float())


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

@dataclass
class _Part:
    """A dataset after discovery and splitting."""

    spec: ESPDataset
    train: list[Any]
    val: list[Any]
    test: list[Any]
    train_set: Any = None
    val_set: Any = None


def _split(spec: ESPDataset, stems: list[str], seed: int, official: Any = None
           ) -> tuple[list[str], list[str], list[str]]:
    """train/val/test stems like :func:`hrmedseg.training.data_setup.split_stems`: a splits
    file (given, or ROOT/splits.json), else the dataset's official split (``official``: a
    mapping train/val/test → stems, e.g. a DRIVE layout's), else the seeded 80/10/10 split."""
    from ..data.splits import load_splits, random_split
    split_file = Path(spec.splits) if spec.splits else Path(spec.root) / "splits.json"
    if split_file.is_file():
        sp = load_splits(split_file)
        return list(sp["train"]), list(sp["val"] or []), list(sp["test"] or [])
    if spec.splits:
        raise FileNotFoundError(f"{split_file}: splits file not found")
    if official:
        train, val, test = (list(official.get(k) or []) for k in ("train", "val", "test"))
        if train:
            return train, val, test
    parts = random_split(stems, (0.8, 0.1, 0.1), seed=seed)
    return parts["train"], parts["val"], parts["test"]


def _load_natural(path: str, size: int) -> torch.Tensor:
    """A natural image as the student sees it: RGB → SIZE² → ImageNet-normalised (3, S, S)."""
    import cv2

    from ..data.io import normalize, read_image, to_model_channels
    img = to_model_channels(read_image(path), 3)
    if img.shape[:2] != (size, size):
        down = img.shape[0] >= size and img.shape[1] >= size
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
    x = normalize(np.asarray(img, dtype=np.float32), NORMALIZE)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


class _EpochBatches(Dataset):
    """Item j = batch j of one epoch's plan, already collated (so DataLoader workers read and
    augment whole single-modality batches)."""

    def __init__(self, plan: list[tuple[int, list[int]]], sets: list[Any], epoch: int,
                 natural: list[str], natural_order: list[int], batch_size: int, size: int,
                 start: int) -> None:
        self.plan, self.sets, self.epoch = plan, sets, epoch
        self.natural, self.natural_order = natural, natural_order
        self.batch_size, self.size, self.start = batch_size, size, start

    def __len__(self) -> int:
        return len(self.plan) - self.start

    def __getitem__(self, j: int) -> dict[str, Any]:
        from ..data.datasets import collate_segmentation
        b = self.start + j
        k, idx = self.plan[b]
        batch = collate_segmentation([self.sets[k][(i, self.epoch)] for i in idx])
        batch["dataset"] = k
        batch["index"] = b
        if self.natural:
            n = len(self.natural_order)
            picks = [self.natural_order[(b * self.batch_size + i) % n]
                     for i in range(self.batch_size)]
            batch["natural"] = torch.stack([_load_natural(self.natural[p], self.size) for p in picks])
        return batch


def _first(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:
        pass
    torch.set_num_threads(1)


class _FixedModality(nn.Module):
    """``forward(x) = model(x, n)``: lets :class:`~hrmedseg.inference.segmenter.Segmenter` run
    ESP-MedSAM prompt-free for one modality."""

    def __init__(self, model: nn.Module, modality: int) -> None:
        super().__init__()
        self.model = model
        self.modality = int(modality)
        self.config = model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.modality)


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------

class ESPTrainer:
    """Multi-dataset ESP-MedSAM training with MMDKD (see the module docstring).

    ``teacher`` / ``medical_teacher`` / ``model`` given in Python override the config's paths.
    """

    def __init__(self, cfg: ESPTrainConfig, teacher: Any = None, medical_teacher: Any = None,
                 model: nn.Module | None = None, progress: bool = True) -> None:
        from ..data.datasets import discover_pairs
        from .trainer import seed_everything

        self.cfg = cfg
        self.progress = progress
        dev = cfg.device
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(dev)
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        seed_everything(cfg.seed, False)       # the initial weights depend on it
        # -- datasets --------------------------------------------------------------------
        self.parts: list[_Part] = []
        for spec in cfg.datasets:
            try:
                index = discover_pairs(spec.root)
            except ValueError as exc:
                raise ValueError(f"{spec.name}: {exc}") from None
            if len(index) == 0:
                raise ValueError(f"{spec.name}: no image/mask pairs in {spec.root}")
            tr, va, te = _split(spec, index.stems, cfg.seed,
                                getattr(index, "official_splits", None))
            if not tr:
                raise ValueError(f"{spec.name}: the train split is empty")
            self.parts.append(_Part(spec, index.subset(tr), index.subset(va), index.subset(te)))
        self.num_modalities = cfg.num_modalities or max(d.modality for d in cfg.datasets) + 1
        # -- model -----------------------------------------------------------------------
        self.model = (model if model is not None else self._build_model()).to(self.device)
        from ..models.esp_medsam import ESPMedSAM
        if not isinstance(self.model, ESPMedSAM):
            raise ValueError(f"{cfg.model}: not an ESP-MedSAM model")
        top = max(d.modality for d in cfg.datasets)
        if top >= self.model.num_modalities:
            raise ValueError(f"dataset modality id {top} but the model has "
                             f"{self.model.num_modalities} modalities")
        unused = set(self.model.unused_parameter_names())
        for name, p in self.model.named_parameters():
            if name in unused:
                p.requires_grad_(False)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.amp = AMP[cfg.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # -- teachers --------------------------------------------------------------------
        self.teacher = load_teacher(teacher if teacher is not None else cfg.teacher, cfg.size)
        self.medical_teacher = load_teacher(
            medical_teacher if medical_teacher is not None else cfg.medical_teacher, cfg.size)
        for t in (self.teacher, self.medical_teacher):
            if t is not None:
                t.to(self.device)
        self.natural: list[str] = []
        if cfg.natural_images:
            from .distill import find_images
            self.natural = [str(p) for p in find_images(cfg.natural_images)]
        # -- epoch structure -------------------------------------------------------------
        bs = cfg.batch_size
        self.batches_per_dataset = [math.ceil(len(p.train) / bs) for p in self.parts]
        self.batches_per_epoch = sum(self.batches_per_dataset)
        per_mod: dict[int, int] = {}
        for p, nb in zip(self.parts, self.batches_per_dataset):
            per_mod[p.spec.modality] = per_mod.get(p.spec.modality, 0) + nb
        self.modality_batches = per_mod
        self.modality_scale = {n: (self.batches_per_epoch / nb if cfg.modality_reduction == "sum"
                                   else 1.0) for n, nb in per_mod.items()}
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best: float | None = None
        self._datasets_ready = False

    # -- building ---------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        if Path(cfg.model).is_dir():
            from ..models._hub import from_pretrained
            model = from_pretrained(cfg.model)
        else:
            from ..models._registry import create_model
            kwargs = {"img_size": cfg.size, "num_modalities": self.num_modalities,
                      **cfg.model_overrides}
            model = create_model(cfg.model, pretrained=False, **kwargs)
        if cfg.init:
            from ..models.esp_medsam import load_mobile_sam_weights
            if not Path(cfg.init).is_file():
                raise FileNotFoundError(f"{cfg.init}: init checkpoint (MobileSAM .pt) not found")
            model.pretrained_report = load_mobile_sam_weights(model, cfg.init)
            model.pretrained_weight = cfg.init
        return model

    def _prepare_datasets(self) -> None:
        """Pre-resize caches and torch datasets (only when training or validating needs them)."""
        if self._datasets_ready:
            return
        from ..data.datasets import SegmentationDataset, build_cache
        from ..data.transforms import eval_transform, train_transform
        from .sampler import SeededDataset
        cfg = self.cfg
        hw = (cfg.size, cfg.size)
        for k, part in enumerate(self.parts):
            root = Path(part.spec.root)
            # One cache per dataset folder (its resolved path in the name: two datasets whose
            # folders share a name must not share a cache).
            tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
            cache_dir = (Path(cfg.cache_dir) if cfg.cache_dir else self.run_dir.parent / ".cache") \
                / f"{root.resolve().name}-{tag}_{hw[0]}x{hw[1]}"
            cache = build_cache(part.train + part.val, hw, cache_dir,
                                progress=None if self.progress else False)

            def mk(samples: list[Any], tf: Any, cache: Any = cache) -> Any:
                return SegmentationDataset(samples, tf, 1, 3, cache, normalization=NORMALIZE,
                                           output="uint8")
            # Each dataset's augmentations are seeded from (seed + k, epoch, index).
            part.train_set = SeededDataset(mk(part.train, train_transform(hw, cfg.augment)),
                                           cfg.seed + 1009 * k)
            part.val_set = mk(part.val, eval_transform(hw)) if part.val else None
        self._datasets_ready = True

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _check_shapes(self) -> None:
        """The teachers' embeddings must have the student's shape at SIZE²."""
        s = self.cfg.size
        x = torch.zeros(1, 3, s, s, device=self.device)
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            want = tuple(self.model.image_embeddings(x, None).shape[1:])
            for role, t, n in (("teacher", self.teacher, None),
                               ("medical teacher", self.medical_teacher, self.parts[0].spec.modality)):
                if t is None:
                    continue
                got = tuple(t(x, n).shape[1:])
                if got != want:
                    raise ValueError(f"{role} ({t.source}) gives embeddings of shape {got} at "
                                     f"{s}², the student {want}: they must match")
        self.model.train(was)

    # -- plan -------------------------------------------------------------------------------
    def epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """(dataset index, train sample indices) per batch of ``epoch``: every training image
        once, batches never mix datasets, order seeded by (seed, epoch)."""
        bs = self.cfg.batch_size
        batches: list[tuple[int, list[int]]] = []
        for k, part in enumerate(self.parts):
            g = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + epoch) * 131 + k)
            perm = torch.randperm(len(part.train), generator=g).tolist()
            batches += [(k, perm[i:i + bs]) for i in range(0, len(perm), bs)]
        g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def _natural_order(self, epoch: int) -> list[int]:
        if not self.natural:
            return []
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + epoch + 17)
        return torch.randperm(len(self.natural), generator=g).tolist()

    def _loader(self, epoch: int, start: int) -> DataLoader:
        self._prepare_datasets()
        ds = _EpochBatches(self.epoch_plan(epoch), [p.train_set for p in self.parts], epoch,
                           self.natural, self._natural_order(epoch), self.cfg.batch_size,
                           self.cfg.size, start)
        w = self.cfg.workers
        # Own generator: making the iterator must not draw from the global RNG.
        return DataLoader(ds, batch_size=None, shuffle=False, num_workers=w, collate_fn=_first,
                          worker_init_fn=_worker_init if w > 0 else None,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.seed + epoch))

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        from ..data.gpu_normalize import normalize_batch
        x = batch["image"].to(self.device, non_blocking=True)
        if not batch.get("normalized", True):
            x = normalize_batch(x, batch.get("normalization") or NORMALIZE)
        y = batch["mask"].to(self.device, non_blocking=True).float().unsqueeze(1)
        n = self.parts[int(batch["dataset"])].spec.modality
        nat = batch.get("natural")
        return x, y, n, (None if nat is None else nat.to(self.device, non_blocking=True))

    # -- losses -----------------------------------------------------------------------------
    def forward_student(self, x: torch.Tensor, modality: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B,1,H,W), SPPG patch logits, E^n) from one encoder pass."""
        return self.model.forward_parts(x, modality)

    def losses(self, x: torch.Tensor, y: torch.Tensor, modality: int,
               x_nat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every term of one step (with their graphs): ``seg`` (+ focal, dice, sppg_bce),
        ``universal`` and ``modality`` (MMDKD; absent without teachers or at weight 0),
        ``scale`` (s_n) and ``total`` = w_seg·seg + w_uni·universal + w_mod·s_n·modality."""
        from .losses import esp_medsam_loss
        cfg = self.cfg
        with self._autocast():
            logits, patch_logits, emb = self.forward_student(x, modality)
        seg, parts = esp_medsam_loss(logits.float(), patch_logits.float(), y,
                                     lam=cfg.focal_weight, sppg_weight=cfg.sppg_weight,
                                     return_parts=True)
        out: dict[str, torch.Tensor] = {"seg": seg, **parts}
        total = cfg.w_seg * seg
        nat_teacher = self.teacher
        med_teacher = self.medical_teacher or self.teacher
        x_u = x if x_nat is None else x_nat
        t_u = None
        if nat_teacher is not None and cfg.w_universal > 0:
            with self._autocast():
                t_u = nat_teacher(x_u, None)
                s_u = self.model.image_embeddings(x_u, None)
            out["universal"] = mmdkd_mse(s_u, t_u)
            total = total + cfg.w_universal * out["universal"]
        if med_teacher is not None and cfg.w_modality > 0:
            if med_teacher is nat_teacher and t_u is not None and x_u is x \
                    and not med_teacher.modality_aware:
                t_m = t_u                                  # same teacher, same images
            else:
                with self._autocast():
                    t_m = med_teacher(x, modality)
            out["modality"] = mmdkd_mse(emb, t_m)
            scale = self.modality_scale.get(modality, 1.0)
            out["scale"] = torch.tensor(scale)
            total = total + cfg.w_modality * scale * out["modality"]
        out["total"] = total
        return out

    def backward(self, terms: dict[str, torch.Tensor], modality: int) -> None:
        """Gradients of ``terms["total"]``; with ``decoupled`` the modality term's gradient is
        applied to bag ``modality`` only."""
        cfg = self.cfg
        if cfg.decoupled and "modality" in terms:
            mod = cfg.w_modality * float(terms["scale"]) * terms["modality"]
            shared = cfg.w_seg * terms["seg"]
            if "universal" in terms:
                shared = shared + cfg.w_universal * terms["universal"]
            bag = [p for p in self.model.controller.bags[modality].parameters() if p.requires_grad]
            self.scaler.scale(shared).backward(retain_graph=True)
            self.scaler.scale(mod).backward(inputs=bag)
        else:
            self.scaler.scale(terms["total"]).backward()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, modality: int,
                   x_nat: torch.Tensor | None = None) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)   # untouched bags keep grad None: Adam skips them
        terms = self.losses(x, y, modality, x_nat)
        if not torch.isfinite(terms["total"]):
            raise FloatingPointError(f"loss became {terms['total'].item()} at step "
                                     f"{self.global_step}; lower --lr or use --precision fp32")
        self.backward(terms, modality)
        self.scaler.step(self.opt)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in terms.items()}

    def _set_lr(self) -> float:
        lr = self.cfg.lr * self.cfg.lr_gamma ** self.epoch
        for g in self.opt.param_groups:
            g["lr"] = lr
        return lr

    # -- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Prompt-free Dice/IoU (%) at the model resolution on every val split."""
        from ..data.datasets import collate_segmentation
        from ..data.gpu_normalize import normalize_batch
        from ..metrics.tensor import logits_to_labels, per_image_dice_iou
        self._prepare_datasets()
        out: dict[str, float] = {}
        dices, ious = [], []
        was = self.model.training
        self.model.eval()
        for part in self.parts:
            ds = part.val_set
            if ds is None or len(ds) == 0:
                continue
            d_sum = i_sum = 0.0
            for s in range(0, len(ds), self.cfg.batch_size):
                b = collate_segmentation([ds[i] for i in range(s, min(len(ds), s + self.cfg.batch_size))])
                x = b["image"].to(self.device)
                if not b.get("normalized", True):
                    x = normalize_batch(x, b.get("normalization") or NORMALIZE)
                with self._autocast():
                    logits = self.model(x, part.spec.modality)
                d, i = per_image_dice_iou(logits_to_labels(logits.float()),
                                          b["mask"].to(self.device).long(), 1)
                d_sum += d.sum().item()
                i_sum += i.sum().item()
            out[f"val_dice/{part.spec.name}"] = 100 * d_sum / len(ds)
            out[f"val_iou/{part.spec.name}"] = 100 * i_sum / len(ds)
            dices.append(out[f"val_dice/{part.spec.name}"])
            ious.append(out[f"val_iou/{part.spec.name}"])
        self.model.train(was)
        if dices:
            out["val_dice"] = float(np.mean(dices))
            out["val_iou"] = float(np.mean(ious))
        return out

    # -- state ------------------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"batch_size": cfg.batch_size, "size": cfg.size, "seed": cfg.seed,
                "datasets": [[p.spec.name, p.spec.modality, len(p.train)] for p in self.parts],
                "teacher": None if self.teacher is None else self.teacher.digest,
                "medical_teacher": None if self.medical_teacher is None
                else self.medical_teacher.digest,
                "natural_images": len(self.natural), "augment": cfg.augment}

    def _state(self) -> dict[str, Any]:
        st: dict[str, Any] = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                              "global_step": self.global_step, "best_val_dice": self.best,
                              "optimizer": self.opt.state_dict(),
                              "scaler": self.scaler.state_dict(),
                              "torch_rng": torch.get_rng_state(),
                              "fingerprint": json.dumps(self._fingerprint(), sort_keys=True)}
        if torch.cuda.is_available():
            st["cuda_rng"] = torch.cuda.get_rng_state_all()
        return st

    def _metadata(self) -> dict[str, Any]:
        return {"preprocess": {"size": [self.cfg.size, self.cfg.size], "normalize": NORMALIZE},
                "modalities": {p.spec.name: p.spec.modality for p in self.parts},
                "epoch": self.epoch, "global_step": self.global_step,
                "mmdkd": {"teacher": None if self.teacher is None else self.teacher.source,
                          "medical_teacher": None if self.medical_teacher is None
                          else self.medical_teacher.source,
                          "natural_images": len(self.natural)}}

    def save(self, tag: str) -> None:
        from .checkpoint import save_checkpoint
        save_checkpoint(self.ckpt_dir, tag, self.model, self._state(), self._metadata())

    def resume(self) -> bool:
        from ..models._hub import load_safetensors, load_state_dict_checked
        from .checkpoint import find_checkpoint, load_state
        path = find_checkpoint(self.ckpt_dir, "last")
        if path is None:
            return False
        state = load_state(path)
        now = json.dumps(self._fingerprint(), sort_keys=True)
        if state.get("fingerprint") != now:
            raise ValueError(f"{path}: saved with {state.get('fingerprint')}, now {now}; resume "
                             f"needs the same datasets, batch, size, seed and teachers (or use "
                             f"a new output folder)")
        load_state_dict_checked(self.model, load_safetensors(path / "model.safetensors"),
                                source=str(path / "model.safetensors"))
        self.opt.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), state["best_val_dice"]
        return True

    def save_model(self) -> Path:
        """``RUN/model``: the best checkpoint's model (latest without val splits) as a
        save_pretrained folder, swapped in atomically."""
        from ..models._hub import from_pretrained, read_config
        from .checkpoint import find_checkpoint
        src = find_checkpoint(self.ckpt_dir, "best") or find_checkpoint(self.ckpt_dir, "last")
        model = from_pretrained(src) if src is not None else self.model
        meta = dict(read_config(src).get("metadata") or {}) if src is not None else self._metadata()
        meta.update({"best_val_dice": self.best, "checkpoint": None if src is None else src.name,
                     "prompt": "none (self-prompting: give the image and its modality id)"})
        from ..atomic import atomic_replace_dir
        return atomic_replace_dir(self.run_dir / "model",
                                  lambda tmp: model.save_pretrained(tmp, metadata=meta))

    # -- files ------------------------------------------------------------------------------
    def csv_fields(self) -> list[str]:
        per = [f"val_dice/{p.spec.name}" for p in self.parts]
        return ["epoch", "step", "train_loss", "seg_loss", "universal_mse", "modality_mse",
                "val_dice", "val_iou", *per, "lr", "epoch_time_s", "images_per_s"]

    def _write_config(self, resumed: bool) -> None:
        from ..atomic import atomic_write_bytes
        info = {**asdict(self.cfg),
                "resolved": {
                    "num_modalities": self.model.num_modalities,
                    "datasets": [{"name": p.spec.name, "root": p.spec.root,
                                  "modality": p.spec.modality, "train": len(p.train),
                                  "val": len(p.val), "test": len(p.test)} for p in self.parts],
                    "batches_per_epoch": self.batches_per_epoch,
                    "modality_batches": {str(k): v for k, v in self.modality_batches.items()},
                    "modality_scale": {str(k): v for k, v in self.modality_scale.items()},
                    "teacher": None if self.teacher is None else
                    {"source": self.teacher.source, "sha256": self.teacher.digest},
                    "medical_teacher": None if self.medical_teacher is None else
                    {"source": self.medical_teacher.source, "sha256": self.medical_teacher.digest},
                    "modality_target": ("medical_teacher" if self.medical_teacher is not None
                                        else "teacher" if self.teacher is not None else None),
                    "universal_input": "natural_images" if self.natural else "medical batch",
                    "natural_images": len(self.natural),
                    "student_input": f"resized to {self.cfg.size}², ImageNet mean/std on 0-1 "
                                     f"(= SAM's pixel mean/std on 0-255); teachers see the same",
                    "device": str(self.device), "torch": torch.__version__, "resumed": resumed}}
        atomic_write_bytes(self.run_dir / "esp_config.json",
                           (json.dumps(info, indent=2, default=str) + "\n").encode())

    # -- the run ----------------------------------------------------------------------------
    def fit(self, resume: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from .metrics_log import append_csv_row
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_shapes()
        resumed = self.resume() if resume else False
        self._write_config(resumed)
        fields = self.csv_fields()
        start_time = time.monotonic()
        stopped, why = False, ""
        self.model.train()
        while self.epoch < cfg.epochs and not stopped:
            loader = self._loader(self.epoch, self.batch_in_epoch)
            lr = self._set_lr()
            t0 = time.monotonic()
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            n_img = 0
            bar = tqdm(total=self.batches_per_epoch, initial=self.batch_in_epoch, unit="batch",
                       desc=f"esp {self.epoch + 1}/{cfg.epochs}", disable=not self.progress,
                       dynamic_ncols=True, file=sys.stderr)
            for batch in loader:
                x, y, n, x_nat = self._inputs(batch)
                vals = self.train_step(x, y, n, x_nat)
                self.batch_in_epoch += 1
                self.global_step += 1
                for k, v in vals.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
                n_img += x.shape[0]
                bar.set_postfix(loss=f"{vals['total']:.4f}", mod=n)
                bar.update(1)
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    stopped, why = True, "max_steps"
                elif cfg.time_limit_min and time.monotonic() - start_time > 60 * cfg.time_limit_min:
                    stopped, why = True, "time_limit"
                if stopped:
                    break
            bar.close()
            if self.batch_in_epoch < self.batches_per_epoch:
                self.save("last")          # stopped mid-epoch: resume continues at this batch
                continue
            self.epoch += 1
            self.batch_in_epoch = 0

            def mean(k: str) -> Any:
                return round(sums[k] / counts[k], 6) if counts.get(k) else ""

            row: dict[str, Any] = {"epoch": self.epoch, "step": self.global_step,
                                   "train_loss": mean("total"), "seg_loss": mean("seg"),
                                   "universal_mse": mean("universal"),
                                   "modality_mse": mean("modality"), "lr": lr}
            if self.epoch % cfg.val_every == 0 or self.epoch == cfg.epochs:
                row.update({k: round(v, 4) for k, v in self.validate().items()})
            dt = time.monotonic() - t0
            row["epoch_time_s"] = round(dt, 2)
            row["images_per_s"] = round(n_img / max(dt, 1e-9), 2)
            has_val = any(p.val for p in self.parts)
            if "val_dice" in row:
                improved = self.best is None or row["val_dice"] > self.best
                if improved:
                    self.best = row["val_dice"]
            else:
                improved = not has_val
            self.save("last")
            if improved:
                self.save("best")
            append_csv_row(self.run_dir / "metrics.csv", row, fields)
            plot_esp_curves(self.run_dir / "metrics.csv", self.run_dir / "curve.png")
            if self.progress:
                msg = ", ".join(f"{k}={v}" for k, v in row.items() if v != "")
                print(f"[esp epoch {self.epoch}] {msg}", file=sys.stderr, flush=True)
        finished = self.epoch >= cfg.epochs
        summary: dict[str, Any] = {"run_dir": str(self.run_dir), "epochs_done": self.epoch,
                                   "global_step": self.global_step, "best_val_dice": self.best,
                                   "stopped_early": stopped, "stop_reason": why,
                                   "resumed": resumed}
        # A run stopped by max_steps is partial on purpose: no model folder, no test.
        if finished or why == "time_limit":
            summary["model"] = str(self.save_model())
            if cfg.eval_test:
                summary["test"] = self.evaluate_test(self.run_dir / "model")
        return summary

    def evaluate_test(self, model_dir: Path) -> dict[str, Any]:
        """Prompt-free evaluation of ``model_dir`` on each dataset's test split, per modality
        (``RUN/test/NAME/per_image.csv`` + ``summary.json``)."""
        from ..evaluation.evaluate import evaluate_samples, format_summary
        from ..inference.segmenter import Segmenter
        from ..models._hub import from_pretrained
        model = from_pretrained(model_dir).to(self.device).eval()
        out: dict[str, Any] = {}
        for part in self.parts:
            if not part.test:
                continue
            seg = Segmenter(_FixedModality(model, part.spec.modality), device=str(self.device),
                            size=self.cfg.size, normalize=NORMALIZE, precision=self.cfg.precision,
                            batch_size=max(1, self.cfg.batch_size))
            res = evaluate_samples(seg, part.test, out_dir=self.run_dir / "test" / part.spec.name,
                                   hd=self.cfg.eval_hd, overlays=4, progress=self.progress)
            if self.progress:
                print(f"[test {part.spec.name}, modality {part.spec.modality}] "
                      f"{format_summary(res, 'original_resolution')}", file=sys.stderr)
            out[part.spec.name] = {
                "modality": part.spec.modality, "n_images": res["n_images"],
                **{k: {m: v["mean"] for m, v in res[k].items() if "/" not in m}
                   for k in ("original_resolution", "model_resolution")}}
        return out


# ---------------------------------------------------------------------------------------------
# Curves, entry point
# ---------------------------------------------------------------------------------------------

def plot_esp_curves(csv_path: Path, png_path: Path) -> None:
    """Left: training loss and its parts (log scale); right: validation Dice per dataset."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..atomic import atomic_write_bytes
    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return

    def col(name: str) -> tuple[list[int], list[float]]:
        pts = [(int(r["epoch"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, label, style in (("train_loss", "total", "-"), ("seg_loss", "segmentation", "--"),
                               ("universal_mse", "MMDKD universal MSE", ":"),
                               ("modality_mse", "MMDKD modality MSE", "-.")):
        x, y = col(name)
        if x and all(v > 0 for v in y):
            ax1.plot(x, y, style, marker="o", ms=2.5, label=label)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    if ax1.lines:
        ax1.set_yscale("log")
        ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for name in rows[0]:
        if name == "val_dice" or name.startswith("val_dice/"):
            x, y = col(name)
            if x:
                ax2.plot(x, y, "-" if name == "val_dice" else "--", marker="o", ms=2.5,
                         label="mean" if name == "val_dice" else name.split("/", 1)[1])
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation Dice (%)")
    if ax2.lines:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation split", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(f"ESP-MedSAM: {Path(csv_path).parent.name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())


def train_esp(cfg: ESPTrainConfig, teacher: Any = None, medical_teacher: Any = None,
              model: nn.Module | None = None, resume: bool = True,
              progress: bool = True) -> dict[str, Any]:
    """Run (or continue) an ESP-MedSAM training; returns a summary (also ``summary.json``)."""
    from ..atomic import atomic_write_bytes
    trainer = ESPTrainer(cfg, teacher=teacher, medical_teacher=medical_teacher, model=model,
                         progress=progress)
    summary = trainer.fit(resume=resume)
    atomic_write_bytes(Path(cfg.out_dir) / "summary.json",
                       (json.dumps(summary, indent=2, default=str) + "\n").encode())
    return summary
