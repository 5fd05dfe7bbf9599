"""Joint image/mask augmentation pipelines (albumentations) and prediction resizing.

Why this module exists: image and mask must receive the *same* geometric transform, and masks must
never be interpolated into non-existent labels. Every geometric step here uses NEAREST (exact)
interpolation for the mask and bilinear/area for the image, so labels stay in their original set.

Pipelines take the float32 HWC image in [0, 1] from :func:`hrmedseg.data.io.to_model_channels`
(uint8 input is divided by 255 first) and a 2-D integer mask, and return
``{"image": float32 (H, W, C), "mask": int64 (H, W)}`` at the requested ``size`` ((h, w) or int;
non-square allowed).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# albumentations otherwise queries PyPI for a newer version on import; a library should not make
# network calls (and clusters often have none). An explicit user setting is respected.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

__all__ = ["SegTransform", "train_transform", "eval_transform", "resize_mask_to"]

_MASK_INTERP = cv2.INTER_NEAREST_EXACT  # exact nearest: no half-pixel shift (unlike INTER_NEAREST)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


class SegTransform:
    """Callable wrapper around an ``A.Compose``: fixes input/output dtypes, stays picklable for workers."""

    def __init__(self, compose: A.Compose) -> None:
        self.compose = compose

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, Any]:
        img = np.asarray(image)
        if img.dtype == np.uint8:
            img = img.astype(np.float32) * np.float32(1 / 255)
        elif img.dtype != np.float32:
            img = img.astype(np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        if mask is None:
            out = self.compose(image=img)
            return {"image": np.ascontiguousarray(out["image"], dtype=np.float32)}
        m = np.asarray(mask)
        if m.dtype not in (np.uint8, np.uint16, np.int32, np.float32):
            # OpenCV cannot warp int64/bool; label maps fit in uint16 (or int32 beyond 65535).
            m = m.astype(np.uint8 if m.max(initial=0) < 256 else (np.uint16 if m.max() < 65536 else np.int32))
        out = self.compose(image=img, mask=m)
        x = out["image"]
        if x.ndim == 2:
            x = x[:, :, None]
        return {"image": np.ascontiguousarray(x, dtype=np.float32),
                "mask": np.ascontiguousarray(out["mask"]).astype(np.int64)}

    def __repr__(self) -> str:
        return f"SegTransform({self.compose!r})"


def _resize(h: int, w: int) -> A.BasicTransform:
    # area_for_downscale: INTER_AREA when shrinking (anti-aliased), bilinear when enlarging.
    return A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=_MASK_INTERP,
                    area_for_downscale="image")


def train_transform(
    size: int | Sequence[int],
    strength: Literal["paper", "strong", "none"] = "paper",
) -> SegTransform:
    """Training augmentation at the model size.

    ``"paper"``: resize, horizontal/vertical flips, random 90-degree rotation (square sizes only: a
    rotation would swap h and w otherwise), a small affine (scale 0.9-1.1, rotate +-15 degrees, shift
    +-6.25%, p=0.5) and colour jitter (brightness/contrast/saturation 0.2, hue 0.02, p=0.5), the usual
    recipe of HRMedSeg/QTSeg-style training. ``"strong"`` widens affine and jitter and adds an elastic
    deformation (mean displacement ~1% of the size, p=0.3) for small data sets. ``"none"`` is
    :func:`eval_transform`. Masks are always warped with NEAREST interpolation and filled with 0
    (background) where the affine moves the image out of frame.
    """
    h, w = _as_hw(size)
    if strength == "none":
        return eval_transform((h, w))
    if strength not in ("paper", "strong"):
        raise ValueError(f"strength must be 'paper', 'strong' or 'none', got {strength!r}")
    strong = strength == "strong"
    ops: list[A.BasicTransform] = [_resize(h, w), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if h == w:
        ops.append(A.RandomRotate90(p=0.5))
    ops.append(A.Affine(
        scale=(0.75, 1.25) if strong else (0.9, 1.1),
        rotate=(-30, 30) if strong else (-15, 15),
        translate_percent=(-0.1, 0.1) if strong else (-0.0625, 0.0625),
        interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7 if strong else 0.5,
    ))
    if strong:
        s = min(h, w)
        ops.append(A.ElasticTransform(alpha=0.0053 * s * s, sigma=0.04 * s, interpolation=cv2.INTER_LINEAR,
                                      mask_interpolation=cv2.INTER_NEAREST,
                                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.3))
    j = 0.3 if strong else 0.2
    ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.05 if strong else 0.02,
                             p=0.7 if strong else 0.5))
    return SegTransform(A.Compose(ops))


def eval_transform(size: int | Sequence[int] | None) -> SegTransform:
    """Deterministic resize to the model size (image area/bilinear, mask nearest); ``None`` keeps the size."""
    if size is None:
        return SegTransform(A.Compose([]))
    h, w = _as_hw(size)
    return SegTransform(A.Compose([_resize(h, w)]))


def resize_mask_to(
    pred: torch.Tensor,
    size: int | Sequence[int],
    *,
    from_logits: bool = True,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Map network output ``(B, K, h, w)`` or ``(K, h, w)`` back to labels at ``size`` (e.g. ``orig_size``).

    Why here: the model sees resized images, metrics must be computed at the original resolution.
    Scores are resized bilinearly (float32) *before* the decision, which gives smoother boundaries than
    resizing labels: K == 1 is thresholded (sigmoid(logit) > ``threshold``, or prob > ``threshold`` with
    ``from_logits=False``), K > 1 takes the argmax. Returns long labels ``(B, H, W)`` or ``(H, W)``;
    images are processed one at a time to bound memory at large sizes.
    """
    h, w = _as_hw(size)
    squeeze = pred.ndim == 3
    x = pred[None] if squeeze else pred
    if x.ndim != 4:
        raise ValueError(f"expected (B, K, h, w) or (K, h, w), got shape {tuple(pred.shape)}")
    outs = []
    for b in range(x.shape[0]):
        up = F.interpolate(x[b: b + 1].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        if up.shape[0] == 1:
            if from_logits:
                t = float(np.log(threshold / (1.0 - threshold))) if 0.0 < threshold < 1.0 else (
                    float("inf") if threshold >= 1.0 else float("-inf"))
                outs.append((up[0] > t).long())
            else:
                outs.append((up[0] > threshold).long())
        else:
            outs.append(up.argmax(dim=0))
    out = torch.stack(outs)
    return out[0] if squeeze else out
