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

Optimisation follows the paper: Adam, lr 1e-4, exponential decay (``lr·γ^epoch``: ``schedule.name=exponential``,
``schedule.gamma`` 0.98 in the ``esp_medsam`` recipe — the paper names no γ), batch 4, images at 1024². ``init`` loads MobileSAM weights
into the light encoder and decoder (:func:`~hrmedseg.models.esp_medsam.load_mobile_sam_weights`).

**Evaluation** is prompt-free: the model gets only the image and its dataset's declared
modality id (no point, box or mask). Per epoch, each dataset's val split gives Dice/IoU at the
model resolution (``val_dice/NAME``; ``val_dice`` is their mean over datasets and picks the
best checkpoint). At the end each dataset's test split is evaluated per modality with
:func:`hrmedseg.evaluation.evaluate.evaluate_samples` (Dice, IoU, HD, HD95 … at the original
and the model resolution; ``RUN/test/NAME/``). The paper's protocol of running all N heads and
keeping the one with the best Dice *against the ground truth* is not used: it needs the answer
to choose the head.

The engine (:mod:`hrmedseg.training.engine`) runs the loop (resume, time budget, images/s,
checkpoints) by the same rules as every task. Run folder: ``checkpoints/last`` and
``checkpoints/best`` (atomic: ``model.safetensors`` + ``config.json`` + ``state.pt`` with epoch,
batch, optimizer, scaler and RNG, loadable with ``weights_only=True``), ``metrics.csv`` (one
row per epoch), ``curve.png``, ``config.yaml``, ``env.json``, ``esp_config.json``, ``model/`` (``save_pretrained`` folder of the best model, metadata
``modalities`` = {dataset name: id}), ``test/`` and ``summary.json``. Rerunning the same command
continues from ``checkpoints/last`` at the exact batch where it stopped.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import Config, ConfigError, TrainingSetupError, resolve_workers
from ..engine import worker_init
from .base import ModelMethod, Task, probing

__all__ = ["ESPDataset", "ESPTask", "EmbeddingTeacher", "load_teacher", "mmdkd_mse"]

NORMALIZE = "imagenet"      # = SAM's pixel mean/std on 0-255; the teachers see the same tensor


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
            raise TrainingSetupError(f"{self.root}: modality must be an integer id, got {self.modality!r}")
        self.modality = int(self.modality)
        if self.modality < 0:
            raise TrainingSetupError(f"{self.root}: modality ids start at 0, got {self.modality}")
        self.name = self.name or Path(self.root).resolve().name
        self.splits = str(self.splits or "")


def _as_dataset(d: Any) -> ESPDataset:
    if isinstance(d, ESPDataset):
        return d
    if isinstance(d, dict):
        return ESPDataset(**d)
    if isinstance(d, (tuple, list)) and 2 <= len(d) <= 4:
        return ESPDataset(*d)
    raise TrainingSetupError(f"a dataset is (root, modality_id[, name[, splits]]) or a dict, got {d!r}")



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
        from ...models.esp_medsam import ESPMedSAM
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
        from ...models._hub import from_pretrained
        return EmbeddingTeacher(from_pretrained(path), str(path))
    if path.is_file():
        from ...models._registry import create_model
        return EmbeddingTeacher(create_model("mobile_sam", pretrained=str(path), img_size=size),
                                str(path))
    raise FileNotFoundError(f"{path}: teacher not found (a MobileSAM checkpoint file or a model "
                            f"folder)")


def mmdkd_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """‖teacher − student‖²₂ of eq. 1 as a mean over all elements (float32)."""
    if student.shape != teacher.shape:
        raise TrainingSetupError(f"student embedding {tuple(student.shape)} and teacher embedding "
                         f"{tuple(teacher.shape)} differ")
    return F.mse_loss(student.float(), teacher.float())



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
    from ...data.splits import load_splits, random_split
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

    from ...data.io import normalize, read_image, to_model_channels
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
        from ...data.datasets import collate_segmentation
        b = self.start + j
        k, idx = self.plan[b]
        if not idx:      # this rank's share of a short global batch is empty (DDP)
            return {"dataset": k, "index": b, "empty": True}
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


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------

