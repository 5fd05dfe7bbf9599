"""Tests for the uint8 data fast path: SegTransform on uint8, SegmentationDataset(output="uint8"),
collate_segmentation and gpu_normalize.normalize_batch, always against the float path."""
from __future__ import annotations

import pickle
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from hrmedseg.data.datasets import Sample, SegmentationDataset, build_cache, collate_segmentation
from hrmedseg.data.gpu_normalize import normalize_batch
from hrmedseg.data.io import IMAGENET_STD, ImageReadError, normalize, to_model_channels, write_image_png, write_mask_png
from hrmedseg.data.augment import BatchAugment
from hrmedseg.data.transforms import SegTransform, eval_transform, train_transform
from hrmedseg.training.sampler import SeededDataset

MODES = ("imagenet", "minmax", "none")
LEVEL = 1.0 / 255.0


def _natural(h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Smooth coloured image with mild noise (rounding behaves as on real photos, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    planes = [rng.uniform(0.3, 0.7) + 0.35 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform()))
              * np.cos(2 * np.pi * rng.uniform(1, 3) * yy) for _ in range(c)]
    img = np.stack(planes, axis=-1) + rng.normal(0, 0.02, (h, w, c))
    img = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return img[:, :, 0] if c == 1 else img


def _labels(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = ((yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2).astype(np.uint8)
    m[h // 8: h // 3, w // 2: w - w // 8] = 2
    return m


def _write_pair(root: Path, stem: str, img: np.ndarray, mask: np.ndarray) -> Sample:
    ip, mp = root / "images" / f"{stem}.png", root / "masks" / f"{stem}.png"
    ip.parent.mkdir(parents=True, exist_ok=True)
    mp.parent.mkdir(parents=True, exist_ok=True)
    write_image_png(ip, img)
    write_mask_png(mp, mask)
    return Sample(stem, ip, mp)


def _gpu_side(item: dict, mode: str) -> torch.Tensor:
    """What the trainer does with a uint8 item: normalise it on the device."""
    assert item["image"].dtype == torch.uint8 and item["normalized"] is False
    return normalize_batch(item["image"][None], mode)[0]


# ----------------------------------------------------------------------------- normalize_batch
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chans", [1, 3])
def test_normalize_batch_matches_cpu_path(mode: str, chans: int) -> None:
    imgs = [_natural(40, 56, chans, seed=s) for s in range(3)]
    imgs.append(np.full((40, 56, chans), 77, np.uint8).squeeze(-1) if chans == 1 else np.full((40, 56, 3), 77, np.uint8))
    batch = torch.stack([torch.from_numpy(np.ascontiguousarray(
        (im[:, :, None] if im.ndim == 2 else im).transpose(2, 0, 1))) for im in imgs])
    got = normalize_batch(batch, mode)
    assert got.dtype == torch.float32 and got.shape == batch.shape
    for b, im in enumerate(imgs):
        ref = normalize(to_model_channels(im, chans), mode).transpose(2, 0, 1)
        np.testing.assert_allclose(got[b].numpy(), ref, rtol=0, atol=1e-6)
    assert normalize_batch(batch, mode).data_ptr() != batch.data_ptr()  # input left untouched
    cl = normalize_batch(batch.contiguous(memory_format=torch.channels_last), mode)
    torch.testing.assert_close(cl, got, rtol=0, atol=1e-6)


def test_normalize_batch_rejects_bad_input() -> None:
    with pytest.raises(TypeError):
        normalize_batch(torch.zeros(1, 3, 4, 4), "imagenet")
    with pytest.raises(ValueError):
        normalize_batch(torch.zeros(3, 4, 4, dtype=torch.uint8), "imagenet")
    with pytest.raises(ValueError):
        normalize_batch(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "zscore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- transforms
# (the ops against their references: tests/data/test_augment.py)
@pytest.mark.parametrize("strength", ["paper", "strong"])
def test_seg_transform_uint8_matches_float(strength: str) -> None:
    img, mask = _natural(96, 96, 3), _labels(96, 96)
    t = train_transform(64, strength)
    for seed in range(6):
        t.set_random_seed(seed)
        ref = t(image=img.astype(np.float32) * np.float32(LEVEL), mask=mask)
        t.set_random_seed(seed)
        out = t(image=img, mask=mask, keep_uint8=True)
        assert out["image"].dtype == np.uint8 and out["image"].shape == (64, 64, 3)
        assert out["mask"].dtype == np.uint8 and np.array_equal(out["mask"], ref["mask"])
        diff = np.abs(out["image"] * np.float32(LEVEL) - ref["image"])
        assert diff.mean() <= 0.7 * LEVEL and diff.max() <= 6 * LEVEL, (seed, diff.mean() * 255, diff.max() * 255)
        t.set_random_seed(seed)
        as_float = t(image=img, mask=mask)  # default: uint8 pipeline, float32 result
        assert as_float["image"].dtype == np.float32 and as_float["mask"].dtype == np.int64
        np.testing.assert_array_equal(as_float["image"], out["image"] * np.float32(LEVEL))


def test_seg_transform_dtypes_and_options() -> None:
    img, mask = _natural(32, 48, 3), _labels(32, 48)
    keep = SegTransform(BatchAugment(None, "none"), keep_uint8=True)
    out = keep(image=img, mask=mask)
    assert out["image"].dtype == np.uint8 and np.array_equal(out["image"], img) and out["mask"].dtype == np.uint8
    assert keep(image=img, mask=mask, keep_uint8=False)["image"].dtype == np.float32  # call overrides
    f = keep(image=img.astype(np.float32) / 255, mask=mask)  # non-uint8 input: always float32 / int64
    assert f["image"].dtype == np.float32 and f["mask"].dtype == np.int64
    u16 = keep(image=(img.astype(np.uint16) * 257) / 65535.0, mask=mask.astype(np.int64))
    assert u16["image"].dtype == np.float32 and u16["mask"].dtype == np.int64
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])[:, :, :3]  # non-contiguous slice
    assert np.array_equal(eval_transform(16)(image=rgba, mask=mask, keep_uint8=True)["image"],
                          eval_transform(16)(image=img, mask=mask, keep_uint8=True)["image"])
    t = pickle.loads(pickle.dumps(train_transform(32, "paper")))
    assert t.channel_independent and t(image=img, mask=mask, keep_uint8=True)["image"].dtype == np.uint8
    assert "keep_uint8" in repr(keep)


# ----------------------------------------------------------------------------- dataset
_CHANNEL_CASES = [  # (source channels, in_chans, exact?)
    (1, 3, True), (1, 1, True), (3, 3, True), (4, 3, True), (4, 4, True), (2, 1, True), (2, 3, True), (3, 1, False),
]


@pytest.mark.parametrize("src_c,in_chans,exact", _CHANNEL_CASES)
@pytest.mark.parametrize("mode", ["imagenet", "minmax"])
def test_uint8_dataset_channel_mapping_matches_float(tmp_path: Path, src_c: int, in_chans: int, exact: bool,
                                                     mode: str) -> None:
    img = _natural(40, 48, src_c, seed=src_c)
    if src_c in (2, 4):
        img[:, :, -1] = np.where(np.arange(48) % 3 == 0, 128, 255).astype(np.uint8)  # alpha to be dropped
    s = _write_pair(tmp_path, "a", img, _labels(40, 48))
    kw = dict(num_classes=3, in_chans=in_chans, normalization=mode)
    fl = SegmentationDataset([s], eval_transform(None), **kw)[0]
    u8 = SegmentationDataset([s], eval_transform(None), output="uint8", **kw)[0]
    assert fl["normalized"] is True and u8["normalized"] is False and u8["normalization"] == mode
    assert u8["image"].shape == fl["image"].shape == (in_chans, 40, 48)
    assert u8["mask"].dtype == torch.uint8 and torch.equal(u8["mask"].long(), fl["mask"])
    got = _gpu_side(u8, mode)
    unit = to_model_channels(img, in_chans)
    # RGB -> grey: the luma is rounded to uint8 (minmax also moves its min/max by that much)
    scale = 2.0 / float(unit.max() - unit.min()) if mode == "minmax" else 1.0 / min(IMAGENET_STD)
    tol = 1e-6 if exact else 0.51 * LEVEL * scale * 1.05
    torch.testing.assert_close(got, fl["image"], rtol=0, atol=tol)


def test_uint8_dataset_rejects_impossible_channel_mapping(tmp_path: Path) -> None:
    s = _write_pair(tmp_path, "a", _natural(16, 16, 3), _labels(16, 16))
    with pytest.raises(ImageReadError, match="3-channel"):
        SegmentationDataset([s], None, 3, in_chans=2, output="uint8")[0]
    with pytest.raises(ValueError, match="output"):
        SegmentationDataset([s], None, 3, output="float16")  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [None, 32, (24, 40)])
def test_uint8_dataset_eval_transform(tmp_path: Path, size) -> None:
    s = _write_pair(tmp_path, "a", _natural(48, 64, 3), _labels(48, 64))
    fl = SegmentationDataset([s], eval_transform(size), 3, normalization="none")[0]
    u8 = SegmentationDataset([s], eval_transform(size), 3, normalization="none", output="uint8")[0]
    assert torch.equal(u8["mask"].long(), fl["mask"])
    got = _gpu_side(u8, "none")
    if size is None:
        torch.testing.assert_close(got, fl["image"], rtol=0, atol=1e-6)  # nothing to round: exact
    else:  # area/bilinear resize on uint8 rounds once
        assert (got - fl["image"]).abs().max().item() <= 0.51 * LEVEL


@pytest.mark.parametrize("strength", ["paper", "strong"])
@pytest.mark.parametrize("src_c", [3, 1])
def test_uint8_dataset_seeded_train_transform(tmp_path: Path, strength: str, src_c: int) -> None:
    samples = [_write_pair(tmp_path, f"s{i}", _natural(80, 80, src_c, seed=i), _labels(80, 80)) for i in range(4)]
    cache = build_cache(samples, 64, tmp_path / "cache")
    mk = lambda out: SeededDataset(SegmentationDataset(samples, train_transform(64, strength), 3, 3, cache,  # noqa: E731
                                                       normalization="imagenet", output=out), seed=7)
    fl, u8 = mk("float32"), mk("uint8")
    diffs = []
    for epoch in range(3):
        for i in range(len(samples)):
            a, b = fl[(i, epoch)], u8[(i, epoch)]
            assert torch.equal(b["mask"].long(), a["mask"])  # same draws: identical geometry
            got = _gpu_side(b, "imagenet")
            if src_c == 1:  # grey augmented on one channel, repeated afterwards
                assert torch.equal(b["image"][0], b["image"][1]) and torch.equal(b["image"][0], b["image"][2])
            d = (got - a["image"]) * torch.tensor(IMAGENET_STD).view(3, 1, 1)  # back to [0, 1] units
            diffs.append(d.abs())
            assert d.abs().max().item() <= 6 * LEVEL
    assert torch.stack(diffs).mean().item() <= 0.6 * LEVEL


def test_uint8_mode_keeps_float_path_for_16bit_and_user_transforms(tmp_path: Path) -> None:
    img16 = (_natural(32, 32, 1).astype(np.uint16) * 200)
    s16 = _write_pair(tmp_path, "deep", img16, _labels(32, 32))
    s8 = _write_pair(tmp_path, "flat", _natural(32, 32, 3), _labels(32, 32))
    ds = SegmentationDataset([s16, s8], eval_transform(None), 3, output="uint8")
    a, b = ds[0], ds[1]
    assert a["image"].dtype == torch.float32 and a["normalized"] is True and a["mask"].dtype == torch.int64
    assert b["image"].dtype == torch.uint8 and b["normalized"] is False
    cached = SegmentationDataset([s16], eval_transform(None), 3, cache=build_cache([s16], 32, tmp_path / "c"),
                                 output="uint8")[0]
    assert cached["image"].dtype == torch.uint8  # the cache stores 16-bit images as uint8
    pct = SegmentationDataset([s8], None, 3, output="uint8", scaling="percentile")[0]
    assert pct["normalized"] is True  # percentile scaling needs the float path
    def hflip(*, image, mask):  # a user's transform, not known to take uint8
        return {"image": image[:, ::-1], "mask": mask[:, ::-1]}

    user = SegmentationDataset([s8], hflip, 3, output="uint8")[0]
    assert user["normalized"] is True and user["image"].dtype == torch.float32
    none = SegmentationDataset([s8], None, 3, output="uint8")[0]
    assert none["normalized"] is False


# ----------------------------------------------------------------------------- collate
def test_collate_homogeneous_batches(tmp_path: Path) -> None:
    samples = [_write_pair(tmp_path, f"s{i}", _natural(24, 32, 3, seed=i), _labels(24, 32)) for i in range(3)]
    u8 = SegmentationDataset(samples, eval_transform(None), 3, output="uint8", normalization="minmax")
    fl = SegmentationDataset(samples, eval_transform(None), 3, normalization="minmax")
    bu = collate_segmentation([u8[i] for i in range(3)])
    assert bu["image"].dtype == torch.uint8 and bu["image"].shape == (3, 3, 24, 32)
    assert bu["normalized"] is False and bu["normalization"] == "minmax" and bu["mask"].dtype == torch.uint8
    assert bu["stem"] == ["s0", "s1", "s2"] and bu["orig_size"] == [(24, 32)] * 3
    bf = collate_segmentation([fl[i] for i in range(3)])
    assert bf["image"].dtype == torch.float32 and bf["normalized"] is True and bf["mask"].dtype == torch.int64
    torch.testing.assert_close(normalize_batch(bu["image"], bu["normalization"]), bf["image"], rtol=0, atol=1e-6)
    assert torch.equal(bu["mask"].long(), bf["mask"])
    mixed = collate_segmentation([u8[0], fl[1], u8[2]])  # mixed: uint8 items normalised on the CPU
    assert mixed["image"].dtype == torch.float32 and mixed["normalized"] is True
    assert mixed["mask"].dtype == torch.int64
    torch.testing.assert_close(mixed["image"], bf["image"], rtol=0, atol=1e-6)
    old_style = {k: v for k, v in fl[0].items() if k not in ("normalized", "normalization")}
    assert collate_segmentation([old_style])["normalized"] is True
    other = {**fl[1], "normalization": "imagenet"}  # normalised items may come from another dataset
    torch.testing.assert_close(collate_segmentation([u8[0], other])["image"], bf["image"][:2], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="normalisation"):
        collate_segmentation([u8[0], {**u8[1], "normalization": "imagenet"}])
    with pytest.raises(ValueError):
        collate_segmentation([])
    loader = DataLoader(u8, batch_size=2, collate_fn=collate_segmentation)
    assert [b["image"].dtype for b in loader] == [torch.uint8, torch.uint8]


# ----------------------------------------------------------------------------- speed
def test_uint8_path_is_not_slower(tmp_path: Path) -> None:
    s = _write_pair(tmp_path, "big", _natural(512, 512, 3), (_labels(512, 512) > 0).astype(np.uint8))
    cache = build_cache([s], 512, tmp_path / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        times: dict[str, list[float]] = {"float32": [], "uint8": []}
        sets = {out: SeededDataset(SegmentationDataset([s], train_transform(512, "paper"), 1, 3, cache, output=out), 0)
                for out in times}
        for epoch in range(8):
            for out, ds in sets.items():
                t0 = time.perf_counter()
                ds[(0, epoch)]
                times[out].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv2_threads)
    assert statistics.median(times["uint8"]) < statistics.median(times["float32"]), times


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", MODES)
def test_normalize_batch_on_gpu_matches_cpu(mode: str) -> None:
    batch = torch.stack([torch.from_numpy(np.ascontiguousarray(_natural(64, 48, 3, seed=s).transpose(2, 0, 1)))
                         for s in range(4)])
    got = normalize_batch(batch.cuda(non_blocking=True), mode)
    assert got.is_cuda and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), normalize_batch(batch, mode), rtol=0, atol=1e-6)
