"""Data: image/mask I/O, dataset discovery and checks, splits, and augmentation pipelines.

The per-item transforms are loaded on first use of their names.
"""
from __future__ import annotations

from typing import Any

from .datasets import (
    MASK_SUFFIXES,
    DatasetIndex,
    PreResizeCache,
    Problem,
    Sample,
    SegmentationDataset,
    build_cache,
    check_dataset,
    discover_pairs,
)
from .io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    class_palette,
    is_image_file,
    mask_to_labels,
    normalize,
    overlay,
    read_image,
    read_mask,
    to_model_channels,
    write_image_png,
    write_mask_png,
)
from .splits import Splits, kfold_splits, load_splits, random_split, write_splits

_LAZY = {"SegTransform", "train_transform", "eval_transform", "resize_mask_to"}

__all__ = [
    "IMAGE_EXTENSIONS", "ImageReadError", "is_image_file", "read_image", "read_mask", "mask_to_labels",
    "to_model_channels", "normalize", "write_mask_png", "write_image_png", "overlay", "class_palette",
    "MASK_SUFFIXES", "Sample", "DatasetIndex", "Problem", "discover_pairs", "check_dataset",
    "SegmentationDataset", "PreResizeCache", "build_cache",
    "Splits", "load_splits", "kfold_splits", "random_split", "write_splits",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
