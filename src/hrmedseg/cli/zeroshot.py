"""``hrmedseg zeroshot --encoder teacher|RUN/student --sam mobile_sam.pt --data DIR -o OUT``.

Box prompts = tight box of each ground-truth connected component; SAM's prompt encoder and mask
decoder from the checkpoint, unchanged; the image encoder is MobileSAM's TinyViT
(``teacher``) or a distilled HRMedSeg folder. Writes per_image.csv, summary.json, overlays/.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(sub, "zeroshot",
                 help="box-prompted SAM evaluation with the teacher's or a distilled encoder")
    p.add_argument("--encoder", required=True, help="'teacher' or a distilled model folder (RUN/student)")
    p.add_argument("--sam", required=True, help="SAM/MobileSAM checkpoint (prompt encoder + mask decoder)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default="test", help="split name in splits.json, or 'all'")
    p.add_argument("--splits", help="splits JSON (default DATA/splits.json)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_device_argument(p)
    add_batch_size(p, 1, help="images per encoder batch")
    p.add_argument("--size", type=int, help="SAM input size (default 1024 / the student's size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass")
    p.add_argument("--min-area", type=int, default=1, help="drop components smaller than this")
    p.add_argument("--limit", type=int, default=0,
                   help="only the first N images of the split (0 = all)")
    p.add_argument("--no-hd", action="store_true", help="skip Hausdorff distances")
    p.add_argument("--overlays", type=int, default=8, help="write this many overlay PNGs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import format_summary
    from ..experiments.zeroshot import build_zeroshot_model, evaluate_zeroshot
    from ..errors import UserError
    from ._common import device_arg, samples_for_split

    args.device = device_arg(args.device)
    index, samples = samples_for_split(args.data, args.split, args.splits)
    if args.limit:
        samples = samples[:args.limit]
    try:
        model = build_zeroshot_model(args.encoder, args.sam, args.size)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    res = evaluate_zeroshot(model, samples, args.out, device=args.device, batch_size=args.batch_size,
                            precision=args.precision, hd=not args.no_hd, overlays=args.overlays,
                            min_area=args.min_area,
                            info={"encoder": args.encoder, "sam_checkpoint": args.sam,
                                  "data": str(args.data), "split": args.split})
    print(format_summary(res, "model_resolution"))
    print(format_summary(res, "original_resolution"))
    print(f"wrote {args.out / 'per_image.csv'} and {args.out / 'summary.json'}")
    return 0
