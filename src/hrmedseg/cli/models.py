"""``hrmedseg models [PATTERN]``: list registered models."""
from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_verb
    p = add_verb(sub, "models", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'hrmedseg*'")
    p.add_argument("--params", action="store_true", help="also build each model and count parameters")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models._registry import create_model, list_models, model_info
    for name in list_models(args.pattern):
        info = model_info(name)
        extra = ""
        if args.params:
            try:
                n = sum(p.numel() for p in create_model(name).parameters())
                extra = f"  {n / 1e6:8.3f} M"
            except ImportError as exc:
                extra = f"  (unavailable: {exc})"
        print(f"{name:28s}{extra}  {info.summary}")
    return 0
