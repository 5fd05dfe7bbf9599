"""3-D Dice / IoU / HD95 in mm against MONAI, the empty policy, and the Table-2 report."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hrmedseg.metrics.volume import (compute_volume_metrics, hausdorff3d, table2_report,
                                                volume_diagonal)

SPACING = (0.7, 0.9, 2.5)
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]


def _blob(shape, centre, radii):
    g = np.indices(shape).astype(np.float64)
    d = sum(((g[i] - centre[i]) / radii[i]) ** 2 for i in range(3))
    return d <= 1.0


def _onehot(labels, k):
    return torch.from_numpy(np.eye(k, dtype=np.float32)[labels].transpose(3, 0, 1, 2))[None]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_monai(seed):
    from monai.metrics import compute_dice, compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (40, 36, 14)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    for c in (1, 2):
        ctr = rng.uniform(10, 26, 3) * [1, 1, 0.35]
        r = rng.uniform(4, 8, 3) * [1, 1, 0.4]
        gt[_blob(shape, ctr, r)] = c
        pred[_blob(shape, ctr + rng.normal(0, 1.5, 3), r * rng.uniform(0.8, 1.2, 3))] = c
    pred[rng.random(shape) < 0.002] = 1                    # scattered false positives far away
    m = compute_volume_metrics(pred, gt, 3, SPACING)
    yp, yg = _onehot(pred, 3), _onehot(gt, 3)
    ref_hd95 = compute_hausdorff_distance(yp, yg, include_background=False, percentile=95, spacing=SPACING)[0]
    ref_hd = compute_hausdorff_distance(yp, yg, include_background=False, spacing=SPACING)[0]
    ref_dice = compute_dice(yp, yg, include_background=False)[0]
    for c in (1, 2):
        assert m[f"hd95/{c}"] == pytest.approx(float(ref_hd95[c - 1]), rel=1e-5, abs=1e-5)
        assert m[f"hd/{c}"] == pytest.approx(float(ref_hd[c - 1]), rel=1e-5, abs=1e-5)
        assert m[f"dice/{c}"] == pytest.approx(float(ref_dice[c - 1]), rel=1e-6)
    assert m["dice"] == pytest.approx(float(ref_dice.mean()), rel=1e-6)
    # spacing matters: in voxels the distances differ
    assert hausdorff3d(pred == 1, gt == 1, None, 95) != pytest.approx(m["hd95/1"])


def test_empty_policy_uses_volume_diagonal_in_mm():
    from monai.metrics import compute_hausdorff_distance

    shape = (20, 16, 6)
    gt = np.zeros(shape, np.int64)
    pred = np.zeros(shape, np.int64)
    gt[5:10, 5:10, 2:4] = 1                                # class 1 missed entirely
    pred[2:4, 2:4, 1:2] = 2                                # class 2 predicted, absent in gt
    m = compute_volume_metrics(pred, gt, 4, SPACING)       # class 3 absent in both
    diag = math.sqrt((20 * 0.7) ** 2 + (16 * 0.9) ** 2 + (6 * 2.5) ** 2)
    assert volume_diagonal(shape, SPACING) == pytest.approx(diag)
    assert (m["dice/1"], m["iou/1"], m["hd95/1"], m["hd/1"]) == (0.0, 0.0, pytest.approx(diag), pytest.approx(diag))
    assert (m["dice/2"], m["hd95/2"]) == (0.0, pytest.approx(diag))
    assert (m["dice/3"], m["iou/3"], m["hd95/3"], m["hd/3"]) == (1.0, 1.0, 0.0, 0.0)
    # MONAI has no finite answer for these cases (nan/inf): the policy is what keeps means finite
    ref = compute_hausdorff_distance(_onehot(pred, 4), _onehot(gt, 4), percentile=95, spacing=SPACING)[0]
    assert not np.isfinite(ref.numpy()).all()
    assert m["dice"] == pytest.approx(1 / 3) and math.isfinite(m["hd95"])


def test_table2_report():
    names = ["background", "aorta", "liver"]
    rows = {"case1": compute_volume_metrics(np.ones((4, 4, 4), int), np.ones((4, 4, 4), int), 3, class_names=names),
            "case2": {"dice/aorta": 0.5, "dice/liver": 0.7, "dice": 0.6, "hd95": 10.0}}
    rep = table2_report(rows, names[1:])
    lines = rep.strip().splitlines()
    assert lines[0] == "| case | aorta | liver | Dice | HD95 (mm) |"
    assert lines[-1] == "| mean | 75.00 | 85.00 | 80.00 | 5.00 |"
    assert "| case2 | 50.00 | 70.00 | 60.00 | 10.00 |" in rep
