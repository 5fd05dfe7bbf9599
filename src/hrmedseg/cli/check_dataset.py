"""``hrmedseg check-dataset DIR``: list every problem of a dataset with its file."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_verb
    p = add_verb(sub, "check-dataset", help="verify a dataset: pairs, sizes, label values, readability")
    p.add_argument("root", help="dataset folder (images/ + masks/, nnU-Net raw or DRIVE layout)")
    p.add_argument("--num-classes", type=int, default=None, help="expected classes (default: infer)")
    p.set_defaults(func=run, verb="check_dataset")


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import check_dataset, discover_pairs

    from .main import UserError
    try:
        index = discover_pairs(args.root)
    except ValueError as exc:  # not a dataset layout: the message says what was expected
        raise UserError(str(exc)) from None
    problems = check_dataset(args.root, num_classes=args.num_classes)
    order = {"error": 0, "warning": 1, "info": 2}
    for pr in sorted(problems, key=lambda p: (order.get(p.severity, 3), str(p.path))):
        print(str(pr))
    errors = sum(p.severity == "error" for p in problems)
    warnings = sum(p.severity == "warning" for p in problems)
    if index.official_splits is not None:
        print("official split: " + ", ".join(f"{len(v)} {k}" for k, v in index.official_splits.items()))
    print(f"{len(index)} pairs checked: {errors} errors, {warnings} warnings, "
          f"{len(problems) - errors - warnings} notes")
    return 1 if errors else 0
