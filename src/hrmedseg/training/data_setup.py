"""From a :class:`Config` to the datasets a run needs (the trainer itself knows no file formats)."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, ConfigError, resolve_workers

log = logging.getLogger(__name__)


@dataclass
class RunData:
    train: Any
    val: Any
    test: Any
    class_names: list[str] | None
    preprocess: dict[str, Any]


def split_stems(
    cfg: Config,
    stems: list[str],
    official: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """train/val/test stems, from the first that applies: the k-fold protocol (``data.kfold``), a
    splits file (``data.splits`` or ``<root>/splits.json``), the dataset's ``official`` split (e.g.
    :attr:`DatasetIndex.official_splits` of DRIVE, looked up by ``data.train_split``/``val_split``/
    ``test_split``), or a seeded 80/10/10."""
    from ..data.splits import kfold_splits, load_splits, random_split

    d = cfg.data
    root = Path(d.root)
    if d.kfold:
        train, test = kfold_splits(stems, d.kfold, d.fold)
        return train, [], test
    split_file = Path(d.splits) if d.splits else root / "splits.json"
    if split_file.is_file():
        sp = load_splits(split_file)
        return list(sp[d.train_split]), list(sp[d.val_split] or []), list(sp[d.test_split] or [])
    if d.splits:
        raise ConfigError(f"data.splits: {split_file} not found")
    if official is not None:
        train, val, test = (list(official.get(n) or []) for n in (d.train_split, d.val_split, d.test_split))
        if not train:
            raise ConfigError(f"{root}: the dataset's official split has no {d.train_split!r} pairs "
                              f"(it has {', '.join(f'{k}: {len(v)}' for k, v in official.items())})")
        log.info("using the dataset's official split: %d train, %d val, %d test", len(train), len(val), len(test))
        return train, val, test
    parts = random_split(stems, (0.8, 0.1, 0.1), seed=cfg.train.seed)
    return parts["train"], parts["val"], parts["test"]


def augment_on_device(cfg: Config, device_type: str) -> bool:
    """``data.augment_device`` resolved: True where the training augmentation runs batched on the
    training device ("auto": on CUDA), False where the DataLoader workers run it per item."""
    choice = cfg.data.augment_device
    return choice == "device" or (choice == "auto" and device_type == "cuda")


class DeviceAugmentSplit:
    """The training transform when the augmentation runs on the device: a uint8 item (the uint8
    fast path) is only resized here and augmented batched on the device with the same parameters;
    an item that takes the float path (a float source) is augmented here, per item, as on the
    CPU path, since the device receives it already normalised."""

    accepts_keep_uint8 = True
    channel_independent = True

    def __init__(self, augment: Any, resize: Any) -> None:
        self.augment, self.resize = augment, resize

    def set_random_seed(self, seed: int) -> None:
        self.augment.set_random_seed(seed)

    def __call__(self, *, image: Any, mask: Any = None, keep_uint8: bool | None = None) -> dict[str, Any]:
        if keep_uint8 and np.asarray(image).dtype == np.uint8:
            return self.resize(image=image, mask=mask, keep_uint8=True)
        return self.augment(image=image, mask=mask, keep_uint8=keep_uint8)


def build_datasets(cfg: Config, num_classes: int, in_chans: int, *,
                   device_augment: bool = False) -> RunData:
    """The run's datasets. ``device_augment``: the training set leaves uint8 images unaugmented
    (resized only) for :class:`~hrmedseg.data.augment.BatchAugment` on the device
    (:class:`DeviceAugmentSplit`); 3-D slices are augmented per item in any case."""
    from ..data.datasets import SegmentationDataset, build_cache, discover_pairs
    from ..data.transforms import eval_transform, train_transform

    d = cfg.data
    if not d.root:
        raise ConfigError("data.root is empty: give the dataset folder (data.root=PATH)")
    workers = resolve_workers(d.workers)
    if workers > 0:
        from ..data.io import opencv_fork_safe
        opencv_fork_safe()   # before the cache's threads touch OpenCV, so workers fork cleanly
    if d.volumes:
        return build_volume_datasets(cfg, num_classes, in_chans)
    try:
        index = discover_pairs(d.root)
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"data.root: {exc}") from None
    if len(index) == 0:
        raise ConfigError(f"{d.root}: no image/mask pairs found")
    train_s, val_s, test_s = split_stems(cfg, index.stems, index.official_splits)
    size = tuple(d.size)
    cache_dir = Path(d.cache_dir) if d.cache_dir else (
        Path(cfg.train.out_dir).parent / ".cache" / f"{Path(d.root).resolve().name}_{size[0]}x{size[1]}")
    # The cache stores everything at the model size: augmentation then works on small arrays.
    # A fresh cache is reused as it is (build_cache checks sizes and mtimes).
    cache = build_cache(index.samples, size, cache_dir, num_workers=workers,
                        on_error=d.on_error, num_classes=num_classes)

    def make(stems: list[str], transform) -> SegmentationDataset:
        # uint8 out of the workers, normalised on the device: keeps up with the GPU at 1024².
        return SegmentationDataset(index.subset(stems), transform, num_classes, in_chans, cache,
                                   d.on_error, normalization=d.normalize, output="uint8")

    train_tf = train_transform(size, d.augment)
    if device_augment and d.augment != "none":
        train_tf = DeviceAugmentSplit(train_tf, eval_transform(size))
    train = make(train_s, train_tf)
    val = make(val_s, eval_transform(size)) if val_s else None
    test = make(test_s, eval_transform(size)) if test_s else None
    pre = {"size": list(size), "normalize": d.normalize}
    return RunData(train, val, test, index.class_names, pre)


def build_volume_datasets(cfg: Config, num_classes: int, in_chans: int) -> RunData:
    """Slices of 3-D cases; splits are made by case, so no case is in two splits."""
    from ..data.transforms import eval_transform, train_transform
    from ..data.volume_slices import VolumeSliceDataset, discover_volume_cases

    d = cfg.data
    try:
        cases = [c.case for c in discover_volume_cases(Path(d.root))]
    except (ValueError, FileNotFoundError) as exc:
        raise ConfigError(f"data.root: {exc}") from None
    train_c, val_c, test_c = split_stems(cfg, sorted(cases))
    size = tuple(d.size)
    ratio = None if d.empty_ratio < 0 else d.empty_ratio

    def make(c: list[str], transform) -> VolumeSliceDataset:
        return VolumeSliceDataset(d.root, c, num_classes=num_classes, in_chans=in_chans, size=size,
                                  window=d.window, axis=d.axis, empty_ratio=ratio,
                                  normalization=d.normalize, transform=transform, seed=cfg.train.seed)

    train = make(train_c, train_transform(size, d.augment))
    val = make(val_c, eval_transform(size)) if val_c else None
    # Test cases are evaluated per volume (hrmedseg.metrics.volume), not by the 2-D
    # per-image evaluation of the trainer, so they are not returned here.
    pre = {"size": list(size), "normalize": d.normalize, "window": d.window, "axis": d.axis}
    return RunData(train, val, None, train.class_names, pre)


def run_splits(run_dir: str | Path, data_root: str | Path) -> dict[str, list[str]] | None:
    """The train/val/test stems a segmentation run drew on ``data_root``: ``RUN/splits.json``
    (written by the engine), else redrawn from ``RUN/config.yaml`` by the rule the run used
    (run folders older than ``splits.json``); None when ``run_dir`` is not a run folder."""
    import json

    from ..data.datasets import discover_pairs
    from .config import load_config
    run = Path(run_dir)
    if (run / "splits.json").is_file():
        data = json.loads((run / "splits.json").read_text())
        return {k: list(data.get(k) or []) for k in ("train", "val", "test")}
    if not (run / "config.yaml").is_file():
        return None
    cfg = load_config(run / "config.yaml", [f"data.root={data_root}"])
    if cfg.task != "segment" or cfg.data.volumes:
        return None
    index = discover_pairs(data_root)
    train, val, test = split_stems(cfg, index.stems, index.official_splits)
    return {"train": train, "val": val, "test": test}
