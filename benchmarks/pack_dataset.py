"""Pack a dataset of ../shared/data compactly for a GPU run (<= 64 MiB travels per call).

Decodes every pair once and stores it lean: images as RGB PNG (lossless), JPEG or WebP (for datasets
that are JPEG already, re-encoded at high quality), optionally downscaled so the longer side is
at most --max-side, masks as 1-bit PNG; splits.json is copied. The output is an images/ +
masks/ folder that `hrmedseg train` reads directly. Not for git: write into an ignored folder.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from hrmedseg.data.io import read_image, read_mask


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--format", choices=["png", "jpg", "webp"], default="png")
    ap.add_argument("--quality", type=int, default=95)
    ap.add_argument("--max-side", type=int, default=0)
    args = ap.parse_args()
    (args.dst / "images").mkdir(parents=True, exist_ok=True)
    (args.dst / "masks").mkdir(parents=True, exist_ok=True)
    from hrmedseg.data.datasets import discover_pairs
    index = discover_pairs(args.src)
    for s in index:
        img = read_image(s.image_path)
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        if img.dtype != np.uint8:
            img = (img.astype(np.float32) / np.iinfo(img.dtype).max * 255).round().astype(np.uint8)
        mask = read_mask(s.mask_path)
        im, mk = Image.fromarray(img), Image.fromarray((mask > 0).astype(np.uint8) * 255)
        if args.max_side and max(im.size) > args.max_side:
            r = args.max_side / max(im.size)
            new = (round(im.size[0] * r), round(im.size[1] * r))
            im, mk = im.resize(new, Image.BILINEAR), mk.resize(new, Image.NEAREST)
        if args.format == "png":
            im.save(args.dst / "images" / f"{s.stem}.png", optimize=True)
        elif args.format == "webp":
            im.save(args.dst / "images" / f"{s.stem}.webp", quality=args.quality, method=6)
        else:
            im.save(args.dst / "images" / f"{s.stem}.jpg", quality=args.quality)
        mk.convert("1").save(args.dst / "masks" / f"{s.stem}.png", optimize=True)
    if (args.src / "splits.json").is_file():
        shutil.copy(args.src / "splits.json", args.dst / "splits.json")
    elif getattr(index, "official_splits", None):  # e.g. DRIVE's training/ and test/ folders
        (args.dst / "splits.json").write_text(json.dumps(index.official_splits, indent=1))
    print(json.dumps({"pairs": len(index), "dst": str(args.dst)}))


if __name__ == "__main__":
    main()
