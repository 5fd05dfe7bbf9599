"""Finding image/mask pairs on disk, checking them, and serving them to PyTorch.

Why this module exists: most failed trainings on new data are data problems (a missing mask, a mask
of the wrong size, a JPEG mask full of noise, a stray label 17). ``discover_pairs`` understands the
layouts people actually ship (``images/`` + ``masks/`` folders, the nnU-Net raw layout, and the
official DRIVE download with its train/test split),
``check_dataset`` reads every file once and reports all problems at once, ``SegmentationDataset``
serves samples in the package convention, and ``build_cache`` removes the cost of decoding large
JPEG/PNG files every epoch.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .._optional import require
from ..atomic import atomic_write_bytes, write_json_atomic
from .augment import as_hw
from .io import (
    ImageReadError,
    NormMode,
    is_image_file,
    is_lossy,
    mask_to_labels,
    normalize,
    read_image,
    read_mask,
    split_ext,
    to_model_channels,
)
from .volumes import check_label_matches, is_3d_nifti, read_nifti_volume

__all__ = [
    "MASK_SUFFIXES", "Sample", "DatasetIndex", "Problem", "discover_pairs", "check_dataset",
    "check_volume_dataset", "label_value_problem", "DictTransformDataset",
    "SegmentationDataset", "PreResizeCache", "build_cache", "collate_segmentation",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Suffixes that mask files commonly add to the image stem (compared case-insensitively).
MASK_SUFFIXES: tuple[str, ...] = (
    "_segmentation", "_annotation", "_manual1", "_labels", "_label", "_masks", "_mask", "-mask",
    "_1stho", "_seg", "_gt", ".mask",
)
_IMAGE_DIRS = ("images", "imgs", "image", "img")
# Singular "mask" is deliberately absent: DRIVE-style data use mask/ for the field of view, not labels.
_MASK_DIRS = ("masks", "labels", "label", "annotations", "gt", "ground_truth")
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
# DRIVE (retinal vessels): split folder -> split name; labels in 1st_manual/, field of view in mask/.
_DRIVE_SPLITS = (("training", "train"), ("test", "test"))
_DRIVE_IMAGES, _DRIVE_MANUAL, _DRIVE_FOV = "images", "1st_manual", "mask"


@dataclass(frozen=True)
class Sample:
    """One image/mask pair. ``extra_channels`` holds further channel files (nnU-Net _0001, ...).

    ``fov_mask_path`` is a field-of-view mask where the layout ships one (DRIVE ``mask/``): it marks
    the valid image area, it is not a label, and nothing is trained on it.
    """

    stem: str
    image_path: Path
    mask_path: Path
    extra_channels: tuple[Path, ...] = ()
    fov_mask_path: Path | None = None

    @property
    def image_paths(self) -> tuple[Path, ...]:
        return (self.image_path, *self.extra_channels)


@dataclass
class DatasetIndex(Sequence[Sample]):
    """Result of :func:`discover_pairs`: the samples (sorted by stem, usable as a list) plus metadata.

    ``class_names`` is known for nnU-Net datasets (from ``dataset.json`` ``labels``), else None.
    ``official_splits`` is the split that comes with the layout (DRIVE: ``{"train": training/,
    "val": [], "test": test/}``, stems sorted), else None.
    Unpaired files and duplicate stems are kept so that :func:`check_dataset` can report them;
    duplicated stems are left out of ``samples`` rather than guessed.
    """

    root: Path
    layout: Literal["folder", "nnunet", "drive"]
    samples: list[Sample]
    class_names: list[str] | None = None
    channel_names: list[str] | None = None
    unpaired_images: list[Path] = field(default_factory=list)
    unpaired_masks: list[Path] = field(default_factory=list)
    duplicates: dict[str, list[Path]] = field(default_factory=dict)
    official_splits: dict[str, list[str]] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):  # type: ignore[override]
        return self.samples[i]

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    @property
    def stems(self) -> list[str]:
        return [s.stem for s in self.samples]

    def subset(self, stems: Sequence[str]) -> list[Sample]:
        """Samples for the given stems in the given order (e.g. one split); unknown stems raise KeyError."""
        by_stem = {s.stem: s for s in self.samples}
        missing = [s for s in stems if s not in by_stem]
        if missing:
            raise KeyError(f"{len(missing)} stems not in dataset {self.root}, e.g. {missing[:3]}")
        return [by_stem[s] for s in stems]


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`check_dataset`; severity is "error", "warning" or "info"."""

    path: Path
    message: str
    severity: Literal["error", "warning", "info"] = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}"

    @property
    def kind(self) -> str:
        """The message's leading phrase with numbers dropped ("lossy JPEG mask", "empty mask"),
        so that reports can group many findings of one kind."""
        head = re.split(r"[:;(]", self.message, maxsplit=1)[0]
        return re.sub(r"\s+", " ", re.sub(r"\d+(\.\d+)?", "N", head)).strip() or self.message


# --------------------------------------------------------------------------- discovery
def _pick_dir(root: Path, given: str | None, candidates: Sequence[str]) -> Path | None:
    if given is not None:
        d = root / given
        return d if d.is_dir() else None
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return None


def _list_images(folder: Path, ending: str | None = None) -> list[Path]:
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        if ending is not None:
            if p.name.lower().endswith(ending.lower()):
                out.append(p)
        elif is_image_file(p):
            out.append(p)
    return out


def _strip_ending(name: str, ending: str) -> str:
    return name[: -len(ending)] if name.lower().endswith(ending.lower()) else split_ext(name)[0]


def _discover_folder(root: Path, image_dir: Path, mask_dir: Path, suffixes: Sequence[str]) -> DatasetIndex:
    images: dict[str, list[Path]] = {}
    for p in _list_images(image_dir):
        images.setdefault(split_ext(p)[0], []).append(p)
    masks: dict[str, list[Path]] = {}
    unpaired_masks: list[Path] = []
    ordered = sorted(suffixes, key=len, reverse=True)
    for p in _list_images(mask_dir):
        stem = split_ext(p)[0]
        key = stem if stem in images else None
        if key is None:
            low = stem.lower()
            for suf in ordered:
                if low.endswith(suf.lower()) and stem[: -len(suf)] in images:
                    key = stem[: -len(suf)]
                    break
        if key is None:
            unpaired_masks.append(p)
        else:
            masks.setdefault(key, []).append(p)
    duplicates: dict[str, list[Path]] = {}
    samples: list[Sample] = []
    unpaired_images: list[Path] = []
    for stem in sorted(images):
        ims, ms = images[stem], masks.get(stem, [])
        if len(ims) > 1 or len(ms) > 1:
            duplicates[stem] = ims + ms
            continue
        if not ms:
            unpaired_images.append(ims[0])
            continue
        samples.append(Sample(stem, ims[0], ms[0]))
    return DatasetIndex(root, "folder", samples, None, None, unpaired_images, unpaired_masks, duplicates)


