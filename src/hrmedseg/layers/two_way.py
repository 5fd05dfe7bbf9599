"""Two-way (bidirectional) transformer between a few query tokens and an image embedding.

SAM's mask-decoder transformer, with HRMedSeg's multiscale δ (eq. 6-7) as an optional
``key_mixer``: in every block the image embedding H is pooled to δ(H), tokens attend with
keys H + ψ and values δ(H) (eq. 6), and the image tokens are updated from δ(H) + ψ with
residual δ(H) (eq. 7). With ``key_mixer=None`` it is exactly SAM's transformer, and the
module/parameter names follow segment-anything so its checkpoints load.
"""
from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .mlp import MLPBlock
from .norm import LayerNorm


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token→image cross-attention, token MLP, image→token
    cross-attention, each followed by LayerNorm."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int = 2048,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm2 = LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = LayerNorm(embedding_dim)
        self.norm4 = LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                key_pe: torch.Tensor, mixed_keys: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mixed_keys`` = δ(keys) if the decoder uses multiscale pooling, else None (= keys)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        values = keys if mixed_keys is None else mixed_keys
        q = queries + query_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, keys + key_pe, values))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        k = values + key_pe
        keys = self.norm4(values + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks and a final token→image attention.

    Args:
        key_mixer: optional parameter-free module applied to the image embedding (as a
            (B, C, h, w) grid) at the start of every block: HRMedSeg's δ.
    """

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 activation: type[nn.Module] = nn.ReLU, attention_downsample_rate: int = 2,
                 key_mixer: nn.Module | None = None) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, activation,
                                 attention_downsample_rate, skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm_final_attn = LayerNorm(embedding_dim)
        self.key_mixer = key_mixer

    def forward(self, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                point_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embedding (B, C, h, w), image_pe (1 or B, C, h, w), point_embedding (B, T, C).

        Returns the updated tokens (B, T, C) and image tokens (B, h·w, C).
        """
        b, c, h, w = image_embedding.shape
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            mixed = None
            if self.key_mixer is not None:
                grid = keys.transpose(1, 2).reshape(b, c, h, w)
                mixed = self.key_mixer(grid).flatten(2).transpose(1, 2)
            queries, keys = layer(queries, keys, point_embedding, key_pe, mixed)
        q = queries + point_embedding
        k = keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
