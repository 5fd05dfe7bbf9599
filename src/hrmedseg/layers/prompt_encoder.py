"""SAM-compatible prompt encoder: boxes, points and low-res masks → sparse and dense embeddings.

Module and parameter names follow segment-anything (``pe_layer``, ``point_embeddings``,
``not_a_point_embed``, ``mask_downscaling``, ``no_mask_embed``) so SAM/MobileSAM checkpoints
load by key. HRMedSeg's released model carries this encoder too: with no prompt, its learned
``no_mask_embed`` is added to the image embedding and no sparse token is produced.
"""
from __future__ import annotations

import torch
from torch import nn

from .norm import LayerNorm2d
from .position import PositionEmbeddingRandom


class PromptEncoder(nn.Module):
    def __init__(self, embed_dim: int = 256, image_embedding_size: tuple[int, int] = (64, 64),
                 input_image_size: tuple[int, int] = (1024, 1024), mask_in_chans: int = 16) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        # 0/1: negative/positive point, 2/3: box top-left/bottom-right corner.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, 2, stride=2), LayerNorm2d(mask_in_chans // 4), nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, 2, stride=2), LayerNorm2d(mask_in_chans),
            nn.GELU(), nn.Conv2d(mask_in_chans, embed_dim, 1))
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """ψ of the embedding grid, (1, C, h, w)."""
        return self.pe_layer(tuple(size or self.image_embedding_size)).unsqueeze(0)

    def _embed_points(self, points: torch.Tensor, labels: torch.Tensor, pad: bool,
                      image_size: tuple[int, int]) -> torch.Tensor:
        points = points + 0.5  # pixel centres
        if pad:
            points = torch.cat([points, points.new_zeros(points.shape[0], 1, 2)], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        emb = self.pe_layer.forward_with_coords(points, image_size)
        lab = labels.unsqueeze(-1)
        emb = torch.where(lab == -1, self.not_a_point_embed.weight.expand_as(emb), emb)
        emb = emb + torch.where(lab == 0, self.point_embeddings[0].weight.expand_as(emb), 0.0 * emb)
        emb = emb + torch.where(lab == 1, self.point_embeddings[1].weight.expand_as(emb), 0.0 * emb)
        return emb

    def _embed_boxes(self, boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        corners = (boxes + 0.5).reshape(-1, 2, 2)
        emb = self.pe_layer.forward_with_coords(corners, image_size)
        emb[:, 0, :] = emb[:, 0, :] + self.point_embeddings[2].weight
        emb[:, 1, :] = emb[:, 1, :] + self.point_embeddings[3].weight
        return emb

    def forward(self, points: tuple[torch.Tensor, torch.Tensor] | None = None,
                boxes: torch.Tensor | None = None, masks: torch.Tensor | None = None,
                batch_size: int | None = None, embedding_size: tuple[int, int] | None = None,
                image_size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns sparse (B, T, C) and dense (B, C, h, w) embeddings.

        Boxes are (B, 4) as x0, y0, x1, y1 in pixels of the model input; points (B, N, 2) with
        labels (B, N) (1 positive, 0 negative, −1 padding).
        """
        size = tuple(embedding_size or self.image_embedding_size)
        img_size = tuple(image_size or self.input_image_size)
        if points is not None:
            bs = points[0].shape[0]
        elif boxes is not None:
            bs = boxes.shape[0]
        elif masks is not None:
            bs = masks.shape[0]
        else:
            bs = batch_size or 1
        weight = self.no_mask_embed.weight
        sparse = weight.new_empty((bs, 0, self.embed_dim))
        if points is not None:
            sparse = torch.cat([sparse, self._embed_points(points[0], points[1], boxes is None,
                                                           img_size)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes, img_size)], dim=1)
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            # Looked up, not the parameter itself: a view of a parameter made under no_grad
            # requires grad without a grad_fn, which breaks FlopCounterMode's module hooks.
            no_mask = self.no_mask_embed(torch.zeros(1, dtype=torch.long, device=weight.device))
            dense = no_mask.reshape(1, -1, 1, 1).expand(bs, -1, size[0], size[1])
        return sparse, dense
