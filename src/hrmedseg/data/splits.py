"""Train/val/test splits and k-fold protocols, reproducible and leak-free.

Why this module exists: published numbers depend on the split protocol. Two protocols matter here:
the seeded random split (``random.Random(seed).shuffle`` of the sorted stems, then consecutive
fractions, each split sorted) used for ``splits.json`` of Kvasir-SEG and DSB-2018, and QTSeg's
k-fold (sorted names cut into k contiguous slices; fold i is the test set). ``group_of`` maps a stem
to its group (video sequence, patient) so that no group ends up in two splits.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic

__all__ = ["Splits", "load_splits", "kfold_splits", "random_split", "write_splits"]

PathLike = str | os.PathLike
GroupFn = Callable[[str], str]


@dataclass(frozen=True)
class Splits:
    """Contents of a ``splits.json``: the three lists, optional folds, and the other keys (seed, protocol)."""

    train: list[str]
    val: list[str]
    test: list[str]
    folds: list[list[str]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        """Dict-style access with the JSON key names (``"train"``, ``"folds5"``, ``"seed"`` ...)."""
        if key in ("train", "val", "test"):
            return getattr(self, key)
        if self.folds is not None and key == f"folds{len(self.folds)}":
            return self.folds
        return self.meta[key]

    def fold(self, i: int) -> tuple[list[str], list[str]]:
        """(train, test) for fold ``i``: fold i is the test set, the other folds are training."""
        if not self.folds:
            raise ValueError("these splits have no folds")
        k = len(self.folds)
        if not 0 <= i < k:
            raise IndexError(f"fold {i} out of range for {k} folds")
        train = [s for j, f in enumerate(self.folds) if j != i for s in f]
        return train, list(self.folds[i])


def _check_disjoint(parts: Mapping[str, Sequence[str]], where: str) -> None:
    seen: dict[str, str] = {}
    for name, stems in parts.items():
        for s in stems:
            if s in seen and seen[s] != name:
                raise ValueError(f"{where}: stem {s!r} is in both {seen[s]!r} and {name!r}")
            seen[s] = name


def load_splits(json_path: PathLike) -> Splits:
    """Read a ``splits.json`` (keys ``train``/``val``/``test``, optional ``folds<k>``, other keys kept in
    ``meta``). Missing split keys give empty lists; overlapping splits raise ValueError."""
    p = Path(json_path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: unreadable splits file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a JSON object with train/val/test lists")
    lists: dict[str, list[str]] = {}
    for key in ("train", "val", "test"):
        v = data.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ValueError(f"{p}: {key!r} must be a list of stems")
        lists[key] = list(v)
    _check_disjoint(lists, str(p))
    folds = None
    fold_keys = [k for k in data if k.startswith("folds") and k[5:].isdigit()]
    if len(fold_keys) > 1:
        raise ValueError(f"{p}: several fold keys {fold_keys}")
    if fold_keys:
        folds = [list(f) for f in data[fold_keys[0]]]
        if len(folds) != int(fold_keys[0][5:]):
            raise ValueError(f"{p}: {fold_keys[0]} holds {len(folds)} folds")
        _check_disjoint({f"fold{i}": f for i, f in enumerate(folds)}, str(p))
    meta = {k: v for k, v in data.items() if k not in ("train", "val", "test", *fold_keys)}
    return Splits(lists["train"], lists["val"], lists["test"], folds, meta)


def _grouped(stems: Sequence[str], group_of: GroupFn | None) -> tuple[list[str], dict[str, list[str]]]:
    """Sorted unique group keys and their sorted members (each stem is its own group by default)."""
    if len(set(stems)) != len(stems):
        raise ValueError("stems contain duplicates")
    members: dict[str, list[str]] = {}
    for s in sorted(stems):
        members.setdefault(group_of(s) if group_of else s, []).append(s)
    return sorted(members), members


def kfold_splits(
    stems: Sequence[str], k: int, fold: int, *, group_of: GroupFn | None = None
) -> tuple[list[str], list[str]]:
    """QTSeg k-fold: sort names, cut into k contiguous slices, return (train, test) with slice ``fold``
    as test.

    Slice sizes differ by at most one, the first ``n % k`` slices being one longer (as
    ``numpy.array_split``); for 664 DSB-2018 images this gives 133/133/133/133/132. With ``group_of``
    the sorted *groups* are sliced, so a group never straddles train and test.
    """
    if k < 2:
        raise ValueError(f"k must be >= 2, got {k}")
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in [0, {k}), got {fold}")
    keys, members = _grouped(stems, group_of)
    if len(keys) < k:
        raise ValueError(f"cannot make {k} folds from {len(keys)} {'groups' if group_of else 'stems'}")
    q, r = divmod(len(keys), k)
    start = fold * q + min(fold, r)
    stop = start + q + (1 if fold < r else 0)
    test_keys = set(keys[start:stop])
    train = sorted(s for g in keys if g not in test_keys for s in members[g])
    test = sorted(s for g in keys[start:stop] for s in members[g])
    return train, test


def random_split(
    stems: Sequence[str],
    fractions: Mapping[str, float] | Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    group_of: GroupFn | None = None,
) -> dict[str, list[str]]:
    """Seeded random split: sort, ``random.Random(seed).shuffle``, cut consecutive pieces, sort each.

    Piece sizes are ``int(fraction * n)`` for all but the last piece, which takes the rest (so
    0.8/0.1/0.1 of 664 gives 531/66/67, as the shipped ``splits.json``). A sequence of three fractions
    names the pieces train/val/test, of two train/test. With ``group_of`` whole groups are shuffled and
    assigned in order until each piece reaches its target count of stems.
    """
    if isinstance(fractions, Mapping):
        names, fr = list(fractions), [float(v) for v in fractions.values()]
    else:
        fr = [float(v) for v in fractions]
        names = {3: ["train", "val", "test"], 2: ["train", "test"]}.get(len(fr), [f"split{i}" for i in range(len(fr))])
    if not fr or any(f < 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {fr}")
    keys, members = _grouped(stems, group_of)
    random.Random(seed).shuffle(keys)
    n = sum(len(m) for m in members.values())
    targets = [int(f * n) for f in fr[:-1]]
    out: dict[str, list[str]] = {name: [] for name in names}
    if group_of is None:
        pos = 0
        for name, t in zip(names[:-1], targets):
            out[name] = keys[pos: pos + t]
            pos += t
        out[names[-1]] = keys[pos:]
    else:
        piece = 0
        for g in keys:
            while piece < len(targets) and len(out[names[piece]]) >= targets[piece]:
                piece += 1
            out[names[piece]].extend(members[g])
    return {name: sorted(v) for name, v in out.items()}


def write_splits(path: PathLike, splits: Splits | Mapping[str, Any], **meta: Any) -> Path:
    """Write splits as JSON in the ``splits.json`` format, atomically.

    ``splits`` is a :class:`Splits` or a mapping such as the output of :func:`random_split`, possibly
    with ``folds`` (a list of lists, stored as ``folds<k>``); extra keyword arguments (``seed``,
    ``protocol``) are stored as metadata. Overlapping train/val/test raise ValueError.
    """
    if isinstance(splits, Splits):
        data: dict[str, Any] = {**splits.meta, "train": splits.train, "val": splits.val, "test": splits.test}
        if splits.folds is not None:
            data[f"folds{len(splits.folds)}"] = splits.folds
    else:
        data = {}
        for key, v in splits.items():
            if key == "folds":
                data[f"folds{len(v)}"] = [list(f) for f in v]
            else:
                data[key] = list(v) if isinstance(v, (list, tuple)) else v
    data.update(meta)
    _check_disjoint({k: data[k] for k in ("train", "val", "test") if k in data}, str(path))
    ordered = {k: data[k] for k in ("seed", "protocol") if k in data}
    ordered.update({k: v for k, v in data.items() if k not in ordered})
    return write_json_atomic(path, ordered, indent=1)