def _discover_nnunet(root: Path) -> DatasetIndex:
    try:
        meta = json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{root / 'dataset.json'}: unreadable dataset.json ({exc})") from None
    ending = meta.get("file_ending")
    labels = meta.get("labels") or {}
    class_names = None
    if labels:
        def first(v: Any) -> int:
            return int(min(v)) if isinstance(v, (list, tuple)) else int(v)
        class_names = [name for name, _ in sorted(labels.items(), key=lambda kv: first(kv[1]))]
    chans = meta.get("channel_names") or meta.get("modality") or {}
    channel_names = [str(chans[k]) for k in sorted(chans, key=lambda k: int(k))] if chans else None

    cases: dict[str, dict[int, Path]] = {}
    unpaired_images: list[Path] = []
    for p in _list_images(root / "imagesTr", ending):
        m = _NNUNET_CHANNEL.match(_strip_ending(p.name, ending) if ending else split_ext(p)[0])
        if m is None:
            unpaired_images.append(p)  # not named {case}_{XXXX}
            continue
        cases.setdefault(m["case"], {})[int(m["ch"])] = p
    labels_dir = root / "labelsTr"
    label_files = {}
    if labels_dir.is_dir():
        for p in _list_images(labels_dir, ending):
            label_files[_strip_ending(p.name, ending) if ending else split_ext(p)[0]] = p
    samples = []
    for case in sorted(cases):
        if case not in label_files:
            unpaired_images.extend(cases[case][k] for k in sorted(cases[case]))
            continue
        chs = [cases[case][k] for k in sorted(cases[case])]
        samples.append(Sample(case, chs[0], label_files[case], tuple(chs[1:])))
    unpaired_masks = [p for c, p in sorted(label_files.items()) if c not in cases]
    return DatasetIndex(root, "nnunet", samples, class_names, channel_names,
                        sorted(unpaired_images), unpaired_masks, {})


def _drive_key(stem: str) -> str:
    """DRIVE files of one eye share the number before the first underscore (21_training, 21_manual1)."""
    return stem.split("_", 1)[0]


