"""``hrmedseg reproduce``: the papers' table rows at their own protocols.

``--list`` prints the catalogue; ``ROW --data DIR -o OUT`` trains and tests every seed/fold of
one row (rerun the same command to continue; ``--time-limit-min`` bounds one call) and writes
``OUT/ROW.json`` when all are done; ``--report`` regenerates ``docs/reproductions.md`` from the
result files alone.
"""
from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_device_argument, add_verb
    p = add_verb(
        sub, "reproduce", help="reproduce a paper's table row at its protocol (--list, --report)",
        description="Reproduce the papers' table rows at their own protocols. Rerun the same "
                    "command to continue an interrupted or time-limited run.")
    p.add_argument("row", nargs="?", help="row id (see --list)")
    p.add_argument("--list", action="store_true", help="print every reproducible row")
    p.add_argument("--report", action="store_true",
                   help="write the reproductions page from the result files")
    p.add_argument("--results", default=None,
                   help="result files for --report (default benchmarks/results/reproductions)")
    p.add_argument("--data", help="folder holding the row's dataset folders (e.g. dsb2018/, drive/)")
    p.add_argument("-o", "--out", help="output folder: runs/ and ROW.json (for --report: the page, "
                                       "default docs/reproductions.md)")
    p.add_argument("--time-limit-min", type=float, default=None,
                   help="stop this call after about this many minutes of training; rerun to continue")
    add_device_argument(p)
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run these seeds (folds, for a fold row) instead of the row's own")
    p.add_argument("--weights", help="folder with mobile_sam.pt for ESP-MedSAM rows "
                                     "(default: DATA/../weights)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                   help="change the row's training configuration (the result states what ran)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import (DEFAULT_RESULTS_DIR, format_list, list_rows, run_row,
                                         write_report)
    from ..errors import UserError
    from ._common import device_arg

    if args.list:
        print(format_list(list_rows()))
        return 0
    if args.report:
        out = write_report(args.results or DEFAULT_RESULTS_DIR, args.out or "docs/reproductions.md")
        print(f"wrote {out}")
        return 0
    if not args.row:
        raise UserError("give a row id (hrmedseg reproduce --list shows them), --list or --report")
    if not args.data or not args.out:
        raise UserError(f"reproduce {args.row}: --data DIR and -o OUT are required")
    if args.time_limit_min is not None and args.time_limit_min <= 0:
        raise UserError("--time-limit-min must be > 0")
    # Checked before any run folder exists; the runs resolve "auto" themselves.
    device_arg(args.device)
    status = run_row(args.row, args.data, args.out, time_limit_min=args.time_limit_min,
                     device=args.device, seeds=args.seeds, overrides=args.set,
                     weights_dir=args.weights)
    if status["result"]:
        print(f"{status['row']}: all {status['total']} runs done; result {status['result']}")
    else:
        print(f"{status['row']}: {status['done']} of {status['total']} runs done; "
              f"rerun the same command to continue", file=sys.stderr)
    return 0
