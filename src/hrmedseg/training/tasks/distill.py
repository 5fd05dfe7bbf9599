"""Embedding distillation: an HRMedSeg student learns MobileSAM's (TinyViT) image embedding.

SPEC "Distillation": MSE between the student's neck output (``forward_embedding``, 256×S/16²)
and the teacher's image embedding, Adam 1e-3, batch 4, ≥20 epochs, images at 1024.

Preprocessing (one choice, used by both networks): the teacher's own
:meth:`~hrmedseg.models.sam.SamModel.preprocess` — RGB on 0-255, longest side resized to ``size``
(bilinear, antialiased), normalised with SAM's pixel mean/std, zero-padded bottom/right to
``size``². The student receives **the same tensor**. SAM's mean/std on 0-255 are exactly the
ImageNet mean/std on 0-1 (123.675/255 = 0.485 …), which is ``data.normalize=imagenet``, the
default of ``hrmedseg train``, so a distilled encoder sees the same intensity normalisation when
fine-tuned; only the geometry differs (training resizes, distillation pads).

Teacher embeddings:

* ``augment="none"``: computed once per image and cached on disk (one float16 ``.npy`` per
  image, ``manifest.json`` holding the teacher's sha256 and the preprocessing; a cache whose
  manifest does not match is rebuilt), so the teacher does not run every epoch.
* ``augment="strong"``: the teacher runs on the fly on every augmented view (random scale /
  crop, flips, colour jitter; seeded per sample, epoch and run seed, so a resumed run sees the
  same views). Held-out images are never augmented and always come from the cache.

The engine (:mod:`hrmedseg.training.engine`) runs the loop: resume, time budget, images/s,
checkpoints. Run folder: ``checkpoints/last`` and ``checkpoints/best`` (atomic;
``model.safetensors`` + ``config.json`` + ``state.pt`` loadable with ``weights_only=True``),
``metrics.csv`` (train MSE, held-out MSE per epoch; epoch 0 = before training), ``curve.png``,
``config.yaml``, ``env.json``, ``distill_config.json`` and ``student/`` — a ``save_pretrained``
folder of the student with the lowest held-out MSE (latest when there is no held-out set),
``metadata.distilled = true``. ``hrmedseg train
model.pretrained=RUN/student`` loads its ``encoder.*`` and ``neck.*`` into a fresh model of the
configured name and class count (see :func:`hrmedseg.training.run.build_model`).
Rerunning the same command continues from ``checkpoints/last``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, ConfigError, TrainingSetupError, resolve_workers
from .base import ModelMethod, Task, probing

__all__ = ["DistillTask", "TeacherCache", "find_images", "split_images", "build_teacher",
           "augment_view", "CACHE_VERSION"]

CACHE_VERSION = 1


def find_images(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every image file under the given folders (recursively; files may be given too), sorted."""
    from ...data.io import is_image_file
    out: list[Path] = []
    for d in dirs:
        p = Path(d)
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out.extend(f for f in sorted(p.rglob("*")) if f.is_file() and is_image_file(f)
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            raise FileNotFoundError(f"{p}: image folder not found")
    seen: set[Path] = set()
    uniq = []
    for f in out:
        r = f.resolve()
        if r not in seen:
            seen.add(r)
            uniq.append(f)
    if not uniq:
        raise FileNotFoundError(f"no images found in {[str(d) for d in dirs]}")
    return uniq


def split_images(paths: Sequence[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Seeded held-out split: ``round(val_fraction·N)`` images (at least one when the fraction
    is > 0 and there are ≥ 2 images)."""
    paths = list(paths)
    n_val = 0
    if val_fraction > 0 and len(paths) >= 2:
        n_val = min(len(paths) - 1, max(1, round(val_fraction * len(paths))))
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    val = sorted(order[:n_val])
    val_set = set(val)
    return [p for i, p in enumerate(paths) if i not in val_set], [paths[i] for i in val]


def load_rgb255(path: Path) -> torch.Tensor:
    """(3, H, W) float32 RGB on 0-255 (grey repeated, alpha dropped, 16-bit scaled)."""
    from ...data.io import read_image, to_model_channels
    img = to_model_channels(read_image(path), 3)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)) * 255.0)


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, load_rgb255(self.paths[i])


def _collate_list(items: list[tuple[int, torch.Tensor]]) -> tuple[list[int], list[torch.Tensor]]:
    return [i for i, _ in items], [t for _, t in items]


# ---------------------------------------------------------------------------------------------
# Augmentation ("strong"): random scale/crop, flips, colour — on 0-255 RGB, seeded per view
# ---------------------------------------------------------------------------------------------

def augment_view(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random view of a (3, H, W) 0-255 image (same size class: the crop is resized back to
    the crop's own size scaled by a random factor; the teacher's preprocessing then resizes)."""
    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand((), generator=gen))

    _, h, w = img.shape
    area = u(0.25, 1.0)
    ratio = math.exp(u(math.log(3 / 4), math.log(4 / 3)))
    ch = max(8, min(h, int(round(math.sqrt(area * h * w / ratio)))))
    cw = max(8, min(w, int(round(math.sqrt(area * h * w * ratio)))))
    y0 = int(torch.randint(0, h - ch + 1, (), generator=gen))
    x0 = int(torch.randint(0, w - cw + 1, (), generator=gen))
    x = img[:, y0:y0 + ch, x0:x0 + cw]
    scale = u(0.6, 1.4)
    nh, nw = max(8, int(ch * scale)), max(8, int(cw * scale))
    x = F.interpolate(x[None], (nh, nw), mode="bilinear", align_corners=False,
                      antialias=scale < 1)[0]
    if float(torch.rand((), generator=gen)) < 0.5:
        x = x.flip(-1)
    if float(torch.rand((), generator=gen)) < 0.5:
        x = x.flip(-2)
    x = x * u(0.7, 1.3)                                        # brightness
    mean = x.mean()
    x = (x - mean) * u(0.7, 1.3) + mean                        # contrast
    grey = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2])[None]
    x = (x - grey) * u(0.6, 1.4) + grey                        # saturation
    return x.clamp(0, 255)


