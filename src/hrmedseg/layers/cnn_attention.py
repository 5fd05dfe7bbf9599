"""Attention modules for CNN feature maps: CBAM's spatial attention and QTSeg's channel
attention block.

* :class:`SpatialAttention` — the spatial attention module (SAM) of CBAM (Woo et al., ECCV
  2018), QTSeg eq. (2): ``a = σ(f^{k×k}([AvgPool_c(S); MaxPool_c(S)]))`` where the two pools run
  over the channel axis, giving a (B, 1, H, W) map; output ``S · a`` (``+ S`` with
  ``residual=True``, as QTSeg's released model does). Its cost does not depend on H·W beyond
  one k×k conv on 2 channels: no H·W × H·W matrix.
* :class:`ChannelAttentionBlock` — QTSeg's CAB, eq. (1): self-attention among the C channels
  of a feature map, each channel a token of dimension H·W:
  ``S_CAB = γ · softmax(Q Kᵀ) V + S_skip`` with ``Q = K = V = S_skip = Flatten(S)`` (C × HW).
  The affinity is only C × C. ``γ`` is a learned scalar initialised to 0 (as in DANet's channel
  attention), so the block starts as the identity.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["SpatialAttention", "ChannelAttentionBlock"]


class SpatialAttention(nn.Module):
    """CBAM spatial attention: sigmoid(conv_k×k([mean_c(x), max_c(x)])) · x (+ x)."""

    def __init__(self, kernel_size: int = 7, residual: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.residual = residual

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1, H, W) gate σ(f([mean; max]))."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.attention_map(x)
        return y + x if self.residual else y

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class ChannelAttentionBlock(nn.Module):
    """Channel self-attention (eq. 1): γ · softmax(X Xᵀ) X + X with X = (B, C, H·W).

    The affinity ``X Xᵀ`` is unscaled, as in eq. (1); it is formed and soft-maxed in float32
    (sums over H·W positions overflow half precision at high resolution).
    """

    def __init__(self, gamma_init: float = 0.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1,), float(gamma_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            flat = x.reshape(b, c, h * w).float()
            affinity = torch.bmm(flat, flat.transpose(1, 2))      # (B, C, C)
            attn = affinity.softmax(dim=-1)
            out = torch.bmm(attn, flat).reshape(b, c, h, w)
        return (self.gamma * out).to(x.dtype) + x