class ESPTask(Task):
    """Multi-dataset ESP-MedSAM training with MMDKD (see the module docstring).

    ``teacher`` / ``medical_teacher`` / ``model`` given in Python override the config's paths.
    """

    name = "esp"
    monitor, mode = "val_dice", "max"
    loss_fields = {"total": "train_loss", "seg": "seg_loss", "universal": "universal_mse",
                   "modality": "modality_mse"}
    log_loss_axis = True

    def __init__(self, cfg: Config, teacher: Any = None, medical_teacher: Any = None,
                 model: nn.Module | None = None) -> None:
        from ...data.datasets import discover_pairs
        self.specs = check_config(cfg)
        self.cfg, self.e = cfg, cfg.esp
        self.size = int(cfg.data.size[0])
        self.workers = resolve_workers(cfg.data.workers)
        self.run_dir = Path(cfg.train.out_dir)
        self._given = (teacher, medical_teacher, model)
        seed = cfg.train.seed
        self.parts: list[_Part] = []
        for spec in self.specs:
            try:
                index = discover_pairs(spec.root)
            except ValueError as exc:
                raise TrainingSetupError(f"{spec.name}: {exc}") from None
            if len(index) == 0:
                raise TrainingSetupError(f"{spec.name}: no image/mask pairs in {spec.root}")
            tr, va, te = _split(spec, index.stems, seed, getattr(index, "official_splits", None))
            if not tr:
                raise TrainingSetupError(f"{spec.name}: the train split is empty")
            self.parts.append(_Part(spec, index.subset(tr), index.subset(va), index.subset(te)))
        self.num_modalities = self.e.num_modalities or max(d.modality for d in self.specs) + 1
        # -- epoch structure -------------------------------------------------------------
        bs = cfg.train.batch_size
        self.batches_per_dataset = [math.ceil(len(p.train) / bs) for p in self.parts]
        self.n_batches = sum(self.batches_per_dataset)
        per_mod: dict[int, int] = {}
        for p, nb in zip(self.parts, self.batches_per_dataset):
            per_mod[p.spec.modality] = per_mod.get(p.spec.modality, 0) + nb
        self.modality_batches = per_mod
        self.modality_scale = {n: (self.n_batches / nb if self.e.modality_reduction == "sum"
                                   else 1.0) for n, nb in per_mod.items()}
        self._datasets_ready = False

    # -- building ---------------------------------------------------------------------------
    def setup(self, engine: Any) -> None:
        super().setup(engine)
        teacher, medical_teacher, model = self._given
        self.device = engine.device
        self.model = (model if model is not None else self._build_model()).to(self.device)
        from ...models.esp_medsam import ESPMedSAM
        if not isinstance(self.model, ESPMedSAM):
            raise TrainingSetupError(f"{self.cfg.model.name}: not an ESP-MedSAM model")
        top = max(d.modality for d in self.specs)
        if top >= self.model.num_modalities:
            raise TrainingSetupError(f"dataset modality id {top} but the model has "
                             f"{self.model.num_modalities} modalities")
        unused = set(self.model.unused_parameter_names())
        for name, p in self.model.named_parameters():
            if name in unused:
                p.requires_grad_(False)
        self.apply_grad_checkpointing(self.cfg, self.device)
        if self.cfg.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The student's pass (encoder, SPPG, decoder) is what compiles; the teachers run eager
        # under no_grad. Not parity-checked yet: compiled only when train.compile=true.
        self.net = self.compile_net(ModelMethod(self.model, "forward_parts"), self.cfg, self.device)
        e = self.e
        self.teacher = load_teacher(teacher if teacher is not None else (e.teacher or None), self.size)
        self.medical_teacher = load_teacher(
            medical_teacher if medical_teacher is not None else (e.medical_teacher or None), self.size)
        for t in (self.teacher, self.medical_teacher):
            if t is not None:
                t.to(self.device)
        self.natural: list[str] = []
        if e.natural_images:
            from .distill import find_images
            self.natural = [str(p) for p in find_images(e.natural_images)]

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        if Path(cfg.model.name).is_dir():
            from ...models._hub import from_pretrained
            model = from_pretrained(cfg.model.name)
        else:
            from ...models._registry import create_model
            kwargs = {"img_size": self.size, "num_modalities": self.num_modalities,
                      **cfg.model.overrides}
            model = create_model(cfg.model.name, pretrained=False, **kwargs)
        init = self.e.init
        if init:
            from ...models.esp_medsam import load_mobile_sam_weights
            if not Path(init).is_file():
                raise FileNotFoundError(f"{init}: init checkpoint (MobileSAM .pt) not found")
            model.pretrained_report = load_mobile_sam_weights(model, init)
            model.pretrained_weight = init
        return model

    def _prepare_datasets(self) -> None:
        """Pre-resize caches and torch datasets (only when training or validating needs them)."""
        if self._datasets_ready:
            return
        from ...data.datasets import SegmentationDataset, build_cache
        from ...data.transforms import eval_transform, train_transform
        from ..sampler import SeededDataset
        cfg = self.cfg
        hw = (self.size, self.size)
        for k, part in enumerate(self.parts):
            root = Path(part.spec.root)
            # One cache per dataset folder (its resolved path in the name: two datasets whose
            # folders share a name must not share a cache).
            tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]
            cache_dir = (Path(cfg.data.cache_dir) if cfg.data.cache_dir else self.run_dir.parent / ".cache") \
                / f"{root.resolve().name}-{tag}_{hw[0]}x{hw[1]}"
            cache = build_cache(part.train + part.val, hw, cache_dir,
                                progress=None if self.engine.progress else False)

            def mk(samples: list[Any], tf: Any, cache: Any = cache) -> Any:
                return SegmentationDataset(samples, tf, 1, 3, cache, normalization=NORMALIZE,
                                           output="uint8")
            # Each dataset's augmentations are seeded from (seed + k, epoch, index).
            part.train_set = SeededDataset(mk(part.train, train_transform(hw, cfg.data.augment)),
                                           cfg.train.seed + 1009 * k)
            part.val_set = mk(part.val, eval_transform(hw)) if part.val else None
        self._datasets_ready = True

    def before_fit(self) -> None:
        """The teachers' embeddings must have the student's shape at SIZE²."""
        s = self.size
        x = torch.zeros(1, 3, s, s, device=self.device)
        with probing(self.model):
            want = tuple(self.model.image_embeddings(x, None).shape[1:])
            for role, t, n in (("teacher", self.teacher, None),
                               ("medical teacher", self.medical_teacher, self.parts[0].spec.modality)):
                if t is None:
                    continue
                got = tuple(t(x, n).shape[1:])
                if got != want:
                    raise TrainingSetupError(f"{role} ({t.source}) gives embeddings of shape {got} at "
                                     f"{s}², the student {want}: they must match")

    def prepare(self, resumed: bool) -> None:
        if self.engine.info.is_main:
            self._write_config(resumed)

    # -- plan -------------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        return self.n_batches

    def epoch_plan(self, epoch: int) -> list[tuple[int, list[int]]]:
        """(dataset index, train sample indices) per batch of ``epoch``: every training image
        once, batches never mix datasets, order seeded by (seed, epoch)."""
        bs, seed = self.cfg.train.batch_size, self.cfg.train.seed
        batches: list[tuple[int, list[int]]] = []
        for k, part in enumerate(self.parts):
            g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 131 + k)
            perm = torch.randperm(len(part.train), generator=g).tolist()
            batches += [(k, perm[i:i + bs]) for i in range(0, len(perm), bs)]
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def _natural_order(self, epoch: int) -> list[int]:
        if not self.natural:
            return []
        g = torch.Generator().manual_seed(self.cfg.train.seed * 7_919 + epoch + 17)
        return torch.randperm(len(self.natural), generator=g).tolist()

    def train_batches(self, epoch: int, start: int) -> DataLoader:
        self._prepare_datasets()
        plan = [(k, self.engine.shard(idx)) for k, idx in self.epoch_plan(epoch)]
        ds = _EpochBatches(plan, [p.train_set for p in self.parts], epoch, self.natural,
                           self._natural_order(epoch), self.cfg.train.batch_size, self.size, start)
        w = self.workers
        # Own generator: making the iterator must not draw from the global RNG.
        return DataLoader(ds, batch_size=None, shuffle=False, num_workers=w, collate_fn=_first,
                          worker_init_fn=worker_init if w > 0 else None,
                          pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(self.cfg.train.seed + epoch))

    def batch_images(self, batch: dict[str, Any]) -> int:
        return 0 if batch.get("empty") else int(batch["image"].shape[0])

    def inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        """(images, masks (B,1,H,W) float, modality id, natural images or None) on the device."""
        from ...data.gpu_normalize import normalize_batch
        x = batch["image"].to(self.device, non_blocking=True)
        if not batch.get("normalized", True):
            x = normalize_batch(x, batch.get("normalization") or NORMALIZE)
        if self.cfg.train.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch["mask"].to(self.device, non_blocking=True).float().unsqueeze(1)
        n = self.parts[int(batch["dataset"])].spec.modality
        nat = batch.get("natural")
        return x, y, n, (None if nat is None else nat.to(self.device, non_blocking=True))

    # -- losses -----------------------------------------------------------------------------
    def forward_student(self, x: torch.Tensor, modality: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B,1,H,W), SPPG patch logits, E^n) from one encoder pass."""
        return self.net(x, modality)

    def losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.step_losses(*self.inputs(batch))

    def step_losses(self, x: torch.Tensor, y: torch.Tensor, modality: int,
                    x_nat: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every term of one step (with their graphs): ``seg`` (+ focal, dice, sppg_bce),
        ``universal`` and ``modality`` (MMDKD; absent without teachers or at weight 0),
        ``scale`` (s_n) and ``total`` = w_seg·seg + w_uni·universal + w_mod·s_n·modality."""
        from ..losses import esp_medsam_loss
        e, autocast = self.e, self.engine.autocast
        self._modality = modality
        with autocast():
            logits, patch_logits, emb = self.forward_student(x, modality)
        seg, parts = esp_medsam_loss(logits.float(), patch_logits.float(), y,
                                     lam=e.focal_weight, sppg_weight=e.sppg_weight,
                                     return_parts=True)
        out: dict[str, torch.Tensor] = {"seg": seg, **parts}
        total = e.w_seg * seg
        nat_teacher = self.teacher
        med_teacher = self.medical_teacher or self.teacher
        x_u = x if x_nat is None else x_nat
        t_u = None
        if nat_teacher is not None and e.w_universal > 0:
            with autocast():
                t_u = nat_teacher(x_u, None)
                s_u = self.model.image_embeddings(x_u, None)
            out["universal"] = mmdkd_mse(s_u, t_u)
            total = total + e.w_universal * out["universal"]
        if med_teacher is not None and e.w_modality > 0:
            if med_teacher is nat_teacher and t_u is not None and x_u is x \
                    and not med_teacher.modality_aware:
                t_m = t_u                                  # same teacher, same images
            else:
                with autocast():
                    t_m = med_teacher(x, modality)
            out["modality"] = mmdkd_mse(emb, t_m)
            scale = self.modality_scale.get(modality, 1.0)
            out["scale"] = torch.tensor(scale)
            total = total + e.w_modality * scale * out["modality"]
        out["total"] = total
        return out

    def backward(self, terms: dict[str, torch.Tensor], scaler: torch.amp.GradScaler) -> None:
        """Gradients of ``terms["total"]``; with ``decoupled`` the modality term's gradient is
        applied to the bag of the step's modality only."""
        e = self.e
        if e.decoupled and "modality" in terms:
            mod = e.w_modality * float(terms["scale"]) * terms["modality"]
            shared = e.w_seg * terms["seg"]
            if "universal" in terms:
                shared = shared + e.w_universal * terms["universal"]
            bag = [p for p in self.model.controller.bags[self._modality].parameters()
                   if p.requires_grad]
            scaler.scale(shared).backward(retain_graph=True)
            scaler.scale(mod).backward(inputs=bag)
        else:
            scaler.scale(terms["total"]).backward()

    # -- validation -------------------------------------------------------------------------
    def has_validation(self) -> bool:
        return any(p.val for p in self.parts)

    def val_fields(self) -> list[str]:
        return ["val_dice", "val_iou", *[f"val_dice/{p.spec.name}" for p in self.parts]]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Prompt-free Dice/IoU (%) at the model resolution on every val split."""
        from ...data.datasets import collate_segmentation
        from ...data.gpu_normalize import normalize_batch
        from ...metrics.tensor import logits_to_labels, per_image_dice_iou
        self._prepare_datasets()
        out: dict[str, float] = {}
        dices, ious = [], []
        bs = self.cfg.train.batch_size
        for part in self.parts:
            ds = part.val_set
            if ds is None or len(ds) == 0:
                continue
            d_sum = i_sum = 0.0
            for s in range(0, len(ds), bs):
                b = collate_segmentation([ds[i] for i in range(s, min(len(ds), s + bs))])
                x = b["image"].to(self.device)
                if not b.get("normalized", True):
                    x = normalize_batch(x, b.get("normalization") or NORMALIZE)
                with self.engine.autocast():
                    logits = self.model(x, part.spec.modality)
                d, i = per_image_dice_iou(logits_to_labels(logits.float()),
                                          b["mask"].to(self.device).long(), 1)
                d_sum += d.sum().item()
                i_sum += i.sum().item()
            out[f"val_dice/{part.spec.name}"] = d_sum / len(ds)
            out[f"val_iou/{part.spec.name}"] = i_sum / len(ds)
            dices.append(out[f"val_dice/{part.spec.name}"])
            ious.append(out[f"val_iou/{part.spec.name}"])
        if dices:
            out["val_dice"] = float(np.mean(dices))
            out["val_iou"] = float(np.mean(ious))
        return out

    # -- run files --------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {"size": self.size, "seed": self.cfg.train.seed,
                "datasets": [[p.spec.name, p.spec.modality, len(p.train)] for p in self.parts],
                "teacher": None if self.teacher is None else self.teacher.digest,
                "medical_teacher": None if self.medical_teacher is None
                else self.medical_teacher.digest,
                "natural_images": len(self.natural), "augment": self.cfg.data.augment}

    def metadata(self) -> dict[str, Any]:
        return {"preprocess": {"size": [self.size, self.size], "normalize": NORMALIZE},
                "modalities": {p.spec.name: p.spec.modality for p in self.parts},
                "mmdkd": {"teacher": None if self.teacher is None else self.teacher.source,
                          "medical_teacher": None if self.medical_teacher is None
                          else self.medical_teacher.source,
                          "natural_images": len(self.natural)}}

    def run_info(self) -> dict[str, Any]:
        return {"datasets": {p.spec.name: len(p.train) for p in self.parts}}

    def _write_config(self, resumed: bool) -> None:
        from ...atomic import write_json_atomic
        info = {**asdict(self.e),
                "resolved": {
                    "num_modalities": self.model.num_modalities,
                    "datasets": [{"name": p.spec.name, "root": p.spec.root,
                                  "modality": p.spec.modality, "train": len(p.train),
                                  "val": len(p.val), "test": len(p.test)} for p in self.parts],
                    "batches_per_epoch": self.n_batches,
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
                    "student_input": f"resized to {self.size}², ImageNet mean/std on 0-1 "
                                     f"(= SAM's pixel mean/std on 0-255); teachers see the same",
                    "device": str(self.device), "torch": torch.__version__, "resumed": resumed}}
        write_json_atomic(self.run_dir / "esp_config.json", info, default=str)

    # -- after fit --------------------------------------------------------------------------
    def save_model(self) -> Path:
        """``RUN/model``: the best checkpoint's model (latest without val splits) as a
        save_pretrained folder, swapped in atomically."""
        from ...atomic import atomic_replace_dir
        from ...models._hub import from_pretrained, read_config
        from ..checkpoint import find_checkpoint
        ckpts = self.run_dir / "checkpoints"
        src = find_checkpoint(ckpts, "best") or find_checkpoint(ckpts, "last")
        model = from_pretrained(src) if src is not None else self.model
        meta = dict(read_config(src).get("metadata") or {}) if src is not None else self.metadata()
        meta.update({"best_val_dice": self.engine.best,
                     "checkpoint": None if src is None else src.name,
                     "prompt": "none (self-prompting: give the image and its modality id)"})
        return atomic_replace_dir(self.run_dir / "model",
                                  lambda tmp: model.save_pretrained(tmp, metadata=meta))

    def finish(self, result: Any) -> dict[str, Any]:
        # A run stopped by max_steps is partial on purpose: no model folder, no test.
        finished = result.epochs_done >= self.cfg.train.epochs
        if not self.engine.info.is_main or not (finished or result.stop_reason == "time_limit"):
            return {}
        out: dict[str, Any] = {"model": str(self.save_model())}
        if self.cfg.train.eval_test:
            out["test"] = self.evaluate_test(self.run_dir / "model")
        return out

    def evaluate_test(self, model_dir: Path) -> dict[str, Any]:
        """Prompt-free evaluation of ``model_dir`` on each dataset's test split, per modality
        (``RUN/test/NAME/per_image.csv`` + ``summary.json``)."""
        import sys

        from ...evaluation.evaluate import evaluate_samples, format_summary
        from ...inference.segmenter import Segmenter
        from ...models._hub import from_pretrained
        model = from_pretrained(model_dir).to(self.device).eval()
        out: dict[str, Any] = {}
        progress = self.engine.progress
        for part in self.parts:
            if not part.test:
                continue
            seg = Segmenter(model.for_modality(part.spec.modality), device=str(self.device),
                            size=self.size, normalize=NORMALIZE, precision=self.cfg.train.precision,
                            batch_size=max(1, self.cfg.train.batch_size))
            res = evaluate_samples(seg, part.test, out_dir=self.run_dir / "test" / part.spec.name,
                                   hd=self.e.eval_hd, overlays=4, progress=progress)
            if progress:
                print(f"[test {part.spec.name}, modality {part.spec.modality}] "
                      f"{format_summary(res, 'original_resolution')}", file=sys.stderr)
            out[part.spec.name] = {
                "modality": part.spec.modality, "n_images": res["n_images"],
                **{k: {m: v["mean"] for m, v in res[k].items() if "/" not in m}
                   for k in ("original_resolution", "model_resolution")}}
        return out


def check_config(cfg: Config) -> list[ESPDataset]:
    """The ESP task's own rules, one line each, before any work starts; returns the datasets."""
    e, size = cfg.esp, cfg.data.size
    try:
        specs = [_as_dataset(d) for d in e.datasets]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"esp.datasets: {exc}") from None
    if not specs:
        raise ConfigError("esp.datasets is empty: give at least one dataset {root, modality}")
    names = [d.name for d in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"esp.datasets: names must be unique, got {dup} more than once "
                          f"(name them: NAME=DIR:ID)")
    roots = [str(Path(d.root).resolve()) for d in specs]
    if len(set(roots)) != len(roots):
        raise ConfigError("esp.datasets: the same dataset folder is given twice")
    if len(size) != 2 or size[0] != size[1] or size[0] % 32:
        raise ConfigError(f"data.size must be square and a multiple of 32 (ESP-MedSAM: 16 × the "
                          f"SPPG patch merge), got {size}")
    if e.modality_reduction not in ("sum", "mean"):
        raise ConfigError(f"esp.modality_reduction must be sum or mean, got {e.modality_reduction!r}")
    if cfg.data.augment not in ("none", "paper", "strong"):
        raise ConfigError(f"data.augment must be none, paper or strong, got {cfg.data.augment!r}")
    for key in ("w_seg", "w_universal", "w_modality", "focal_weight", "sppg_weight"):
        if getattr(e, key) < 0:
            raise ConfigError(f"esp.{key} must be >= 0, got {getattr(e, key)}")
    top = max(d.modality for d in specs)
    if e.num_modalities and top >= e.num_modalities:
        raise ConfigError(f"esp.num_modalities: modality id {top} needs num_modalities > {top}, "
                          f"got {e.num_modalities}")
    return specs
