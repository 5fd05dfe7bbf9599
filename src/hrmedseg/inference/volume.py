"""Slice-wise segmentation of 3-D volumes with a 2-D :class:`~hrmedseg.inference.segmenter.Segmenter`.

The volume is windowed once (CT preset, percentile or min-max, see
:func:`hrmedseg.data.volumes.apply_window`) to float [0, 1]; slices along ``axis`` are then
segmented ``batch_size`` at a time through the segmenter's own resize/normalise pipeline, and each
slice's labels (at the slice's own size) are written back, so the label volume has the voxel grid of
the input (write it with :func:`hrmedseg.data.volumes.write_label_volume`).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..data.volumes import Volume, apply_window, get_slice, num_slices, set_slice

__all__ = ["predict_volume", "volume_overlay", "best_slice"]


def predict_volume(segmenter: Any, volume: Volume | np.ndarray, axis: int = 2,
                   window: str | tuple[float, float] = "percentile", batch_size: int = 8,
                   progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Label volume (same shape as ``volume``; uint8, or int32 with >= 256 classes)."""
    data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
    if data.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    scaled = apply_window(data, window)
    n = num_slices(scaled, axis)
    out_dtype = np.uint8 if int(getattr(segmenter, "num_classes", 1)) < 256 else np.int32
    labels = np.zeros(data.shape, dtype=out_dtype)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        images = [np.ascontiguousarray(get_slice(scaled, k, axis)) for k in idx]
        preds = segmenter.predict_arrays(images)
        for k, p in zip(idx, preds):
            set_slice(labels, k, p.labels.astype(out_dtype, copy=False), axis)
        if progress is not None:
            progress(idx[-1] + 1, n)
    return labels


def best_slice(labels: np.ndarray, axis: int = 2) -> int:
    """The slice with the most foreground (the middle one when there is none)."""
    a = axis % 3
    counts = np.count_nonzero(labels, axis=tuple(i for i in range(3) if i != a))
    return int(np.argmax(counts)) if counts.max() > 0 else labels.shape[a] // 2


def volume_overlay(volume: Volume | np.ndarray, labels: np.ndarray, index: int | None = None,
                   axis: int = 2, window: str | tuple[float, float] = "percentile",
                   gt: np.ndarray | None = None, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 overlay of one slice (default: :func:`best_slice`); with ``gt``, GT left, prediction right."""
    from .visualize import prediction_overlay

    data = volume.data if isinstance(volume, Volume) else np.asarray(volume)
    if index is None:
        index = best_slice(gt if gt is not None else labels, axis)
    img = get_slice(apply_window(data, window), index, axis)
    g = None if gt is None else get_slice(gt, index, axis)
    return prediction_overlay(np.ascontiguousarray(img), np.ascontiguousarray(get_slice(labels, index, axis)),
                              None if g is None else np.ascontiguousarray(g), alpha=alpha)
