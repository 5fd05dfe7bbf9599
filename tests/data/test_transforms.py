"""Tests for hrmedseg.data.transforms: shapes, dtypes, label preservation, prediction resizing."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from hrmedseg.data.transforms import eval_transform, resize_mask_to, train_transform


def _pair(h: int = 90, w: int = 120, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.random((h, w, c), dtype=np.float32)
    mask = np.zeros((h, w), np.int64)
    mask[10:50, 20:80] = 1
    mask[60:80, 30:60] = 2
    return img, mask


@pytest.mark.parametrize("strength", ["paper", "strong", "none"])
@pytest.mark.parametrize("size", [64, (48, 80)])
def test_train_transform_shapes_and_labels(strength: str, size: int | tuple[int, int]) -> None:
    img, mask = _pair()
    t = train_transform(size, strength)
    hw = (size, size) if isinstance(size, int) else size
    for _ in range(5):
        out = t(image=img, mask=mask)
        assert out["image"].shape == (*hw, 3) and out["image"].dtype == np.float32
        assert out["mask"].shape == hw and out["mask"].dtype == np.int64
        assert set(np.unique(out["mask"])) <= {0, 1, 2}  # nearest: no invented labels


def test_transform_single_channel_and_uint8() -> None:
    img, mask = _pair(c=1)
    out = train_transform(32, "strong")(image=img, mask=mask)
    assert out["image"].shape == (32, 32, 1)
    u8 = (img * 255).astype(np.uint8)
    out = eval_transform(32)(image=u8, mask=mask)
    assert out["image"].dtype == np.float32 and out["image"].max() <= 1.0


def test_eval_transform_is_deterministic_and_nearest() -> None:
    img, mask = _pair()
    t = eval_transform((45, 60))
    a, b = t(image=img, mask=mask), t(image=img, mask=mask)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert np.array_equal(a["mask"], mask[::2, ::2])  # exact nearest on a 2x reduction
    assert eval_transform(None)(image=img, mask=mask)["image"].shape == img.shape
    t2 = pickle.loads(pickle.dumps(t))  # DataLoader workers need to pickle it
    assert np.array_equal(t2(image=img, mask=mask)["mask"], a["mask"])


def test_resize_mask_to() -> None:
    logits = torch.full((2, 1, 4, 4), -5.0)
    logits[:, :, :2, :2] = 5.0
    out = resize_mask_to(logits, (8, 8))
    assert out.shape == (2, 8, 8) and out.dtype == torch.long
    assert out[0, :3, :3].all() and not out[0, 5:, 5:].any()
    probs = torch.sigmoid(logits[0])
    assert torch.equal(resize_mask_to(probs, (8, 8), from_logits=False), out[0])
    multi = torch.zeros(3, 4, 6, dtype=torch.bfloat16)
    multi[2, :, 3:] = 4.0
    lab = resize_mask_to(multi, (8, 12))
    assert lab.shape == (8, 12) and set(lab.unique().tolist()) == {0, 2} and (lab[:, 7:] == 2).all()
    with pytest.raises(ValueError):
        resize_mask_to(torch.zeros(4, 4), 8)


def _elastic_pair(size: int, seed: int):
    import albumentations as A
    import cv2

    from hrmedseg.data.transforms import _ElasticTransform

    kw = dict(alpha=0.0053 * size * size, sigma=0.04 * size, p=1.0)
    ours, ref = _ElasticTransform(**kw), A.ElasticTransform(**kw)
    ours.set_random_seed(seed)
    ref.set_random_seed(seed)
    return ours, ref, cv2


def test_coarse_elastic_field_matches_albumentations_statistics() -> None:
    """The coarse-grid field has the full-resolution field's displacement RMS and correlation
    length in the image interior (albumentations' replicated border is excluded on purpose)."""
    size, m = 256, 64
    ours, ref, _ = _elastic_pair(size, 0)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)))
    stats = {}
    for name, t in (("ours", ours), ("ref", ref)):
        rms, corr = [], []
        for _ in range(12):
            p = t.get_params_dependent_on_data({"shape": (size, size)}, {})
            d = (np.stack([p["map_x"], p["map_y"]]) - grid)[:, m:-m, m:-m]
            rms.append(np.sqrt(np.mean(d ** 2)))
            corr.append(np.mean(d[0][:, :-5] * d[0][:, 5:]) / np.mean(d[0] ** 2))
        stats[name] = (np.mean(rms), np.mean(corr))
    assert stats["ours"][0] == pytest.approx(stats["ref"][0], rel=0.2)
    assert stats["ours"][1] == pytest.approx(stats["ref"][1], abs=0.05)


def test_coarse_elastic_warps_image_and_mask_like_float_remap() -> None:
    """Fixed-point maps give the float map's mask exactly and the image within rounding."""
    ours, _, cv2 = _elastic_pair(128, 3)
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), (0, 0), 2.0)  # image-like
    mask = rng.integers(0, 3, (128, 128), dtype=np.uint8)
    p = ours.get_params_dependent_on_data({"shape": (128, 128)}, {})
    ref_mask = cv2.remap(mask, p["map_x"], p["map_y"], cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    ref_img = cv2.remap(img, p["map_x"], p["map_y"], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    out_mask, out_img = ours.apply_to_mask(mask, **p), ours.apply(img, **p)
    assert np.array_equal(out_mask, ref_mask) and set(np.unique(out_mask)) <= {0, 1, 2}
    diff = np.abs(out_img.astype(int) - ref_img.astype(int))
    assert out_img.shape == img.shape and diff.mean() < 0.3 and diff.max() <= 4
    assert not np.array_equal(out_mask, mask)  # it did warp