def _by_key(files: Sequence[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for p in files:
        out.setdefault(_drive_key(split_ext(p)[0]), []).append(p)
    return out


def _is_drive_part(d: Path) -> bool:
    return (d / _DRIVE_IMAGES).is_dir() and (d / _DRIVE_MANUAL).is_dir()


def _discover_drive(root: Path) -> DatasetIndex:
    """DRIVE: ``{training,test}/images/NN_*.tif`` with labels ``1st_manual/NN_manual1.gif`` and field of
    view ``mask/NN_*_mask.gif``, paired by the number NN. ``root`` is the DRIVE folder (the official
    split is then known) or one of its split folders. An image without a manual mask raises
    ValueError naming every such file; a split folder without 1st_manual/ at all (unlabelled test
    images, as some redistributions ship them) is left out with a warning."""
    single = _is_drive_part(root)
    parts = [(root, None)] if single else [(root / sub, name) for sub, name in _DRIVE_SPLITS]
    official: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    unpaired_masks: list[Path] = []
    duplicates: dict[str, list[Path]] = {}
    missing: list[str] = []
    seen: dict[str, Sample] = {}
    for folder, split in parts:
        if not (folder / _DRIVE_IMAGES).is_dir():
            continue
        if not (folder / _DRIVE_MANUAL).is_dir():
            log.warning("%s: no %s/ folder: its images have no vessel labels and are left out",
                        folder, _DRIVE_MANUAL)
            continue
        images = _by_key(_list_images(folder / _DRIVE_IMAGES))
        manuals = _by_key(_list_images(folder / _DRIVE_MANUAL))
        fovs = _by_key(_list_images(folder / _DRIVE_FOV)) if (folder / _DRIVE_FOV).is_dir() else {}
        for key in sorted(manuals):
            if key not in images:
                unpaired_masks.extend(manuals[key])
        for key in sorted(images):
            ims, ms = images[key], manuals.get(key, [])
            if len(ims) > 1 or len(ms) > 1:
                duplicates[key if single else f"{folder.name}/{key}"] = ims + ms
                continue
            img = ims[0]
            if not ms:
                missing.append(f"{img.relative_to(root)} (expected {(folder / _DRIVE_MANUAL).relative_to(root)}"
                               f"/{key}_manual1.gif)")
                continue
            fov = fovs.get(key, [])
            s = Sample(split_ext(img)[0], img, ms[0], fov_mask_path=fov[0] if len(fov) == 1 else None)
            if s.stem in seen:  # the same stem in training/ and test/: neither is guessed
                duplicates[s.stem] = [seen.pop(s.stem).image_path, img]
                continue
            if s.stem in duplicates:
                duplicates[s.stem].append(img)
                continue
            seen[s.stem] = s
            if split is not None:
                official[split].append(s.stem)
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
        raise ValueError(f"{root}: DRIVE layout: {len(missing)} image(s) without a manual vessel mask "
                         f"in {_DRIVE_MANUAL}/: {shown}")
    samples = [seen[k] for k in sorted(seen)]
    kept = set(seen)
    splits = None if single else {k: sorted(s for s in v if s in kept) for k, v in official.items()}
    return DatasetIndex(root, "drive", samples, None, None, [], sorted(unpaired_masks), duplicates,
                        official_splits=splits)


def discover_pairs(
    root: PathLike,
    *,
    image_dir: str | None = None,
    mask_dir: str | None = None,
    mask_suffixes: Sequence[str] = MASK_SUFFIXES,
) -> DatasetIndex:
    """Find image/mask pairs under ``root`` and return them sorted by stem, with layout metadata.

    Layouts: nnU-Net raw (``dataset.json`` + ``imagesTr/{case}_0000.ext`` + ``labelsTr/{case}.ext``);
    DRIVE (``training/`` and ``test/``, each with ``images/NN_training.tif`` + ``1st_manual/NN_manual1.gif``
    and the field-of-view ``mask/``; stems are the image names, e.g. ``21_training``, ``01_test``; the
    official split is in ``official_splits``; also one such split folder alone); or
    folders (``images/`` + ``masks/``, also ``imgs``/``labels``/``annotations``/``gt``...), where a mask
    matches an image with the same stem, possibly followed by one of ``mask_suffixes``
    (``_mask``, ``_segmentation``, ...), in any extension. Raises FileNotFoundError/ValueError when
    ``root`` is not a recognised layout, and ValueError naming the files when a DRIVE image has no
    manual mask.
    """
    r = Path(root)
    if not r.is_dir():
        raise FileNotFoundError(f"{r}: dataset folder not found")
    if (r / "dataset.json").is_file() and (r / "imagesTr").is_dir():
        return _discover_nnunet(r)
    if image_dir is None and mask_dir is None:
        if _is_drive_part(r) or any(_is_drive_part(r / sub) for sub, _ in _DRIVE_SPLITS):
            return _discover_drive(r)
        if any((r / sub / _DRIVE_IMAGES).is_dir() for sub, _ in _DRIVE_SPLITS) and \
                _pick_dir(r, None, _IMAGE_DIRS) is None:
            raise ValueError(f"{r}: looks like the DRIVE layout (training/images/, test/images/) but no "
                             f"{_DRIVE_MANUAL}/ folder with the vessel labels was found beside images/")
    idir = _pick_dir(r, image_dir, _IMAGE_DIRS)
    mdir = _pick_dir(r, mask_dir, _MASK_DIRS)
    if idir is None or mdir is None:
        found = ", ".join(sorted(p.name for p in r.iterdir() if p.is_dir())) or "none"
        raise ValueError(
            f"{r}: not a recognised dataset layout; expected images/ + masks/ folders (or pass "
            "image_dir=/mask_dir=), the nnU-Net raw layout (dataset.json, imagesTr/, labelsTr/) or the "
            "DRIVE layout (training/ and test/ with images/ + 1st_manual/); "
            f"sub-folders found: {found}")
    return _discover_folder(r, idir, mdir, mask_suffixes)


def _cv2():  # noqa: ANN202 - the cv2 module
    return require("cv2", feature="resizing and channel conversion of training data")


# --------------------------------------------------------------------------- checking
def _value_counts(raw: np.ndarray) -> dict[int, int]:
    if raw.dtype in (np.uint8, np.uint16):
        counts = np.bincount(raw.ravel(), minlength=1)
        nz = np.flatnonzero(counts)
        return {int(v): int(counts[v]) for v in nz}
    vals, counts = np.unique(raw, return_counts=True)
    return {(int(v) if float(v).is_integer() else float(v)): int(c) for v, c in zip(vals, counts)}


def _fmt_counts(counts: Mapping[Any, int], limit: int = 6) -> str:
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    more = "" if len(counts) <= limit else f", ... ({len(counts) - limit} more values)"
    return ", ".join(f"{v} ({c} px)" for v, c in top) + more


def _binary_style(values: set) -> str | None:
    """'01' / '0255' / '065535' if the stored values form a clean binary mask, else None."""
    for name, ref in (("01", {0, 1}), ("0255", {0, 255}), ("065535", {0, 65535})):
        if values <= ref:
            return name
    return None


@dataclass
class _MaskStats:
    path: Path
    counts: dict[Any, int]
    lossy: bool
    fg_pixels: int
    total: int


def _check_mask_values(st: _MaskStats, binary: bool, num_classes: int | None) -> list[Problem]:
    values = set(st.counts)
    if binary:
        if st.lossy:
            noise = {v: c for v, c in st.counts.items() if v not in (0, 255)}
            if not noise:
                return []
            n = sum(noise.values())
            ambiguous = sum(c for v, c in noise.items() if 32 <= v < 224)
            sev = "warning" if ambiguous > 0.01 * st.total else "info"
            return [Problem(st.path, f"lossy JPEG mask: {n} px ({100 * n / st.total:.2f}%) not in {{0, 255}}: "
                            f"{_fmt_counts(noise)}; thresholded at 128", sev)]
        if _binary_style(values) is not None:
            return []
        refs = ({0, 1}, {0, 255}, {0, 65535})
        ref = max(refs, key=lambda rf: sum(c for v, c in st.counts.items() if v in rf))
        bad = {v: c for v, c in st.counts.items() if v not in ref}
        return [Problem(st.path, "binary mask expected (values 0/1 or 0/255) but found other "
                        f"values: {_fmt_counts(bad)}", "error")]
    if num_classes is not None:
        if st.lossy:
            return [Problem(st.path, f"lossy JPEG mask cannot hold {num_classes}-class labels; "
                            "it will be read as binary (threshold 128)", "error")]
        bad = {v: c for v, c in st.counts.items() if not (isinstance(v, int) and 0 <= v < num_classes)}
        if bad:
            return [Problem(st.path, f"label values outside 0..{num_classes - 1}: {_fmt_counts(bad)}", "error")]
    return []


def _image_notes(path: Path, img: np.ndarray) -> list[Problem]:
    out = []
    if img.dtype.kind in "ui" and img.dtype.itemsize > 1:
        hi = int(img.max())
        bits = max(hi, 1).bit_length()
        msg = f"{img.dtype.itemsize * 8}-bit image ({img.dtype}); scaled by its dtype range unless percentile scaling is chosen"
        if bits <= 12 and img.dtype.itemsize == 2:
            out.append(Problem(path, msg + f"; values only reach {hi} (about {bits}-bit data), so it will look dark: consider percentile scaling", "warning"))
        else:
            out.append(Problem(path, msg, "info"))
    elif img.dtype.kind == "f":
        out.append(Problem(path, f"float image ({img.dtype}, range {float(img.min()):.4g}..{float(img.max()):.4g}); values are used as they are", "info"))
    if img.ndim == 3 and img.shape[2] in (2, 4):
        alpha = img[:, :, -1]
        amax = np.iinfo(img.dtype).max if img.dtype.kind in "ui" else 1.0
        if bool(np.all(alpha == amax)):
            out.append(Problem(path, "image has an opaque alpha channel; it is dropped", "info"))
        else:
            out.append(Problem(path, "image has a non-opaque alpha channel; it is dropped (not composited)", "warning"))
    return out


def check_dataset(
    root: PathLike,
    num_classes: int | None = None,
    *,
    progress: bool | None = None,
    **discover_kw: Any,
) -> list[Problem]:
    """Read every file once and report every problem found (never stops at the first one).

    Reported: unpaired images/masks, duplicate stems, unreadable/corrupt files, image/mask size
    mismatch, mask values outside the expected set (with pixel counts), empty masks (warning),
    16-bit/float/alpha images (info or warning). ``num_classes`` of 1 or 2 means binary; None infers
    binary when most masks are clean 0/1 or 0/255. A progress report is shown for more than 20 files
    (``progress`` forces it on/off).
    """
    from ..progress import progress as progress_bar

    r = Path(root)
    try:
        index = discover_pairs(r, **discover_kw)
    except (FileNotFoundError, ValueError) as exc:
        return [Problem(r, str(exc).split(": ", 1)[-1], "error")]
    if index.layout == "nnunet" and index.samples and is_3d_nifti(index.samples[0].image_path):
        return check_volume_dataset(index, num_classes, progress=progress)
    problems = _pair_problems(index)

    extra_files = index.unpaired_images + index.unpaired_masks + [p for ps in index.duplicates.values() for p in ps]
    n_files = sum(len(s.image_paths) + 1 for s in index.samples) + len(extra_files)
    show = n_files > 20 if progress is None else progress
    stats: list[_MaskStats] = []
    with progress_bar(total=n_files, disable=not show, desc="checking dataset", unit="file") as bar:
        for s in index.samples:
            sizes = []
            for p in s.image_paths:
                try:
                    img = read_image(p)
                    sizes.append((p, img.shape[:2]))
                    problems.extend(_image_notes(p, img))
                    del img
                except ImageReadError as exc:
                    problems.append(Problem(p, exc.problem, "error"))
                bar.update(1)
            try:
                raw = read_mask(s.mask_path, raw=True)
                counts = _value_counts(raw)
                lossy = is_lossy(s.mask_path)
                try:
                    labels = mask_to_labels(raw, lossy=lossy)
                    fg = int(np.count_nonzero(labels))
                except ValueError as exc:
                    problems.append(Problem(s.mask_path, str(exc), "error"))
                    fg = -1
                stats.append(_MaskStats(s.mask_path, counts, lossy, fg, raw.size))
                for p, hw in sizes:
                    if tuple(hw) != tuple(raw.shape[:2]):
                        problems.append(Problem(s.mask_path, f"mask is {raw.shape[0]}x{raw.shape[1]} (HxW) but image {p.name} is {hw[0]}x{hw[1]}", "error"))
                del raw
            except ImageReadError as exc:
                problems.append(Problem(s.mask_path, exc.problem, "error"))
            bar.update(1)
        for p in extra_files:  # still read them: a corrupt unpaired file is worth knowing about
            try:
                read_image(p)
            except ImageReadError as exc:
                problems.append(Problem(p, exc.problem, "error"))
            bar.update(1)

    if num_classes is not None:
        binary = num_classes <= 2
    else:
        clean = sum(1 for st in stats if st.lossy or _binary_style(set(st.counts)) is not None)
        binary = bool(stats) and clean > len(stats) / 2
    for st in stats:
        problems.extend(_check_mask_values(st, binary, num_classes))
        if st.fg_pixels == 0:
            problems.append(Problem(st.path, "empty mask (no foreground pixels)", "warning"))
    if num_classes is None and not binary and stats:
        seen: dict[Any, int] = {}
        for st in stats:
            for v in st.counts:
                seen[v] = seen.get(v, 0) + 1
        problems.append(Problem(r, "label values found (value: number of masks): "
                        + ", ".join(f"{v}: {n}" for v, n in sorted(seen.items(), key=lambda kv: float(kv[0])))
                        + "; pass num_classes to check them", "info"))
    return problems


def _pair_problems(index: DatasetIndex) -> list[Problem]:
    problems: list[Problem] = []
    for stem, paths in sorted(index.duplicates.items()):
        problems.append(Problem(paths[0], f"duplicate stem {stem!r}: {', '.join(p.name for p in paths)}", "error"))
    problems += [Problem(p, "image has no matching mask", "error") for p in index.unpaired_images]
    problems += [Problem(p, "mask has no matching image", "error") for p in index.unpaired_masks]
    if not index.samples:
        problems.append(Problem(index.root, "no image/mask pairs found", "error"))
    return problems


def check_volume_dataset(index: DatasetIndex, num_classes: int | None = None, *,
                         progress: bool | None = None) -> list[Problem]:
    """:func:`check_dataset` for an nnU-Net raw dataset of 3-D NIfTI cases, the layout that
    training with ``data.volumes=true`` reads: every image and label volume is read whole; label
    volumes must share their image's shape and affine, hold integer labels below ``num_classes``
    (default: the number of ``dataset.json`` labels) and some foreground (else a warning)."""
    from ..progress import progress as progress_bar

    problems = _pair_problems(index)
    k = num_classes if num_classes is not None else (len(index.class_names) if index.class_names else None)
    show = len(index.samples) > 5 if progress is None else progress
    for s in progress_bar(index.samples, disable=not show, desc="checking volumes", unit="case"):
        try:
            image = read_nifti_volume(s.image_path)
            for extra in s.extra_channels:
                ch = read_nifti_volume(extra)
                if ch.shape != image.shape:
                    problems.append(Problem(extra, f"channel volume has shape {ch.shape} but "
                                            f"{s.image_path.name} has {image.shape}", "error"))
            label = read_nifti_volume(s.mask_path)
            check_label_matches(image, label)
        except ImageReadError as exc:
            problems.append(Problem(Path(exc.path), exc.problem, "error"))
            continue
        lab = np.asarray(label.data)
        if lab.dtype.kind == "f" and not np.array_equal(lab, np.rint(lab)):
            problems.append(Problem(s.mask_path, "label volume holds fractional values", "error"))
            continue
        counts = _value_counts(np.rint(lab).astype(np.int64) if lab.dtype.kind == "f" else lab)
        if k is not None:
            bad = {v: c for v, c in counts.items() if not 0 <= v < max(k, 2)}
            if bad:
                problems.append(Problem(s.mask_path, f"label values outside 0..{max(k, 2) - 1}: "
                                        f"{_fmt_counts(bad)}", "error"))
        if set(counts) <= {0}:
            problems.append(Problem(s.mask_path, "empty mask (no foreground voxels)", "warning"))
    return problems


# --------------------------------------------------------------------------- pre-resize cache
CACHE_VERSION = 1
_MANIFEST = "manifest.json"


def _signature(paths: Sequence[Path]) -> list[list[Any]]:
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _cache_image_uint8(img: np.ndarray) -> np.ndarray:
    """Compact cache form: alpha dropped, intensities scaled by the dtype range to uint8 (floats stay
    float16, since their range is not defined)."""
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[:, :, :-1]
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind == "f":
        return img.astype(np.float16)
    unit = to_model_channels(img, img.shape[2] if img.ndim == 3 else 1)
    out = np.rint(unit * 255.0).astype(np.uint8)
    return out[:, :, 0] if img.ndim == 2 else out


def _resize_pair(img: np.ndarray, mask: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    cv2 = _cv2()

    h, w = hw
    if img.shape[:2] != (h, w):
        down = img.shape[0] >= h and img.shape[1] >= w
        half = img.dtype == np.float16
        src = img.astype(np.float32) if half else img
        img = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
        if half:
            img = img.astype(np.float16)
    if mask.shape[:2] != (h, w):
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return img, mask


def _safe_name(stem: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:80]
    return f"{clean}-{hashlib.sha1(stem.encode()).hexdigest()[:10]}"


class PreResizeCache:
    """Read side of the pre-resize cache built by :func:`build_cache`.

    Holds only the manifest; arrays are loaded per call (``np.load`` of a small uncompressed file,
    read-only memory-mapped with ``mmap=True``), so it pickles cheaply into DataLoader workers.
    """

    def __init__(self, cache_dir: PathLike) -> None:
        self.cache_dir = Path(cache_dir)
        mf = self.cache_dir / _MANIFEST
        try:
            self.manifest: dict[str, Any] = json.loads(mf.read_text())
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{mf}: no readable cache manifest ({exc})") from None
        self.size: tuple[int, int] = tuple(self.manifest["size"])  # type: ignore[assignment]
        self.entries: dict[str, dict[str, Any]] = self.manifest["entries"]

    def __contains__(self, stem: object) -> bool:
        return stem in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, stem: str, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """Return (image uint8 (H, W[, C]), mask uint8/uint16 (H, W), original (H, W))."""
        e = self.entries[stem]
        mode = "r" if mmap else None
        img = np.load(self.cache_dir / e["image_file"], mmap_mode=mode)
        mask = np.load(self.cache_dir / e["mask_file"], mmap_mode=mode)
        return img, mask, (int(e["orig_size"][0]), int(e["orig_size"][1]))

    def is_fresh(self, sample: Sample) -> bool:
        """True if the entry exists and its source files still have the recorded sizes/mtimes."""
        e = self.entries.get(sample.stem)
        if e is None:
            return False
        try:
            return e["sources"] == _signature([*sample.image_paths, sample.mask_path])
        except OSError:
            return False


def label_value_problem(labels: np.ndarray | Sequence[int], num_classes: int,
                        ignore_index: int | None = None) -> str | None:
    """Why a mask's labels do not fit a model of ``num_classes`` outputs, or None if they do.

    ``labels`` are a mask as :func:`read_mask` returns it (0/255 and 0/1 both read as {0, 1}) or
    its distinct values. Binary models (``num_classes`` 1 or 2) take {0, 1}; others 0..K-1;
    ``ignore_index`` is allowed besides.
    """
    arr = np.asarray(labels)
    limit = 2 if num_classes <= 2 else num_classes
    if not arr.size or (arr.min() >= 0 and arr.max() < limit):
        return None   # the common case, without sorting a whole mask for its distinct values
    values = np.unique(arr)
    bad = values[(values < 0) | (values >= limit)]
    if ignore_index is not None:
        bad = bad[bad != ignore_index]
    if not bad.size:
        return None
    shown = ", ".join(str(int(v)) for v in values[:12]) + (", ..." if values.size > 12 else "")
    if num_classes <= 2:
        return (f"mask has label values {{{shown}}} but a binary model takes {{0, 1}}: "
                "binary mask expected (values 0/1 or 0/255)")
    return f"mask has label values {{{shown}}} but the model has {num_classes} classes (0..{num_classes - 1})"


def _new_dirs(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (None if ``path`` exists)."""
    top = None
    for p in (path, *path.parents):
        if p.exists():
            break
        top = p
    return top


def build_cache(
    samples: Sequence[Sample],
    size: int | Sequence[int],
    cache_dir: PathLike,
    *,
    num_workers: int = 0,
    on_error: Literal["raise", "skip"] = "raise",
    progress: bool | None = None,
    mask_threshold: float | None = None,
    num_classes: int | None = None,
    ignore_index: int | None = None,
) -> PreResizeCache:
    """Decode every pair once, resize to ``size`` ((h, w) or int) and store compact arrays.

    Why: decoding a 1920x1080 JPEG and resizing it costs more than a training step at 1024x1024.
    Images are resized with area (down) / bilinear (up) interpolation, masks with exact nearest, and
    stored as one uint8 ``.npy`` each (16-bit images lose their low byte; float images are kept as
    float16; masks with labels > 255 as uint16). ``manifest.json`` records the size and the source
    files' sizes/mtimes: stale or missing entries are rebuilt, fresh ones reused, and a different
    ``size`` rebuilds everything. Not safe for two processes building the same folder at once.
    ``on_error="skip"`` leaves unreadable samples out of the cache (the dataset then reads them
    from source and applies its own ``on_error``). ``mask_threshold`` is passed to :func:`read_mask`.

    With ``num_classes`` every mask's label values are checked too (:func:`label_value_problem`,
    cached entries included), so a mask that does not fit the model is refused with its file
    named before training starts; if the build fails, folders it created are removed again.
    """
    hw = as_hw(size)
    cdir = Path(cache_dir)
    created = _new_dirs(cdir)
    cdir.mkdir(parents=True, exist_ok=True)
    try:
        return _build_cache(samples, hw, cdir, num_workers, on_error, progress, mask_threshold,
                            num_classes, ignore_index)
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise


def _build_cache(samples: Sequence[Sample], hw: tuple[int, int], cdir: Path, num_workers: int,
                 on_error: str, progress: bool | None, mask_threshold: float | None,
                 num_classes: int | None, ignore_index: int | None) -> PreResizeCache:
    from ..progress import progress as progress_bar

    entries: dict[str, dict[str, Any]] = {}
    try:
        old = PreResizeCache(cdir)
        if old.manifest.get("version") == CACHE_VERSION and tuple(old.size) == hw:
            entries = dict(old.entries)
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        pass

    def fresh(s: Sample) -> bool:
        e = entries.get(s.stem)
        if e is None or not (cdir / e["image_file"]).is_file() or not (cdir / e["mask_file"]).is_file():
            return False
        try:
            return e["sources"] == _signature([*s.image_paths, s.mask_path])
        except OSError:
            return False

    reused: list[Sample] = []
    todo: list[Sample] = []
    for s in samples:
        (reused if fresh(s) else todo).append(s)

    def labels_ok(s: Sample, values: Any) -> bool:
        problem = None if num_classes is None else label_value_problem(values, num_classes, ignore_index)
        if problem is None:
            return True
        if on_error == "raise":
            raise ImageReadError(s.mask_path, problem)
        log.warning("cache: skipping %s: %s", s.mask_path, problem)
        return False

    if num_classes is not None:   # reused entries were cached without knowing the model
        for s in reused:
            e = entries[s.stem]
            values = e.get("labels")
            if values is None:
                values = np.load(cdir / e["mask_file"], mmap_mode="r")
            if not labels_ok(s, values):
                entries.pop(s.stem)

    def work(s: Sample) -> tuple[str, dict[str, Any] | None]:
        try:
            sig = _signature([*s.image_paths, s.mask_path])
            img = _read_sample_image(s)
            mask = read_mask(s.mask_path, threshold=mask_threshold)
            if img.shape[:2] != mask.shape:
                raise ImageReadError(s.mask_path, f"mask is {mask.shape[0]}x{mask.shape[1]} but image is {img.shape[0]}x{img.shape[1]} (HxW)")
        except (ImageReadError, OSError) as exc:
            if on_error == "raise":
                raise
            log.warning("cache: skipping %s", exc)
            return s.stem, None
        values = np.unique(mask)
        if not labels_ok(s, values):
            return s.stem, None
        orig = img.shape[:2]
        img, mask = _resize_pair(_cache_image_uint8(img), mask, hw)
        name = _safe_name(s.stem)
        for suffix, arr in ((".img.npy", img), (".mask.npy", mask)):
            buf = _NpyBuffer()
            np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
            atomic_write_bytes(cdir / (name + suffix), buf.getvalue())
        return s.stem, {"image_file": name + ".img.npy", "mask_file": name + ".mask.npy",
                        "orig_size": [int(orig[0]), int(orig[1])], "sources": sig,
                        "labels": [int(v) for v in values] if values.size <= 256 else None}

    show = len(todo) > 20 if progress is None else progress
    with progress_bar(total=len(todo), disable=not show, desc=f"caching at {hw[0]}x{hw[1]}",
                      unit="pair") as bar:
        if num_workers > 0:
            with ThreadPoolExecutor(num_workers) as pool:
                results = pool.map(work, todo)
                for stem, entry in results:
                    if entry is not None:
                        entries[stem] = entry
                    else:
                        entries.pop(stem, None)
                    bar.update(1)
        else:
            for s in todo:
                stem, entry = work(s)
                if entry is not None:
                    entries[stem] = entry
                else:
                    entries.pop(stem, None)
                bar.update(1)
    manifest = {"version": CACHE_VERSION, "size": list(hw), "entries": entries}
    write_json_atomic(cdir / _MANIFEST, manifest, indent=1)
    return PreResizeCache(cdir)


class _NpyBuffer:
    """Minimal in-memory file for np.save, so the .npy can be written atomically."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, b: bytes) -> int:
        self._parts.append(bytes(b))
        return len(b)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


# --------------------------------------------------------------------------- torch dataset
def _read_sample_image(s: Sample) -> np.ndarray:
    """Read the image; nnU-Net multi-file channels are stacked along the last axis."""
    if not s.extra_channels:
        return read_image(s.image_path)
    planes = []
    for p in s.image_paths:
        a = read_image(p)
        planes.append(a[:, :, None] if a.ndim == 2 else a)
        if planes[0].shape[:2] != a.shape[:2]:
            raise ImageReadError(p, f"channel file is {a.shape[0]}x{a.shape[1]} but {s.image_path.name} is {planes[0].shape[0]}x{planes[0].shape[1]}")
    dtypes = {p.dtype for p in planes}
    if len(dtypes) > 1:
        planes = [p.astype(np.float32) for p in planes]
    return np.concatenate(planes, axis=2)


class SegmentationDataset(Dataset):
    """Torch dataset giving ``dict(image=float (C, H, W), mask=long (H, W), stem=str, orig_size=(H, W),
    normalized=True)``.

    Pipeline: read (or take from ``cache``) -> :func:`to_model_channels` (float [0, 1], ``in_chans``)
    -> ``transform(image=, mask=)`` (keyword style, e.g. :func:`hrmedseg.data.transforms.train_transform`)
    -> :func:`normalize`. Masks: binary models (``num_classes`` 1 or 2) get {0, 1}; multi-class get
    0..K-1; other values raise (``ignore_index`` is allowed through). ``orig_size`` is the size of the
    file on disk, for mapping predictions back. ``mask_threshold`` binarises masks on read (see
    :func:`read_mask`). Cache entries are used only while their source files are unchanged (size and
    mtime; read memory-mapped, so workers share the page cache); otherwise the sample is read from
    source. With ``on_error="skip"`` a broken sample is logged
    in one line naming the file and replaced by the next readable index (deterministic).

    ``output="uint8"`` is the fast path for training at high resolution, where the CPU float pipeline
    cannot keep up with the GPU. An image that is uint8 after loading (every cache entry except float
    sources, and 8-bit files) is channel-mapped and augmented as uint8 and returned as
    ``image=uint8 (in_chans, H, W)``, ``mask=uint8 (H, W)`` (int64 when labels exceed 255),
    ``normalized=False`` and ``normalization=<mode>``: dividing by 255 and normalising is left to
    :func:`hrmedseg.data.gpu_normalize.normalize_batch` on the GPU. Channel rules are those of
    :func:`to_model_channels` (alpha dropped, grey repeated, RGB -> 1 channel by ITU-R 601 luma, here
    rounded to uint8). Images that are not uint8 after loading (16-bit/float files read from source)
    and ``scaling="percentile"`` keep the float path (``image`` float32 already normalised,
    ``normalized=True``), as does a ``transform`` that is not a
    :class:`~hrmedseg.data.transforms.SegTransform` (it may not accept uint8). Batch such items with
    :func:`collate_segmentation`, which keeps every batch homogeneous.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[..., Mapping[str, Any]] | None = None,
        num_classes: int = 1,
        in_chans: int = 3,
        cache: PreResizeCache | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        *,
        normalization: NormMode = "imagenet",
        scaling: Literal["dtype", "percentile"] = "dtype",
        ignore_index: int | None = None,
        mask_threshold: float | None = None,
        output: Literal["float32", "uint8"] = "float32",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if output not in ("float32", "uint8"):
            raise ValueError(f"output must be 'float32' or 'uint8', got {output!r}")
        if normalization not in ("imagenet", "minmax", "none"):
            raise ValueError(f"unknown normalisation mode {normalization!r}; use 'imagenet', 'minmax' or 'none'")
        self.samples = list(samples)
        self.transform = transform
        self.num_classes = int(num_classes)
        self.in_chans = int(in_chans)
        self.cache = cache
        self.on_error = on_error
        self.normalization = normalization
        self.scaling = scaling
        self.ignore_index = ignore_index
        self.mask_threshold = mask_threshold
        self.output = output
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, s: Sample) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        if self.cache is not None and self.cache.is_fresh(s):
            # Memory-mapped: DataLoader workers share the page cache instead of each copying the
            # arrays. They are read-only; every path below copies before it writes (or makes tensors).
            return self.cache.load(s.stem, mmap=True)
        img = _read_sample_image(s)
        mask = read_mask(s.mask_path, threshold=self.mask_threshold)
        if img.shape[:2] != mask.shape:
            raise ImageReadError(s.mask_path, f"mask is {mask.shape[0]}x{mask.shape[1]} but image is {img.shape[0]}x{img.shape[1]} (HxW)")
        return img, mask, (int(img.shape[0]), int(img.shape[1]))

    def _check_labels(self, s: Sample, mask: np.ndarray) -> None:
        problem = label_value_problem(mask, self.num_classes, self.ignore_index)
        if problem is not None:
            raise ImageReadError(s.mask_path, problem)

    def _uint8_ok(self, img: np.ndarray) -> bool:
        if self.output != "uint8" or img.dtype != np.uint8 or self.scaling != "dtype":
            return False
        return self.transform is None or bool(getattr(self.transform, "accepts_keep_uint8", False))

    def _get(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        img, mask, orig = self._load(s)
        self._check_labels(s, mask)
        img = np.asarray(img)
        if self._uint8_ok(img):
            return self._get_uint8(s, img, np.asarray(mask), orig)
        try:
            x = to_model_channels(img, self.in_chans, scaling=self.scaling)
        except ValueError as exc:
            raise ImageReadError(s.image_path, str(exc)) from None
        m = np.asarray(mask)
        if self.transform is not None:
            out = self.transform(image=x, mask=m)
            x, m = out["image"], out["mask"]
        x = normalize(np.asarray(x, dtype=np.float32), self.normalization)
        if x.ndim == 2:
            x = x[:, :, None]
        image = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        target = torch.from_numpy(np.ascontiguousarray(m).astype(np.int64))
        return {"image": image, "mask": target, "stem": s.stem, "orig_size": orig,
                "normalized": True, "normalization": self.normalization}

    def _get_uint8(self, s: Sample, img: np.ndarray, m: np.ndarray, orig: tuple[int, int]) -> dict[str, Any]:
        x = img[:, :, None] if img.ndim == 2 else img
        if x.ndim != 3:
            raise ImageReadError(s.image_path, f"expected (H, W) or (H, W, C), got shape {tuple(img.shape)}")
        c, want = x.shape[2], self.in_chans
        if c != want and c in (2, 4):
            x, c = x[:, :, : c - 1], c - 1  # drop alpha, as to_model_channels does
        repeat = 1
        if c == want:
            pass
        elif c == 1:
            repeat = want
        elif c == 3 and want == 1:
            cv2 = _cv2()

            x = cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY)[:, :, None]  # ITU-R 601, rounded
        else:
            raise ImageReadError(s.image_path, f"cannot map a {c}-channel image to {want} model channels")
        if repeat > 1 and not getattr(self.transform, "channel_independent", self.transform is None):
            x, repeat = np.repeat(x, repeat, axis=2), 1  # unknown ops: augment the repeated image
        if self.transform is not None:
            out = self.transform(image=x, mask=m, keep_uint8=True)
            x, m = out["image"], out["mask"]
        if x.ndim == 2:
            x = x[:, :, None]
        if x.shape[2] == 1:
            chw = x.reshape(1, *x.shape[:2])  # a free reshape
            if repeat > 1:
                chw = np.repeat(chw, repeat, axis=0)
            elif not chw.flags.writeable:
                chw = chw.copy()  # torch warns about (and could write into) read-only arrays
        else:
            cv2 = _cv2()

            # HWC -> CHW: cv2.split is ~2x faster than a strided numpy/torch copy (<= 512 channels)
            chw = np.stack(cv2.split(np.ascontiguousarray(x))) if x.shape[2] <= 512 else \
                np.ascontiguousarray(x.transpose(2, 0, 1))
        m = np.ascontiguousarray(m)
        if not m.flags.writeable:
            m = m.copy()  # decoded files come read-only
        target = torch.from_numpy(m) if m.dtype == np.uint8 else torch.from_numpy(m.astype(np.int64))
        return {"image": torch.from_numpy(chw), "mask": target, "stem": s.stem, "orig_size": orig,
                "normalized": False, "normalization": self.normalization}

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(index)
        i = index % n
        if self.on_error == "raise":
            return self._get(i)
        for step in range(n):
            j = (i + step) % n
            if j in self._bad:
                continue
            try:
                return self._get(j)
            except (ImageReadError, OSError) as exc:
                self._bad.add(j)
                log.warning("skipping sample %r: %s", self.samples[j].stem, exc)
        raise RuntimeError(f"all {n} samples failed to load; see the log for the files")


class DictTransformDataset(Dataset):
    """Image/mask pairs as MONAI-style dictionaries, for MONAI dictionary transforms.

    Each item is ``{"image": float32 (C, H, W) in [0, 1], "label": (1, H, W) integer labels,
    "stem": str, "image_path": str, "label_path": str}`` -- channel-first, as MONAI's array
    transforms expect -- passed through ``transform`` (e.g. ``monai.transforms.Compose`` of
    ``RandFlipd(keys=["image", "label"])``, ``RandSpatialCropd``, ``NormalizeIntensityd`` ...).
    Images are read and channel-mapped as for :class:`SegmentationDataset`
    (:func:`to_model_channels`); masks as :func:`read_mask` gives them (0/255 -> {0, 1}).
    ``data`` is a dataset folder (any layout :func:`discover_pairs` knows) or a list of samples.
    With ``num_classes`` each mask's labels are checked (:func:`label_value_problem`).
    """

    def __init__(self, data: PathLike | Sequence[Sample],
                 transform: Callable[[dict[str, Any]], Any] | None = None, *, in_chans: int = 3,
                 num_classes: int | None = None, mask_threshold: float | None = None,
                 image_key: str = "image", label_key: str = "label") -> None:
        self.samples: list[Sample] = (list(discover_pairs(data).samples)
                                      if isinstance(data, (str, os.PathLike)) else list(data))
        self.transform, self.in_chans, self.num_classes = transform, in_chans, num_classes
        self.mask_threshold = mask_threshold
        self.image_key, self.label_key = image_key, label_key

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        s = self.samples[i]
        img = to_model_channels(_read_sample_image(s), self.in_chans)        # (H, W, C) float32
        mask = read_mask(s.mask_path, threshold=self.mask_threshold)
        if img.shape[:2] != mask.shape:
            raise ImageReadError(s.mask_path, f"mask is {mask.shape[0]}x{mask.shape[1]} but image is "
                                              f"{img.shape[0]}x{img.shape[1]} (HxW)")
        if self.num_classes is not None:
            problem = label_value_problem(mask, self.num_classes)
            if problem is not None:
                raise ImageReadError(s.mask_path, problem)
        item = {self.image_key: np.ascontiguousarray(img.transpose(2, 0, 1)),
                self.label_key: np.ascontiguousarray(mask[None]),
                "stem": s.stem, "image_path": str(s.image_path), "label_path": str(s.mask_path)}
        return self.transform(item) if self.transform is not None else item


def collate_segmentation(items: Sequence[Mapping[str, Any]], augment: Any = None) -> dict[str, Any]:
    """Batch items of :class:`SegmentationDataset` (either ``output`` mode) into one homogeneous batch.

    Returns ``dict(image=Tensor (B, C, H, W), mask=Tensor (B, H, W), stem=list[str],
    normalized=bool, normalization=str | None, orig_size=list[(H, W)])``:

    * all items ``normalized=False``: ``image`` uint8, ``normalized=False``; the consumer must call
      ``normalize_batch(batch["image"].to(device), batch["normalization"])`` (on the GPU);
    * otherwise ``image`` float32 and ``normalized=True``: uint8 items in a mixed batch (e.g. 8-bit
      and 16-bit sources) are normalised here, on the CPU, with the item's ``normalization``;
    * ``mask`` is uint8 when every item's mask is uint8, else int64; call ``.long()`` on the device.

    Items left unaugmented for the training device carry ``aug_seed`` (the training sampler's
    ``SeededDataset(carry_seed=True)``): a uint8 batch of them gets ``aug_seed`` (int64 (B,)) for
    :meth:`~hrmedseg.data.augment.BatchAugment.draw_items` on the device; in a mixed batch they are
    augmented here with ``augment`` (that :class:`~hrmedseg.data.augment.BatchAugment`, the same
    parameters) before they are normalised.

    Items without a ``normalized`` key count as normalised float (the old item format).
    """
    if not items:
        raise ValueError("collate_segmentation got an empty batch")
    flags = [bool(it.get("normalized", True)) for it in items]
    # Only uint8 items still need their mode; already normalised items may come from other datasets.
    raw_modes = {it.get("normalization") for it, f in zip(items, flags) if not f}
    if len(raw_modes) > 1:
        raise ValueError(f"batch mixes uint8 items of normalisation modes {sorted(map(str, raw_modes))}")
    all_modes = {it.get("normalization") for it in items}
    mode = next(iter(raw_modes)) if raw_modes else (next(iter(all_modes)) if len(all_modes) == 1 else None)
    images = [it["image"] for it in items]
    masks = [it["mask"] for it in items]
    seeds = [it.get("aug_seed") for it in items]
    extra: dict[str, Any] = {}
    if not any(flags):
        image = torch.stack(images)
        normalized = False
        if any(s is not None for s in seeds):
            if any(s is None for s in seeds):
                raise ValueError("batch mixes uint8 items with and without 'aug_seed'")
            extra["aug_seed"] = torch.tensor(seeds, dtype=torch.int64)
    else:
        if not all(flags):
            if mode is None:
                raise ValueError("batch mixes uint8 and normalised images but gives no 'normalization'")
            from .gpu_normalize import normalize_batch, normalize_unit_batch

            for k, (im, f, seed) in enumerate(zip(images, flags, seeds)):
                if f:
                    continue
                if seed is None:
                    images[k] = normalize_batch(im[None], mode)[0]
                    continue
                if augment is None:
                    raise ValueError("a mixed batch holds items left for device augmentation but "
                                     "collate_segmentation got no 'augment' to apply")
                x, m = augment.apply(im[None], masks[k][None], augment.draw_items([seed]), keep_float=True)
                images[k], masks[k] = normalize_unit_batch(x, mode)[0], m[0]
        image = torch.stack([im.float() for im in images])
        normalized = True
    if not all(m.dtype == torch.uint8 for m in masks):
        masks = [m.long() for m in masks]
    return {"image": image, "mask": torch.stack(masks), "stem": [it.get("stem", "") for it in items],
            "normalized": normalized, "normalization": mode,
            "orig_size": [it.get("orig_size") for it in items], **extra}
