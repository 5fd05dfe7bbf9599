"""Argument handling shared by several verbs."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def samples_for_split(data: str, split: str, splits: str | None) -> tuple[Any, list[Any]]:
    """The dataset index of ``data`` and its samples of ``split`` ('all' = every pair)."""
    from ..data.datasets import discover_pairs
    from ..data.splits import load_splits
    from ..errors import UserError

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
