"""Tests for hrmedseg.data.datasets: discovery, checks, the torch dataset and the pre-resize cache."""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrmedseg.data.datasets import (
    PreResizeCache,
    Sample,
    SegmentationDataset,
    build_cache,
    check_dataset,
    discover_pairs,
)
from hrmedseg.data.io import ImageReadError

DATA = Path("/work/shared/data")


def _img(path: Path, h: int = 24, w: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _mask(path: Path, h: int = 24, w: int = 32, value: int = 255, empty: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    if not empty:
        m[4:12, 6:20] = value
    Image.fromarray(m).save(path)
    return path


# ----------------------------------------------------------------------------- discovery
def test_discover_folder_layout_with_suffixes(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "b.png")
    _img(tmp_path / "images" / "a.jpg")
    _img(tmp_path / "images" / "c.bmp")
    _img(tmp_path / "images" / "lonely.png")
    _img(tmp_path / "images" / ".hidden.png")
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    _mask(tmp_path / "masks" / "a_mask.png")
    _mask(tmp_path / "masks" / "b_Segmentation.gif")
    _mask(tmp_path / "masks" / "c.png")
    _mask(tmp_path / "masks" / "orphan.png")
    idx = discover_pairs(tmp_path)
    assert idx.layout == "folder" and idx.class_names is None
    assert [s.stem for s in idx] == ["a", "b", "c"] and len(idx) == 3
    assert idx[0] == Sample("a", tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a_mask.png")
    assert [p.name for p in idx.unpaired_images] == ["lonely.png"]
    assert [p.name for p in idx.unpaired_masks] == ["orphan.png"]
    assert idx.subset(["c", "a"])[0].stem == "c"
    with pytest.raises(KeyError):
        idx.subset(["zzz"])


def test_discover_duplicates_and_errors(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "x.png")
    _img(tmp_path / "images" / "x.jpg")
    _img(tmp_path / "images" / "y.png")
    _mask(tmp_path / "masks" / "x.png")
    _mask(tmp_path / "masks" / "y.png")
    _mask(tmp_path / "masks" / "y_mask.png")
    idx = discover_pairs(tmp_path)
    assert idx.samples == [] and set(idx.duplicates) == {"x", "y"}
    with pytest.raises(FileNotFoundError):
        discover_pairs(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="layout"):
        discover_pairs(tmp_path / "other")


def test_discover_nnunet_layout(tmp_path: Path) -> None:
    root = tmp_path / "Dataset001_Test"
    meta = {"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 2, "oedema": 1},
            "numTraining": 2, "file_ending": ".png"}
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps(meta))
    for case in ("case_002", "case_001"):
        for ch in (0, 1):
            Image.fromarray(np.full((8, 10), 10 * ch, np.uint8)).save(
                _img(root / "imagesTr" / f"{case}_{ch:04d}.png", 8, 10))
        _mask(root / "labelsTr" / f"{case}.png", 8, 10, value=2)
    _img(root / "imagesTr" / "case_003_0000.png", 8, 10)  # no label
    idx = discover_pairs(root)
    assert idx.layout == "nnunet"
    assert idx.class_names == ["background", "oedema", "tumour"] and idx.channel_names == ["T1", "T2"]
    assert idx.stems == ["case_001", "case_002"]
    s = idx[0]
    assert s.image_path.name == "case_001_0000.png" and [p.name for p in s.extra_channels] == ["case_001_0001.png"]
    assert s.mask_path.name == "case_001.png"
    assert [p.name for p in idx.unpaired_images] == ["case_003_0000.png"]
    ds = SegmentationDataset(idx, num_classes=3, in_chans=2, normalization="none")
    item = ds[0]
    assert item["image"].shape == (2, 8, 10)
    assert torch.allclose(item["image"][1], torch.full((8, 10), 10 / 255))
    assert set(item["mask"].unique().tolist()) == {0, 2}


# ----------------------------------------------------------------------------- checks
def _messy_dataset(root: Path) -> None:
    import tifffile

    _img(root / "images" / "ok.png")
    _mask(root / "masks" / "ok.png")
    _img(root / "images" / "corrupt.png")
    data = (root / "images" / "corrupt.png").read_bytes()
    (root / "images" / "corrupt.png").write_bytes(data[: len(data) // 2])
    _mask(root / "masks" / "corrupt.png")
    _img(root / "images" / "small.png")
    _mask(root / "masks" / "small.png", 12, 16)
    _img(root / "images" / "label17.png")
    m = np.zeros((24, 32), np.uint8)
    m[2:8, 2:8] = 255
    m[10, 10:13] = 17
    Image.fromarray(m).save(root / "masks" / "label17.png")
    _img(root / "images" / "jpeg.png")
    noisy = np.zeros((24, 32), np.uint8)
    noisy[6:18, 8:24] = 255
    Image.fromarray(noisy).save(root / "masks" / "jpeg_mask.jpg", quality=60)
    _img(root / "images" / "empty.png")
    _mask(root / "masks" / "empty.png", empty=True)
    tifffile.imwrite(root / "images" / "deep.tif", np.full((24, 32), 1000, np.uint16))
    _mask(root / "masks" / "deep.png")
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 3] = 255
    Image.fromarray(rgba).save(root / "images" / "rgba.png")
    _mask(root / "masks" / "rgba.png")
    _img(root / "images" / "nomask.png")
    _mask(root / "masks" / "noimage.png")
    _img(root / "images" / "dup.png")
    _img(root / "images" / "dup.jpg")
    _mask(root / "masks" / "dup.png")


def test_check_dataset_reports_everything(tmp_path: Path) -> None:
    _messy_dataset(tmp_path)
    problems = check_dataset(tmp_path, progress=False)
    by = {}
    for p in problems:
        by.setdefault(Path(p.path).name, []).append(p)
    text = "\n".join(str(p) for p in problems)

    def has(name: str, severity: str, *words: str) -> bool:
        return any(p.severity == severity and all(w in p.message for w in words) for p in by.get(name, []))

    assert has("corrupt.png", "error", "truncated"), text
    assert has("small.png", "error", "12x16"), text
    assert has("label17.png", "error", "17 (3 px)"), text
    assert has("jpeg_mask.jpg", "info", "JPEG") or has("jpeg_mask.jpg", "warning", "JPEG"), text
    assert has("empty.png", "warning", "empty mask"), text
    assert has("deep.tif", "warning", "16-bit"), text
    assert has("rgba.png", "info", "alpha"), text
    assert has("nomask.png", "error", "no matching mask"), text
    assert has("noimage.png", "error", "no matching image"), text
    assert any("duplicate stem 'dup'" in p.message for p in problems), text
    assert not by.get("ok.png"), text
    assert all(str(p).count("\n") == 0 for p in problems)


def test_check_dataset_multiclass_and_bad_root(tmp_path: Path) -> None:
    _img(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a.png", value=2)
    _img(tmp_path / "images" / "b.png")
    _mask(tmp_path / "masks" / "b.png", value=5)
    problems = check_dataset(tmp_path, num_classes=3, progress=False)
    assert len(problems) == 1 and "outside 0..2" in problems[0].message and "5 (112 px)" in problems[0].message
    assert check_dataset(tmp_path, num_classes=6, progress=False) == []
    bad = check_dataset(tmp_path / "missing")
    assert len(bad) == 1 and bad[0].severity == "error"


# ----------------------------------------------------------------------------- torch dataset
def _pairs(root: Path, n: int = 4, h: int = 24, w: int = 32) -> list[Sample]:
    for i in range(n):
        _img(root / "images" / f"s{i}.png", h, w, seed=i)
        _mask(root / "masks" / f"s{i}.png", h, w)
    return list(discover_pairs(root))


def test_dataset_items_and_transform(tmp_path: Path) -> None:
    from hrmedseg.data.transforms import eval_transform

    samples = _pairs(tmp_path)
    ds = SegmentationDataset(samples, eval_transform((16, 20)), num_classes=1, in_chans=3)
    item = ds[1]
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 20)
    assert item["mask"].dtype == torch.long and item["mask"].shape == (16, 20)
    assert set(item["mask"].unique().tolist()) == {0, 1}
    assert item["stem"] == "s1" and item["orig_size"] == (24, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["image"].shape == (2, 3, 16, 20) and batch["stem"] == ["s0", "s1"]
    gray = SegmentationDataset(samples, None, num_classes=1, in_chans=1, normalization="minmax")[0]
    assert gray["image"].shape == (1, 24, 32) and float(gray["image"].min()) == 0.0


def test_dataset_label_check_and_on_error(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    samples = _pairs(tmp_path)
    bad = samples[1].image_path
    bad.write_bytes(bad.read_bytes()[:100])
    strict = SegmentationDataset(samples, num_classes=1)
    with pytest.raises(ImageReadError, match="s1.png"):
        strict[1]
    lenient = SegmentationDataset(samples, num_classes=1, on_error="skip")
    with caplog.at_level(logging.WARNING, logger="hrmedseg.data.datasets"):
        item = lenient[1]
    assert item["stem"] == "s2"  # deterministic substitute: the next readable index
    assert len(caplog.records) == 1 and "s1.png" in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()
    assert lenient[1]["stem"] == "s2" and len(caplog.records) == 1  # logged once
    Image.fromarray(np.full((24, 32), 3, np.uint8)).save(samples[0].mask_path)
    with pytest.raises(ImageReadError, match="binary model"):
        SegmentationDataset(samples, num_classes=1)[0]
    assert SegmentationDataset(samples, num_classes=4)[0]["mask"].max() == 3


# ----------------------------------------------------------------------------- cache
def test_build_cache_roundtrip_and_staleness(tmp_path: Path) -> None:
    from hrmedseg.data.transforms import eval_transform

    samples = _pairs(tmp_path / "data", n=3, h=40, w=60)
    cdir = tmp_path / "cache"
    cache = build_cache(samples, (20, 30), cdir)
    assert isinstance(cache, PreResizeCache) and len(cache) == 3 and cache.size == (20, 30)
    manifest = json.loads((cdir / "manifest.json").read_text())
    assert manifest["size"] == [20, 30] and set(manifest["entries"]) == {"s0", "s1", "s2"}
    img, mask, orig = cache.load("s0")
    assert img.dtype == np.uint8 and img.shape == (20, 30, 3) and mask.shape == (20, 30) and orig == (40, 60)
    assert set(np.unique(mask)) == {0, 1}
    cached = SegmentationDataset(samples, eval_transform((20, 30)), 1, 3, cache=cache)[0]
    direct = SegmentationDataset(samples, eval_transform((20, 30)), 1, 3)[0]
    assert cached["orig_size"] == direct["orig_size"] == (40, 60)
    assert torch.equal(cached["mask"], direct["mask"])
    assert (cached["image"] - direct["image"]).abs().max() < 0.05

    before = {e: os.stat(cdir / v["image_file"]).st_mtime_ns for e, v in manifest["entries"].items()}
    time.sleep(0.01)
    _img(samples[1].image_path, 40, 60, seed=99)  # source changed -> only this entry is rebuilt
    assert not cache.is_fresh(samples[1]) and cache.is_fresh(samples[0])
    stale_item = SegmentationDataset(samples, eval_transform((20, 30)), 1, 3, cache=cache)[1]
    fresh_item = SegmentationDataset(samples, eval_transform((20, 30)), 1, 3)[1]
    assert torch.equal(stale_item["image"], fresh_item["image"])  # stale entry not used
    build_cache(samples, (20, 30), cdir)
    after = json.loads((cdir / "manifest.json").read_text())["entries"]
    changed = {e for e, v in after.items() if os.stat(cdir / v["image_file"]).st_mtime_ns != before[e]}
    assert changed == {"s1"}
    assert PreResizeCache(cdir).is_fresh(samples[1])
    resized = build_cache(samples, 16, cdir)  # new size -> everything rebuilt
    assert resized.size == (16, 16) and resized.load("s2")[0].shape == (16, 16, 3)
    t0 = time.perf_counter()
    for _ in range(30):
        resized.load("s0")
    assert time.perf_counter() - t0 < 1.0


def test_cached_load_is_memory_mapped_and_equals_decode(tmp_path: Path) -> None:
    samples = _pairs(tmp_path / "data", n=2, h=20, w=30)
    cache = build_cache(samples, (20, 30), tmp_path / "cache")   # the training size: stored as decoded
    cached = SegmentationDataset(samples, cache=cache)
    direct = SegmentationDataset(samples)
    for s in samples:
        img, mask, orig = cached._load(s)
        ref_img, ref_mask, ref_orig = direct._load(s)
        for arr, ref in ((img, ref_img), (mask, ref_mask)):
            assert isinstance(arr, np.memmap) or isinstance(arr.base, np.memmap)
            assert not arr.flags.writeable
            assert arr.dtype == ref.dtype and np.array_equal(arr, ref)
        assert orig == ref_orig == (20, 30)


@pytest.mark.parametrize("output", ["uint8", "float32"])
@pytest.mark.parametrize("grey", [False, True])
def test_cached_training_batch_equals_uncached(tmp_path: Path, output: str, grey: bool) -> None:
    from hrmedseg.data.datasets import collate_segmentation
    from hrmedseg.data.transforms import eval_transform, train_transform
    from hrmedseg.training.sampler import SeededDataset

    samples = _pairs(tmp_path / "data", n=4, h=24, w=24)
    if grey:   # one channel on disk, three for the model: the repeat path
        for s in samples:
            Image.open(s.image_path).convert("L").save(s.image_path)
    cdir = tmp_path / "cache"
    cache = build_cache(samples, 24, cdir)
    stored = {f: (cdir / f).read_bytes() for f in os.listdir(cdir) if f.endswith(".npy")}
    images = []
    for tf in (train_transform(24, "strong"), eval_transform(24), None):
        batches = []
        for c in (cache, None):
            ds = SeededDataset(SegmentationDataset(samples, tf, 1, 3, c, output=output), seed=7)
            batches.append(collate_segmentation([ds[(i, 3)] for i in range(len(samples))]))
        with_cache, from_source = batches
        assert with_cache["image"].dtype == (torch.uint8 if output == "uint8" else torch.float32)
        assert torch.equal(with_cache["image"], from_source["image"])
        assert torch.equal(with_cache["mask"], from_source["mask"])
        assert with_cache["image"].is_contiguous()
        images.append(with_cache["image"])
    assert not torch.equal(images[0], images[1])   # the training transform did augment
    assert torch.equal(images[1], images[2])       # resizing to the size it has is the identity
    assert {f: (cdir / f).read_bytes() for f in stored} == stored   # nothing wrote into the cache


def test_build_cache_skip_errors(tmp_path: Path) -> None:
    samples = _pairs(tmp_path / "data", n=2)
    samples[0].mask_path.write_bytes(b"")
    with pytest.raises(ImageReadError):
        build_cache(samples, 8, tmp_path / "c1")
    cache = build_cache(samples, 8, tmp_path / "c2", on_error="skip", num_workers=2)
    assert "s0" not in cache and "s1" in cache


# ----------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["kvasir-seg", "dsb2018"])
def test_real_datasets_subset(name: str, tmp_path: Path) -> None:
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} not available")
    from hrmedseg.data.transforms import train_transform

    idx = discover_pairs(root)
    assert idx.layout == "folder" and len(idx) > 100 and not idx.unpaired_images and not idx.unpaired_masks
    sub = tmp_path / name
    for d in ("images", "masks"):
        (sub / d).mkdir(parents=True)
    chosen = idx.samples[:10]
    for s in chosen:
        os.symlink(s.image_path, sub / "images" / s.image_path.name)
        os.symlink(s.mask_path, sub / "masks" / s.mask_path.name)
    problems = check_dataset(sub, num_classes=1, progress=False)
    assert not [p for p in problems if p.severity == "error"], problems
    ds = SegmentationDataset(chosen, train_transform(256, "paper"), num_classes=1, in_chans=3)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 256, 256) and torch.isfinite(item["image"]).all()
        assert set(item["mask"].unique().tolist()) <= {0, 1}
        assert item["mask"].sum() > 0
