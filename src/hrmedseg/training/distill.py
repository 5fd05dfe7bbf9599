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

Run folder: ``checkpoints/last`` (atomic; ``model.safetensors`` + ``config.json`` +
``state.pt`` loadable with ``weights_only=True``), ``metrics.csv`` (train MSE, held-out MSE
per epoch; epoch 0 = before training), ``curve.png``, ``distill_config.json`` and
``student/`` — a ``save_pretrained`` folder of the student with the lowest held-out MSE
(latest when there is no held-out set), ``metadata.distilled = true``. ``hrmedseg train
model.pretrained=RUN/student`` loads its ``encoder.*`` and ``neck.*`` into a fresh model of the
configured name and class count (see :func:`hrmedseg.training.run.build_model`).
Rerunning the same command continues from ``checkpoints/last``.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DistillConfig", "Distiller", "TeacherCache", "distill", "find_images",
           "split_images", "build_teacher", "CACHE_VERSION"]

CACHE_VERSION = 1
CSV_FIELDS = ["epoch", "step", "train_loss", "val_loss", "lr", "epoch_time_s", "images_per_s"]
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


@dataclass
class DistillConfig:
    images: list[str]
    out_dir: str
    student: str = "hrmedseg"                 # registered model name or a save_pretrained folder
    student_overrides: dict[str, Any] = field(default_factory=dict)
    teacher: str | None = None                # MobileSAM checkpoint (None: teacher given in Python)
    epochs: int = 20
    batch_size: int = 4
    lr: float = 1e-3
    size: int = 1024
    device: str = "auto"
    precision: str = "bf16"
    val_fraction: float = 0.05
    augment: str = "none"                     # none | strong
    teacher_cache: str | None = None          # default OUT/teacher_cache
    seed: int = 0
    max_steps: int = 0                        # stop (and save) after this many steps in total
    workers: int = 0
    val_images: list[str] = field(default_factory=list)   # explicit held-out images (folders/files)
    time_limit_min: float = 0.0               # stop (and save) after this much training time

    def __post_init__(self) -> None:
        self.images = [str(p) for p in ([self.images] if isinstance(self.images, (str, Path))
                                        else self.images)]
        self.val_images = [str(p) for p in ([self.val_images] if isinstance(self.val_images, (str, Path))
                                            else self.val_images)]
        if self.augment not in ("none", "strong"):
            raise ValueError(f"augment must be 'none' or 'strong', got {self.augment!r}")
        if self.precision not in AMP:
            raise ValueError(f"precision must be one of {list(AMP)}, got {self.precision!r}")
        if self.size % 16:
            raise ValueError(f"size must be a multiple of 16, got {self.size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.epochs < 0:
            raise ValueError("batch_size must be >= 1 and epochs >= 0")


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

def find_images(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """Every image file under the given folders (recursively; files may be given too), sorted."""
    from ..data.io import is_image_file
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
    from ..data.io import read_image, to_model_channels
    img = to_model_channels(read_image(path), 3)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)) * 255.0)


