"""Segmentation losses used by the reproduced papers.

Why this module exists: the papers differ in their loss (HRMedSeg: Dice + focal; HER-Seg and QTSeg:
cross-entropy + Dice with lambda1 = lambda2 = 1) and in details that change results (sigmoid vs
softmax, per-image vs batch Dice, empty masks). All of them are here with one convention:

* logits ``(B, K, H, W)``; target ``(B, H, W)`` long (``(B, 1, H, W)`` is accepted).
* K == 1 is a binary model: sigmoid, target in {0, 1}, BCE instead of CE.
* K > 1 is multi-class: softmax, one-hot targets in 0..K-1.
* computation is float32 even for bf16/fp16 logits (autocast-safe).
* ``ignore_index`` pixels (e.g. 255) are excluded from every term.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..models.esp_medsam import sppg_targets

__all__ = ["DiceLoss", "FocalLoss", "DiceFocalLoss", "DiceCELoss", "CELoss", "build_loss", "LOSSES",
           "esp_medsam_loss"]


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int | None, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """float32 logits, long target (B, H, W) with ignored pixels set to 0, and the valid mask (or None)."""
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, K, H, W), got shape {tuple(logits.shape)}")
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}")
    k = logits.shape[1]
    if num_classes is not None and k != num_classes and not (num_classes == 2 and k == 1):
        raise ValueError(f"logits have {k} channels but the loss was built for num_classes={num_classes}")
    target = target.long()
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index
        target = torch.where(valid, target, torch.zeros_like(target))
    return logits.float(), target, valid


def _one_hot(target: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(target.clamp(0, k - 1), k).permute(0, 3, 1, 2).float()


class DiceLoss(nn.Module):
    """Soft Dice loss: ``1 - (2 * sum(p * g) + smooth) / (sum(p) + sum(g) + smooth)``.

    Binary (K == 1) uses sigmoid probabilities of the foreground; multi-class uses softmax against
    one-hot targets, averaged over classes (class 0 dropped when ``include_background=False``, the
    default, as nnU-Net does; for K == 2 that leaves the foreground Dice).

    ``reduction="batch"`` (default) sums intersections and areas over the whole batch before the
    ratio (nnU-Net "batch dice": stable, empty images simply add to the denominator);
    ``"image"`` computes one Dice per image and class and averages them.

    ``smooth`` (default 1e-5, added to numerator and denominator) only prevents 0/0. Empty-class
    handling: where a class is absent from the target *and* the prediction, Dice is 1 (loss 0);
    where it is absent from the target but predicted, Dice ~ 0 (loss ~ 1) with a vanishing gradient,
    so CE/focal terms have to suppress false positives on empty images. With
    ``ignore_empty=True`` (only for ``"image"``) such (image, class) pairs are left out of the mean.
    """

    def __init__(
        self,
        smooth: float = 1e-5,
        reduction: Literal["batch", "image"] = "batch",
        include_background: bool = False,
        ignore_empty: bool = False,
        ignore_index: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if reduction not in ("batch", "image"):
            raise ValueError(f"reduction must be 'batch' or 'image', got {reduction!r}")
        self.smooth = float(smooth)
        self.reduction = reduction
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, t, valid = _prepare(logits, target, self.num_classes, self.ignore_index)
        k = x.shape[1]
        if k == 1:
            probs = torch.sigmoid(x)
            onehot = (t > 0).float()[:, None]
        else:
            probs = torch.softmax(x, dim=1)
            onehot = _one_hot(t, k)
            if not self.include_background:
                probs, onehot = probs[:, 1:], onehot[:, 1:]
        if valid is not None:
            v = valid[:, None].float()
            probs, onehot = probs * v, onehot * v
        dims = (0, 2, 3) if self.reduction == "batch" else (2, 3)
        inter = (probs * onehot).sum(dims)
        denom = probs.sum(dims) + onehot.sum(dims)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        if self.reduction == "image" and self.ignore_empty:
            keep = onehot.sum(dims) > 0
            if not bool(keep.any()):
                return (dice * 0.0).sum()  # keeps the graph, contributes nothing
            return 1.0 - dice[keep].mean()
        return 1.0 - dice.mean()


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)``, mean over (non-ignored) pixels.

    Binary (K == 1): sigmoid focal loss as in RetinaNet/SAM; ``alpha`` weights foreground pixels and
    ``1 - alpha`` background (``None`` disables weighting). Multi-class: softmax focal; a sequence
    ``alpha`` gives per-class weights, a scalar gives ``alpha`` to foreground classes and
    ``1 - alpha`` to class 0 (consistent with the binary case). ``gamma=0`` and ``alpha=None`` reduce
    to BCE / CE.
    """

    def __init__(
        self,
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        ignore_index: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.alpha = alpha
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, t, valid = _prepare(logits, target, self.num_classes, self.ignore_index)
        k = x.shape[1]
        if k == 1:
            g = (t > 0).float()
            z = x[:, 0]
            ce = F.binary_cross_entropy_with_logits(z, g, reduction="none")
            p = torch.sigmoid(z)
            p_t = p * g + (1 - p) * (1 - g)
            loss = ce * (1 - p_t).pow(self.gamma) if self.gamma else ce
            if self.alpha is not None:
                if not isinstance(self.alpha, (int, float)):
                    raise ValueError("binary focal loss takes a scalar alpha")
                a = float(self.alpha)
                loss = loss * (a * g + (1 - a) * (1 - g))
        else:
            logp = F.log_softmax(x, dim=1)
            logp_t = logp.gather(1, t[:, None])[:, 0]
            p_t = logp_t.exp()
            loss = -logp_t * (1 - p_t).pow(self.gamma) if self.gamma else -logp_t
            if self.alpha is not None:
                if isinstance(self.alpha, (int, float)):
                    w = torch.full((k,), float(self.alpha), device=x.device)
                    w[0] = 1.0 - float(self.alpha)
                else:
                    w = torch.as_tensor(list(self.alpha), dtype=torch.float32, device=x.device)
                    if w.numel() != k:
                        raise ValueError(f"alpha has {w.numel()} weights for {k} classes")
                loss = loss * w[t]
        if valid is not None:
            n = valid.sum().clamp_min(1)
            return (loss * valid).sum() / n
        return loss.mean()


class CELoss(nn.Module):
    """Cross-entropy for K > 1, BCE-with-logits for K == 1 (binary), float32, ``ignore_index`` aware."""

    def __init__(
        self, weight: Sequence[float] | None = None, ignore_index: int | None = None, num_classes: int | None = None
    ) -> None:
        super().__init__()
        self.weight = None if weight is None else torch.as_tensor(list(weight), dtype=torch.float32)
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, t, valid = _prepare(logits, target, self.num_classes, self.ignore_index)
        if x.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(x[:, 0], (t > 0).float(), reduction="none")
            if valid is not None:
                return (loss * valid).sum() / valid.sum().clamp_min(1)
            return loss.mean()
        w = None if self.weight is None else self.weight.to(x.device)
        if valid is not None:
            t = torch.where(valid, t, torch.full_like(t, -100))
        return F.cross_entropy(x, t, weight=w, ignore_index=-100)


class DiceFocalLoss(nn.Module):
    """HRMedSeg recipe: ``dice_weight * Dice + focal_weight * Focal`` (defaults 1 and 1).

    SAM itself used focal:dice = 20:1; set ``focal_weight=20`` to reproduce that balance.
    Keyword arguments for the parts: ``smooth``, ``reduction``, ``include_background``, ``ignore_empty``
    (Dice) and ``alpha``, ``gamma`` (focal).
    """

    def __init__(
        self,
        dice_weight: float = 1.0,
        focal_weight: float = 1.0,
        *,
        alpha: float | Sequence[float] | None = 0.25,
        gamma: float = 2.0,
        smooth: float = 1e-5,
        reduction: Literal["batch", "image"] = "batch",
        include_background: bool = False,
        ignore_empty: bool = False,
        ignore_index: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.dice_weight, self.focal_weight = float(dice_weight), float(focal_weight)
        self.dice = DiceLoss(smooth, reduction, include_background, ignore_empty, ignore_index, num_classes)
        self.focal = FocalLoss(alpha, gamma, ignore_index, num_classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice_weight * self.dice(logits, target) + self.focal_weight * self.focal(logits, target)


class DiceCELoss(nn.Module):
    """HER-Seg / QTSeg recipe: ``lambda_ce * CE + lambda_dice * Dice`` with lambda1 = lambda2 = 1.

    Binary models (K == 1) use BCE-with-logits and sigmoid Dice; multi-class use CE and softmax Dice.
    """

    def __init__(
        self,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        *,
        ce_weight: Sequence[float] | None = None,
        smooth: float = 1e-5,
        reduction: Literal["batch", "image"] = "batch",
        include_background: bool = False,
        ignore_empty: bool = False,
        ignore_index: int | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.lambda_ce, self.lambda_dice = float(lambda_ce), float(lambda_dice)
        self.ce = CELoss(ce_weight, ignore_index, num_classes)
        self.dice = DiceLoss(smooth, reduction, include_background, ignore_empty, ignore_index, num_classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_ce * self.ce(logits, target) + self.lambda_dice * self.dice(logits, target)


LOSSES: dict[str, type[nn.Module]] = {
    "dice_focal": DiceFocalLoss, "dice_ce": DiceCELoss, "dice": DiceLoss, "ce": CELoss, "focal": FocalLoss,
}


def build_loss(name: str, num_classes: int, **kw: object) -> nn.Module:
    """Create a loss by name: ``dice_focal``, ``dice_ce``, ``dice``, ``ce`` or ``focal``.

    ``num_classes`` is the number of output channels (1 for a binary sigmoid model) and is checked
    against the logits at every call; other keyword arguments go to the loss class.
    """
    key = name.lower().replace("-", "_").replace("+", "_")
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return LOSSES[key](num_classes=num_classes, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# ESP-MedSAM (training objective of models/esp_medsam.py; the model itself needs no loss)
# ---------------------------------------------------------------------------------------------

_FOCAL = FocalLoss(alpha=0.25, gamma=2.0)
_DICE = DiceLoss()


def esp_medsam_loss(logits: torch.Tensor, sppg_logits: torch.Tensor, mask: torch.Tensor,
                    lam: float = 20.0, sppg_weight: float = 1.0,
                    return_parts: bool = False) -> Any:
    """L = λ·focal(M, y) + Dice(M, y) + w·BCE(SPPG, maxpool(y)) (eq. 8 + eq. 5).

    λ = 20 by default (SAM's 20:1 focal:Dice; the paper does not state its value), w = 1.
    ``mask`` (B, 1, H, W) or (B, H, W) binary at the logits' size; the SPPG targets are the
    mask max-pooled to the patch logits' grid. ``return_parts`` also returns a dict of the
    three detached terms.
    """
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    target = (mask > 0).float()
    focal = _FOCAL(logits, target)
    dice = _DICE(logits, target)
    patches = sppg_targets(target, tuple(sppg_logits.shape[-2:]))
    bce = F.binary_cross_entropy_with_logits(sppg_logits.float(), patches)
    total = lam * focal + dice + sppg_weight * bce
    if return_parts:
        return total, {"focal": focal.detach(), "dice": dice.detach(), "sppg_bce": bce.detach()}
    return total
