"""Pictures people look at: overlays of masks on images, side by side with the ground truth."""
from __future__ import annotations

import numpy as np


def display_rgb(image: np.ndarray) -> np.ndarray:
    """Any image from ``read_image`` as uint8 RGB for display (16-bit scaled, alpha dropped)."""
    from ..data.io import to_model_channels
    return np.clip(to_model_channels(image, 3) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def prediction_overlay(image: np.ndarray, labels: np.ndarray, gt: np.ndarray | None = None,
                       alpha: float = 0.45) -> np.ndarray:
    """Prediction overlay; with ``gt``, ground truth (left) and prediction (right) side by side."""
    from ..data.io import overlay
    rgb = display_rgb(image)
    pred = overlay(rgb, labels, alpha=alpha)
    if gt is None:
        return pred
    left = overlay(rgb, gt, alpha=alpha)
    gap = np.full((rgb.shape[0], max(4, rgb.shape[1] // 100), 3), 255, np.uint8)
    return np.concatenate([left, gap, pred], axis=1)
