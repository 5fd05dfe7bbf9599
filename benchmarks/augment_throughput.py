"""Augmentation throughput of one DataLoader worker (one thread), uint8 RGB at --size.

    python benchmarks/augment_throughput.py -o benchmarks/results/augment_throughput_cpu.json

Times ``train_transform(size, policy)`` for the "paper" and "strong" policies, and the strong
policy with albumentations' own full-resolution ElasticTransform in place of the package's
coarse-grid one (what "strong" used before), on one natural-looking image and mask.
Equal-time training runs were bound by this (benchmarks/results/equal_time_h200/).
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import time
from pathlib import Path

import cv2
import numpy as np

from hrmedseg.provenance import source_commit


def _images(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 3.0)
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, (size // 2, size // 2), size // 4, 1, -1)
    return img, mask


def rate(transform, img: np.ndarray, mask: np.ndarray, seconds: float) -> float:
    for _ in range(3):
        transform(image=img, mask=mask)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        transform(image=img, mask=mask)
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    import albumentations as A

    from hrmedseg.data.transforms import _ElasticTransform, train_transform

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seconds", type=float, default=8.0, help="timing per policy")
    args = ap.parse_args()
    cv2.setNumThreads(0)   # as in the DataLoader workers
    img, mask = _images(args.size)
    strong = train_transform(args.size, "strong")
    stock = copy.deepcopy(strong)
    ops = stock.compose.transforms
    for i, t in enumerate(ops):
        if isinstance(t, _ElasticTransform):
            ops[i] = A.ElasticTransform(alpha=t.alpha, sigma=t.sigma, interpolation=t.interpolation,
                                        mask_interpolation=t.mask_interpolation,
                                        border_mode=t.border_mode, fill=t.fill, fill_mask=t.fill_mask, p=t.p)
    stock.compose = A.Compose(ops)
    rows = {"paper": rate(train_transform(args.size, "paper"), img, mask, args.seconds),
            "strong": rate(strong, img, mask, args.seconds),
            "strong_with_albumentations_elastic": rate(stock, img, mask, args.seconds)}
    out = {"what": "images/s of one worker (cv2 threads off), uint8 RGB + mask", "size": args.size,
           "images_per_s": {k: round(v, 1) for k, v in rows.items()},
           "speedup_strong": round(rows["strong"] / rows["strong_with_albumentations_elastic"], 2),
           "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
           "albumentations": A.__version__, "opencv": cv2.__version__, "commit": source_commit(),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
