"""Argument handling shared by several verbs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" after every option's help, except where there is nothing to show
    (flags, options without a default) or the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # Identity for None/False/SUPPRESS: a default of 0 (== False) is still shown.
        if any(action.default is d for d in (None, False, argparse.SUPPRESS)) \
                or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


def add_verb(sub: argparse._SubParsersAction, name: str, help: str, **kwargs: Any
             ) -> argparse.ArgumentParser:
    """A verb's parser: its help line doubles as the description, and defaults are shown."""
    kwargs.setdefault("description", help)
    return sub.add_parser(name, help=help, formatter_class=DefaultsHelpFormatter, **kwargs)


def add_device_argument(p: argparse.ArgumentParser, default: str | None = "auto",
                        note: str = "") -> None:
    """``--device`` with the one rule of :mod:`hrmedseg.devices`; resolve it with :func:`device_arg`.
    ``note`` is appended to the help (e.g. what an absent ``--device`` means)."""
    from ..devices import DEVICE_HELP
    p.add_argument("--device", default=default, help=f"{DEVICE_HELP}{'; ' + note if note else ''}")


def device_arg(spec: str, name: str = "--device") -> str:
    """Checked ``--device`` value as a torch device string ("cpu", "cuda", "cuda:1", "mps");
    a malformed or unavailable device is a one-line :class:`UserError` (exit 2). ``name`` is how
    the user gave it when not as ``--device`` (e.g. ``train.device``), for the message."""
    from ..devices import DeviceError, parse_device
    from ..errors import UserError
    try:
        return str(parse_device(spec))
    except DeviceError as exc:
        msg = str(exc)
        if name != "--device":
            msg = msg.replace("--device ", f"{name}=")
            msg = msg if name in msg else f"{name}: {msg}"
        raise UserError(msg) from None


def add_batch_size(p: argparse.ArgumentParser, default: int, help: str = "images per forward",
                   dest: str = "batch_size") -> None:
    """``--batch-size`` in every verb; ``--batch`` stays accepted but is not listed."""
    p.add_argument("--batch-size", dest=dest, type=int, default=default, metavar="N", help=help)
    p.add_argument("--batch", dest=dest, type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def samples_for_split(data: str, split: str, splits: str | None, model: str | None = None
                      ) -> tuple[Any, list[Any]]:
    """The dataset index of ``data`` and its samples of ``split`` ('all' = every pair): from
    ``splits`` or ``DATA/splits.json``; where there is neither and ``model`` is a run folder, the
    split that run drew (``RUN/splits.json``)."""
    from ..data.datasets import discover_pairs
    from ..data.splits import load_splits
    from ..errors import UserError

    drawn = _run_split_samples(model, data, split) \
        if model and split != "all" and not splits and not (Path(data) / "splits.json").is_file() else None
    if drawn is not None:
        return drawn
    try:
        index = discover_pairs(data)
    except ValueError as exc:  # not a dataset layout: the message says what was expected
        raise UserError(str(exc)) from None
    samples = list(index.samples)
    if split != "all":
        sp = Path(splits) if splits else Path(data) / "splits.json"
        official = getattr(index, "official_splits", None)
        if not sp.is_file() and not splits and official and split in official:
            return index, index.subset(list(official[split]))   # e.g. DRIVE's training/ + test/
        if not sp.is_file():
            raise FileNotFoundError(f"{sp}: no splits file; pass --splits or --split all")
        samples = index.subset(list(load_splits(sp)[split]))
    return index, samples


def _run_split_samples(model: str, data: str, split: str) -> tuple[Any, list[Any]] | None:
    """The samples of ``split`` that the run folder ``model`` drew on ``data`` (None: not a run)."""
    from ..data.datasets import discover_pairs
    from ..errors import UserError
    from ..training.data_setup import run_splits
    if not Path(model).is_dir():
        return None
    drawn = run_splits(model, data)
    if drawn is None:
        return None
    if split not in drawn:
        raise UserError(f"{model}: the run drew train/val/test, not {split!r}")
    index = discover_pairs(data)
    return index, index.subset(drawn[split])


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE ...`` → model overrides; a VALUE that parses as JSON (numbers, lists,
    true/false) is taken as such, anything else as a string."""
    import json

    from ..errors import UserError

    overrides: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    return overrides
