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
* HD95, medpy style (``hd95_style="medpy"``, :func:`hd95_medpy`): the 95th percentile of both
  directed distance sets taken together, as ``medpy.metric.binary.hd95`` computes it, which is
  what many papers' tables report. It is never larger than the MONAI-style value.
* MAE = mean |prediction - ground truth| over pixels, from the predicted labels (a fraction in
  [0, 1]); :func:`mae` also takes probabilities, but the evaluation tables use labels at both
  resolutions so the two columns compare.
* Pixel accuracy = fraction of pixels whose label is right (all classes).

Which tables use what: ``hrmedseg evaluate`` (``per_image.csv``, ``summary.json``) and the
trainer's test evaluation use the empty-mask policy below and MONAI-style HD95 unless asked
otherwise (``--ignore-empty``, ``--hd95 medpy``); ``summary.json`` records both choices.

Units: files (JSON, CSV) hold fractions (Dice 0.9234); only console lines meant for people print
Dice, IoU and pixel accuracy in percent (92.34). Distances are in pixels, or in the units of
``spacing`` when given.

Empty-mask policy (``EMPTY_MASK_POLICY``), the default (``ignore_empty=False``, MONAI's
``DiceMetric(ignore_empty=False)``):

* prediction and ground truth both empty -> Dice = IoU = 1, HD = HD95 = 0 (a correct "nothing here");
* exactly one of them empty -> Dice = IoU = 0, HD = HD95 = the image diagonal
  ``sqrt((H * sy)^2 + (W * sx)^2)`` in pixel units (or spacing units when ``spacing`` is given), the
  worst distance the image allows, so that failures stay finite and inside means.

``ignore_empty=True`` matches the default of MONAI's ``DiceMetric`` (``ignore_empty=True``): an
image (class) whose ground truth is empty gets NaN for Dice, IoU, HD and HD95 whatever was
predicted, and :func:`summarize` leaves NaNs out of the means.

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
    "EMPTY_MASK_POLICY", "HD95_STYLES", "dice", "iou", "hausdorff", "hd95", "hd95_medpy", "mae",
    "pixel_accuracy",
    "compute_metrics", "summarize", "image_diagonal",
]

#: The empty-mask policy, as data (see the module docstring).
EMPTY_MASK_POLICY: dict[str, dict[str, float | str]] = {
    "both_empty": {"dice": 1.0, "iou": 1.0, "hd": 0.0, "hd95": 0.0},
    "one_empty": {"dice": 0.0, "iou": 0.0, "hd": "diagonal", "hd95": "diagonal"},
}


#: ``"monai"``: max of the two directed 95th percentiles; ``"medpy"``: 95th percentile of both
#: directed sets together (``medpy.metric.binary.hd95``).
HD95_STYLES = ("monai", "medpy")


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


def _surface_distances(p: np.ndarray, g: np.ndarray, spacing: float | Sequence[float] | None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances pred->gt and gt->pred of two non-empty masks. Work is restricted
    to the bounding box of both masks plus one pixel: the same distances at a fraction of the cost."""
    rows = np.flatnonzero((p | g).any(axis=1))
    cols = np.flatnonzero((p | g).any(axis=0))
    r0, r1 = max(rows[0] - 1, 0), min(rows[-1] + 2, p.shape[0])
    c0, c1 = max(cols[0] - 1, 0), min(cols[-1] + 2, p.shape[1])
    p, g = p[r0:r1, c0:c1], g[r0:r1, c0:c1]
    ep, eg = _edges(p), _edges(g)
    sampling = _spacing2(spacing)
    return _directed(ep, eg, sampling), _directed(eg, ep, sampling)


def _empty_distance(p: np.ndarray, g: np.ndarray, spacing: float | Sequence[float] | None
                    ) -> float | None:
    """The policy's distance when a mask is empty (0 or the diagonal), None when neither is."""
    pa, ga = bool(p.any()), bool(g.any())
    if not pa and not ga:
        return 0.0
    if pa != ga:
        return image_diagonal(p.shape, spacing)
    return None


def hausdorff(
    pred: Any, gt: Any, spacing: float | Sequence[float] | None = None, percentile: float | None = None
) -> float:
    """Symmetric Hausdorff distance between boundaries (``percentile`` e.g. 95 for HD95, MONAI
    style: the larger of the two directed percentiles).

    Both empty -> 0; exactly one empty -> image diagonal (policy).
    """
    p, g = _pair(pred, gt)
    empty = _empty_distance(p, g, spacing)
    if empty is not None:
        return empty
    d_pg, d_gp = _surface_distances(p, g, spacing)
    if percentile is None:
        return float(max(d_pg.max(), d_gp.max()))
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))


def hd95(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance (MONAI ``percentile=95`` convention)."""
    return hausdorff(pred, gt, spacing, percentile=95)


def hd95_medpy(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None) -> float:
    """HD95 as ``medpy.metric.binary.hd95``: the 95th percentile (linear interpolation) of the
    pred->gt and gt->pred boundary distances pooled into one set. Empty masks follow the policy
    (medpy itself raises for them)."""
    p, g = _pair(pred, gt)
    empty = _empty_distance(p, g, spacing)
    if empty is not None:
        return empty
    d_pg, d_gp = _surface_distances(p, g, spacing)
    return float(np.percentile(np.concatenate([d_pg, d_gp]), 95))


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
    ignore_empty: bool = False,
    hd95_style: str = "monai",
) -> dict[str, float]:
    """All metrics for one image as a flat dict.

    ``pred_labels``/``gt_labels`` are ``(H, W)`` label maps (torch tensors are accepted). ``probs`` is
    the foreground probability ``(H, W)`` for binary models, or ``(K, H, W)`` class probabilities,
    used for MAE (otherwise the hard prediction is used). Binary (``num_classes`` 1 or 2): keys
    ``dice, iou, hd, hd95, mae, pixel_accuracy`` for the foreground. Multi-class: the same keys as
    means over foreground classes, plus ``"dice/<c>"``... per class (``c`` = name or index).
    ``hd=False`` skips the distance metrics, which are the only costly ones.
    ``ignore_empty=True``: classes with an empty ground truth give NaN for Dice/IoU/HD/HD95 (MONAI
    ``DiceMetric`` default); ``hd95_style`` is ``"monai"`` or ``"medpy"`` (see the module docstring).
    """
    if hd95_style not in HD95_STYLES:
        raise ValueError(f"hd95_style must be one of {HD95_STYLES}, got {hd95_style!r}")
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
            vals["hd95"] = (hd95 if hd95_style == "monai" else hd95_medpy)(pc, gc, spacing)
        if ignore_empty and not gc.any():
            vals.update({k: float("nan") for k in vals})
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
