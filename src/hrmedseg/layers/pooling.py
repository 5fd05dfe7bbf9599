"""Parameter-free multiscale pooling δ of the ECM-/ME-Decoder (HRMedSeg eq. 6-7, Table 9)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F


def _separable_avg(x: torch.Tensor, k: int, count_include_pad: bool = False) -> torch.Tensor:
    """k×k stride-1 average as a (1, k) then a (k, 1) pass: over the in-image part of each window,
    or, with ``count_include_pad``, over all k² positions (zero padding; × k² is the window sum)."""
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, k // 2), count_include_pad=count_include_pad)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(k // 2, 0), count_include_pad=count_include_pad)


def _delta(x: torch.Tensor, kernel_sizes: Sequence[int], avg) -> torch.Tensor:
    """δ(x) = x + Σ_k (avg(x, k) − x), with ``avg`` one of the k×k averages."""
    return sum(avg(x, k) for k in kernel_sizes) - (len(kernel_sizes) - 1) * x


def _window_counts(n: int, k: int, like: torch.Tensor) -> torch.Tensor:
    """How many in-image positions the length-k window centred at each of n positions covers."""
    i = torch.arange(n, device=like.device)
    r = k // 2
    return ((i + r).clamp(max=n - 1) - (i - r).clamp(min=0) + 1).to(like.dtype)


class _SeparableMultiscalePoolingFn(torch.autograd.Function):
    """δ with a hand-written backward that saves no tensor for it.

    δ is linear: δ(x) = Σ_k A_k x − (n−1) x, with A_k the average over the in-image window. Its
    adjoint is A_kᵀ g = box_k(g / count_k) (the window is symmetric; count_k, the number of
    in-image pixels of each output's window, factors over rows and columns), where box_k is a
    zero-padded window sum — two stride-1 forward poolings. So the backward needs only the
    shapes: no pooled intermediate is kept alive for it, and PyTorch's channels-last
    avg_pool2d backward kernel — slow, and wrong on CUDA — is not used.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, kernel_sizes: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        ctx.kernel_sizes = kernel_sizes
        return _delta(x, kernel_sizes, _separable_avg)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        ks = ctx.kernel_sizes
        h, w = g.shape[-2:]
        grad = -(len(ks) - 1) * g
        for k in ks:
            scaled = g / (_window_counts(h, k, g).view(h, 1) * _window_counts(w, k, g).view(1, w))
            grad = grad + _separable_avg(scaled, k, count_include_pad=True) * (k * k)
        return grad, None


class MultiscalePooling(nn.Module):
    """δ(h) = h + Σ_k (AvgPool_k(h) − h), PoolFormer-style, k ∈ ``kernel_sizes``.

    Each term is stride-1 average pooling with ``padding = k // 2`` and
    ``count_include_pad=False`` (borders average only real pixels), minus the input, so the
    module is the identity when ``kernel_sizes`` is empty. No parameters.

    ``impl="separable"`` computes the same average as a (1, k) pass then a (k, 1) pass: with
    ``count_include_pad=False`` both the window sum and the count of real pixels factor over
    the two axes, so the result is identical up to rounding, with 2k instead of k² reads per
    output in forward and backward (the k×k backward in channels-last was the largest kernel of
    a training step). ``"direct"`` is the plain reference and this layer's default; HRMedSeg's
    config picks ``"separable"`` (faster training and inference at 1024²:
    benchmarks/results/speed_hrmedseg_1024_h200/). Its training backward is the hand-written
    adjoint of :class:`_SeparableMultiscalePoolingFn`, which keeps no pooled intermediate alive
    and uses only forward poolings, and so gets the right gradient on CUDA, where PyTorch's
    channels-last avg_pool2d backward is wrong (benchmarks/results/avgpool_nhwc_backward_h200/;
    ``"direct"`` therefore trains on an NCHW copy on the GPU).
    """

    def __init__(self, kernel_sizes: Sequence[int] = (5, 9, 13), impl: str = "direct",
                 channels_first: bool = False) -> None:
        super().__init__()
        # Pool an NCHW-contiguous copy: one copy in, and the pooling kernels read rows
        # contiguously instead of striding over channels (a speed option; same values).
        self.channels_first = channels_first
        for k in kernel_sizes:
            if k < 1 or k % 2 == 0:
                raise ValueError(f"pooling kernel sizes must be odd and positive, got {k}")
        if impl not in ("direct", "separable"):
            raise ValueError(f"impl must be 'direct' or 'separable', got {impl!r}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.impl = impl

    def _avg(self, x: torch.Tensor, k: int) -> torch.Tensor:
        if self.impl == "separable":
            return _separable_avg(x, k)
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernel_sizes:
            return x
        if self.channels_first:
            x = x.contiguous()
        needs_grad = x.requires_grad and torch.is_grad_enabled()
        if needs_grad and self.impl == "separable":
            # Training: the adjoint backward (no saved intermediates). Inference and export
            # take the plain separable ops below.
            return _SeparableMultiscalePoolingFn.apply(x, self.kernel_sizes)
        if needs_grad and x.is_cuda:
            # "direct": PyTorch's CUDA avg_pool2d *backward* is wrong for channels-last inputs
            # (torch 2.11+cu130; the forward is right), and δ gets a channels-last tensor from
            # the decoder: NCHW keeps the reference exact on the GPU.
            # benchmarks/results/avgpool_nhwc_backward_h200/
            x = x.contiguous()
        return _delta(x, self.kernel_sizes, self._avg)

    def extra_repr(self) -> str:
        return (f"kernel_sizes={self.kernel_sizes}, impl={self.impl!r}"
                + (", channels_first=True" if self.channels_first else ""))
