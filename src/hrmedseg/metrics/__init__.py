"""Segmentation metrics as pure functions, with a documented empty-mask policy.

:mod:`.segmentation` is the numpy reference per image (Dice, IoU, HD, HD95, MAE, pixel accuracy),
:mod:`.tensor` the batched torch Dice/IoU used during training and prediction, :mod:`.volume`
the 3-D versions in millimetres. Nothing here reads files or runs a model; evaluating a model on a
dataset is :mod:`hrmedseg.evaluation`.
"""
from __future__ import annotations

from .segmentation import (
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
