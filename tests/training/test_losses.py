"""Tests for hrmedseg.training.losses: hand-computed values, gradients, perfect predictions, bf16."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hrmedseg.training.losses import (
    CELoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    build_loss,
)

SMOOTH = 1e-5


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _binary_case() -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 1.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    return logits, target


def test_binary_dice_by_hand() -> None:
    logits, target = _binary_case()
    p = [_sig(0.0), _sig(2.0), _sig(-2.0), _sig(1.0)]
    g = [1, 1, 0, 0]
    inter = sum(a * b for a, b in zip(p, g))
    expected = 1 - (2 * inter + SMOOTH) / (sum(p) + sum(g) + SMOOTH)
    assert DiceLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)
    assert DiceLoss(reduction="image")(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_multiclass_dice_by_hand() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]], [[0.0, 0.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[0, 2]]])
    probs = torch.softmax(logits, 1)[0, :, 0]  # (3, 2)
    onehot = [[1, 0], [0, 0], [0, 1]]

    def dice_c(c: int) -> float:
        inter = sum(float(probs[c, i]) * onehot[c][i] for i in range(2))
        return (2 * inter + SMOOTH) / (float(probs[c].sum()) + sum(onehot[c]) + SMOOTH)

    fg = 1 - (dice_c(1) + dice_c(2)) / 2
    allc = 1 - (dice_c(0) + dice_c(1) + dice_c(2)) / 3
    assert DiceLoss()(logits, target).item() == pytest.approx(fg, rel=1e-6)
    assert DiceLoss(include_background=True)(logits, target).item() == pytest.approx(allc, rel=1e-6)


def test_dice_matches_monai() -> None:
    from monai.losses import DiceLoss as MonaiDice

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 1, 8, 8, generator=g)
    target = (torch.rand(3, 8, 8, generator=g) > 0.6).long()
    ref = MonaiDice(sigmoid=True, batch=True, smooth_nr=SMOOTH, smooth_dr=SMOOTH)(logits, target[:, None].float())
    assert DiceLoss()(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)
    ref_img = MonaiDice(sigmoid=True, batch=False, smooth_nr=SMOOTH, smooth_dr=SMOOTH)(logits, target[:, None].float())
    assert DiceLoss(reduction="image")(logits, target).item() == pytest.approx(ref_img.item(), rel=1e-5)
    logits4 = torch.randn(2, 4, 8, 8, generator=g)
    target4 = torch.randint(0, 4, (2, 8, 8), generator=g)
    ref4 = MonaiDice(softmax=True, to_onehot_y=True, include_background=False, batch=True,
                     smooth_nr=SMOOTH, smooth_dr=SMOOTH)(logits4, target4[:, None])
    assert DiceLoss()(logits4, target4).item() == pytest.approx(ref4.item(), rel=1e-5)


def test_focal_by_hand_and_limits() -> None:
    logits, target = _binary_case()
    alpha, gamma = 0.25, 2.0
    vals = []
    for z, y in zip([0.0, 2.0, -2.0, 1.0], [1, 1, 0, 0]):
        p = _sig(z)
        pt = p if y else 1 - p
        at = alpha if y else 1 - alpha
        vals.append(-at * (1 - pt) ** gamma * math.log(pt))
    assert FocalLoss(alpha, gamma)(logits, target).item() == pytest.approx(sum(vals) / 4, rel=1e-6)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    assert FocalLoss(None, 0.0)(logits, target).item() == pytest.approx(bce.item(), rel=1e-6)
    g = torch.Generator().manual_seed(1)
    logits3 = torch.randn(2, 3, 5, 5, generator=g)
    target3 = torch.randint(0, 3, (2, 5, 5), generator=g)
    ce = F.cross_entropy(logits3, target3)
    assert FocalLoss(None, 0.0)(logits3, target3).item() == pytest.approx(ce.item(), rel=1e-6)
    w = torch.tensor([0.2, 0.3, 0.5])
    ce_w = (F.cross_entropy(logits3, target3, reduction="none") * w[target3]).mean()
    assert FocalLoss([0.2, 0.3, 0.5], 0.0)(logits3, target3).item() == pytest.approx(ce_w.item(), rel=1e-6)
    assert FocalLoss(0.25, 2.0)(logits3, target3).item() < ce.item()


def test_combined_losses_are_sums() -> None:
    logits, target = _binary_case()
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target.float())
    dice = DiceLoss()(logits, target)
    assert DiceCELoss()(logits, target).item() == pytest.approx(bce.item() + dice.item(), rel=1e-6)
    focal = FocalLoss()(logits, target)
    df = DiceFocalLoss(dice_weight=2.0, focal_weight=20.0)(logits, target)
    assert df.item() == pytest.approx(2 * dice.item() + 20 * focal.item(), rel=1e-6)
    g = torch.Generator().manual_seed(2)
    l3, t3 = torch.randn(2, 3, 4, 4, generator=g), torch.randint(0, 3, (2, 4, 4), generator=g)
    expected = F.cross_entropy(l3, t3) + DiceLoss()(l3, t3)
    assert DiceCELoss()(l3, t3).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["dice_focal", "dice_ce", "dice", "ce", "focal"])
@pytest.mark.parametrize("k", [1, 3])
def test_build_loss_gradients_perfect_and_bf16(name: str, k: int) -> None:
    loss_fn = build_loss(name, num_classes=k)
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, max(k, 2), (2, 6, 6), generator=g)
    target[:, 0, 0] = 1  # every class non-empty in each image
    target[:, 0, 1] = 0
    logits = torch.randn(2, k, 6, 6, generator=g, requires_grad=True)
    loss = loss_fn(logits, target)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # perfect prediction
    if k == 1:
        perfect = (target[:, None].float() * 2 - 1) * 30
    else:
        perfect = F.one_hot(target, k).permute(0, 3, 1, 2).float() * 60 - 30
    assert loss_fn(perfect, target).item() < 1e-4
    # bf16 logits are computed in float32
    lb = logits.detach().to(torch.bfloat16).requires_grad_(True)
    out = loss_fn(lb, target)
    out.backward()
    assert out.dtype == torch.float32 and lb.grad is not None and lb.grad.dtype == torch.bfloat16
    assert out.item() == pytest.approx(loss_fn(lb.detach().float(), target).item(), rel=1e-6)


def test_dice_empty_handling_and_ignore_index() -> None:
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert DiceLoss()(torch.full((1, 1, 4, 4), -30.0), empty).item() < 1e-4  # both empty -> dice 1
    assert DiceLoss()(torch.full((1, 1, 4, 4), 30.0), empty).item() > 0.99  # false positives
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # image 1 empty
    logits = torch.where(target[:, None] > 0, 30.0, -30.0)
    logits[1, 0, 0, 0] = 30.0  # one false-positive pixel in the empty image
    assert DiceLoss(reduction="image")(logits, target).item() > 0.45
    assert DiceLoss(reduction="image", ignore_empty=True)(logits, target).item() < 1e-4
    assert DiceLoss(reduction="batch")(logits, target).item() < 0.06
    # ignored pixels do not matter
    t = target.clone()
    t[:, 3] = 255
    a = torch.randn(2, 1, 4, 4)
    b = a.clone()
    b[:, :, 3] = 100.0
    for fn in (DiceLoss(ignore_index=255), FocalLoss(ignore_index=255), CELoss(ignore_index=255)):
        assert fn(a, t).item() == pytest.approx(fn(b, t).item(), rel=1e-6)
    a3 = torch.randn(2, 3, 4, 4)
    b3 = a3.clone()
    b3[:, :, 3] = 100.0
    fn3 = DiceCELoss(ignore_index=255)
    assert fn3(a3, t).item() == pytest.approx(fn3(b3, t).item(), rel=1e-6)


def test_build_loss_validation() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("lovasz", 1)
    fn = build_loss("dice_ce", 3)
    with pytest.raises(ValueError, match="num_classes"):
        fn(torch.randn(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="shape"):
        fn(torch.randn(1, 3, 4, 4), torch.zeros(1, 5, 4, dtype=torch.long))
    assert build_loss("dice-focal", 1, focal_weight=20.0).focal_weight == 20.0
    assert fn(torch.randn(1, 3, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long)).ndim == 0  # (B,1,H,W)
