"""``hrmedseg evaluate MODEL --data DIR [--split test] -o OUT``.

Under ``torchrun`` (env ``WORLD_SIZE`` > 1) the evaluation is sharded: rank ``r`` evaluates
``samples[r::world]``, the per-image rows are gathered to rank 0 (``gather_object``; gloo on CPU,
NCCL on CUDA), and rank 0 alone writes ``per_image.csv`` and ``summary.json`` with every image
exactly once, in the same order and with the same summary as one process.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(sub, "evaluate", help="Dice, IoU, HD, HD95, MAE, accuracy per image and in summary")
    p.add_argument("model", help="run folder, saved model folder, or name[:pretrained-tag]")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split name in splits.json, or 'all' (default test)")
    p.add_argument("--splits", help="splits JSON (default DATA/splits.json, else the split a run "
                                    "folder MODEL drew: RUN/splits.json)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_device_argument(p)
    p.add_argument("--size", type=int, nargs="+", help="model input size (default: as trained)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass")
    add_batch_size(p, 4)
    p.add_argument("--no-hd", action="store_true", help="skip Hausdorff distances (faster)")
    p.add_argument("--ignore-empty", action="store_true",
                   help="leave images with an empty ground truth out of Dice/IoU/HD means, as "
                        "MONAI's DiceMetric does by default (otherwise: both empty = Dice 1)")
    p.add_argument("--hd95", choices=["monai", "medpy"], default="monai",
                   help="HD95 definition: monai = max of the two directed 95th percentiles; "
                        "medpy = 95th percentile of both directions pooled (medpy.metric.binary.hd95)")
    p.add_argument("--overlays", type=int, default=8, help="write this many overlay PNGs")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable pairs instead of stopping")
    p.add_argument("--axis", type=int, default=2, help="3-D cases: voxel axis to slice along")
    p.add_argument("--window", default="abdomen", help="3-D cases: CT window preset or percentile")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate_samples, format_summary
    from ..inference.segmenter import Segmenter
    from ._common import device_arg, samples_for_split

    args.device = device_arg(args.device)
    if _is_volume_dataset(Path(args.data)):
        return _run_volumes(args)
    index, samples = samples_for_split(args.data, args.split, args.splits, model=args.model)
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_sharded(args, samples, size, index.class_names)
    seg = Segmenter(args.model, device=args.device, size=size, precision=args.precision,
                    batch_size=args.batch_size)
    from ..data.io import ImageReadError
    from ..errors import UserError
    try:
        res = evaluate_samples(seg, samples, out_dir=args.out, hd=not args.no_hd,
                               overlays=args.overlays, class_names=index.class_names,
                               on_error="skip" if args.skip_bad else "raise",
                               ignore_empty=args.ignore_empty, hd95_style=args.hd95)
    except ImageReadError as exc:
        raise UserError(f"{str(exc).strip().splitlines()[0]} "
                        "(pass --skip-bad to skip unreadable pairs)") from None
    print(format_summary(res, "model_resolution"))
    print(format_summary(res, "original_resolution"))
    print(f"wrote {args.out / 'per_image.csv'} and {args.out / 'summary.json'}")
    return 0


# ---------------------------------------------------------------------------------------------
# Sharded evaluation (torchrun)
# ---------------------------------------------------------------------------------------------

def _run_sharded(args: argparse.Namespace, samples: list, size: Any, class_names: list[str] | None) -> int:

    import torch
    import torch.distributed as dist

    from ..evaluation.evaluate import evaluate_rows, format_summary, summarize_rows, write_results
    from ..inference.segmenter import Segmenter

    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    device = args.device
    if want_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but no CUDA device is available")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", rank=rank, world_size=world)
        created = True
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        seg = Segmenter(args.model, device=device, size=size, precision=args.precision,
                        batch_size=args.batch_size)
        indexed = list(enumerate(samples))[rank::world]
        # overlays are written by whichever rank evaluates each of the first N images
        out = args.out if args.overlays > 0 else None
        local_result = evaluate_rows(seg, indexed, not args.no_hd, class_names,
                                     "skip" if args.skip_bad else "raise", out, args.overlays,
                                     progress=rank == 0, ignore_empty=args.ignore_empty,
                                     hd95_style=args.hd95)
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(local_result, gathered, dst=0)
        if rank == 0:
            assert gathered is not None
            rows = [r for g in gathered for r in g[0]]
            rows_model = [r for g in gathered for r in g[1]]
            skipped = [r for g in gathered for r in g[2]]
            stems = [r["stem"] for _, r in rows]
            if len(stems) != len(set(stems)) or len(stems) + len(skipped) != len(samples):
                raise RuntimeError(f"sharded evaluation gathered {len(stems)} rows for {len(samples)} images")
            summary = summarize_rows(rows, rows_model, skipped, args.ignore_empty, args.hd95)
            write_results(args.out, rows, rows_model, summary)
            print(format_summary(summary, "model_resolution"))
            print(format_summary(summary, "original_resolution"))
            print(f"wrote {args.out / 'per_image.csv'} and {args.out / 'summary.json'} "
                  f"({len(rows)} images over {world} processes)")
        dist.barrier()
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _is_volume_dataset(root: Path) -> bool:
    """nnU-Net raw layout whose images are 3-D NIfTI volumes."""
    return (root / "imagesTr").is_dir() and any((root / "imagesTr").glob("*.nii*")) and \
        (root / "labelsTr").is_dir()


def _run_volumes(args: argparse.Namespace) -> int:
    from ..data.splits import load_splits
    from ..evaluation.evaluate_volumes import evaluate_volume_cases
    from ..inference.segmenter import Segmenter
    from ..data.volume_slices import discover_volume_cases, read_label_names

    root = Path(args.data)
    cases = discover_volume_cases(root)
    if args.split != "all":
        sp = Path(args.splits) if args.splits else root / "splits.json"
        if not sp.is_file():
            raise FileNotFoundError(f"{sp}: no splits file; pass --splits or --split all")
        want = set(load_splits(sp)[args.split])
        cases = [c for c in cases if c.case in want]
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    seg = Segmenter(args.model, device=args.device, size=size, precision=args.precision,
                    batch_size=args.batch_size)
    res = evaluate_volume_cases(seg, cases, read_label_names(root), args.out, axis=args.axis,
                                window=args.window, batch_size=args.batch_size, hd=not args.no_hd)
    print(res["table2"])
    print(f"wrote {args.out / 'per_case.csv'}, {args.out / 'table2.md'} and {args.out / 'summary.json'}")
    return 0
