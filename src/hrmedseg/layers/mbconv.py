"""Convolution blocks: Conv-BN and the inverted-residual MBConv (HRMedSeg eq. 1)."""
from __future__ import annotations

import torch
from torch import nn

from .drop_path import DropPath


class ConvBN(nn.Sequential):
    """Conv2d without bias followed by BatchNorm2d."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, bn_weight_init: float = 1.0) -> None:
        super().__init__()
        self.add_module("conv", nn.Conv2d(in_ch, out_ch, kernel_size, stride,
                                          kernel_size // 2, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_ch)
        nn.init.constant_(bn.weight, bn_weight_init)
        self.add_module("bn", bn)


class MBConv(nn.Module):
    """Channel-interactive layer: 1×1 expand → act → 3×3 depthwise → act → 1×1 project,
    residual, act. The projection's BN weight starts at 0 so each block starts as identity."""

    def __init__(self, dim: int, expand_ratio: float = 2.0,
                 act_layer: type[nn.Module] = nn.GELU, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.act1 = act_layer()
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.act2 = act_layer()
        self.conv3 = ConvBN(hidden, dim, 1, bn_weight_init=0.0)
        self.drop_path = DropPath(drop_path)
        self.act3 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        return self.act3(x + self.drop_path(y))
