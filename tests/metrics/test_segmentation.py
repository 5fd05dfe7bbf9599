"""Tests for hrmedseg.metrics.segmentation against MONAI, plus the empty-mask policy."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from hrmedseg.metrics.segmentation import (
    EMPTY_MASK_POLICY,
    compute_metrics,
    dice,
    hausdorff,
    hd95,
    image_diagonal,
    iou,
    mae,
    pixel_accuracy,
    summarize,
)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], n: int = 3) -> np.ndarray:
    """Random rectangles and noise: irregular masks with several components and holes."""
    m = np.zeros(shape, bool)
    for _ in range(n):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(2, shape[0] // 2), rng.integers(2, shape[1] // 2)
        m[r: r + h, c: c + w] = True
    m ^= rng.random(shape) < 0.03
    return m


def _monai(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, float] | None = None) -> dict[str, float]:
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    p = torch.from_numpy(pred.astype(np.float32))[None, None]
    g = torch.from_numpy(gt.astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": compute_dice(p, g, include_background=True).item(),
            "iou": compute_iou(p, g, include_background=True).item(),
            "hd": compute_hausdorff_distance(p, g, include_background=True, percentile=None, spacing=spacing).item(),
            "hd95": compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=spacing).item(),
        }


def test_against_monai_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for i in range(25):
        shape = (int(rng.integers(16, 48)), int(rng.integers(16, 48)))
        pred, gt = _blobs(rng, shape), _blobs(rng, shape)
        spacing = (0.5, 1.5) if i % 3 == 0 else None
        ref = _monai(pred, gt, spacing)
        assert dice(pred, gt) == pytest.approx(ref["dice"], rel=1e-6)
        assert iou(pred, gt) == pytest.approx(ref["iou"], rel=1e-6)
        assert hausdorff(pred, gt, spacing) == pytest.approx(ref["hd"], rel=1e-5)
        assert hd95(pred, gt, spacing) == pytest.approx(ref["hd95"], rel=1e-5)


def test_border_touching_and_small_objects_match_monai() -> None:
    gt = np.zeros((20, 30), bool)
    gt[:, :4] = True  # touches three borders
    pred = np.zeros((20, 30), bool)
    pred[0, 29] = True  # single pixel in the far corner
    ref = _monai(pred, gt)
    assert hausdorff(pred, gt) == pytest.approx(ref["hd"], rel=1e-6)
    assert hd95(pred, gt) == pytest.approx(ref["hd95"], rel=1e-6)


def test_empty_mask_policy() -> None:
    z = np.zeros((30, 40), bool)
    one = z.copy()
    one[5:9, 5:9] = True
    diag = math.hypot(30, 40)
    assert image_diagonal((30, 40)) == pytest.approx(50.0)
    assert (dice(z, z), iou(z, z), hausdorff(z, z), hd95(z, z)) == (1.0, 1.0, 0.0, 0.0)
    for a, b in ((z, one), (one, z)):
        assert dice(a, b) == 0.0 and iou(a, b) == 0.0
        assert hausdorff(a, b) == pytest.approx(diag) and hd95(a, b) == pytest.approx(diag)
    assert hausdorff(z, one, spacing=(2.0, 0.5)) == pytest.approx(math.hypot(60, 20))
    assert EMPTY_MASK_POLICY["both_empty"]["dice"] == 1.0 and EMPTY_MASK_POLICY["one_empty"]["hd"] == "diagonal"
    # MONAI leaves these cases undefined (nan/inf); the policy replaces them with finite values.
    empty_pred, empty_gt, both = _monai(z, one), _monai(one, z), _monai(z, z)
    assert empty_pred["dice"] == dice(z, one) == 0.0 and not math.isfinite(empty_pred["hd"])
    assert math.isnan(empty_gt["dice"]) and not math.isfinite(empty_gt["hd"])
    assert math.isnan(both["dice"]) and math.isnan(both["hd95"])


def test_mae_and_pixel_accuracy() -> None:
    gt = np.array([[0, 1], [1, 1]])
    prob = np.array([[0.2, 0.9], [0.5, 1.0]])
    assert mae(prob, gt) == pytest.approx((0.2 + 0.1 + 0.5 + 0.0) / 4)
    assert pixel_accuracy(np.array([[0, 1], [2, 1]]), np.array([[0, 1], [1, 1]])) == 0.75


def test_compute_metrics_binary_and_multiclass() -> None:
    rng = np.random.default_rng(1)
    gt = _blobs(rng, (32, 32)).astype(np.int64)
    pred = _blobs(rng, (32, 32)).astype(np.int64)
    probs = rng.random((32, 32))
    m = compute_metrics(pred, gt, num_classes=1, probs=probs)
    assert set(m) == {"dice", "iou", "hd", "hd95", "mae", "pixel_accuracy"}
    assert m["dice"] == pytest.approx(dice(pred == 1, gt == 1)) and m["mae"] == pytest.approx(mae(probs, gt))
    m2 = compute_metrics(torch.from_numpy(pred), torch.from_numpy(gt), num_classes=2, probs=np.stack([1 - probs, probs]))
    assert m2["dice"] == pytest.approx(m["dice"]) and m2["mae"] == pytest.approx(m["mae"])
    assert m2["hd95"] == pytest.approx(m["hd95"])
    gt3 = rng.integers(0, 3, (16, 16))
    pred3 = gt3.copy()
    pred3[:4] = 0
    names = ["bg", "liver", "tumour"]
    m3 = compute_metrics(pred3, gt3, num_classes=3, class_names=names, hd=False)
    assert "dice/liver" in m3 and "dice/tumour" in m3 and "dice/bg" not in m3 and "hd" not in m3
    assert m3["dice"] == pytest.approx((m3["dice/liver"] + m3["dice/tumour"]) / 2)
    assert m3["dice/liver"] == pytest.approx(dice(pred3 == 1, gt3 == 1))
    # class absent from both -> 1 by policy
    m4 = compute_metrics(np.zeros((8, 8), int), np.zeros((8, 8), int), num_classes=1)
    assert m4["dice"] == 1.0 and m4["hd95"] == 0.0 and m4["pixel_accuracy"] == 1.0


def test_summarize() -> None:
    rows = [{"dice": 0.8, "dice/1": 0.7}, {"dice": 0.6, "dice/1": float("nan")}, {"dice": 1.0, "dice/1": 0.9}]
    s = summarize(rows)
    assert s["dice"]["mean"] == pytest.approx(0.8) and s["dice"]["n"] == 3
    assert s["dice"]["std"] == pytest.approx(np.std([0.8, 0.6, 1.0]))
    assert s["dice/1"]["n"] == 2 and s["dice/1"]["mean"] == pytest.approx(0.8)
    assert summarize([]) == {}
