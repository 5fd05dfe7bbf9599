"""Parameter-free multiscale pooling δ of the ECM-/ME-Decoder (HRMedSeg eq. 6-7, Table 9)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


class MultiscalePooling(nn.Module):
    """δ(h) = h + Σ_k (AvgPool_k(h) − h), PoolFormer-style, k ∈ ``kernel_sizes``.

    Each term is stride-1 average pooling with ``padding = k // 2`` and
    ``count_include_pad=False`` (borders average only real pixels), minus the input, so the
    module is the identity when ``kernel_sizes`` is empty. No parameters.

    ``impl="separable"`` computes the same average as a (1, k) pass then a (k, 1) pass: with
    ``count_include_pad=False`` both the window sum and the count of real pixels factor over
    the two axes, so the result is identical up to rounding, with 2k instead of k² reads per
    output in forward and backward. (The k×k backward in channels-last was the largest kernel
    of an H100 training step: benchmarks/results/speed_gpu_h100/.) ``"direct"`` is the plain
    reference and this layer's default; HRMedSeg's config picks ``"separable"``, measured on an
    H200 at 1024², batch 16, bf16: 156 → 202 training images/s, 573 → 657 inference images/s,
    peak training memory 0.381 → 0.406 GB per image (benchmarks/results/speed_h200/).
    """

    def __init__(self, kernel_sizes: Sequence[int] = (5, 9, 13), impl: str = "direct") -> None:
        super().__init__()
        for k in kernel_sizes:
            if k < 1 or k % 2 == 0:
                raise ValueError(f"pooling kernel sizes must be odd and positive, got {k}")
        if impl not in ("direct", "separable"):
            raise ValueError(f"impl must be 'direct' or 'separable', got {impl!r}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.impl = impl

    def _avg(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if self.impl == "separable":
            x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, k // 2), count_include_pad=False)
            return F.avg_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=False)
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernel_sizes:
            return x
        n = len(self.kernel_sizes)
        pooled = sum(self._avg(x, k) for k in self.kernel_sizes)
        return pooled - (n - 1) * x

    def extra_repr(self) -> str:
        return f"kernel_sizes={self.kernel_sizes}, impl={self.impl!r}"
