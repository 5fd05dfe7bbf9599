"""Tests for hrmedseg.data.splits: file format, QTSeg k-fold, seeded random split, groups."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hrmedseg.data.splits import Splits, kfold_splits, load_splits, random_split, write_splits

DATA = Path("/work/shared/data")
STEMS = [f"img{i:03d}" for i in range(23)]


def test_kfold_contiguous_balanced_slices() -> None:
    shuffled = list(reversed(STEMS))
    tests = [kfold_splits(shuffled, 5, f)[1] for f in range(5)]
    assert [len(t) for t in tests] == [5, 5, 5, 4, 4]
    assert sum(tests, []) == sorted(STEMS)  # contiguous slices of the sorted names, in order
    for f in range(5):
        train, test = kfold_splits(shuffled, 5, f)
        assert not set(train) & set(test) and sorted(train + test) == sorted(STEMS)
    with pytest.raises(ValueError):
        kfold_splits(STEMS, 5, 5)
    with pytest.raises(ValueError):
        kfold_splits(STEMS[:3], 5, 0)


def test_random_split_sizes_and_determinism() -> None:
    a = random_split(STEMS, (0.8, 0.1, 0.1), seed=3)
    assert [len(a[k]) for k in ("train", "val", "test")] == [18, 2, 3]
    assert a == random_split(list(reversed(STEMS)), (0.8, 0.1, 0.1), seed=3)  # input order irrelevant
    assert a != random_split(STEMS, (0.8, 0.1, 0.1), seed=4)
    assert all(v == sorted(v) for v in a.values())
    b = random_split(STEMS, {"fit": 0.5, "hold": 0.5}, seed=0)
    assert set(b) == {"fit", "hold"} and len(b["fit"]) == 11
    with pytest.raises(ValueError):
        random_split(STEMS, (0.5, 0.2))


def test_group_splits_never_share_a_group() -> None:
    stems = [f"seq{g}_frame{i}" for g in range(7) for i in range(g + 2)]

    def group(s: str) -> str:
        return s.split("_")[0]

    sp = random_split(stems, (0.6, 0.2, 0.2), seed=1, group_of=group)
    groups = [{group(s) for s in sp[k]} for k in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sorted(sum(sp.values(), [])) == sorted(stems)
    for f in range(3):
        train, test = kfold_splits(stems, 3, f, group_of=group)
        assert not {group(s) for s in train} & {group(s) for s in test}
        assert sorted(train + test) == sorted(stems)


def test_write_and_load_roundtrip(tmp_path: Path) -> None:
    sp = random_split(STEMS, (0.8, 0.1, 0.1), seed=0)
    folds = [kfold_splits(STEMS, 5, f)[1] for f in range(5)]
    p = write_splits(tmp_path / "splits.json", {**sp, "folds": folds}, seed=0, protocol="test")
    raw = json.loads(p.read_text())
    assert list(raw)[:2] == ["seed", "protocol"] and "folds5" in raw
    loaded = load_splits(p)
    assert isinstance(loaded, Splits) and loaded.train == sp["train"] and loaded["test"] == sp["test"]
    assert loaded.meta == {"seed": 0, "protocol": "test"} and loaded["folds5"] == folds
    train, test = loaded.fold(2)
    assert test == folds[2] and sorted(train + test) == sorted(STEMS)
    write_splits(tmp_path / "again.json", loaded)
    assert load_splits(tmp_path / "again.json") == loaded
    with pytest.raises(ValueError, match="both"):
        write_splits(tmp_path / "bad.json", {"train": ["a"], "val": ["a"], "test": []})
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError):
        load_splits(tmp_path / "broken.json")


@pytest.mark.parametrize("name", ["kvasir-seg", "dsb2018"])
def test_reproduces_shipped_splits(name: str) -> None:
    path = DATA / name / "splits.json"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    sp = load_splits(path)
    stems = sorted(sp.train + sp.val + sp.test)
    again = random_split(stems, (0.8, 0.1, 0.1), seed=sp.meta["seed"])
    assert (again["train"], again["val"], again["test"]) == (sp.train, sp.val, sp.test)
    if sp.folds is not None:
        assert [kfold_splits(stems, len(sp.folds), f)[1] for f in range(len(sp.folds))] == sp.folds