# ---------------------------------------------------------------------------------------------
# Teacher and its embedding cache
# ---------------------------------------------------------------------------------------------

def build_teacher(teacher: Any, size: int) -> Any:
    """A :class:`~hrmedseg.models.sam.SamModel` teacher from a MobileSAM checkpoint path, a
    SamModel, or any module mapping preprocessed (B, 3, S, S) images to (B, C, S/16, S/16)
    (wrapped into a SamModel so that SAM's preprocessing applies)."""
    from ...models._registry import create_model
    from ...models.sam import SamConfig, SamModel
    if isinstance(teacher, SamModel):
        return teacher
    if isinstance(teacher, nn.Module):
        return SamModel(SamConfig(img_size=size, encoder="custom", decoder_mlp_dim=8,
                                  iou_head_hidden_dim=8), image_encoder=teacher,
                        model_name="teacher")
    if teacher is None:
        raise TrainingSetupError("a teacher is needed: --teacher CHECKPOINT (MobileSAM's mobile_sam.pt)")
    path = Path(teacher)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher checkpoint not found")
    return create_model("mobile_sam", pretrained=str(path), img_size=size)


def teacher_identity(teacher: Any, checkpoint: str | None) -> str:
    """sha256 of the teacher checkpoint file, or of its image-encoder tensors when built in
    Python (so a cache never outlives the weights that made it)."""
    from ...models._pretrained import sha256_of
    if checkpoint is not None and Path(checkpoint).is_file():
        return sha256_of(Path(checkpoint))
    h = hashlib.sha256()
    for k, v in sorted(teacher.image_encoder.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().float().numpy().tobytes())
    return "weights:" + h.hexdigest()


def preprocess_description(teacher: Any) -> dict[str, Any]:
    c = teacher.config
    return {"img_size": int(c.img_size), "pixel_mean": list(c.pixel_mean),
            "pixel_std": list(c.pixel_std), "input": "RGB 0-255",
            "resize": "longest side to img_size, bilinear antialiased; pad bottom/right with 0 "
                      "after normalisation (SamModel.preprocess)"}


def _file_signature(p: Path) -> list[Any]:
    st = p.stat()
    return [str(p.resolve()), int(st.st_size), int(st.st_mtime_ns)]


