"""Tests for hrmedseg.data.transforms: shapes, dtypes, label preservation, seeding, prediction resizing.

The ops themselves are tested against references in tests/data/test_augment.py."""
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


def test_seeded_pipeline_is_reproducible_and_picklable() -> None:
    """set_random_seed fixes the draws (the training sampler seeds every item); a pickled copy (a
    DataLoader worker) seeded alike gives the same pixels, and different seeds differ."""
    img, mask = _pair(96, 96)
    u8 = (img * 255).round().astype(np.uint8)
    t = train_transform(64, "strong")
    outs = []
    for seed in (3, 3, 4):
        t.set_random_seed(seed)
        outs.append(t(image=u8, mask=mask, keep_uint8=True))
    assert np.array_equal(outs[0]["image"], outs[1]["image"]) and np.array_equal(outs[0]["mask"], outs[1]["mask"])
    assert not np.array_equal(outs[0]["image"], outs[2]["image"])
    copy = pickle.loads(pickle.dumps(t))
    copy.set_random_seed(3)
    assert np.array_equal(copy(image=u8, mask=mask, keep_uint8=True)["image"], outs[0]["image"])
    torch.manual_seed(0)  # unseeded calls draw from torch's global generator
    a = train_transform(64, "strong")(image=u8, mask=mask)["image"]
    torch.manual_seed(0)
    assert np.array_equal(train_transform(64, "strong")(image=u8, mask=mask)["image"], a)


@pytest.mark.parametrize("policy", ["paper", "strong"])
@pytest.mark.parametrize("src", [(80, 80, 3), (64, 64, 1), (50, 70, 4)])
def test_opencv_executor_matches_the_tensor_ops(policy: str, src: tuple[int, int, int]) -> None:
    """apply_cv2 (the per-item worker path) and BatchAugment.apply (the batched GPU path) give the same
    samples for the same parameters: masks alike but for nearest ties, images within uint8 rounding."""
    from scipy import ndimage

    from hrmedseg.data.augment import BatchAugment
    from hrmedseg.data.transforms import apply_cv2

    h, w, c = src
    rng = np.random.default_rng(1)
    img = (np.clip(ndimage.gaussian_filter(rng.random((h, w, c)), (3, 3, 0)) * 4 - 1.5, 0, 1) * 255).round()
    img = img.astype(np.uint8)
    _, mask = _pair(h, w)
    mask = mask.astype(np.uint8)
    size = 64 if h == w else (48, 64)
    aug = BatchAugment(size, policy)
    diffs, mask_diff = [], []
    for seed in range(24):
        p = aug.draw(1, torch.Generator().manual_seed(seed))
        a, ma = apply_cv2(aug, p, img, mask)
        b, mb = aug.apply(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), torch.from_numpy(mask)[None], p)
        d = np.abs(a.astype(int) - b[0].permute(1, 2, 0).numpy().astype(int))
        assert a.shape == (*aug.size, c) and d.max() <= 6, (seed, d.max())  # uint8 rounding per colour op
        diffs.append(d.mean())
        mask_diff.append((ma != mb[0].numpy()).mean())
    assert max(diffs) < 0.6 and np.mean(diffs) < 0.4 and max(mask_diff) < 0.005


def test_opencv_elastic_field_matches_the_tensor_one() -> None:
    from hrmedseg.data.augment import elastic_field
    from hrmedseg.data.transforms import _elastic_field_cv2

    for size in (64, 200):
        alpha, sigma = 0.0053 * size * size, 0.04 * size
        k = max(1, int(sigma // 4))
        noise = torch.randn(1, 2, -(-size // k), -(-size // k), generator=torch.Generator().manual_seed(size))
        ref = elastic_field(noise, size, size, alpha, sigma)[0].numpy()
        got = _elastic_field_cv2(noise[0].numpy(), size, size, alpha, sigma)
        assert np.abs(got - ref).max() < 1e-3 * np.sqrt((ref ** 2).mean())
