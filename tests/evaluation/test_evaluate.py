"""`evaluate` against metrics computed independently (numpy) on predictions known in advance.

The model thresholds the first input channel (logits +1 / -1, normalize "none"). Images are
made of 2x2 blocks of two grey levels, and the model size is half the image size: the
antialiased 2x downscale keeps each block's level on the right side of 0.5 (its own block
weighs 9/16), and the bilinear 2x upscale of +-1 logits keeps the sign of the nearest model
pixel (weight 9/16 again). So the prediction is the block pattern B at the model resolution and
B repeated 2x2 at the original resolution, without running any resize here.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrmedseg.evaluation.evaluate import evaluate_rows, evaluate_samples
from hrmedseg.inference import Segmenter

H, W = 36, 52               # original size; the model runs at (H/2, W/2)


class ChannelThreshold(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x[:, :1] > 0.5, 1.0, -1.0)


@dataclass
class Sample:
    stem: str
    image_path: Path
    mask_path: Path


def _overlap(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    p, g = p.astype(bool), g.astype(bool)
    inter, union = np.logical_and(p, g).sum(), np.logical_or(p, g).sum()
    return {"dice": 2 * inter / (p.sum() + g.sum()), "iou": inter / union,
            "pixel_accuracy": (p == g).mean()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("blocks")
    rng = np.random.default_rng(3)
    samples, blocks, gts = [], [], []
    for i in range(3):
        b = rng.random((H // 2, W // 2)) < 0.4
        img = np.where(np.kron(b, np.ones((2, 2), bool)), 230, 25).astype(np.uint8)
        # ground truth: the prediction moved and edited, at the original resolution
        gt = np.roll(np.kron(b, np.ones((2, 2), bool)), (1 + i, 2), axis=(0, 1))
        gt[rng.random((H, W)) < 0.05] ^= True
        Image.fromarray(img).save(root / f"im{i}.png")
        Image.fromarray(gt.astype(np.uint8) * 255).save(root / f"gt{i}.png")
        samples.append(Sample(f"s{i}", root / f"im{i}.png", root / f"gt{i}.png"))
        blocks.append(b)
        gts.append(gt)
    return samples, blocks, gts


def test_rows_at_both_resolutions_equal_independent_metrics(dataset, tmp_path):
    samples, blocks, gts = dataset
    seg = Segmenter(ChannelThreshold(), device="cpu", size=(H // 2, W // 2), normalize="none",
                    batch_size=2)
    rows, rows_model, skipped = evaluate_rows(seg, list(enumerate(samples)), hd=False, progress=False)
    assert not skipped and [i for i, _ in rows] == [0, 1, 2] == [i for i, _ in rows_model]
    for (_, r), (_, rm), b, gt in zip(rows, rows_model, blocks, gts):
        want = _overlap(np.kron(b, np.ones((2, 2), bool)), gt)
        want_model = _overlap(b, gt[::2, ::2])          # nearest-neighbour ground truth
        assert (r["height"], r["width"]) == (H, W)
        assert 0.2 < want["dice"] < 0.9                 # neither trivial nor perfect
        for k in ("dice", "iou", "pixel_accuracy"):
            assert r[k] == pytest.approx(want[k], abs=1e-12), (r["stem"], k)
            assert rm[k] == pytest.approx(want_model[k], abs=1e-12), (rm["stem"], k)

    summary = evaluate_samples(seg, samples, out_dir=tmp_path, hd=False, overlays=0, progress=False)
    dice = [_overlap(np.kron(b, np.ones((2, 2), bool)), g)["dice"] for b, g in zip(blocks, gts)]
    assert summary["n_images"] == 3
    assert summary["original_resolution"]["dice"]["mean"] == pytest.approx(np.mean(dice), abs=1e-12)
    csv_rows = (tmp_path / "per_image.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and "dice@model" in csv_rows[0]