class TeacherCache:
    """One float16 ``.npy`` per image plus ``manifest.json`` (teacher sha256, preprocessing,
    and each image's path/size/mtime). A manifest that does not match empties the folder."""

    def __init__(self, root: str | os.PathLike, teacher_sha: str, preprocess: dict[str, Any]) -> None:
        self.root = Path(root)
        self.key = {"version": CACHE_VERSION, "teacher_sha256": teacher_sha,
                    "preprocess": preprocess, "dtype": "float16"}
        self.entries: dict[str, dict[str, Any]] = {}
        self.rebuilt = False
        man = self.root / "manifest.json"
        if man.is_file():
            try:
                data = json.loads(man.read_text())
            except (OSError, json.JSONDecodeError):
                data = {}
            if all(data.get(k) == v for k, v in self.key.items()):
                self.entries = dict(data.get("entries", {}))
            else:
                self.rebuilt = True
                for f in self.root.glob("*.npy"):
                    f.unlink()
                man.unlink()

    @staticmethod
    def _name(p: Path) -> str:
        sig = _file_signature(p)
        return hashlib.sha256(sig[0].encode()).hexdigest()[:24]

    def lookup(self, p: Path) -> Path | None:
        e = self.entries.get(self._name(p))
        if e is None or e.get("source") != _file_signature(p):
            return None
        f = self.root / e["file"]
        return f if f.is_file() else None

    def missing(self, paths: Sequence[Path]) -> list[Path]:
        return [p for p in paths if self.lookup(p) is None]

    def put(self, p: Path, emb: torch.Tensor) -> None:
        name = self._name(p)
        fname = f"{name}.npy"
        buf = io.BytesIO()
        np.save(buf, emb.detach().to(torch.float16).cpu().numpy())
        from ...atomic import atomic_write_bytes
        atomic_write_bytes(self.root / fname, buf.getvalue())
        self.entries[name] = {"file": fname, "source": _file_signature(p)}

    def get(self, p: Path) -> torch.Tensor:
        f = self.lookup(p)
        if f is None:
            raise KeyError(f"{p}: not in the teacher cache {self.root}")
        return torch.from_numpy(np.load(f)).float()

    def write_manifest(self) -> None:
        from ...atomic import write_json_atomic
        data = {**self.key, "entries": self.entries}
        write_json_atomic(self.root / "manifest.json", data, indent=1)


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------

def build_student(cfg: Config, size: int) -> nn.Module:
    from ...models._hub import from_pretrained
    from ...models._registry import create_model
    if Path(cfg.model.name).is_dir():
        return from_pretrained(cfg.model.name)
    return create_model(cfg.model.name, pretrained=False, num_classes=1, img_size=size,
                        **cfg.model.overrides)


