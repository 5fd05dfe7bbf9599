"""Counting multiply-accumulates (MACs) of one forward pass, two ways.

* ``count_macs_ops`` — PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``: counts every
  matmul, convolution and attention op dispatched (functional calls included, e.g. the linear
  attention's K^T V), in FLOPs = 2 × MACs. This is the complete count.
* ``count_macs_modules`` — the thop convention the papers use: forward hooks on leaf modules
  (Conv, ConvTranspose, Linear, norm layers, pooling, upsampling); matrix products written as
  functions inside a module are *not* seen, and a transposed conv is counted per output pixel
  (thop's rule, stride² × its true cost). Comparable with the papers' "#FLOPs".

Both report MACs; FLOPs = 2 × MACs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MacCount:
    ops_macs: int      # FlopCounterMode (all dispatched matmul/conv/attention ops) / 2
    module_macs: int   # thop-style leaf-module hooks (the papers' convention)

    @property
    def ops_flops(self) -> int:
        return 2 * self.ops_macs


def count_macs_ops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # Grad mode stays on: FlopCounterMode's module tracker trips over views of parameters
    # made under no_grad. Nothing is kept, the output is dropped at once.
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def _module_macs(m: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        return 0
    out_numel = output.numel()
    if isinstance(m, nn.ConvTranspose2d):
        # thop counts a transposed conv per *output* pixel with the full kernel, i.e.
        # stride² times its true MACs; we follow it here so figures compare with the papers.
        k = m.kernel_size[0] * m.kernel_size[1]
        return out_numel * (m.in_channels // m.groups) * k
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        k = 1
        for s in m.kernel_size:
            k *= s
        return out_numel * (m.in_channels // m.groups) * k
    if isinstance(m, nn.Linear):
        return out_numel * m.in_features
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
                      nn.InstanceNorm2d)):
        affine = getattr(m, "affine", getattr(m, "elementwise_affine", False))
        return inputs[0].numel() * (2 if affine else 1)
    if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d)):
        return out_numel
    if isinstance(m, nn.Upsample):
        return out_numel * (11 if m.mode == "bilinear" else 0)
    return 0


def count_macs_modules(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(m: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += _module_macs(m, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if len(list(m.children())) == 0]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return int(total)


def count_macs(model: nn.Module, x: torch.Tensor) -> MacCount:
    was_training = model.training
    model.eval()
    try:
        return MacCount(count_macs_ops(model, x), count_macs_modules(model, x))
    finally:
        model.train(was_training)
