"""The batched torch Dice/IoU (training validation, prediction) agree with the numpy reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hrmedseg.metrics.segmentation import dice, iou
from hrmedseg.metrics.tensor import logits_to_labels, per_image_dice_iou


def test_logits_to_labels_binary_and_softmax():
    binary = torch.tensor([[[[-1.0, 0.5], [0.0, 2.0]]]])              # (1, 1, 2, 2)
    assert logits_to_labels(binary).tolist() == [[[0, 1], [0, 1]]]    # logit > 0, 0 is background
    softmax = torch.tensor([[[[3.0, 0.0]], [[1.0, 2.0]], [[0.0, 5.0]]]])  # (1, 3, 1, 2)
    assert logits_to_labels(softmax).tolist() == [[[0, 2]]]


@pytest.mark.parametrize("num_classes", [1, 4])
def test_per_image_dice_iou_matches_numpy_reference(num_classes):
    rng = np.random.default_rng(num_classes)
    k = max(num_classes, 2)
    pred = rng.integers(0, k, (5, 12, 10))
    target = rng.integers(0, k, (5, 12, 10))
    pred[1] = target[1]                  # a perfect image
    pred[2][pred[2] == 1] = 0            # class 1 absent from the prediction only
    pred[3][pred[3] == 1] = 0            # class 1 absent from both
    target[3][target[3] == 1] = 0
    d, j = per_image_dice_iou(torch.from_numpy(pred), torch.from_numpy(target), num_classes)
    classes = [1] if num_classes == 1 else list(range(1, num_classes))
    assert d.shape == j.shape == (5, len(classes))
    for b in range(5):
        for i, c in enumerate(classes):
            assert d[b, i].item() == pytest.approx(dice(pred[b] == c, target[b] == c), abs=1e-6)
            assert j[b, i].item() == pytest.approx(iou(pred[b] == c, target[b] == c), abs=1e-6)
    assert d[3, 0].item() == 1.0 and j[3, 0].item() == 1.0     # both empty: 1 by the policy
    assert d[2, 0].item() == 0.0                                # one empty: 0
