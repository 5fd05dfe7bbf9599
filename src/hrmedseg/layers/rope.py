"""2-D rotary position embedding (RoPE) in real arithmetic, for any grid size.

Channels are taken in pairs (2i, 2i+1) and each pair is rotated like a complex number.
With C channels there are C/2 pairs and k = C/4 frequencies per axis,
θ_f = base^(−f/k): the first k pairs rotate by ``row · θ_f`` and the last k pairs by
``col · θ_f`` (HER-Seg's RoPE on φ(Q), φ(K); SPEC "DGLA"). Everything is cos/sin on real
tensors, so it runs under bf16/fp16 autocast and ONNX export, unlike complex-number code.
"""
from __future__ import annotations

import torch
from torch import nn


def rope_angles(height: int, width: int, dim: int, base: float = 10000.0,
                device: torch.device | None = None) -> torch.Tensor:
    """Angles of shape (height·width, dim/2) for a row-major grid."""
    if dim % 4 != 0:
        raise ValueError(f"2-D RoPE needs a channel count divisible by 4, got {dim}")
    k = dim // 4
    freqs = base ** (-torch.arange(k, dtype=torch.float64, device=device) / k)
    rows = torch.arange(height, dtype=torch.float64, device=device)
    cols = torch.arange(width, dtype=torch.float64, device=device)
    row_ang = (rows[:, None, None] * freqs).expand(height, width, k)
    col_ang = (cols[None, :, None] * freqs).expand(height, width, k)
    return torch.cat([row_ang, col_ang], dim=-1).reshape(height * width, 2 * k)


def _normal_tensors():
    """Build cached tables as normal tensors: a table first made under inference_mode
    (Segmenter) could otherwise never be saved for backward by a later training step. Only
    entered when actually inside inference_mode, so tracing/export never sees the context."""
    import contextlib
    if torch.is_inference_mode_enabled():
        return torch.inference_mode(False)
    return contextlib.nullcontext()


class RotaryEmbedding2d(nn.Module):
    """Apply 2-D RoPE to tokens of shape (..., N, C) laid out row-major on an H×W grid.

    The cos/sin tables are cached per (H, W, device) and recomputed when the grid changes,
    so inputs of any size work without rebuilding the module.
    """

    def __init__(self, dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if dim % 4 != 0:
            raise ValueError(f"2-D RoPE needs a channel count divisible by 4, got {dim}")
        self.dim = dim
        self.base = base
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, height: int, width: int, device: torch.device,
               dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if (torch.compiler.is_compiling()
                or not (isinstance(height, int) and isinstance(width, int))):
            # In the graph, not the cache: symbolic sizes (torch.export / ONNX with dynamic
            # H, W) cannot key it, and under torch.compile filling it would break the graph
            # (13 breaks in a 4-block model) and, with CUDA graphs, cache tensors that the next
            # replay overwrites. Inductor computes the few thousand angles inside the kernel.
            ang = rope_angles(height, width, self.dim, self.base, device=device)
            return ang.cos().to(dtype), ang.sin().to(dtype)
        key = (height, width, device, dtype)
        hit = self._cache.get(key)
        if hit is None:
            # Normal tensors even when first built under inference_mode (Segmenter, serve):
            # a cached inference tensor could not be saved for backward by a later training step.
            with _normal_tensors():
                ang = rope_angles(height, width, self.dim, self.base, device=device)
                hit = (ang.cos().to(dtype), ang.sin().to(dtype))
            if len(self._cache) > 8:  # a server may see many sizes: keep the cache bounded
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if x.shape[-2] != height * width or x.shape[-1] != self.dim:
            raise ValueError(
                f"RoPE expects (..., {height * width}, {self.dim}) for a {height}x{width} grid, "
                f"got {tuple(x.shape)}"
            )
        cos, sin = self.tables(height, width, x.device, x.dtype)
        pairs = x.unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        rot_even = even * cos - odd * sin
        rot_odd = even * sin + odd * cos
        return torch.stack((rot_even, rot_odd), dim=-1).flatten(-2)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, base={self.base}"
