"""YOLOv8 convolution blocks: ``Conv`` (conv-BN-SiLU), ``Bottleneck``, ``C2f`` and ``SPPF``.

These are the parts of the YOLOv8 backbone and PAN neck (Varghese & M., ADICS 2024; the
"YOLOv8" encoder of QTSeg, papers/qtseg.txt §III-A). Written from the architecture's
description:

* ``Conv``: Conv2d (no bias, "same" padding) → BatchNorm2d → SiLU.
* ``Bottleneck``: two 3×3 ``Conv`` with a residual when the widths match and ``shortcut``.
* ``C2f`` ("CSP with 2 convs, faster"): a 1×1 ``Conv`` to 2c channels split in two halves; the
  second half runs through ``n`` bottlenecks one after the other, every intermediate output is
  kept; the 2 + n pieces are concatenated and fused by a 1×1 ``Conv``.
* ``SPPF``: 1×1 ``Conv`` to half width, three chained k×k stride-1 max-pools (equivalent to
  SPP with k, 2k−1, 3k−2 windows), concatenation of the 4 maps, 1×1 ``Conv``.
* ``ConvTranspose``: the learned-upsampling counterpart of ``Conv`` (ConvTranspose2d without
  bias → BN → SiLU).

BatchNorm uses YOLOv8's ``eps = 1e-3`` and ``momentum = 0.03`` by default.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["Conv", "ConvTranspose", "Bottleneck", "C2f", "SPPF", "autopad"]

BN_EPS = 1e-3
BN_MOMENTUM = 0.03


def autopad(kernel_size: int, padding: int | None = None, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 ("same")."""
    if padding is not None:
        return padding
    k = dilation * (kernel_size - 1) + 1
    return k // 2


class Conv(nn.Module):
    """Conv2d(bias=False) → BatchNorm2d → SiLU (``act=False`` leaves the activation out)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1,
                 padding: int | None = None, groups: int = 1, dilation: int = 1,
                 act: bool = True, bn_eps: float = BN_EPS, bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride,
                              autopad(kernel_size, padding, dilation), dilation=dilation,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """k×k Conv (to ``expansion``·out) → k×k Conv, plus the input when ``shortcut`` and the
    widths match."""

    def __init__(self, in_ch: int, out_ch: int, shortcut: bool = True, groups: int = 1,
                 kernel_sizes: tuple[int, int] = (3, 3), expansion: float = 0.5) -> None:
        super().__init__()
        hidden = int(out_ch * expansion)
        self.cv1 = Conv(in_ch, hidden, kernel_sizes[0], 1)
        self.cv2 = Conv(hidden, out_ch, kernel_sizes[1], 1, groups=groups)
        self.add = shortcut and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """CSP bottleneck with two convolutions: split, ``n`` chained bottlenecks on one half,
    concatenate all intermediate maps, fuse with a 1×1 Conv.

    ``grad_checkpointing`` (set by the owning model) recomputes the block in backward.
    """

    def __init__(self, in_ch: int, out_ch: int, n: int = 1, shortcut: bool = False,
                 groups: int = 1, expansion: float = 0.5) -> None:
        super().__init__()
        self.hidden = int(out_ch * expansion)
        self.cv1 = Conv(in_ch, 2 * self.hidden, 1, 1)
        self.cv2 = Conv((2 + n) * self.hidden, out_ch, 1, 1)
        self.m = nn.ModuleList(
            Bottleneck(self.hidden, self.hidden, shortcut, groups, (3, 3), expansion=1.0)
            for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.cv1(x).chunk(2, dim=1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: 1×1 Conv to half width, three chained k×k max-pools,
    concat of the four maps, 1×1 Conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = in_ch // 2
        self.cv1 = Conv(in_ch, hidden, 1, 1)
        self.cv2 = Conv(hidden * 4, out_ch, 1, 1)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(self.m(ys[-1]))
        return self.cv2(torch.cat(ys, dim=1))


class ConvTranspose(nn.Module):
    """ConvTranspose2d(k, stride s, no bias) → BatchNorm2d → SiLU: YOLO-style learned
    upsampling by ``stride`` (kernel = stride gives non-overlapping ×s upsampling)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 2, stride: int = 2,
                 padding: int = 0, act: bool = True, bn_eps: float = BN_EPS,
                 bn_momentum: float = BN_MOMENTUM) -> None:
        super().__init__()
        self.conv_transpose = nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride, padding,
                                                 bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = nn.SiLU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv_transpose(x)))
