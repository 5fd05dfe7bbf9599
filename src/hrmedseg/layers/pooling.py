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
    """

    def __init__(self, kernel_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        for k in kernel_sizes:
            if k < 1 or k % 2 == 0:
                raise ValueError(f"pooling kernel sizes must be odd and positive, got {k}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernel_sizes:
            return x
        n = len(self.kernel_sizes)
        pooled = sum(
            F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
            for k in self.kernel_sizes
        )
        return pooled - (n - 1) * x

    def extra_repr(self) -> str:
        return f"kernel_sizes={self.kernel_sizes}"
