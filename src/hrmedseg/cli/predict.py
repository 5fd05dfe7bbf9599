"""``hrmedseg predict MODEL INPUTS... -o OUT``: masks and overlays for files or folders."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="segment image files or folders, writing mask and overlay PNGs")
    p.add_argument("model", help="run folder, saved model folder, or name[:pretrained-tag]")
    p.add_argument("inputs", nargs="*", help="image files and/or folders")
    p.add_argument("--samples", action="store_true",
                   help="use the CC0 DSB-2018 sample images shipped in the package (with their masks as --gt)")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, nargs="+", help="model input size (default: as trained)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--gt", type=Path, help="a ground-truth mask (single input) or a folder of masks "
                                           "with matching stems: print Dice/IoU against it")
    p.add_argument("--no-overlay", action="store_true")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files instead of stopping")
    p.set_defaults(func=run)


def _collect(inputs: list[str]) -> list[Path]:
    from ..data.io import is_image_file
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return files


def sample_dir() -> Path:
    """The shipped sample images (DSB-2018 test split, CC0)."""
    from importlib import resources
    return Path(str(resources.files("hrmedseg") / "samples" / "dsb2018"))


def _gt_for(gt: Path | None, image: Path, single: bool) -> Path | None:
    if gt is None:
        return None
    if gt.is_file() and single:
        return gt
    if gt.is_dir():
        for cand in sorted(gt.glob(image.stem + ".*")) + sorted(gt.glob(image.stem + "_mask.*")):
            return cand
    return None


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.io import ImageReadError, read_image, read_mask, write_image_png, write_mask_png
    from ..evaluation.metrics import dice, iou
    from ..inference.segmenter import Segmenter
    from ..inference.visualize import prediction_overlay

    if args.samples:
        root = sample_dir()
        args.inputs = list(args.inputs) + [str(root / "images")]
        args.gt = args.gt or root / "masks"
    if not args.inputs:
        raise FileNotFoundError("no inputs: give image files/folders, or --samples")
    files = _collect(args.inputs)
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    seg = Segmenter(args.model, device=args.device, size=size, precision=args.precision,
                    batch_size=args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    n_ok, n_bad = 0, 0
    bar = tqdm(files, unit="img", desc="predict", disable=len(files) < 2)
    for f in bar:
        try:
            img = read_image(f)
        except ImageReadError as exc:
            if not args.skip_bad:
                raise
            bar.write(f"skipped: {exc}")
            n_bad += 1
            continue
        pred = seg.predict_arrays([img], [str(f)])[0]
        scale = 255 if seg.num_classes <= 2 else 1
        write_mask_png(args.out / f"{f.stem}_mask.png", (pred.labels * scale).astype("uint8")
                       if scale != 1 else pred.labels)
        gt_path = _gt_for(args.gt, f, len(files) == 1)
        gt = read_mask(gt_path) if gt_path else None
        if not args.no_overlay:
            write_image_png(args.out / f"{f.stem}_overlay.png", prediction_overlay(img, pred.labels, gt))
        msg = f"{f.name}: {pred.labels.shape[1]}x{pred.labels.shape[0]}, foreground {100 * (pred.labels > 0).mean():.1f}%"
        if gt is not None:
            msg += f", Dice {100 * dice(pred.labels > 0, gt > 0):.2f}, IoU {100 * iou(pred.labels > 0, gt > 0):.2f} vs {gt_path.name}"
        (bar.write if len(files) > 1 else print)(msg)
        n_ok += 1
    print(f"wrote {n_ok} masks{'' if args.no_overlay else ' and overlays'} to {args.out}"
          + (f" ({n_bad} skipped)" if n_bad else ""))
    return 0
