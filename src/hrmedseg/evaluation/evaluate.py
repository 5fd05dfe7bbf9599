"""Evaluate a model on image/mask pairs: per-image CSV, summary JSON (mean ± std), overlays.

Metrics are computed twice per image: at the model's input resolution (ground truth resized
with nearest neighbour) and at the image's original resolution (logits resized bilinearly);
papers report the former ("at evaluation resolution"), users need the latter. MAE is computed
from the predicted labels at both. Files hold fractions; :func:`format_summary` (console) prints
Dice, IoU and pixel accuracy in percent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import write_csv_atomic, write_json_atomic
from ..data.io import ImageReadError, read_image, read_mask, write_image_png
from ..inference.visualize import prediction_overlay
from ..progress import progress as progress_bar
from ..metrics.segmentation import EMPTY_MASK_POLICY, compute_metrics, summarize

PERCENT_KEYS = ("dice", "iou", "pixel_accuracy")


def nearest_resize(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Label map resized to ``hw`` by nearest neighbour (ground truth at the model's resolution)."""
    if mask.shape == hw:
        return mask
    rows = (np.arange(hw[0]) * mask.shape[0] / hw[0]).astype(np.int64)
    cols = (np.arange(hw[1]) * mask.shape[1] / hw[1]).astype(np.int64)
    return mask[rows[:, None], cols[None, :]]


Rows = list[tuple[int, dict[str, Any]]]


def evaluate_rows(segmenter: Any, indexed: Sequence[tuple[int, Any]], hd: bool = True,
                  class_names: list[str] | None = None, on_error: str = "raise",
                  out_dir: Path | None = None, overlays: int = 4, progress: bool = True,
                  ignore_empty: bool = False, hd95_style: str = "monai"
                  ) -> tuple[Rows, Rows, list[tuple[int, str]]]:
    """Per-image rows at the original and the model resolution for ``(index, sample)`` pairs.

    Rows carry the sample's index so that shards evaluated by several processes can be merged
    back in order; overlays are written for samples whose index is below ``overlays``.
    ``ignore_empty``/``hd95_style``: see :func:`~hrmedseg.metrics.segmentation.compute_metrics`.
    """
    opts = {"hd": hd, "class_names": class_names, "ignore_empty": ignore_empty,
            "hd95_style": hd95_style}
    nc = segmenter.num_classes
    rows: Rows = []
    rows_model: Rows = []
    skipped: list[tuple[int, str]] = []
    bs = max(1, segmenter.batch_size)
    bar = progress_bar(total=len(indexed), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(indexed), bs):
        chunk, images, gts = [], [], []
        for idx, s in indexed[start:start + bs]:
            try:
                img, gt = read_image(s.image_path), read_mask(s.mask_path)
                if gt.shape != img.shape[:2]:
                    raise ImageReadError(s.mask_path, f"mask is {gt.shape} but image is {img.shape[:2]}")
            except ImageReadError as exc:
                if on_error == "raise":
                    raise
                skipped.append((idx, str(exc)))
                bar.write(f"skipped: {exc}")
                continue
            chunk.append((idx, s))
            images.append(img)
            gts.append(gt)
        if chunk:
            preds = segmenter.predict_arrays(images, [str(s.image_path) for _, s in chunk])
            for (idx, s), img, gt, pr in zip(chunk, images, gts, preds):
                m = compute_metrics(pr.labels, gt, nc, **opts)
                rows.append((idx, {"stem": s.stem, "height": gt.shape[0], "width": gt.shape[1], **m}))
                gt_small = nearest_resize(gt, pr.model_labels.shape)
                mm = compute_metrics(pr.model_labels, gt_small, nc, **opts)
                rows_model.append((idx, {"stem": s.stem, **mm}))
                if out_dir is not None and idx < overlays:
                    write_image_png(Path(out_dir) / "overlays" / f"{s.stem}.png",
                                    prediction_overlay(img, pr.labels, gt))
        bar.update(len(indexed[start:start + bs]))
    bar.close()
    return rows, rows_model, skipped


def summarize_rows(rows: Rows, rows_model: Rows, skipped: list[tuple[int, str]],
                   ignore_empty: bool = False, hd95_style: str = "monai") -> dict[str, Any]:
    """The summary JSON (mean ± std at both resolutions) from index-tagged rows."""
    plain = [r for _, r in sorted(rows, key=lambda t: t[0])]
    plain_model = [r for _, r in sorted(rows_model, key=lambda t: t[0])]
    return {
        "n_images": len(plain), "skipped": [m for _, m in sorted(skipped, key=lambda t: t[0])],
        "model_resolution": summarize({k: v for k, v in r.items() if k != "stem"} for r in plain_model),
        "original_resolution": summarize({k: v for k, v in r.items() if k not in ("stem", "height", "width")}
                                         for r in plain),
        "empty_mask_policy": ("ignore_empty: images with an empty ground truth are left out of "
                              "Dice/IoU/HD means (MONAI DiceMetric default)") if ignore_empty
        else EMPTY_MASK_POLICY,
        "hd95": {"monai": "max of the two directed 95th percentiles (MONAI)",
                 "medpy": "95th percentile of both directed sets pooled (medpy)"}[hd95_style],
        "units": "dice/iou/pixel_accuracy/mae as fractions (mae from labels); hd/hd95 in pixels of "
                 "that resolution",
    }


def write_results(out_dir: Path, rows: Rows, rows_model: Rows, summary: dict[str, Any]) -> None:
    """``per_image.csv`` (both resolutions, in sample order) and ``summary.json``, atomically."""
    _write_csv(Path(out_dir) / "per_image.csv", [r for _, r in sorted(rows, key=lambda t: t[0])],
               [r for _, r in sorted(rows_model, key=lambda t: t[0])])
    write_json_atomic(Path(out_dir) / "summary.json", summary)


def evaluate_samples(segmenter: Any, samples: Sequence[Any], out_dir: Path | None = None,
                     hd: bool = True, overlays: int = 4, class_names: list[str] | None = None,
                     progress: bool = True, on_error: str = "raise", ignore_empty: bool = False,
                     hd95_style: str = "monai") -> dict[str, Any]:
    """Run ``segmenter`` over ``samples`` (objects with stem, image_path, mask_path)."""
    rows, rows_model, skipped = evaluate_rows(segmenter, list(enumerate(samples)), hd, class_names,
                                              on_error, out_dir, overlays, progress,
                                              ignore_empty, hd95_style)
    summary = summarize_rows(rows, rows_model, skipped, ignore_empty, hd95_style)
    if out_dir is not None:
        write_results(Path(out_dir), rows, rows_model, summary)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]], rows_model: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    merged = []
    for r, rm in zip(rows, rows_model):
        row = dict(r)
        row.update({f"{k}@model": v for k, v in rm.items() if k != "stem"})
        merged.append(row)
        for k in row:
            if k not in keys:
                keys.append(k)
    write_csv_atomic(path, keys, ({k: (f"{v:.6g}" if isinstance(v, float) else v)
                                   for k, v in row.items()} for row in merged))


def format_summary(summary: dict[str, Any], which: str = "model_resolution") -> str:
    """One line per headline metric, Dice/IoU in percent as the papers print them."""
    s = summary[which]
    parts = []
    for k in ("dice", "iou", "hd95", "hd", "mae", "pixel_accuracy"):
        if k in s:
            f = 100.0 if k in PERCENT_KEYS else 1.0
            parts.append(f"{k} {s[k]['mean'] * f:.2f} ± {s[k]['std'] * f:.2f}")
    return f"{which.replace('_', ' ')} (n={summary['n_images']}): " + ", ".join(parts)
