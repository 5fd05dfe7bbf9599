"""MONAI/medpy conventions: Dice with MONAI's ignore_empty, medpy-style HD95, MONAI dict transforms,
and MAE taken from labels at both resolutions."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from hrmedseg.metrics.segmentation import compute_metrics, hd95, hd95_medpy, summarize


def _masks(seed=0, n=8, size=24):
    rng = np.random.default_rng(seed)
    preds, gts = [], []
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        g = ((yy - rng.integers(6, 18)) ** 2 + (xx - rng.integers(6, 18)) ** 2) <= rng.integers(9, 30)
        p = np.roll(g, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
        if i % 4 == 1:
            g = np.zeros_like(g)             # empty ground truth, non-empty prediction
        if i % 4 == 3:
            g, p = np.zeros_like(g), np.zeros_like(p)   # both empty
        preds.append(p.astype(np.uint8))
        gts.append(g.astype(np.uint8))
    return preds, gts


@pytest.mark.parametrize("ignore_empty", [True, False])
def test_dice_mean_matches_monai_dicemetric(ignore_empty):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    preds, gts = _masks()
    ours = summarize(compute_metrics(p, g, 1, hd=False, ignore_empty=ignore_empty)
                     for p, g in zip(preds, gts))["dice"]["mean"]
    kw = {} if ignore_empty else {"ignore_empty": False}    # MONAI's default is ignore_empty=True
    metric = monai_metrics.DiceMetric(include_background=True, reduction="mean", **kw)
    metric(torch.from_numpy(np.stack(preds)[:, None]).float(), torch.from_numpy(np.stack(gts)[:, None]).float())
    assert ours == pytest.approx(metric.aggregate().item(), abs=1e-6)


def test_ignore_empty_gives_nan_for_empty_ground_truth():
    z = np.zeros((8, 8), np.uint8)
    p = z.copy()
    p[2:4, 2:4] = 1
    m = compute_metrics(p, z, 1, ignore_empty=True)
    assert all(math.isnan(m[k]) for k in ("dice", "iou", "hd", "hd95"))
    assert m["pixel_accuracy"] == pytest.approx(60 / 64)


def _border(m):
    # 4-neighbour erosion written out: a pixel stays if it and its 4 neighbours are foreground
    pad = np.pad(m, 1)
    core = pad[1:-1, 1:-1] & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    return np.argwhere(m & ~core).astype(float)


def _hd95_pooled_reference(p, g, spacing=(1.0, 1.0)):
    bp, bg = _border(p.astype(bool)) * spacing, _border(g.astype(bool)) * spacing
    d = np.sqrt(((bp[:, None, :] - bg[None, :, :]) ** 2).sum(-1))   # all pairs
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


@pytest.mark.parametrize("seed", range(4))
def test_hd95_medpy_matches_pooled_brute_force(seed):
    rng = np.random.default_rng(seed)
    p = rng.random((30, 34)) > 0.6
    g = np.zeros((30, 34), bool)
    g[5:22, 8:25] = True
    sp = (0.7, 1.3)
    assert hd95_medpy(p, g, sp) == pytest.approx(_hd95_pooled_reference(p, g, sp), rel=1e-9)
    assert hd95_medpy(p, g, sp) <= hd95(p, g, sp) + 1e-12


def test_hd95_styles_differ_where_one_direction_has_outliers():
    g = np.zeros((40, 40), bool)
    g[10:30, 10:30] = True
    p = g.copy()
    p[0:3, 36:39] = True          # a far blob: only the pred->gt direction sees it
    assert hd95_medpy(p, g) < hd95(p, g)
    m = compute_metrics(p, g, 1, hd95_style="medpy")
    assert m["hd95"] == pytest.approx(hd95_medpy(p, g))
    with pytest.raises(ValueError, match="hd95_style"):
        compute_metrics(p, g, 1, hd95_style="other")


def test_dict_transform_dataset_with_monai_transforms(tmp_path):
    pytest.importorskip("monai")
    import torch
    from monai.transforms import Compose, RandFlipd, ScaleIntensityd
    from PIL import Image

    from hrmedseg.data.datasets import DictTransformDataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "images" / f"c{i}.png")
        m = np.zeros((12, 16), np.uint8)
        m[2:6, 1:9] = 255
        Image.fromarray(m).save(tmp_path / "masks" / f"c{i}.png")
    tf = Compose([RandFlipd(keys=["image", "label"], prob=1.0, spatial_axis=1),
                  ScaleIntensityd(keys="image", minv=-1.0, maxv=1.0)])
    ds = DictTransformDataset(tmp_path, tf, num_classes=1)
    item = ds[1]
    raw = np.asarray(Image.open(tmp_path / "images" / "c1.png")).astype(np.float32) / 255.0
    ref = raw[:, ::-1].transpose(2, 0, 1)
    ref = (ref - ref.min()) / (ref.max() - ref.min()) * 2 - 1
    np.testing.assert_allclose(np.asarray(item["image"]), ref, atol=1e-5)
    lab = np.zeros((1, 12, 16), np.uint8)
    lab[0, 2:6, 7:15] = 1                       # flipped, 0/255 read as {0, 1}
    np.testing.assert_array_equal(np.asarray(item["label"]), lab)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert tuple(batch["image"].shape) == (3, 3, 12, 16) and batch["stem"] == ["c0", "c1", "c2"]


def test_mae_from_labels_at_both_resolutions(tmp_path):
    from PIL import Image

    from hrmedseg.data.datasets import discover_pairs
    from hrmedseg.evaluation.evaluate import evaluate_samples

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    gt = np.zeros((20, 20), np.uint8)
    gt[4:12, 4:12] = 1
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(gt * 255).save(tmp_path / "masks" / "a.png")
    labels = np.zeros((20, 20), np.uint8)
    labels[4:12, 4:10] = 1                        # 16 pixels wrong
    probs = np.where(labels, 0.6, 0.3).astype(np.float32)[None]   # far from 0/1: MAE would differ

    class FixedSegmenter:
        num_classes, batch_size = 1, 1

        def predict_arrays(self, images, sources):
            return [SimpleNamespace(labels=labels, probabilities=probs, model_labels=labels[::2, ::2])]

    res = evaluate_samples(FixedSegmenter(), discover_pairs(tmp_path).samples, hd=False, progress=False)
    assert res["original_resolution"]["mae"]["mean"] == pytest.approx(16 / 400)
    assert res["model_resolution"]["mae"]["mean"] == pytest.approx(np.mean(labels[::2, ::2] != gt[::2, ::2]))
