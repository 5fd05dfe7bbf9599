"""Random-Fourier positional encoding ψ (SAM's ``PositionEmbeddingRandom``)."""
from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingRandom(nn.Module):
    """ψ(x, y) = [sin(2π G p), cos(2π G p)] for p ∈ [−1, 1]² and a fixed Gaussian matrix G.

    G is a buffer named ``positional_encoding_gaussian_matrix`` (segment-anything's key), so a
    SAM checkpoint's encoding loads; it is saved with the model and never trained.
    """

    def __init__(self, num_pos_feats: int = 128, scale: float | None = None) -> None:
        super().__init__()
        scale = 1.0 if scale is None or scale <= 0 else scale
        self.register_buffer("positional_encoding_gaussian_matrix",
                             scale * torch.randn(2, num_pos_feats))

    def _encode(self, coords: torch.Tensor) -> torch.Tensor:
        """coords in [0, 1], shape (..., 2) as (x, y)."""
        g = self.positional_encoding_gaussian_matrix
        proj = (2 * coords.to(g.dtype) - 1) @ g * (2 * math.pi)
        return torch.cat([proj.sin(), proj.cos()], dim=-1)

    def forward(self, size: tuple[int, int]) -> torch.Tensor:
        """Dense encoding of an (h, w) grid, shape (C, h, w), C = 2·num_pos_feats."""
        h, w = size
        g = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(h, device=g.device, dtype=g.dtype) + 0.5) / h
        xs = (torch.arange(w, device=g.device, dtype=g.dtype) + 0.5) / w
        grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (h, w, 2) as (x, y)
        return self._encode(grid).permute(2, 0, 1)

    def forward_with_coords(self, coords: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates (..., 2) given as (x, y) in an image of (H, W)."""
        h, w = image_size
        norm = coords.clone().to(self.positional_encoding_gaussian_matrix.dtype)
        norm[..., 0] = norm[..., 0] / w
        norm[..., 1] = norm[..., 1] / h
        return self._encode(norm)
