"""3-D nnU-Net raw datasets sampled as 2-D slices, for the 2-D trainer (e.g. Synapse multi-organ).

Layout: ``imagesTr/{case}_0000.nii.gz``, ``labelsTr/{case}.nii.gz``, ``dataset.json`` with
``"labels": {"background": 0, "aorta": 1, ...}``. Each label volume must have its image's shape and
affine (else a one-line :class:`~hrmedseg.data.io.ImageReadError` naming the label file).

:class:`VolumeSliceDataset` gives the items of :class:`~hrmedseg.data.datasets.SegmentationDataset`
(float path): ``dict(image=float32 (C, H, W) normalised, mask=int64 (H, W), stem="{case}_z{k:04d}",
orig_size=(h, w), normalized=True, normalization=...)``. Slices are windowed (CT preset / percentile),
resized to ``size`` (bilinear image, nearest mask), optionally transformed (keyword style
``transform(image=, mask=)`` on float HWC), then normalised. All slices with foreground are kept;
``empty_ratio`` keeps at most ``round(empty_ratio * n_foreground)`` empty slices (seeded), ``None``
keeps them all. Use :func:`case_of` as ``group_of`` to split by case.
"""
from __future__ import annotations

import json
import random
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .io import ImageReadError, normalize
from .volumes import (Volume, apply_window, check_label_matches, get_slice, num_slices,
                            read_nifti_volume)

__all__ = ["VolumeCase", "discover_volume_cases", "VolumeSliceDataset", "case_of", "read_label_names"]

_SLICE_STEM = re.compile(r"^(?P<case>.+)_z\d+$")


def case_of(stem: str) -> str:
    """``"case0001_z0042"`` -> ``"case0001"`` (``group_of`` for splits by volume)."""
    m = _SLICE_STEM.match(stem)
    return m["case"] if m else stem


@dataclass(frozen=True)
class VolumeCase:
    case: str
    image: Path
    label: Path


def read_label_names(root: Path) -> list[str] | None:
    f = Path(root) / "dataset.json"
    if not f.is_file():
        return None
    try:
        labels = json.loads(f.read_text()).get("labels") or {}
    except ValueError as exc:
        raise ImageReadError(f, f"unreadable dataset.json ({exc})") from None

    def first(v: Any) -> int:
        return int(min(v)) if isinstance(v, (list, tuple)) else int(v)
    return [n for n, _ in sorted(labels.items(), key=lambda kv: first(kv[1]))] or None


def discover_volume_cases(root: str | Path) -> list[VolumeCase]:
    root = Path(root)
    img_dir, lab_dir = root / "imagesTr", root / "labelsTr"
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise FileNotFoundError(f"{root}: expected imagesTr/ and labelsTr/ (nnU-Net raw layout)")
    cases = []
    for f in sorted(img_dir.iterdir()):
        m = re.match(r"^(?P<case>.+)_0000\.nii(\.gz)?$", f.name)
        if not m:
            continue
        lab = [lab_dir / f"{m['case']}{e}" for e in (".nii.gz", ".nii")]
        lab = [p for p in lab if p.is_file()]
        if lab:
            cases.append(VolumeCase(m["case"], f, lab[0]))
    if not cases:
        raise FileNotFoundError(f"{root}: no imagesTr/{{case}}_0000.nii.gz with a labelsTr/{{case}}.nii.gz")
    return cases


def _read_nonempty(path: Path, what: str) -> Volume:
    """The volume at ``path``; one line naming the file if it holds no voxels (a zero-length axis)."""
    vol = read_nifti_volume(path)
    if vol.data.size == 0:
        # the header's shape: the data of a zero-length axis come back flattened
        shape = vol.header.get_data_shape() if vol.header is not None else vol.shape
        raise ImageReadError(path, f"{what} volume is empty (shape {tuple(int(n) for n in shape)}): "
                                   "it has no voxels")
    return vol


