"""Entry point of the ``hrmedseg`` command.

Each verb lives in its own module exposing ``add_parser(subparsers)`` and ``run(args)``; a verb
only parses arguments and calls library functions. Errors a user can fix (any
:class:`~hrmedseg.errors.HrmedsegError`: bad file, bad size, unknown model, ...) print one line and
exit with status 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ..errors import HrmedsegError, UserError

__all__ = ["main", "build_parser", "USER_ERRORS", "UserError"]

VERBS = ("models", "profile", "benchmark", "check_dataset", "train", "evaluate", "predict",
         "compare", "export", "serve", "distill", "zeroshot", "train_esp", "reproduce")


# Errors a user can fix: the package's own (each says the whole story in its message) and the
# operating system's for paths that are missing, of the wrong kind or not readable.
USER_ERRORS: tuple[type[BaseException], ...] = (HrmedsegError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError)


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__
    parser = argparse.ArgumentParser(
        prog="hrmedseg", description="Memory-efficient segmentation of high-resolution medical images.")
    parser.add_argument("--version", action="version", version=f"hrmedseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        # A verb whose module is not written yet is simply absent from the command line.
        if importlib.util.find_spec(f"hrmedseg.cli.{verb}") is None:
            continue
        mod = importlib.import_module(f"hrmedseg.cli.{verb}")
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("hrmedseg: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"hrmedseg {args.verb.replace('_', '-')}: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
