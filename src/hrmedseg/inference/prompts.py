"""Prompts derived from masks: the tight box of each connected component.

SAM-family models here are evaluated the way the SAM combination of the papers is (HRMedSeg
Table 4, SPEC "SAM combination"): one box prompt per connected component of the ground-truth
mask. Boxes follow segment-anything's convention: ``(x0, y0, x1, y1)`` in pixels of the mask,
with ``x1``/``y1`` the *last* foreground column/row (inclusive), as its ``batched_mask_to_box``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

__all__ = ["boxes_from_mask"]


def _structure(connectivity: int) -> np.ndarray:
    if connectivity == 8:
        return np.ones((3, 3), dtype=bool)
    if connectivity == 4:
        return ndimage.generate_binary_structure(2, 1)
    raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")


def boxes_from_mask(mask: Any, connectivity: int = 8, min_area: int = 1) -> Any:
    """Tight box of every connected component of a 2-D mask, shape (N, 4).

    Args:
        mask: (H, W) array or tensor; every nonzero pixel is foreground (threshold JPEG masks
            first). A leading singleton channel axis, (1, H, W), is accepted.
        connectivity: 8 (diagonal neighbours join a component; default) or 4.
        min_area: components with fewer pixels are dropped (e.g. ``min_area=16`` against
            JPEG specks); the default keeps every component.

    Returns:
        float32 boxes ``(x0, y0, x1, y1)`` (inclusive pixel indices), one row per component in
        scan order (top to bottom, then left to right of each component's first pixel). A torch
        tensor (on the mask's device) for a tensor input, a numpy array otherwise. An empty
        mask gives shape (0, 4).
    """
    is_tensor = isinstance(mask, torch.Tensor)
    arr = mask.detach().cpu().numpy() if is_tensor else np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"boxes_from_mask expects a 2-D (H, W) mask, got shape {arr.shape}")
    labels, n = ndimage.label(arr != 0, structure=_structure(connectivity))
    boxes = np.zeros((0, 4), dtype=np.float32)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        rows = []
        for area, sl in zip(areas, ndimage.find_objects(labels)):
            if sl is None or area < min_area:
                continue
            ys, xs = sl
            rows.append((xs.start, ys.start, xs.stop - 1, ys.stop - 1))
        if rows:
            boxes = np.asarray(rows, dtype=np.float32)
    if is_tensor:
        return torch.from_numpy(boxes).to(mask.device)
    return boxes
