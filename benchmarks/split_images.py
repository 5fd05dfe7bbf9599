"""Link the images of one split of each dataset into one folder, for `hrmedseg distill --images`
(which reads every image under a folder): pretraining on the training images alone keeps the
validation and test images unseen.

  python benchmarks/split_images.py --data .gpu/data --datasets dsb2018 drive --split train \\
      --out .gpu/work/distill_images

The split is the one `hrmedseg train` uses: ``splits.json`` in the dataset folder, else the
dataset's official split (DRIVE's ``training/``). Each image is linked as ``DATASET/STEM.ext``
(a copy where links are not possible); the folder is rebuilt from scratch on every call.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from hrmedseg.data.datasets import discover_pairs
from hrmedseg.data.splits import load_splits


class SplitImagesError(Exception):
    """A dataset or split that cannot be read (one line, exit 2)."""


def split_images(root: Path, split: str) -> list[Path]:
    """The image files of ``split`` of the dataset at ``root``."""
    index = discover_pairs(root)
    split_file = root / "splits.json"
    if split not in ("train", "val", "test"):
        raise SplitImagesError(f"{root}: unknown split {split!r} (train, val or test)")
    if split_file.is_file():
        stems = load_splits(split_file)[split]
    elif index.official_splits is not None:
        stems = index.official_splits.get(split) or []
    else:
        raise SplitImagesError(f"{root}: no splits.json and no official split")
    if not stems:
        raise SplitImagesError(f"{root}: split {split!r} is empty")
    by_stem = {s.stem: s.image_path for s in index.samples}
    missing = [s for s in stems if s not in by_stem]
    if missing:
        raise SplitImagesError(f"{root}: {len(missing)} stems of {split!r} have no image pair, "
                               f"e.g. {missing[0]}")
    return [Path(by_stem[s]) for s in stems]


def link_split(data: Path, datasets: list[str], split: str, out: Path) -> dict[str, int]:
    """Rebuild ``out`` with ``out/DATASET/<image name>`` for each image of ``split``."""
    plan = {name: split_images(data / name, split) for name in datasets}
    shutil.rmtree(out, ignore_errors=True)
    counts = {}
    for name, images in plan.items():
        folder = out / name
        folder.mkdir(parents=True)
        for image in images:
            target = folder / image.name
            try:
                os.symlink(image.resolve(), target)
            except OSError:
                shutil.copyfile(image, target)
        counts[name] = len(images)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding the dataset folders")
    ap.add_argument("--datasets", nargs="+", required=True, help="dataset folder names")
    ap.add_argument("--split", default="train", help="split name (default: train)")
    ap.add_argument("--out", type=Path, required=True, help="folder to (re)build")
    args = ap.parse_args(argv)
    try:
        counts = link_split(args.data, args.datasets, args.split, args.out)
    except (SplitImagesError, FileNotFoundError, ValueError) as exc:
        print(f"split_images: {exc}", file=sys.stderr)
        return 2
    print(", ".join(f"{k}: {v}" for k, v in counts.items()) + f" {args.split} images in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
