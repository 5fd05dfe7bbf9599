"""``hrmedseg evaluate MODEL --data DIR [--split test] -o OUT``."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="Dice, IoU, HD, HD95, MAE, accuracy per image and in summary")
    p.add_argument("model", help="run folder, saved model folder, or name[:pretrained-tag]")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split name in splits.json, or 'all' (default test)")
    p.add_argument("--splits", help="splits JSON (default DATA/splits.json)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, nargs="+", help="model input size (default: as trained)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--no-hd", action="store_true", help="skip Hausdorff distances (faster)")
    p.add_argument("--overlays", type=int, default=8, help="write this many overlay PNGs")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable pairs instead of stopping")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import discover_pairs
    from ..data.splits import load_splits
    from ..evaluation.evaluate import evaluate_samples, format_summary
    from ..inference.segmenter import Segmenter

    from .main import UserError
    try:
        index = discover_pairs(args.data)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    samples = list(index.samples)
    if args.split != "all":
        sp = Path(args.splits) if args.splits else Path(args.data) / "splits.json"
        if not sp.is_file():
            raise FileNotFoundError(f"{sp}: no splits file; pass --splits or --split all")
        samples = index.subset(list(load_splits(sp)[args.split]))
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    seg = Segmenter(args.model, device=args.device, size=size, precision=args.precision,
                    batch_size=args.batch_size)
    res = evaluate_samples(seg, samples, out_dir=args.out, hd=not args.no_hd, overlays=args.overlays,
                           class_names=index.class_names,
                           on_error="skip" if args.skip_bad else "raise")
    print(format_summary(res, "model_resolution"))
    print(format_summary(res, "original_resolution"))
    print(f"wrote {args.out / 'per_image.csv'} and {args.out / 'summary.json'}")
    return 0
