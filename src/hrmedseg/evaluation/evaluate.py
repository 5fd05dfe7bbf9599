"""Evaluate a model on image/mask pairs: per-image CSV, summary JSON (mean ± std), overlays.

Metrics are computed twice per image: at the model's input resolution (ground truth resized
with nearest neighbour) and at the image's original resolution (logits resized bilinearly);
papers report the former ("at evaluation resolution"), users need the latter.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .metrics import EMPTY_MASK_POLICY, compute_metrics, summarize

PERCENT_KEYS = ("dice", "iou", "pixel_accuracy")


def _nearest_resize(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if mask.shape == hw:
        return mask
    rows = (np.arange(hw[0]) * mask.shape[0] / hw[0]).astype(np.int64)
    cols = (np.arange(hw[1]) * mask.shape[1] / hw[1]).astype(np.int64)
    return mask[rows[:, None], cols[None, :]]


def evaluate_samples(segmenter: Any, samples: Sequence[Any], out_dir: Path | None = None,
                     hd: bool = True, overlays: int = 4, class_names: list[str] | None = None,
                     progress: bool = True, on_error: str = "raise") -> dict[str, Any]:
    """Run ``segmenter`` over ``samples`` (objects with stem, image_path, mask_path)."""
    from tqdm.auto import tqdm

    from ..data.io import ImageReadError, read_image, read_mask, write_image_png
    from ..inference.visualize import prediction_overlay

    nc = segmenter.num_classes
    rows, rows_model, skipped = [], [], []
    out_dir = Path(out_dir) if out_dir else None
    bs = max(1, segmenter.batch_size)
    bar = tqdm(total=len(samples), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(samples), bs):
        chunk, images, gts = [], [], []
        for s in samples[start:start + bs]:
            try:
                img, gt = read_image(s.image_path), read_mask(s.mask_path)
                if gt.shape != img.shape[:2]:
                    raise ImageReadError(s.mask_path, f"mask is {gt.shape} but image is {img.shape[:2]}")
            except ImageReadError as exc:
                if on_error == "raise":
                    raise
                skipped.append(str(exc))
                bar.write(f"skipped: {exc}")
                continue
            chunk.append(s)
            images.append(img)
            gts.append(gt)
        if not chunk:
            bar.update(len(samples[start:start + bs]))
            continue
        preds = segmenter.predict_arrays(images, [str(s.image_path) for s in chunk])
        for s, img, gt, pr in zip(chunk, images, gts, preds):
            prob = pr.probabilities[0] if nc == 1 else pr.probabilities
            m = compute_metrics(pr.labels, gt, nc, probs=prob, hd=hd, class_names=class_names)
            rows.append({"stem": s.stem, "height": gt.shape[0], "width": gt.shape[1], **m})
            gt_small = _nearest_resize(gt, pr.model_labels.shape)
            mm = compute_metrics(pr.model_labels, gt_small, nc, hd=hd, class_names=class_names)
            rows_model.append({"stem": s.stem, **mm})
            if out_dir is not None and len(rows) <= overlays:
                pic = prediction_overlay(img, pr.labels, gt)
                write_image_png(out_dir / "overlays" / f"{s.stem}.png", pic)
        bar.update(len(samples[start:start + bs]))
    bar.close()
    summary = {
        "n_images": len(rows), "skipped": skipped,
        "model_resolution": summarize({k: v for k, v in r.items() if k != "stem"} for r in rows_model),
        "original_resolution": summarize({k: v for k, v in r.items() if k not in ("stem", "height", "width")}
                                         for r in rows),
        "empty_mask_policy": EMPTY_MASK_POLICY,
        "units": "dice/iou/pixel_accuracy/mae as fractions; hd/hd95 in pixels of that resolution",
    }
    if out_dir is not None:
        from ..models._base import atomic_write_bytes
        _write_csv(out_dir / "per_image.csv", rows, rows_model)
        atomic_write_bytes(out_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]], rows_model: list[dict[str, Any]]) -> None:
    from ..models._base import atomic_write_bytes
    keys: list[str] = []
    merged = []
    for r, rm in zip(rows, rows_model):
        row = dict(r)
        row.update({f"{k}@model": v for k, v in rm.items() if k != "stem"})
        merged.append(row)
        for k in row:
            if k not in keys:
                keys.append(k)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for row in merged:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def format_summary(summary: dict[str, Any], which: str = "model_resolution") -> str:
    """One line per headline metric, Dice/IoU in percent as the papers print them."""
    s = summary[which]
    parts = []
    for k in ("dice", "iou", "hd95", "hd", "mae", "pixel_accuracy"):
        if k in s:
            f = 100.0 if k in PERCENT_KEYS else 1.0
            parts.append(f"{k} {s[k]['mean'] * f:.2f} ± {s[k]['std'] * f:.2f}")
    return f"{which.replace('_', ' ')} (n={summary['n_images']}): " + ", ".join(parts)