class _ImageSet(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, load_rgb255(self.paths[i])


class _OrderSampler(torch.utils.data.Sampler):
    """Yields the current epoch's order (set before each epoch; lives in the main process)."""

    def __init__(self) -> None:
        self.order: list[int] = []

    def __iter__(self):
        return iter(list(self.order))

    def __len__(self) -> int:
        return len(self.order)


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
    from ..models._registry import create_model
    from ..models.sam import SamConfig, SamModel
    if isinstance(teacher, SamModel):
        return teacher
    if isinstance(teacher, nn.Module):
        return SamModel(SamConfig(img_size=size, encoder="custom", decoder_mlp_dim=8,
                                  iou_head_hidden_dim=8), image_encoder=teacher,
                        model_name="teacher")
    if teacher is None:
        raise ValueError("a teacher is needed: --teacher CHECKPOINT (MobileSAM's mobile_sam.pt)")
    path = Path(teacher)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher checkpoint not found")
    return create_model("mobile_sam", pretrained=str(path), img_size=size)


def teacher_identity(teacher: Any, checkpoint: str | None) -> str:
    """sha256 of the teacher checkpoint file, or of its image-encoder tensors when built in
    Python (so a cache never outlives the weights that made it)."""
    from ..models._pretrained import sha256_of
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
        from ..atomic import atomic_write_bytes
        atomic_write_bytes(self.root / fname, buf.getvalue())
        self.entries[name] = {"file": fname, "source": _file_signature(p)}

    def get(self, p: Path) -> torch.Tensor:
        f = self.lookup(p)
        if f is None:
            raise KeyError(f"{p}: not in the teacher cache {self.root}")
        return torch.from_numpy(np.load(f)).float()

    def write_manifest(self) -> None:
        from ..atomic import atomic_write_bytes
        data = {**self.key, "entries": self.entries}
        atomic_write_bytes(self.root / "manifest.json", (json.dumps(data, indent=1) + "\n").encode())


# ---------------------------------------------------------------------------------------------
# The distillation run
# ---------------------------------------------------------------------------------------------

def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    return dev


def build_student(cfg: DistillConfig) -> nn.Module:
    from ..models._hub import from_pretrained
    from ..models._registry import create_model
    if Path(cfg.student).is_dir():
        return from_pretrained(cfg.student)
    return create_model(cfg.student, pretrained=False, num_classes=1, img_size=cfg.size,
                        **cfg.student_overrides)


class Distiller:
    """Fits ``student.forward_embedding`` to the teacher's embedding (see module docstring).

    ``teacher``: a SamModel / embedding module to use instead of ``cfg.teacher`` (tests, or a
    teacher already in memory); ``student``: a model instead of building ``cfg.student``.
    """

    def __init__(self, cfg: DistillConfig, teacher: Any = None, student: nn.Module | None = None,
                 progress: bool = True) -> None:
        self.cfg = cfg
        self.progress = progress
        self.device = _resolve_device(cfg.device)
        self.run_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        torch.manual_seed(cfg.seed)
        self.teacher = build_teacher(teacher if teacher is not None else cfg.teacher, cfg.size)
        if int(self.teacher.config.img_size) != cfg.size:
            raise ValueError(f"teacher img_size {self.teacher.config.img_size} != size {cfg.size}")
        self.teacher.eval().requires_grad_(False).to(self.device)
        self.student = (student if student is not None else build_student(cfg)).to(self.device)
        if not hasattr(self.student, "forward_embedding"):
            raise ValueError(f"student {type(self.student).__name__} has no forward_embedding")
        unused = set(getattr(self.student, "unused_parameter_names", lambda: [])())
        # Only the encoder and neck shape the embedding: the decoder is neither trained nor
        # handed to the optimizer (its weights stay as initialised).
        self.params = [p for n, p in self.student.named_parameters()
                       if n.split(".", 1)[0] in ("encoder", "neck") and n not in unused]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr)
        paths = find_images(cfg.images)
        if cfg.val_images:   # a held-out set given explicitly (e.g. the datasets' val splits)
            self.val_paths = find_images(cfg.val_images)
            held = {p.resolve() for p in self.val_paths}
            self.train_paths = [p for p in paths if p.resolve() not in held]
        else:
            self.train_paths, self.val_paths = split_images(paths, cfg.val_fraction, cfg.seed)
        if not self.train_paths:
            raise ValueError("no training images left after taking out the held-out images")
        self.teacher_sha = teacher_identity(self.teacher, cfg.teacher if teacher is None else None)
        cache_dir = Path(cfg.teacher_cache) if cfg.teacher_cache else self.run_dir / "teacher_cache"
        self.cache = TeacherCache(cache_dir, self.teacher_sha, preprocess_description(self.teacher))
        self.teacher_calls = 0      # images the teacher embedded in this process
        self.amp = AMP[cfg.precision]
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best: float | None = None
        self.elapsed_before = 0.0               # training seconds of earlier sessions (resume)
        self._order_sampler = _OrderSampler()
        self._train_loader: Any = None

    # -- helpers ----------------------------------------------------------------------------
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def preprocess(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """0-255 RGB images of any sizes → the padded, normalised (B, 3, S, S) batch."""
        return torch.cat([self.teacher.preprocess(im.to(self.device)[None])[0] for im in images])

    @torch.no_grad()
    def teacher_embed(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher_calls += x.shape[0]
        with self._autocast():
            emb = self.teacher.image_embeddings(x)
        return emb.float()

    def _loader(self, paths: Sequence[Path], order: Sequence[int] | None = None):
        ds: torch.utils.data.Dataset = _ImageSet(paths)
        if order is not None:
            ds = torch.utils.data.Subset(ds, list(order))
        return torch.utils.data.DataLoader(ds, batch_size=self.cfg.batch_size, shuffle=False,
                                           num_workers=self.cfg.workers, collate_fn=_collate_list)

    def _train_batches(self, order: Sequence[int]):
        """Training batches in ``order``; one loader (workers kept alive) for the whole run."""
        self._order_sampler.order = list(order)
        if self._train_loader is None:
            w = self.cfg.workers
            self._train_loader = torch.utils.data.DataLoader(
                _ImageSet(self.train_paths), batch_size=self.cfg.batch_size,
                sampler=self._order_sampler, num_workers=w, collate_fn=_collate_list,
                persistent_workers=w > 0, prefetch_factor=4 if w > 0 else None)
        return self._train_loader

    def fill_cache(self) -> int:
        """Embed every image the cache lacks (held-out images always; training images when
        not augmenting). Returns how many were computed."""
        need = list(self.val_paths) + ([] if self.cfg.augment == "strong" else list(self.train_paths))
        todo = self.cache.missing(need)
        if not todo:
            return 0
        self.teacher.eval()
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc="teacher embeddings", unit="img",
                   disable=not self.progress, file=sys.stderr)
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

    def _check_shapes(self) -> None:
        s = self.cfg.size
        x = torch.zeros(1, 3, s, s, device=self.device)
        self.student.eval()
        with torch.no_grad():
            st = tuple(self.student.forward_embedding(x).shape[1:])
            te = tuple(self.teacher.image_encoder(x).shape[1:])
        self.student.train()
        if st != te:
            raise ValueError(f"student embedding {st} does not match the teacher's {te} at {s}²"
                             f" (neck_dim must equal the teacher's channels)")

    # -- state ----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "global_step": self.global_step, "best_val_mse": self.best,
                "optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "batch_size": self.cfg.batch_size, "size": self.cfg.size,
                "elapsed_s": self._elapsed(),
                "teacher_sha256": self.teacher_sha, "augment": self.cfg.augment}

    def _metadata(self) -> dict[str, Any]:
        return {"distilled": True, "teacher_sha256": self.teacher_sha, "epoch": self.epoch,
                "global_step": self.global_step, "distill_size": self.cfg.size,
                "preprocess": preprocess_description(self.teacher), "augment": self.cfg.augment}

    def save(self) -> None:
        from .checkpoint import save_checkpoint
        save_checkpoint(self.ckpt_dir, "last", self.student, self._state(), self._metadata())

    def resume(self) -> bool:
        from ..models._hub import load_safetensors, load_state_dict_checked
        from .checkpoint import find_checkpoint, load_state
        path = find_checkpoint(self.ckpt_dir, "last")
        if path is None:
            return False
        state = load_state(path)
        for key, now in (("batch_size", self.cfg.batch_size), ("size", self.cfg.size),
                         ("teacher_sha256", self.teacher_sha), ("augment", self.cfg.augment)):
            if state.get(key) != now:
                raise ValueError(f"{path}: saved with {key}={state.get(key)!r}, now {now!r}; "
                                   f"resume needs the same (or use a new output folder)")
        load_state_dict_checked(self.student, load_safetensors(path / "model.safetensors"),
                                source=str(path / "model.safetensors"))
        self.opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step, self.best = int(state["global_step"]), state["best_val_mse"]
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        return True

    def save_student(self) -> Path:
        """``RUN/student``: the student as a full save_pretrained folder (swapped in atomically)."""
        from ..atomic import atomic_replace_dir
        meta = {**self._metadata(), "val_mse": self.best}
        return atomic_replace_dir(self.run_dir / "student",
                                  lambda tmp: self.student.save_pretrained(tmp, metadata=meta))

    def _elapsed(self) -> float:
        start = getattr(self, "_session_start", None)
        return self.elapsed_before + (time.monotonic() - start if start else 0.0)

    # -- training ---------------------------------------------------------------------------
    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        return torch.randperm(len(self.train_paths), generator=g).tolist()

    def _targets(self, idx: list[int], imgs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.augment == "strong":
            views = []
            for i, im in zip(idx, imgs):
                g = torch.Generator().manual_seed(
                    (self.cfg.seed * 1_000_003 + self.epoch) * 10_000_019 + i)
                # The view is cut, resized and jittered where the networks run (GPU): the
                # random numbers come from the CPU generator, so views do not depend on device.
                views.append(augment_view(im.to(self.device, non_blocking=True), g))
            x = self.preprocess(views)
            return x, self.teacher_embed(x)
        x = self.preprocess(imgs)
        y = torch.stack([self.cache.get(self.train_paths[i]) for i in idx]).to(self.device)
        return x, y

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            out = self.student.forward_embedding(x)
        loss = F.mse_loss(out.float(), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"distillation loss became {loss.item()} at step "
                                     f"{self.global_step}; lower --lr or use --precision fp32")
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def validate(self) -> float | None:
        """Embedding MSE on the held-out images (cached teacher embeddings, no augmentation)."""
        if not self.val_paths:
            return None
        self.student.eval()
        total, n = 0.0, 0
        for idx, imgs in self._loader(self.val_paths):
            x = self.preprocess(imgs)
            y = torch.stack([self.cache.get(self.val_paths[i]) for i in idx]).to(self.device)
            with self._autocast():
                out = self.student.forward_embedding(x)
            total += F.mse_loss(out.float(), y, reduction="none").flatten(1).mean(1).sum().item()
            n += len(imgs)
        self.student.train()
        return total / max(1, n)

    def _append_csv(self, row: dict[str, Any]) -> None:
        from .metrics_log import append_csv_row
        append_csv_row(self.run_dir / "metrics.csv", row, CSV_FIELDS)

    def _write_config(self, resumed: bool) -> None:
        from ..atomic import atomic_write_bytes
        info = {**asdict(self.cfg), "teacher_sha256": self.teacher_sha,
                "train_images": len(self.train_paths), "val_images": len(self.val_paths),
                "val_stems": [str(p) for p in self.val_paths],
                "preprocess": preprocess_description(self.teacher),
                "student_input": "the teacher's preprocessed tensor (SAM mean/std = ImageNet "
                                 "normalisation, longest side resized, zero-padded)",
                "device": str(self.device), "torch": torch.__version__, "resumed": resumed}
        atomic_write_bytes(self.run_dir / "distill_config.json",
                           (json.dumps(info, indent=2) + "\n").encode())

    def fit(self, resume: bool = True) -> dict[str, Any]:
        from tqdm.auto import tqdm
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._check_shapes()
        resumed = self.resume() if resume else False
        self._write_config(resumed)
        computed = self.fill_cache()
        if not resumed and not (self.run_dir / "metrics.csv").exists():
            v = self.validate()
            self.best = v
            self._append_csv({"epoch": 0, "step": 0, "val_loss": "" if v is None else round(v, 6)})
        per_epoch = max(1, math.ceil(len(self.train_paths) / cfg.batch_size))
        stopped = False
        steps_at_start = self.global_step
        self._session_start = time.monotonic()
        self.student.train()
        self.teacher.eval()
        while self.epoch < cfg.epochs and not stopped:
            order = self._order(self.epoch)[self.batch_in_epoch * cfg.batch_size:]
            t0, loss_sum, seen, n_img = time.monotonic(), 0.0, 0, 0
            bar = tqdm(total=per_epoch, initial=self.batch_in_epoch, unit="batch",
                       desc=f"distill {self.epoch + 1}/{cfg.epochs}", disable=not self.progress,
                       file=sys.stderr)
            for idx, imgs in self._train_batches(order):
                if cfg.time_limit_min and self._elapsed() > 60 * cfg.time_limit_min:
                    stopped = True      # budget already spent (e.g. rerun of a finished run)
                    break
                x, y = self._targets(idx, imgs)
                loss = self.train_step(x, y)
                self.batch_in_epoch += 1
                self.global_step += 1
                loss_sum, seen, n_img = loss_sum + loss, seen + 1, n_img + len(imgs)
                bar.set_postfix(mse=f"{loss:.4f}")
                bar.update(1)
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    stopped = True
                    break
            bar.close()
            if self.batch_in_epoch >= per_epoch:
                self.epoch += 1
                self.batch_in_epoch = 0
                v = self.validate()
                improved = v is None or self.best is None or v <= self.best
                if v is not None and improved:
                    self.best = v
                dt = time.monotonic() - t0
                row = {"epoch": self.epoch, "step": self.global_step,
                       "train_loss": round(loss_sum / max(1, seen), 6),
                       "val_loss": "" if v is None else round(v, 6), "lr": cfg.lr,
                       "epoch_time_s": round(dt, 2), "images_per_s": round(n_img / max(dt, 1e-9), 2)}
                self.save()
                if improved:
                    self.save_student()
                self._append_csv(row)
                plot_distill_curve(self.run_dir / "metrics.csv", self.run_dir / "curve.png")
                if self.progress:
                    print(f"[distill epoch {self.epoch}] train mse {row['train_loss']}, held-out "
                          f"mse {row['val_loss']}", file=sys.stderr, flush=True)
            else:
                self.save()
        self._train_loader = None
        timed_out = stopped and not (cfg.max_steps and self.global_step >= cfg.max_steps)
        if timed_out and self.batch_in_epoch > 0 and self.global_step > steps_at_start:
            # The budget ran out mid-epoch: score those steps too, so the shipped student is
            # the best of everything trained.
            v = self.validate()
            if v is not None and (self.best is None or v <= self.best):
                self.best = v
                self.save_student()
            self._append_csv({"epoch": round(self.epoch + self.batch_in_epoch / per_epoch, 3),
                              "step": self.global_step,
                              "val_loss": "" if v is None else round(v, 6), "lr": cfg.lr})
            self.save()
            plot_distill_curve(self.run_dir / "metrics.csv", self.run_dir / "curve.png")
        if not (self.run_dir / "student").is_dir() and not stopped:
            self.save_student()
        return {"run_dir": str(self.run_dir), "epochs_done": self.epoch,
                "global_step": self.global_step, "best_val_mse": self.best,
                "stopped_early": stopped, "resumed": resumed, "teacher_images_embedded": computed,
                "train_images": len(self.train_paths), "val_images": len(self.val_paths),
                "student": str(self.run_dir / "student")}


def plot_distill_curve(csv_path: Path, png_path: Path) -> None:
    """Train and held-out embedding MSE per epoch (log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_write_bytes
    rows = list(csv.DictReader(open(csv_path)))
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, label, style in (("train_loss", "train MSE", "-"), ("val_loss", "held-out MSE", "--")):
        pts = [(float(r["epoch"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("embedding MSE")
    if ax.lines:
        ax.set_yscale("log")
        ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(f"distillation: {Path(csv_path).parent.name}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())


def distill(cfg: DistillConfig, teacher: Any = None, student: nn.Module | None = None,
            resume: bool = True, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) a distillation; returns a summary dict (also written as summary.json)."""
    d = Distiller(cfg, teacher=teacher, student=student, progress=progress)
    summary = d.fit(resume=resume)
    summary["teacher_calls"] = d.teacher_calls
    from ..atomic import atomic_write_bytes
    atomic_write_bytes(Path(cfg.out_dir) / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary
