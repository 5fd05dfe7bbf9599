"""Evaluation: per-image segmentation metrics with a documented empty-mask policy."""
from __future__ import annotations

from .metrics import (
    EMPTY_MASK_POLICY,
    compute_metrics,
    dice,
    hausdorff,
    hd95,
    image_diagonal,
    iou,
    mae,
    pixel_accuracy,
    summarize,
)

__all__ = ["EMPTY_MASK_POLICY", "compute_metrics", "dice", "iou", "hausdorff", "hd95", "mae",
           "pixel_accuracy", "summarize", "image_diagonal"]
