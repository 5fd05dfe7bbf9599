"""Batched Dice/IoU on label maps in torch, for validation during training (GPU friendly).

Same per-image definitions and empty-mask policy as :mod:`hrmedseg.metrics.segmentation`
(both empty → 1); the numpy module is the reference and the test checks they agree.
"""
from __future__ import annotations

import torch


def logits_to_labels(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) logits → (B, H, W) labels: sigmoid > 0.5 for K = 1, argmax otherwise."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long()
    return logits.argmax(dim=1)


def per_image_dice_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and foreground class: Dice and IoU, shape (B, C_fg).

    Binary models (``num_classes`` = 1) score label 1; softmax models score labels 1..K-1.
    """
    classes = [1] if num_classes == 1 else list(range(1, num_classes))
    dices, ious = [], []
    for c in classes:
        p = (pred == c).flatten(1).float()
        t = (target == c).flatten(1).float()
        inter = (p * t).sum(1)
        ps, ts = p.sum(1), t.sum(1)
        union = ps + ts - inter
        both_empty = (ps + ts) == 0
        dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / (ps + ts).clamp_min(1))
        iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp_min(1))
        dices.append(dice)
        ious.append(iou)
    return torch.stack(dices, 1), torch.stack(ious, 1)