class _BatchPlan:
    """The current epoch's batches of image indices (set before each epoch; a persistent
    DataLoader reads it anew at every epoch)."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


class DistillTask(Task):
    """Fits ``student.forward_embedding`` to the teacher's embedding (see the module docstring).

    ``teacher``: a SamModel / embedding module instead of ``distill.teacher`` (tests, or a
    teacher already in memory); ``student``: a model instead of building ``model.name``.
    """

    name = "distill"
    monitor, mode = "val_loss", "min"
    loss_fields = {"total": "train_loss"}
    validate_at_start = True
    round_digits = 6
    log_loss_axis = True

    def __init__(self, cfg: Config, teacher: Any = None, student: nn.Module | None = None) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.size = int(cfg.data.size[0])
        self.augment = cfg.data.augment
        self._given = (teacher, student)
        self.workers = resolve_workers(cfg.data.workers)
        self.run_dir = Path(cfg.train.out_dir)
        self.teacher_calls = 0      # images the teacher embedded in this process
        self.computed = 0
        self._plan = _BatchPlan()
        self._train_loader: Any = None

    def setup(self, engine: Any) -> None:
        super().setup(engine)
        cfg, d = self.cfg, self.cfg.distill
        teacher, student = self._given
        self.device = engine.device
        self.teacher = build_teacher(teacher if teacher is not None else (d.teacher or None), self.size)
        if int(self.teacher.config.img_size) != self.size:
            raise TrainingSetupError(f"teacher img_size {self.teacher.config.img_size} != size {self.size}")
        self.teacher.eval().requires_grad_(False).to(self.device)
        self.model = (student if student is not None else build_student(cfg, self.size)).to(self.device)
        if not hasattr(self.model, "forward_embedding"):
            raise TrainingSetupError(f"student {type(self.model).__name__} has no forward_embedding")
        self.apply_grad_checkpointing(cfg, self.device)
        self.net = self.compile_net(ModelMethod(self.model, "forward_embedding"), cfg, self.device)
        paths = find_images(d.images)
        if d.val_images:   # a held-out set given explicitly (e.g. the datasets' val splits)
            self.val_paths = find_images(d.val_images)
            held = {p.resolve() for p in self.val_paths}
            self.train_paths = [p for p in paths if p.resolve() not in held]
        else:
            self.train_paths, self.val_paths = split_images(paths, d.val_fraction, cfg.train.seed)
        if not self.train_paths:
            raise TrainingSetupError("no training images left after taking out the held-out images")
        self.teacher_sha = teacher_identity(self.teacher, (d.teacher or None) if teacher is None else None)
        cache_dir = Path(d.teacher_cache) if d.teacher_cache else self.run_dir / "teacher_cache"
        self.cache = TeacherCache(cache_dir, self.teacher_sha, preprocess_description(self.teacher))

    def parameters(self) -> list[nn.Parameter]:
        # Only the encoder and neck shape the embedding: the decoder is neither trained nor
        # handed to the optimizer (its weights stay as initialised).
        unused = set(getattr(self.model, "unused_parameter_names", lambda: [])())
        return [p for n, p in self.model.named_parameters()
                if n.split(".", 1)[0] in ("encoder", "neck") and n not in unused]

    # -- helpers ----------------------------------------------------------------------------
    def preprocess(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """0-255 RGB images of any sizes → the padded, normalised (B, 3, S, S) batch."""
        return torch.cat([self.teacher.preprocess(im.to(self.device)[None])[0] for im in images])

    @torch.no_grad()
    def teacher_embed(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher_calls += x.shape[0]
        with self.engine.autocast():
            emb = self.teacher.image_embeddings(x)
        return emb.float()

    def _loader(self, paths: Sequence[Path]):
        return torch.utils.data.DataLoader(_ImageSet(paths), batch_size=self.cfg.train.batch_size,
                                           shuffle=False, num_workers=self.workers,
                                           collate_fn=_collate_list)

    def fill_cache(self) -> int:
        """Embed every image the cache lacks (held-out images always; training images when
        not augmenting). Returns how many were computed."""
        need = list(self.val_paths) + ([] if self.augment == "strong" else list(self.train_paths))
        todo = self.cache.missing(need)
        if not todo or not self.engine.info.is_main:
            return 0
        self.teacher.eval()
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="teacher embeddings", unit="img",
                   disable=not self.engine.progress, file=sys.stderr)
        for k, (idx, imgs) in enumerate(self._loader(todo)):
            emb = self.teacher_embed(self.preprocess(imgs))
            for i, e in zip(idx, emb):
                self.cache.put(todo[i], e)
            bar.update(len(imgs))
            if k % 50 == 49:
                self.cache.write_manifest()
        bar.close()
        self.cache.write_manifest()
        return len(todo)

    def before_fit(self) -> None:
        """The student's embedding must have the teacher's shape at SIZE²."""
        s = self.size
        x = torch.zeros(1, 3, s, s, device=self.device)
        with probing(self.model):
            st = tuple(self.model.forward_embedding(x).shape[1:])
            te = tuple(self.teacher.image_encoder(x).shape[1:])
        if st != te:
            raise TrainingSetupError(f"student embedding {st} does not match the teacher's {te} at {s}²"
                             f" (neck_dim must equal the teacher's channels)")

    def prepare(self, resumed: bool) -> None:
        from ...atomic import write_json_atomic
        from ..distributed import barrier
        if self.engine.info.is_main:
            info = {**asdict(self.cfg.distill), "student": self.cfg.model.name,
                    "student_overrides": self.cfg.model.overrides, "size": self.size,
                    "augment": self.augment, "teacher_sha256": self.teacher_sha,
                    "train_images": len(self.train_paths), "val_images": len(self.val_paths),
                    "val_stems": [str(p) for p in self.val_paths],
                    "preprocess": preprocess_description(self.teacher),
                    "student_input": "the teacher's preprocessed tensor (SAM mean/std = ImageNet "
                                     "normalisation, longest side resized, zero-padded)",
                    "device": str(self.device), "torch": torch.__version__, "resumed": resumed}
            write_json_atomic(self.run_dir / "distill_config.json", info)
        self.computed = self.fill_cache()
        barrier(self.engine.info)
        if not self.engine.info.is_main:     # the main process wrote the missing embeddings
            self.cache = TeacherCache(self.cache.root, self.teacher_sha,
                                      preprocess_description(self.teacher))
        self.teacher.eval()

    # -- batches ----------------------------------------------------------------------------
    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(len(self.train_paths) / self.cfg.train.batch_size))

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.train.seed * 100003 + epoch)
        return torch.randperm(len(self.train_paths), generator=g).tolist()

    def train_batches(self, epoch: int, start: int):
        """Training batches of ``epoch`` from batch ``start``; one loader (workers kept
        alive) for the whole run."""
        bs = self.cfg.train.batch_size
        order = self.order(epoch)
        self._epoch = epoch
        self._plan.batches = [self.engine.shard(order[b * bs:(b + 1) * bs])
                              for b in range(start, self.batches_per_epoch())]
        if self._train_loader is None:
            w = self.workers
            self._train_loader = torch.utils.data.DataLoader(
                _ImageSet(self.train_paths), batch_sampler=self._plan, num_workers=w,
                collate_fn=_collate_list, persistent_workers=w > 0,
                prefetch_factor=4 if w > 0 else None)
        return self._train_loader

    def batch_images(self, batch: tuple[list[int], list[torch.Tensor]]) -> int:
        return len(batch[0])

    def targets(self, idx: list[int], imgs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(student input, teacher embedding) of a training batch."""
        if self.augment == "strong":
            views = []
            for i, im in zip(idx, imgs):
                g = torch.Generator().manual_seed(
                    (self.cfg.train.seed * 1_000_003 + self._epoch) * 10_000_019 + i)
                # The view is cut, resized and jittered where the networks run (GPU): the
                # random numbers come from the CPU generator, so views do not depend on device.
                views.append(augment_view(im.to(self.device, non_blocking=True), g))
            x = self.preprocess(views)
            return x, self.teacher_embed(x)
        x = self.preprocess(imgs)
        y = torch.stack([self.cache.get(self.train_paths[i]) for i in idx]).to(self.device)
        return x, y

    def losses(self, batch: tuple[list[int], list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """MSE between the student's embedding and the teacher's (SPEC "Distillation")."""
        x, y = self.targets(*batch)
        with self.engine.autocast():
            out = self.net(x)
        return {"total": F.mse_loss(out.float(), y)}

    # -- validation -------------------------------------------------------------------------
    def has_validation(self) -> bool:
        return bool(self.val_paths)

    def val_fields(self) -> list[str]:
        return ["val_loss"]

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Embedding MSE on the held-out images (cached teacher embeddings, no augmentation),
        the mean over images."""
        if not self.val_paths:
            return {}
        total, n = 0.0, 0
        for idx, imgs in self._loader(self.val_paths):
            x = self.preprocess(imgs)
            y = torch.stack([self.cache.get(self.val_paths[i]) for i in idx]).to(self.device)
            with self.engine.autocast():
                out = self.model.forward_embedding(x)
            total += F.mse_loss(out.float(), y, reduction="none").flatten(1).mean(1).sum().item()
            n += len(imgs)
        return {"val_loss": total / max(1, n)}

    # -- run files --------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        return {"size": self.size, "teacher_sha256": self.teacher_sha, "augment": self.augment,
                "train_images": len(self.train_paths)}

    def metadata(self) -> dict[str, Any]:
        return {"distilled": True, "teacher_sha256": self.teacher_sha, "distill_size": self.size,
                "preprocess": preprocess_description(self.teacher), "augment": self.augment}

    def run_info(self) -> dict[str, Any]:
        return {"train_images": len(self.train_paths), "val_images": len(self.val_paths)}

    def save_student(self) -> Path:
        """``RUN/student``: the student as a full save_pretrained folder (swapped in atomically)."""
        from ...atomic import atomic_replace_dir
        e = self.engine
        meta = {**self.metadata(), "epoch": e.epoch, "global_step": e.global_step, "val_mse": e.best}
        return atomic_replace_dir(self.run_dir / "student",
                                  lambda tmp: self.model.save_pretrained(tmp, metadata=meta))

    def on_improved(self) -> None:
        self.save_student()

    def finish(self, result: Any) -> dict[str, Any]:
        if self.engine.info.is_main and not (self.run_dir / "student").is_dir() and not result.stopped_early:
            self.save_student()
        return {"best_val_mse": result.best, "teacher_images_embedded": self.computed,
                "teacher_calls": self.teacher_calls, "train_images": len(self.train_paths),
                "val_images": len(self.val_paths), "student": str(self.run_dir / "student")}

    def close(self) -> None:
        self._train_loader = None


def check_config(cfg: Config) -> None:
    """The distillation task's own rules, one line each, before any work starts."""
    d, size = cfg.distill, cfg.data.size
    if not d.images:
        raise ConfigError("distill.images is empty: give the image folders (distill.images=[DIR])")
    if len(size) != 2 or size[0] != size[1]:
        raise ConfigError(f"data.size must be square for distillation, got {size}")
    if size[0] % 16:
        raise ConfigError(f"data.size must be a multiple of 16, got {size[0]}")
    if cfg.data.augment not in ("none", "strong"):
        raise ConfigError(f"data.augment must be none or strong for distillation, got {cfg.data.augment!r}")
    if not 0.0 <= d.val_fraction < 1.0:
        raise ConfigError(f"distill.val_fraction must be in [0, 1), got {d.val_fraction}")
