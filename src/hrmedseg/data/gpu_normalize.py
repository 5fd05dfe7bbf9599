"""Normalise uint8 image batches on whatever device they are on (the GPU half of the uint8 fast path).

Why this module exists: at 1024x1024 the CPU cannot afford to widen every image to float32 and
normalise it in the DataLoader workers (and to ship 4x more bytes to the GPU).
:class:`~hrmedseg.data.datasets.SegmentationDataset` with ``output="uint8"`` therefore returns uint8
images, and the training loop calls :func:`normalize_batch` after moving the batch to the device.
The result equals the CPU path ``normalize(to_model_channels(img, C), mode)`` to float rounding
(same float32 operations in the same order).
"""
from __future__ import annotations

from collections.abc import Sequence
import numpy as np
import torch

from .io import NormMode, imagenet_stats

__all__ = ["normalize_batch", "normalize_unit_batch"]


def normalize_batch(
    images_uint8: torch.Tensor,
    mode: NormMode = "imagenet",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """Scale a uint8 batch ``(B, C, H, W)`` to [0, 1] (/255) and normalise it like :func:`~hrmedseg.data.io.normalize`.

    ``"imagenet"``: (x - mean) / std per channel (3 channels: ImageNet statistics, other channel counts
    the averaged ones; ``mean``/``std`` override); ``"minmax"``: per image over all channels to [0, 1],
    a constant image becomes 0; ``"none"``: x / 255. Returns float32 on the input's device; any memory
    format (e.g. channels_last) is kept.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"normalize_batch expects a uint8 tensor, got {images_uint8.dtype}")
    if images_uint8.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(images_uint8.shape)}")
    x = images_uint8.to(torch.float32)
    x.mul_(float(np.float32(1.0 / 255.0)))  # the float32 factor io._scale_to_unit uses
    return _normalize_unit(x, mode, mean, std)


def normalize_unit_batch(
    images: torch.Tensor,
    mode: NormMode = "imagenet",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """:func:`normalize_batch` for a float batch already in [0, 1], e.g. the unrounded output of
    :meth:`hrmedseg.data.augment.BatchAugment.apply` with ``keep_float=True``; works in place on a
    float32 input."""
    if not images.is_floating_point():
        raise TypeError(f"normalize_unit_batch expects a float tensor in [0, 1], got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"expected (B, C, H, W), got shape {tuple(images.shape)}")
    return _normalize_unit(images.to(torch.float32), mode, mean, std)


def _normalize_unit(x: torch.Tensor, mode: str, mean: Sequence[float] | None,
                    std: Sequence[float] | None) -> torch.Tensor:
    if mode == "none":
        return x
    if mode == "minmax":
        b = x.shape[0]
        lo, hi = x.amin(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3))
        # Same arithmetic as io.normalize: range and its reciprocal in float64, applied in float32.
        rng = hi.double() - lo.double()
        ok = rng > 1e-12
        scale = torch.where(ok, 1.0 / torch.where(ok, rng, torch.ones_like(rng)), torch.zeros_like(rng)).float()
        x.sub_(lo.view(b, 1, 1, 1)).mul_(scale.view(b, 1, 1, 1))
        return x
    if mode == "imagenet":
        c = x.shape[1]
        m, s = (torch.from_numpy(v.reshape(-1)).to(x.device) for v in imagenet_stats(c, mean, std))
        if m.numel() not in (1, c) or s.numel() not in (1, c):
            raise ValueError(f"mean/std have {m.numel()}/{s.numel()} values for {c} channels")
        x.sub_(m.view(1, -1, 1, 1)).div_(s.view(1, -1, 1, 1))
        return x
    raise ValueError(f"unknown normalisation mode {mode!r}; use 'imagenet', 'minmax' or 'none'")
