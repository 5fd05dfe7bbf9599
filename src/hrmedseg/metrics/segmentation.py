"""Per-image segmentation metrics: Dice, IoU, Hausdorff distance (HD), HD95, MAE, pixel accuracy.

Why this module exists: reported numbers are only comparable when the metric definitions and the
handling of empty masks are fixed and written down. Definitions:

* Dice = 2|P∩G| / (|P| + |G|), IoU = |P∩G| / |P∪G| on binary masks of one class.
* HD / HD95: boundaries are the foreground pixels removed by one binary erosion (cross-shaped
  structuring element, outside the image counts as background); distances are Euclidean from every
  boundary pixel of one mask to the nearest boundary pixel of the other (``scipy.ndimage`` EDT, with
  ``spacing`` per axis); HD is the maximum and HD95 the 95th percentile (linear interpolation) of each
  directed set, and the larger of the two directions is reported. This matches MONAI's
  ``compute_hausdorff_distance`` (``percentile=None`` / ``95``).
* MAE = mean |probability - ground truth| over pixels (binary prediction when no probabilities).
* Pixel accuracy = fraction of pixels whose label is right (all classes).

Empty-mask policy (``EMPTY_MASK_POLICY``):

* prediction and ground truth both empty -> Dice = IoU = 1, HD = HD95 = 0 (a correct "nothing here");
* exactly one of them empty -> Dice = IoU = 0, HD = HD95 = the image diagonal
  ``sqrt((H * sy)^2 + (W * sx)^2)`` in pixel units (or spacing units when ``spacing`` is given), the
  worst distance the image allows, so that failures stay finite and inside means.

Binary models (1 output class, or ``num_classes`` <= 2) report the foreground class only; for
multi-class the reported value is the mean over foreground classes 1..K-1, with per-class values in
``"<metric>/<class>"`` keys.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "EMPTY_MASK_POLICY", "dice", "iou", "hausdorff", "hd95", "mae", "pixel_accuracy",
    "compute_metrics", "summarize", "image_diagonal",
]

#: The empty-mask policy, as data (see the module docstring).
EMPTY_MASK_POLICY: dict[str, dict[str, float | str]] = {
    "both_empty": {"dice": 1.0, "iou": 1.0, "hd": 0.0, "hd95": 0.0},
    "one_empty": {"dice": 0.0, "iou": 0.0, "hd": "diagonal", "hd95": "diagonal"},
}


def _binary(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {tuple(arr.shape)}")
    return arr.astype(bool, copy=False)


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = _binary(pred), _binary(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return p, g


def _spacing2(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    if isinstance(spacing, (int, float)):
        return float(spacing), float(spacing)
    sy, sx = (float(v) for v in spacing)
    return sy, sx


def image_diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    """``sqrt((H * sy)^2 + (W * sx)^2)``: the distance used when exactly one mask is empty."""
    sy, sx = _spacing2(spacing)
    return math.hypot(shape[0] * sy, shape[1] * sx)


def dice(pred: Any, gt: Any) -> float:
    """Dice of two binary masks; both empty -> 1, one empty -> 0 (see policy)."""
    p, g = _pair(pred, gt)
    ps, gs = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    if ps + gs == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / (ps + gs)


def iou(pred: Any, gt: Any) -> float:
    """Intersection over union of two binary masks; both empty -> 1, one empty -> 0."""
    p, g = _pair(pred, gt)
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


def _edges(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def _directed(from_edges: np.ndarray, to_edges: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(~to_edges, sampling=sampling)
    return dist[from_edges]


def hausdorff(
    pred: Any, gt: Any, spacing: float | Sequence[float] | None = None, percentile: float | None = None
) -> float:
    """Symmetric Hausdorff distance between boundaries (``percentile`` e.g. 95 for HD95).

    Both empty -> 0; exactly one empty -> image diagonal (policy). Work is restricted to the bounding
    box of both masks plus one pixel, which gives the same distances at a fraction of the cost.
    """
    p, g = _pair(pred, gt)
    pa, ga = bool(p.any()), bool(g.any())
    if not pa and not ga:
        return 0.0
    if pa != ga:
        return image_diagonal(p.shape, spacing)
    rows = np.flatnonzero((p | g).any(axis=1))
    cols = np.flatnonzero((p | g).any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, p.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, p.shape[1])
    p, g = p[r0:r1, c0:c1], g[r0:r1, c0:c1]
    ep, eg = _edges(p), _edges(g)
    sampling = _spacing2(spacing)
    d_pg, d_gp = _directed(ep, eg, sampling), _directed(eg, ep, sampling)
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def hd95(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI ``percentile=95`` convention)."""
    return hausdorff(pred, gt, spacing, percentile=95)


