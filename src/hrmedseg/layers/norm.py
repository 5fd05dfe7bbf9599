"""Normalisation layers used across the package.

Both layer norms have a ``fast`` switch for mixed precision. Autocast runs ``layer_norm`` in
float32: a bf16 input is first copied to float32, normalised into a float32 output, and the
next linear layer casts that back to bf16 — three extra passes over the activation, and a
float32 tensor saved for backward. With ``fast=True`` the norm runs in the autocast dtype
itself (weight and bias cast to it): PyTorch's layer-norm kernels accumulate mean, variance
and the weight/bias gradients in float32 internally, so what changes is only where the result
is rounded to bf16 — before the next layer instead of inside it. Outside autocast, or in
float32, ``fast`` changes nothing. Off by default; the plain path is the reference.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The lower-precision dtype autocast is running in for ``x``'s device, else None."""
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
        return None
    dt = torch.get_autocast_dtype(dev)
    return dt if dt in (torch.bfloat16, torch.float16) else None


def layer_norm_in_amp_dtype(x: torch.Tensor, shape: tuple[int, ...], weight: torch.Tensor | None,
                            bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """``F.layer_norm`` in autocast's dtype (see the module docstring), plain elsewhere."""
    dt = _autocast_dtype(x)
    if dt is None:
        return F.layer_norm(x, shape, weight, bias, eps)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.layer_norm(x.to(dt), shape, None if weight is None else weight.to(dt),
                            None if bias is None else bias.to(dt), eps)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state dict) with the ``fast`` switch."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, fast: bool = False) -> None:
        super().__init__(normalized_shape, eps=eps)
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return super().forward(x)
        return layer_norm_in_amp_dtype(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fast=True" if self.fast else "")


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) tensor (SAM's ``LayerNorm2d``).

    Parameter names (``weight``, ``bias``) match segment-anything so its checkpoints load.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6, fast: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.fast = fast

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels-last LayerNorm is one fused kernel; permutes are views.
        norm = layer_norm_in_amp_dtype if self.fast else F.layer_norm
        y = norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


def set_fast_norm(module: nn.Module, enable: bool = True) -> int:
    """Switch ``fast`` on every :class:`LayerNorm` / :class:`LayerNorm2d` inside ``module``;
    returns how many were switched."""
    n = 0
    for m in module.modules():
        if isinstance(m, (LayerNorm, LayerNorm2d)):
            m.fast = bool(enable)
            n += 1
    return n
