"""``hrmedseg check-dataset DIR``: every problem of a dataset, errors first, the rest grouped.

Errors are listed one per file (up to ``--show`` per kind); warnings and notes are summarised
by kind with a count and a few example files, so a thousand lossy JPEG masks make one line.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_verb
    p = add_verb(sub, "check-dataset", help="verify a dataset: pairs, sizes, label values, readability")
    p.add_argument("root", help="dataset folder (images/ + masks/, nnU-Net raw 2-D or 3-D, or DRIVE layout)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="expected classes (default: infer; 3-D nnU-Net: dataset.json labels)")
    p.add_argument("--show", type=int, default=10,
                   help="errors listed per kind, and example files per warning kind")
    p.add_argument("--all", action="store_true", help="list every finding one per line")
    p.set_defaults(func=run, verb="check_dataset")


def _by_kind(problems: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for pr in sorted(problems, key=lambda p: str(p.path)):
        groups.setdefault(pr.kind, []).append(pr)
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def format_report(problems: Sequence[Any], show: int = 10, every: bool = False) -> list[str]:
    """The report's lines: errors (each file), then warnings and notes grouped by kind."""
    lines: list[str] = []
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        lines.append(f"ERRORS ({len(errors)}): these pairs cannot be trained on")
        for kind, group in _by_kind(errors).items():
            for pr in group if every else group[:show]:
                lines.append(f"  error: {pr.path}: {pr.message}")
            if not every and len(group) > show:
                lines.append(f"  ... and {len(group) - show} more {kind!r} errors (--all lists them)")
    for severity, title in (("warning", "warnings"), ("info", "notes")):
        found = [p for p in problems if p.severity == severity]
        if not found:
            continue
        lines.append(f"{title} ({len(found)}):")
        for kind, group in _by_kind(found).items():
            if every or len(group) == 1:
                lines += [f"  {severity}: {pr.path}: {pr.message}" for pr in group]
                continue
            examples = ", ".join(pr.path.name for pr in group[:min(show, 3)])
            lines.append(f"  {kind}: {len(group)} files, e.g. {examples}")
            lines.append(f"    first: {group[0].message}")
    return lines


def run(args: argparse.Namespace) -> int:
    from ..data.datasets import check_dataset, discover_pairs

    from ..errors import UserError
    try:
        index = discover_pairs(args.root)
    except ValueError as exc:  # not a dataset layout: the message says what was expected
        raise UserError(str(exc)) from None
    problems = check_dataset(args.root, num_classes=args.num_classes)
    for line in format_report(problems, args.show, args.all):
        print(line)
    errors = sum(p.severity == "error" for p in problems)
    warnings = sum(p.severity == "warning" for p in problems)
    if index.official_splits is not None:
        print("official split: " + ", ".join(f"{len(v)} {k}" for k, v in index.official_splits.items()))
    print(f"{len(index)} pairs checked: {errors} errors, {warnings} warnings, "
          f"{len(problems) - errors - warnings} notes")
    return 1 if errors else 0
