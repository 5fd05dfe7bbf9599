"""Per-volume, per-class Dice, IoU, HD and HD95 in millimetres (3-D surfaces), and a Table-2 report.

Definitions are those of :mod:`hrmedseg.metrics.segmentation`, in 3-D: surfaces are the foreground
voxels removed by one binary erosion (6-connected structuring element, outside the volume counts as
background); distances are Euclidean in mm (``scipy.ndimage.distance_transform_edt`` with the voxel
``spacing``) from each surface voxel to the nearest surface voxel of the other mask; HD95 is the 95th
percentile (linear interpolation) of each directed set and the larger direction is reported. This
matches ``monai.metrics.compute_hausdorff_distance(..., percentile=95, spacing=...)``.

Empty policy (same as ``EMPTY_MASK_POLICY``): both empty -> Dice = IoU = 1, HD = HD95 = 0;
one empty -> Dice = IoU = 0, HD = HD95 = the volume diagonal in mm ``sqrt(sum((n_i * s_i)^2))``.

The report (:func:`table2_report`) follows HER-Seg / TransUNet Table 2 on Synapse: one column per
organ (Dice %), mean Dice and mean HD95 (mm), one row per case and a mean row.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .segmentation import EMPTY_MASK_POLICY

__all__ = ["EMPTY_MASK_POLICY", "volume_diagonal", "dice3d", "iou3d", "hausdorff3d",
           "compute_volume_metrics", "summarize_volumes", "table2_report"]


def _spacing3(spacing: float | Sequence[float] | None) -> tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    if isinstance(spacing, (int, float)):
        return (float(spacing),) * 3  # type: ignore[return-value]
    s = tuple(float(v) for v in spacing)
    if len(s) != 3:
        raise ValueError(f"spacing must have 3 values, got {s}")
    return s  # type: ignore[return-value]


def volume_diagonal(shape: Sequence[int], spacing: float | Sequence[float] | None = None) -> float:
    sp = _spacing3(spacing)
    return math.sqrt(sum((float(n) * s) ** 2 for n, s in zip(shape, sp)))


def _pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    p, g = np.asarray(pred).astype(bool), np.asarray(gt).astype(bool)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"expected two 3-D masks of equal shape, got {p.shape} and {g.shape}")
    return p, g


def dice3d(pred: Any, gt: Any) -> float:
    p, g = _pair(pred, gt)
    ps, gs = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    return 1.0 if ps + gs == 0 else 2.0 * int(np.count_nonzero(p & g)) / (ps + gs)


def iou3d(pred: Any, gt: Any) -> float:
    p, g = _pair(pred, gt)
    u = int(np.count_nonzero(p | g))
    return 1.0 if u == 0 else int(np.count_nonzero(p & g)) / u


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    return mask ^ ndimage.binary_erosion(mask, border_value=0)


def _crop(p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop both to the bounding box of their union plus one voxel (exact: distances are between
    surface voxels inside it; the margin keeps the erosion's border handling)."""
    u = p | g
    idx = [np.flatnonzero(u.any(axis=tuple(j for j in range(3) if j != i))) for i in range(3)]
    sl = tuple(slice(max(0, int(ix[0]) - 1), int(ix[-1]) + 2) for ix in idx)
    return p[sl], g[sl]


def hausdorff3d(pred: Any, gt: Any, spacing: float | Sequence[float] | None = None,
                percentile: float | None = None) -> float:
    """Symmetric (percentile) Hausdorff distance between the two surfaces, in spacing units."""
    from scipy import ndimage

    p, g = _pair(pred, gt)
    sp = _spacing3(spacing)
    pe, ge = p.any(), g.any()
    if not pe and not ge:
        return 0.0
    if pe != ge:
        return volume_diagonal(p.shape, sp)
    p, g = _crop(p, g)
    sp_, sg = _surface(p), _surface(g)
    out = 0.0
    for a, b in ((sp_, sg), (sg, sp_)):
        d = ndimage.distance_transform_edt(~b, sampling=sp)[a]
        v = float(np.max(d)) if percentile is None else float(np.percentile(d, percentile))
        out = max(out, v)
    return out


def compute_volume_metrics(pred_labels: Any, gt_labels: Any, num_classes: int,
                           spacing: float | Sequence[float] | None = None, *,
                           class_names: Sequence[str] | None = None, hd: bool = True) -> dict[str, float]:
    """Metrics of one volume: ``dice, iou, hd, hd95`` (means over foreground classes 1..K-1; binary:
    the foreground) and ``"<metric>/<class>"`` per class (class = name or index)."""
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(f"expected two 3-D label volumes of equal shape, got {p.shape} and {g.shape}")
    classes = [1] if num_classes <= 2 else list(range(1, num_classes))
    out: dict[str, float] = {}
    per: dict[str, list[float]] = {k: [] for k in ("dice", "iou", "hd", "hd95")}
    for c in classes:
        pc, gc = p == c, g == c
        vals = {"dice": dice3d(pc, gc), "iou": iou3d(pc, gc)}
        if hd:
            vals["hd"] = hausdorff3d(pc, gc, spacing)
            vals["hd95"] = hausdorff3d(pc, gc, spacing, 95)
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        for k, v in vals.items():
            per[k].append(v)
            out[f"{k}/{name}"] = v
    for k, v in per.items():
        if v:
            out[k] = float(np.mean(v))
    return out


def summarize_volumes(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """mean/std/n of every numeric key over cases."""
    cols: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                cols.setdefault(k, []).append(float(v))
    return {k: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for k, v in cols.items()}


def table2_report(rows: Mapping[str, Mapping[str, float]], class_names: Sequence[str],
                  *, markdown: bool = True) -> str:
    """Table-2 style report: case | one Dice column per organ | mean Dice (%) | mean HD95 (mm).

    ``rows`` maps a case name to :func:`compute_volume_metrics` output; ``class_names`` are the
    foreground organ names (background excluded) as used for the ``dice/<name>`` keys.
    """
    header = ["case", *class_names, "Dice", "HD95 (mm)"]
    lines = []

    def fmt(r: Mapping[str, float]) -> list[str]:
        organs = [f"{100 * r[f'dice/{n}']:.2f}" if f"dice/{n}" in r else "-" for n in class_names]
        return [*organs, f"{100 * r['dice']:.2f}" if "dice" in r else "-",
                f"{r['hd95']:.2f}" if "hd95" in r else "-"]

    for case, r in rows.items():
        lines.append([case, *fmt(r)])
    if rows:
        means = {k: v["mean"] for k, v in summarize_volumes(rows.values()).items()}
        lines.append(["mean", *fmt(means)])
    if not markdown:
        return "\n".join("\t".join(x) for x in [header, *lines]) + "\n"
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(x) + " |" for x in lines]
    return "\n".join(out) + "\n"