class VolumeSliceDataset(Dataset):
    """2-D slices of 3-D cases; see the module docstring."""

    def __init__(self, root: str | Path, cases: Sequence[str] | None = None, *, num_classes: int | None = None,
                 in_chans: int = 3, size: int | Sequence[int] = (1024, 1024),
                 window: str | tuple[float, float] = "abdomen", axis: int = 2,
                 empty_ratio: float | None = None, normalization: str = "imagenet",
                 transform: Callable[..., Mapping[str, Any]] | None = None, seed: int = 0,
                 cache_volumes: int = 4) -> None:
        self.root = Path(root)
        all_cases = discover_volume_cases(self.root)
        if cases is not None:
            want = set(cases)
            missing = want - {c.case for c in all_cases}
            if missing:
                raise FileNotFoundError(f"{self.root}: cases not found: {sorted(missing)[:5]}")
            all_cases = [c for c in all_cases if c.case in want]
        self.cases = all_cases
        self.class_names = read_label_names(self.root)
        self.num_classes = int(num_classes or (len(self.class_names) if self.class_names else 2))
        self.in_chans = in_chans
        self.size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        self.window, self.axis = window, axis
        self.normalization = normalization
        self.transform = transform
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_n = max(1, cache_volumes)
        self.index: list[tuple[int, int]] = []
        rng = random.Random(seed)
        for ci, c in enumerate(self.cases):
            _, lab = self._volume(ci)
            fg_per_slice = np.count_nonzero(lab, axis=tuple(i for i in range(3) if i != axis % 3))
            fg = [k for k in range(len(fg_per_slice)) if fg_per_slice[k] > 0]
            empty = [k for k in range(len(fg_per_slice)) if fg_per_slice[k] == 0]
            if empty_ratio is not None:
                keep = min(len(empty), int(round(empty_ratio * len(fg))))
                empty = sorted(rng.sample(empty, keep))
            self.index += [(ci, k) for k in sorted(fg + empty)]

    # volumes are kept windowed as uint8 (a 512x512x150 CT is 39 MB), a few at a time
    def _volume(self, ci: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.cases[ci]
        hit = self._cache.get(c.case)
        if hit is not None:
            self._cache.move_to_end(c.case)
            return hit
        lab = _read_nonempty(c.label, "label")
        img = _read_nonempty(c.image, "image")
        check_label_matches(img, lab)
        if lab.data.dtype.kind == "f" and not np.all(np.mod(lab.data, 1) == 0):
            raise ImageReadError(c.label, "label volume has non-integer values")
        labels = np.asarray(lab.data).astype(np.int64)
        hi = int(labels.max())
        if labels.min() < 0 or hi >= max(self.num_classes, 2):
            raise ImageReadError(c.label, f"label values up to {hi} but num_classes={self.num_classes}")
        u8 = np.rint(apply_window(img.data, self.window) * 255).astype(np.uint8)
        entry = (u8, labels.astype(np.uint8 if hi < 256 else np.int32))
        self._cache[c.case] = entry
        while len(self._cache) > self._cache_n:
            self._cache.popitem(last=False)
        return entry

    @property
    def stems(self) -> list[str]:
        return [f"{self.cases[ci].case}_z{k:04d}" for ci, k in self.index]

    def subset(self, stems: Sequence[str]) -> "VolumeSliceDataset":
        """A view with only the given slice stems (e.g. a split by :func:`case_of`)."""
        want = set(stems)
        new = object.__new__(VolumeSliceDataset)
        new.__dict__.update(self.__dict__)
        new._cache = OrderedDict()
        new.index = [ik for ik, s in zip(self.index, self.stems) if s in want]
        return new

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ci, k = self.index[i]
        vol, lab = self._volume(ci)
        img = get_slice(vol, k, self.axis)
        m = get_slice(lab, k, self.axis)
        orig = (int(img.shape[0]), int(img.shape[1]))
        x = torch.from_numpy(np.ascontiguousarray(img)).float().div_(255.0)[None, None]
        y = torch.from_numpy(np.ascontiguousarray(m).astype(np.int64))[None, None].float()
        if orig != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=self.size, mode="nearest")
        xs = x[0, 0].numpy()
        ms = y[0, 0].numpy().astype(np.int64)
        hwc = np.repeat(xs[:, :, None], self.in_chans, axis=2)
        if self.transform is not None:
            out = self.transform(image=hwc, mask=ms)
            hwc, ms = np.asarray(out["image"], dtype=np.float32), np.asarray(out["mask"])
        hwc = normalize(hwc, self.normalization)  # type: ignore[arg-type]
        if hwc.ndim == 2:
            hwc = hwc[:, :, None]
        return {"image": torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))),
                "mask": torch.from_numpy(np.ascontiguousarray(ms).astype(np.int64)),
                "stem": f"{self.cases[ci].case}_z{k:04d}", "orig_size": orig,
                "normalized": True, "normalization": self.normalization}


def num_volume_slices(volume: Volume, axis: int = 2) -> int:
    return num_slices(volume.data, axis)
