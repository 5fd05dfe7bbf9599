"""Mask logits as dot products of per-token weight vectors with a feature map (the SAM-style
hypernetwork output of QTSeg, ESP-MedSAM and SAM's mask decoder).

The feature map usually reaches this product in channels-last layout (a LayerNorm2d over the
channel axis returns one). Written as ``weights @ features.reshape(B, C, H·W)``, the backward
hands the feature map a gradient in the *other* layout, and every elementwise backward before
it (GELU, the norm) then reads two layouts at once: on the CPU such a GELU backward over
(1, 64, 256², fp32) took 127 ms instead of 8-11 ms. :func:`token_masks` multiplies in the
features' own layout, so their gradient comes back in it.
"""
from __future__ import annotations

import torch

__all__ = ["token_masks"]


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D tensor laid out channels-last and not also plain contiguous."""
    return (x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last))


def token_masks(weights: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``masks[b, k] = Σ_c weights[b, k, c] · features[b, c]``: weights (B, K, C), features
    (B, C, H, W) → (B, K, H, W), contiguous."""
    b, c, h, w = features.shape
    if is_channels_last(features):
        per_pixel = features.permute(0, 2, 3, 1).reshape(b, h * w, c)        # a view
        masks = (per_pixel @ weights.transpose(1, 2)).transpose(1, 2)          # (B, K, H·W)
        return masks.contiguous().reshape(b, -1, h, w)
    return (weights @ features.reshape(b, c, h * w)).reshape(b, -1, h, w)
