"""fvcore-style activation count of one forward pass.

Some papers (QTSeg's 2.60 G, SPEC "QTSeg") report "FLOPs" as fvcore's MAC count *plus* fvcore's
activation count. fvcore's ``ActivationCountAnalysis`` counts, for every convolution, linear
layer and matrix product (``aten::_convolution``, ``addmm``, ``linear``, ``matmul``, ``bmm``,
``einsum``), the number of elements of its output; nothing else (no norms, activations,
pooling, interpolation).

:func:`count_activations` reproduces that without fvcore or JIT tracing: a dispatch mode sees
every aten op actually run and adds the output size of ``convolution``, ``addmm``, ``mm``,
``bmm`` and ``baddbmm`` (what ``linear``, ``matmul`` and ``einsum`` lower to, with the same
output sizes). A fused ``scaled_dot_product_attention`` kernel counts as the two matrix
products that an explicit implementation runs (Q·Kᵀ: B·h·Nq·Nk and attn·V: B·h·Nq·Dv), which
is what fvcore sees in models that write attention out by hand (SAM, QTSeg).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["count_activations", "ActivationCounter"]

_aten = torch.ops.aten

_OUTPUT_COUNTED = {
    _aten.convolution.default,
    _aten.addmm.default,
    _aten.mm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
}


def _fused_attention_ops() -> set:
    names = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_fused_attention_overrideable")
    ops = set()
    for n in names:
        packet = getattr(_aten, n, None)
        if packet is not None and hasattr(packet, "default"):
            ops.add(packet.default)
    return ops


_FUSED_ATTENTION = _fused_attention_ops()


class ActivationCounter(TorchDispatchMode):
    """Dispatch mode accumulating fvcore-style activation counts in ``total``."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _OUTPUT_COUNTED:
            self.total += out.numel()
        elif func in _FUSED_ATTENTION:
            q, k, v = args[0], args[1], args[2]
            lead = q.shape[:-2].numel()                    # B·heads
            self.total += lead * q.shape[-2] * (k.shape[-2] + v.shape[-1])
        return out


def count_activations(model: nn.Module, x: torch.Tensor) -> int:
    """fvcore's activation count of ``model(x)`` (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ActivationCounter() as counter:
            model(x)
        return int(counter.total)
    finally:
        model.train(was_training)