def mae(prob_or_pred: Any, gt: Any) -> float:
    """Mean absolute error between a foreground probability (or binary) map and the binary ground truth."""
    p = np.asarray(prob_or_pred, dtype=np.float64)
    g = np.asarray(gt).astype(np.float64)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return float(np.mean(np.abs(p - g))) if p.size else 0.0


def pixel_accuracy(pred_labels: Any, gt_labels: Any) -> float:
    """Fraction of pixels with the correct label (all classes, background included)."""
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return float(np.mean(p == g)) if p.size else 1.0


def compute_metrics(
    pred_labels: Any,
    gt_labels: Any,
    num_classes: int,
    probs: Any = None,
    spacing: float | Sequence[float] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    hd: bool = True,
) -> dict[str, float]:
    """All metrics for one image as a flat dict.

    ``pred_labels``/``gt_labels`` are ``(H, W)`` label maps (torch tensors are accepted). ``probs`` is
    the foreground probability ``(H, W)`` for binary models, or ``(K, H, W)`` class probabilities,
    used for MAE (otherwise the hard prediction is used). Binary (``num_classes`` 1 or 2): keys
    ``dice, iou, hd, hd95, mae, pixel_accuracy`` for the foreground. Multi-class: the same keys as
    means over foreground classes, plus ``"dice/<c>"``... per class (``c`` = name or index).
    ``hd=False`` skips the distance metrics, which are the only costly ones.
    """
    p, g = _to_np(pred_labels), _to_np(gt_labels)
    if p.shape != g.shape or p.ndim != 2:
        raise ValueError(f"expected two (H, W) label maps of equal shape, got {p.shape} and {g.shape}")
    pr = None if probs is None else _to_np(probs).astype(np.float64, copy=False)
    out: dict[str, float] = {"pixel_accuracy": pixel_accuracy(p, g)}
    binary = num_classes <= 2
    classes = [1] if binary else list(range(1, num_classes))
    per: dict[str, list[float]] = {k: [] for k in ("dice", "iou", "hd", "hd95", "mae")}
    for c in classes:
        pc, gc = p == c, g == c
        vals = {"dice": dice(pc, gc), "iou": iou(pc, gc)}
        if hd:
            vals["hd"] = hausdorff(pc, gc, spacing)
            vals["hd95"] = hd95(pc, gc, spacing)
        if pr is None:
            vals["mae"] = mae(pc, gc)
        elif pr.ndim == 2:
            if not binary:
                raise ValueError("probs must be (K, H, W) for multi-class metrics")
            vals["mae"] = mae(pr, gc)
        else:
            vals["mae"] = mae(pr[c] if pr.shape[0] > 1 else pr[0], gc)
        for k, v in vals.items():
            per[k].append(v)
            if not binary:
                name = class_names[c] if class_names is not None else str(c)
                out[f"{k}/{name}"] = v
    for k, v in per.items():
        if v:
            out[k] = float(np.mean(v))
    return out


def _to_np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def summarize(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, std (population, ddof=0) and count of every metric key over images, NaNs skipped.

    Returns ``{key: {"mean", "std", "n"}}`` for overall and per-class keys alike; format as
    ``f"{s['mean']:.4f} ± {s['std']:.4f}"``.
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for k, v in row.items():
            if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool):
                values.setdefault(k, []).append(float(v))
    out = {}
    for k, vs in values.items():
        arr = np.asarray(vs, dtype=np.float64)
        arr = arr[~np.isnan(arr)]
        out[k] = {"mean": float(arr.mean()) if arr.size else float("nan"),
                  "std": float(arr.std()) if arr.size else float("nan"), "n": int(arr.size)}
    return out
