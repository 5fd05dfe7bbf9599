"""Multi-head softmax attention with an optional internal down-projection (SAM-style).

Parameter names (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) follow segment-anything so
its mask-decoder checkpoints load by key. Uses ``scaled_dot_product_attention``, which picks a
fused kernel (flash / memory-efficient) where one applies.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class Attention(nn.Module):
    """Attention whose q/k/v live in ``embedding_dim // downsample_rate`` channels."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1,
                 kv_in_dim: int | None = None) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(f"internal width {self.internal_dim} not divisible by {num_heads} heads")
        kv_in = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(kv_in, self.internal_dim)
        self.v_proj = nn.Linear(kv_in, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._split(self.q_proj(q))
        k = self._split(self.k_proj(k))
        v = self._split(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
