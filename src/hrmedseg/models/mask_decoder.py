"""SAM's mask decoder (Kirillov et al., "Segment Anything", ICCV 2023): output tokens and
prompt tokens through a two-way transformer with the image embedding, a ×4 upscaler, one
hypernetwork MLP per mask token and an IoU head. Parameter names are segment-anything's, so its
weights load by key."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import LayerNorm2d, MultiLayerMLP, TwoWayTransformer, token_masks

__all__ = ["MaskDecoder"]


class MaskDecoder(nn.Module):
    """SAM's mask decoder (names as segment-anything's, so its weights load by key).

    Output tokens = [IoU token, 1 + ``num_multimask_outputs`` mask tokens] + the sparse prompt
    tokens; the two-way transformer updates them and the (dense-prompt-added) image embedding;
    the embedding is upscaled ×4 (ConvT → LN2d → GELU → ConvT → GELU) and every mask token's
    hypernetwork MLP output is dotted with each upscaled pixel; the IoU token's MLP predicts
    each mask's IoU.
    """

    def __init__(self, transformer_dim: int = 256, transformer: nn.Module | None = None,
                 num_multimask_outputs: int = 3, activation: type[nn.Module] = nn.GELU,
                 iou_head_depth: int = 3, iou_head_hidden_dim: int = 256,
                 transformer_depth: int = 2, transformer_heads: int = 8,
                 transformer_mlp_dim: int = 2048) -> None:
        super().__init__()
        d = transformer_dim
        self.transformer_dim = d
        self.transformer = transformer if transformer is not None else TwoWayTransformer(
            transformer_depth, d, transformer_heads, transformer_mlp_dim)
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, d)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(d, d // 4, 2, stride=2), LayerNorm2d(d // 4), activation(),
            nn.ConvTranspose2d(d // 4, d // 8, 2, stride=2), activation())
        self.output_hypernetworks_mlps = nn.ModuleList(
            MultiLayerMLP(d, d, d // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MultiLayerMLP(d, iou_head_hidden_dim, self.num_mask_tokens,
                                                 iou_head_depth)

    def forward(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                sparse_prompt_embeddings: torch.Tensor, dense_prompt_embeddings: torch.Tensor,
                multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-res mask logits (P, K, 4h, 4w) and IoU predictions (P, K); K = 3 with
        ``multimask_output`` (masks 1-3), else 1 (mask 0), as in segment-anything.

        ``image_embeddings`` is (1, C, h, w) (one image shared by all P prompts, SAM's case) or
        (P, C, h, w) (one embedding row per prompt: batched images).
        """
        masks, iou_pred = self.predict_masks(image_embeddings, image_pe,
                                             sparse_prompt_embeddings, dense_prompt_embeddings)
        sl = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sl], iou_pred[:, sl]

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All 1 + num_multimask_outputs masks and IoU predictions."""
        p = sparse_prompt_embeddings.shape[0]
        dtype = image_embeddings.dtype
        out_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(p, -1, -1).to(dtype),
                            sparse_prompt_embeddings.to(dtype)], dim=1)
        if image_embeddings.shape[0] not in (1, p):
            raise ValueError(
                f"mask decoder: {image_embeddings.shape[0]} image embeddings for {p} prompts; "
                "give one embedding shared by all prompts or one per prompt")
        src = image_embeddings.expand(p, -1, -1, -1) + dense_prompt_embeddings.to(dtype)
        pos = image_pe.to(dtype).expand(p, -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = self.transformer(src, pos, tokens)
        iou_out = hs[:, 0]
        mask_out = hs[:, 1:1 + self.num_mask_tokens]
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper = torch.stack([mlp(mask_out[:, i])
                             for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = token_masks(hyper, up)
        return masks, self.iou_prediction_head(iou_out)
