"""``hrmedseg benchmark --models A,B --size 1024 --batch 16 --device cuda -o DIR``.

Profiles every model in one process (params, MACs, peak training memory per image and
images/s in each precision), falling back to smaller batches on out-of-memory, and writes
``DIR/benchmark.json``, ``DIR/benchmark.md`` and ``DIR/benchmark.png``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(sub, "benchmark", help="profile several models in one process; JSON, Markdown and plot")
    p.add_argument("--models", required=True, help="registered model names, comma-separated")
    p.add_argument("--size", type=int, nargs="+", default=[1024], help="input size: S or H W")
    add_batch_size(p, 16, help="asked batch (halved on out-of-memory)", dest="batch")
    add_device_argument(p)
    p.add_argument("--dtypes", default="fp32,bf16", help="autocast precisions, comma-separated")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--dice", type=Path, help="JSON {model: Dice} for a memory-vs-Dice plot")
    p.add_argument("--num-classes", type=int, default=1, help="output classes of each model")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before timing")
    p.add_argument("--iters", type=int, default=10, help="timed steps")
    p.add_argument("--min-batch", type=int, default=1, help="smallest batch tried on out-of-memory")
    p.add_argument("--no-macs", action="store_true", help="skip the MAC counts")
    p.add_argument("--model-kwargs", help='JSON {model: {create_model keywords}}, e.g. smaller variants')
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models._registry import is_model, list_models
    from ..profiling.benchmark import (benchmark_meta, format_markdown, load_dice, run_benchmark,
                                       write_benchmark)
    from ..profiling.profile import DTYPES
    from ..errors import UserError

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise UserError("--models names no model")
    unknown = [m for m in models if not is_model(m)]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; `hrmedseg models` lists all "
                        f"{len(list_models())} names")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes:
        raise UserError(f"--dtypes must be from {', '.join(sorted(DTYPES))}, got {args.dtypes!r}")
    if len(args.size) not in (1, 2) or min(args.size) <= 0:
        raise UserError(f"--size must be S or H W, got {args.size}")
    if args.batch < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch}")
    size = (args.size[0], args.size[-1])
    from ._common import device_arg
    args.device = device_arg(args.device)
    dice = None
    if args.dice is not None:
        if not args.dice.is_file():
            raise FileNotFoundError(f"{args.dice}: no such file")
        try:
            dice = load_dice(args.dice)
        except (ValueError, json.JSONDecodeError) as exc:
            raise UserError(str(exc)) from None
    kwargs = {}
    if args.model_kwargs:
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as exc:
            raise UserError(f"--model-kwargs is not JSON ({exc})") from None
    rows = run_benchmark(models, size=size, batch=args.batch, device=args.device, dtypes=dtypes,
                         warmup=args.warmup, iters=args.iters, macs=not args.no_macs,
                         min_batch=args.min_batch, model_kwargs=kwargs,
                         num_classes=args.num_classes)
    meta = benchmark_meta(args.device, size, args.batch, dtypes,
                          command=shlex.join(["hrmedseg", "benchmark", *_argv_tail()]))
    paths = write_benchmark(rows, args.out, meta, dice=dice)
    print(format_markdown(rows))
    print(f"wrote {paths['json']}, {paths['md']} and {paths['png']}")
    return 0


def _argv_tail() -> list[str]:
    argv = sys.argv[1:]
    return argv[argv.index("benchmark") + 1:] if "benchmark" in argv else argv
