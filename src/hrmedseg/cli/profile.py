"""``hrmedseg profile MODEL ...``: parameters, MACs, peak training memory, images/s."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(sub, "profile", help="parameters, MACs, peak training memory and throughput")
    p.add_argument("models", help="registered model name(s), comma-separated")
    p.add_argument("--size", type=int, nargs="+", default=[1024], help="input size: S or H W")
    add_batch_size(p, 16, help="images per training step", dest="batch")
    add_device_argument(p)
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the step")
    p.add_argument("--num-classes", type=int, default=1, help="output classes of the model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--iters", type=int, default=10, help="timed steps")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the heavy blocks in backward instead of storing them")
    p.add_argument("--checkpoint-fraction", type=float, default=None, metavar="FRACTION",
                   help="gradient checkpointing of only FRACTION (0, 1] of the encoder's "
                        "blocks, spread evenly (HRMedSeg family; implies --grad-checkpointing)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the step")
    p.add_argument("--no-macs", action="store_true", help="skip the MAC counts")
    p.add_argument("--no-speed", action="store_true", help="skip timing (params/MACs/memory only)")
    p.add_argument("--json", type=Path, help="write results (a list) to this JSON file")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model config overrides, e.g. pool_impl=separable embed_dim=48")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_json_atomic
    from ..profiling import format_table, profile_model

    from ._common import device_arg, parse_set
    args.device = device_arg(args.device)
    size = tuple(args.size) if len(args.size) == 2 else (args.size[0], args.size[0])
    overrides = parse_set(args.set)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = profile_model(name, size=size, batch=args.batch, device=args.device, dtype=args.dtype,
                          warmup=args.warmup, iters=args.iters, macs=not args.no_macs,
                          speed=not args.no_speed,
                          grad_checkpointing=(args.grad_checkpointing
                                              or args.checkpoint_fraction is not None),
                          checkpoint_fraction=(1.0 if args.checkpoint_fraction is None
                                               else args.checkpoint_fraction),
                          channels_last=args.channels_last, num_classes=args.num_classes,
                          **overrides)
        results.append(r)
        print(json.dumps({k: v for k, v in r.to_dict().items() if k not in ("notes", "env")}))
    print(format_table(results))
    if args.json:
        write_json_atomic(args.json, [r.to_dict() for r in results])
        print(f"wrote {args.json}")
    return 0
