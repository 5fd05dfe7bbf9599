"""Per-item joint image/mask augmentation pipelines (numpy in, numpy out) and prediction resizing.

Why this module exists: image and mask must receive the *same* geometric transform, and masks must
never be interpolated into non-existent labels. The pipelines are the batched tensor ops of
:mod:`hrmedseg.data.augment` applied to a batch of one, so the CPU per-item path and the batched
GPU path are one implementation with the same random parameters for the same seed: masks are warped
with nearest interpolation (labels stay in their original set), images bilinearly (area average when
shrinking).

Pipelines take either the float32 HWC image in [0, 1] from :func:`hrmedseg.data.io.to_model_channels`
or a uint8 HWC image, and a 2-D integer mask, and return ``{"image": float32 (H, W, C), "mask": int64
(H, W)}`` at the requested ``size`` ((h, w) or int; non-square allowed).

uint8 fast path: uint8 images are augmented in float and rounded to uint8 once at the end, then
divided by 255, or returned as uint8 with ``keep_uint8=True`` (the dataset's ``output="uint8"``
mode, normalised later on the GPU by :func:`hrmedseg.data.gpu_normalize.normalize_batch`). The
parameters drawn for a given seed do not depend on the dtype: masks are identical and images differ
by that one rounding (at most half a level).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .augment import BatchAugment, as_hw

__all__ = ["SegTransform", "train_transform", "eval_transform", "resize_mask_to"]

_TORCH_MASK_DTYPES = (np.uint8, np.int16, np.int32, np.int64)


class SegTransform:
    """Callable per-item pipeline around a :class:`~hrmedseg.data.augment.BatchAugment`: numpy in and
    out, fixed dtypes, picklable for DataLoader workers.

    Input images: uint8 images are augmented and rounded once to uint8 (see the module docstring);
    any other dtype is converted to float32 first (16-bit and float images must already be scaled,
    e.g. by :func:`~hrmedseg.data.io.to_model_channels`). Output: float32 ``(H, W, C)`` in [0, 1] and
    an int64 mask; with ``keep_uint8=True`` (constructor default or per call) a uint8 input instead
    comes back as uint8 ``(H, W, C)`` with the mask in its compact integer dtype (uint8 for up to 256
    labels), so nothing is widened on the CPU. Non-uint8 inputs always give float32/int64.

    Randomness: :meth:`set_random_seed` (called per item by the training sampler's ``SeededDataset``)
    fixes the next draws; without it every call draws a fresh seed from torch's global generator
    (which DataLoader seeds differently per worker).

    ``channel_independent`` declares that every op treats channels alike, so a grey image may be
    augmented with one channel and repeated to the model's channels afterwards (3x less work; exact
    for these policies, whose colour jitter leaves grey pixels grey: the luma weights sum to 1).
    """

    accepts_keep_uint8 = True  # lets SegmentationDataset detect the uint8 fast path

    def __init__(self, augment: BatchAugment, *, keep_uint8: bool = False, channel_independent: bool = True) -> None:
        self.augment = augment
        self.keep_uint8 = bool(keep_uint8)
        self.channel_independent = bool(channel_independent)
        self._generator: torch.Generator | None = None

    def set_random_seed(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(int(seed))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generator"] = None  # generators do not pickle; workers are seeded per item
        return state

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None,
                 keep_uint8: bool | None = None) -> dict[str, Any]:
        keep = self.keep_uint8 if keep_uint8 is None else bool(keep_uint8)
        img = np.asarray(image)
        is_u8 = img.dtype == np.uint8
        if not is_u8 and img.dtype != np.float32:
            img = img.astype(np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]
        m = None
        if mask is not None:
            m_np = np.asarray(mask)
            if m_np.dtype not in _TORCH_MASK_DTYPES:
                m_np = m_np.astype(np.uint8 if m_np.dtype == np.bool_ else np.int64)
            m = torch.from_numpy(np.ascontiguousarray(m_np))[None]
        gen = self._generator
        if gen is None:
            gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        params = self.augment.draw(1, gen)
        y, mo = self.augment.apply(x, m, params)
        out_img = y[0].permute(1, 2, 0).numpy()
        if is_u8 and not keep:
            res = np.empty(out_img.shape, np.float32)
            np.multiply(out_img, np.float32(1 / 255), out=res, dtype=np.float32)  # as to_model_channels scales
            out_img = res
        out: dict[str, Any] = {"image": np.ascontiguousarray(out_img)}
        if mo is not None:
            mo_np = mo[0].numpy()
            out["mask"] = np.ascontiguousarray(mo_np if (is_u8 and keep) else mo_np.astype(np.int64))
        return out

    def __repr__(self) -> str:
        return f"SegTransform({self.augment!r}, keep_uint8={self.keep_uint8})"


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
    (background) where the affine moves the image out of frame. The ops and their parameters:
    :mod:`hrmedseg.data.augment`.
    """
    h, w = as_hw(size)
    if strength == "none":
        return eval_transform((h, w))
    if strength not in ("paper", "strong"):
        raise ValueError(f"strength must be 'paper', 'strong' or 'none', got {strength!r}")
    return SegTransform(BatchAugment((h, w), strength))


def eval_transform(size: int | Sequence[int] | None) -> SegTransform:
    """Deterministic resize to the model size (image area/bilinear, mask nearest); ``None`` keeps the size."""
    return SegTransform(BatchAugment(None if size is None else as_hw(size), "none"))


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
    h, w = as_hw(size)
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
