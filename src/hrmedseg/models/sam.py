"""SAM family: TinyViT (MobileSAM's image encoder), SAM's mask decoder, the box-prompted model
and its checkpoints.

* SAM: Kirillov et al., "Segment Anything", ICCV 2023 (segment-anything). Image encoder →
  256×64×64 embedding at 1024²; prompt encoder (points, boxes, low-res masks); mask decoder =
  two-way transformer + ×4 upscaler + one hypernetwork MLP per mask token + IoU head.
* MobileSAM: Zhang et al., "Faster Segment Anything: Towards Lightweight SAM for Mobile
  Applications", 2023 — SAM with its ViT-H encoder replaced by TinyViT-5M (Wu et al., "TinyViT:
  Fast Pretraining Distillation for Small Vision Transformers", ECCV 2022) distilled onto SAM's
  embedding. ESP-MedSAM's light image encoder is the same network (SPEC "ESP-MedSAM").
* HRMedSegSAM (HRMedSeg Table 4, SPEC "SAM combination"): a distilled encoder with its neck
  (256×64×64) in place of SAM's image encoder; SAM's prompt encoder and mask decoder unchanged,
  box prompts = tight box of each ground-truth connected component.

TinyViT ``vit_t`` (written from the TinyViT paper and MobileSAM's description):

    image (B,3,1024²) ─ conv stem: ConvBN 3×3 s2 → GELU → ConvBN 3×3 s2        64 @ 256²
    stage 0: 2 × MBConv (expand 4)                  ─ PatchMerging s2 → 128 @ 128²
    stage 1: 2 × TinyViTBlock (4 heads, window 7)   ─ PatchMerging s2 → 160 @ 64²
    stage 2: 6 × TinyViTBlock (5 heads, window 14)  ─ PatchMerging s1 → 320 @ 64²
    stage 3: 2 × TinyViTBlock (10 heads, window 7)
    neck: Conv1×1 320→256 → LN2d → Conv3×3 256→256 → LN2d                      256 @ 64²

A TinyViT block is ``x + WindowAttention(x)`` (pre-norm, windows zero-padded at the bottom/right,
a learned bias per head and per |Δrow|, |Δcol| offset in the window), a depthwise 3×3 ConvBN on
the grid, then ``x + MLP(LN(x))``. MobileSAM's checkpoint also carries TinyViT's ImageNet head
(``norm_head``, ``head``); it is kept (unused) so the checkpoint loads strictly.

Checkpoint key names: everything matches segment-anything / MobileSAM except the Conv-BN pairs
of TinyViT, which this package's shared :class:`~hrmedseg.layers.ConvBN` names ``conv``/``bn``
where MobileSAM's ``Conv2d_BN`` says ``c``/``bn``. :class:`TinyViT` maps ``.c.`` → ``.conv.``
when a state dict is loaded (so ``load_state_dict(mobile_sam_weights, strict=True)`` works) and
:func:`to_sam_state_dict` maps back for export.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import (ConvBN, DropPath, LayerNorm2d, MBConv, Mlp, MultiLayerMLP, PromptEncoder,
                      TwoWayTransformer)
from ._base import SegmentationModel
from ._hub import CheckpointError, load_state_dict_checked
from ._pretrained import PretrainedWeightError, load_pretrained, sha256_of, weight_index
from ._registry import register_model
from .hrmedseg import HRMedSeg, HRMedSegConfig, LGViT, Neck, apply_fast_paths

__all__ = [
    "TinyViT", "TinyViTBlock", "WindowAttention", "PatchMerging", "MaskDecoder",
    "SamConfig", "SamModel", "HRMedSegImageEncoder", "SamCheckpoint", "SAM_CHECKPOINTS",
    "ChecksumError", "download_checkpoint", "find_checkpoint", "checkpoint_dirs",
    "load_sam_checkpoint", "read_sam_state_dict", "to_sam_state_dict", "load_hrmedseg_encoder",
    "EMPTY_LOGIT",
]

#: Logit given to pixels of an image that has no box prompt (sigmoid ≈ 0, finite in fp16).
EMPTY_LOGIT = -100.0


# ---------------------------------------------------------------------------------------------
# TinyViT
# ---------------------------------------------------------------------------------------------

class TinyViTPatchEmbed(nn.Module):
    """Conv stem to stride 4: ConvBN 3×3 s2 (C/2) → GELU → ConvBN 3×3 s2 (C)."""

    def __init__(self, in_chans: int, dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(ConvBN(in_chans, dim // 2, 3, 2), nn.GELU(),
                                 ConvBN(dim // 2, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class PatchMerging(nn.Module):
    """1×1 ConvBN → GELU → depthwise 3×3 ConvBN (stride 2, or 1 for MobileSAM's last merge)
    → GELU → 1×1 ConvBN. Grid in, grid out."""

    def __init__(self, dim: int, out_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.act = nn.GELU()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


def _window_offsets(window: int) -> torch.Tensor:
    """(w², w²) index of the bias of each query/key pair: |Δrow|·w + |Δcol| (the order in
    which TinyViT enumerates the distinct offsets, so its ``attention_biases`` load as is)."""
    r = torch.arange(window).repeat_interleave(window)
    c = torch.arange(window).repeat(window)
    return (r[:, None] - r[None, :]).abs() * window + (c[:, None] - c[None, :]).abs()


class WindowAttention(nn.Module):
    """TinyViT attention inside one window: LN → fused qkv (per head [q | k | v]) → softmax
    attention with a learned per-head bias for each relative offset → projection."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"TinyViT width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_size = window_size
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", _window_offsets(window_size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)   # (h, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class _NormMlp(Mlp):
    """TinyViT's MLP: LayerNorm, then the shared two-layer MLP (names norm/fc1/fc2)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__(dim, hidden_dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.norm(x))


class TinyViTBlock(nn.Module):
    """Window attention (zero-padded to whole windows) → depthwise 3×3 ConvBN → MLP.

    Tokens (B, H·W, C) laid out row-major on an H×W grid; any H, W work.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int = 7, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, local_conv_size: int = 3) -> None:
        super().__init__()
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.drop_path = DropPath(drop_path)
        self.mlp = _NormMlp(dim, int(dim * mlp_ratio))
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)

    def _windows(self, x: torch.Tensor, h: int, w: int, attend: Any = None) -> torch.Tensor:
        """Window attention over an h×w token grid (padded to whole windows).

        ``attend(windows, windows_per_image)`` replaces ``self.attn`` (ESP-MedSAM adds its
        modality tokens there)."""
        if attend is None:
            def attend(t: torch.Tensor, _: int) -> torch.Tensor:
                return self.attn(t)
        b, n, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            return attend(x, 1)
        x = x.view(b, h, w, c)
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        x = attend(x, nh * nw)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        return x[:, :h, :w].reshape(b, n, c)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x + self.drop_path(self._windows(x, h, w))
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.flatten(2).transpose(1, 2)
        return x + self.drop_path(self.mlp(x))


class ConvLayer(nn.Module):
    """TinyViT stage 0: MBConv blocks on the grid, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, drop_path: Sequence[float], expand_ratio: float,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, nn.GELU, drop_path[i])
                                    for i in range(depth))
        self.downsample = downsample
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = (checkpoint(blk, x, use_reentrant=False)
                 if self.grad_checkpointing and torch.is_grad_enabled() else blk(x))
        return self.downsample(x) if self.downsample is not None else x


class BasicLayer(nn.Module):
    """TinyViT stages 1-3: TinyViT blocks on tokens, then an optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: Sequence[float], local_conv_size: int,
                 downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, drop_path[i], local_conv_size)
            for i in range(depth))
        self.downsample = downsample
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        for blk in self.blocks:
            t = (checkpoint(blk, t, h, w, use_reentrant=False)
                 if self.grad_checkpointing and torch.is_grad_enabled() else blk(t, h, w))
        x = t.transpose(1, 2).reshape(b, c, h, w)
        return self.downsample(x) if self.downsample is not None else x


_CONVBN_KEY = re.compile(r"(?<=\.)c(?=\.(weight|bias)$)")


def _tinyvit_key_from_mobile_sam(key: str) -> str:
    """MobileSAM's ``Conv2d_BN`` names its conv ``c``; the shared ConvBN names it ``conv``."""
    return _CONVBN_KEY.sub("conv", key)


def _tinyvit_key_to_mobile_sam(key: str) -> str:
    return re.sub(r"(?<=\.)conv(?=\.(weight|bias)$)", "c", key)


class TinyViT(nn.Module):
    """TinyViT image encoder with SAM's neck (MobileSAM ``vit_t`` by default).

    Args:
        img_size: side of the square input the model is built for (1024 for SAM); any input
            size runs, the embedding is (B, out_chans, ⌈H/16⌉, ⌈W/16⌉) with stride (2, 2, 1)
            merges.
        embed_dims, depths, num_heads, window_sizes: per stage (stage 0 is convolutional, its
            heads/window are unused).
        merge_strides: stride of the patch merging after stages 0, 1, 2 (MobileSAM: 2, 2, 1 so
            the last stage stays at 1/16).
        head_classes: size of TinyViT's ImageNet head, which MobileSAM's checkpoint carries but
            SAM never uses (0 leaves it out; :func:`load_sam_checkpoint` then skips its keys).
    """

    def __init__(self, img_size: int = 1024, in_chans: int = 3,
                 embed_dims: Sequence[int] = (64, 128, 160, 320),
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (2, 4, 5, 10),
                 window_sizes: Sequence[int] = (7, 7, 14, 7), mlp_ratio: float = 4.0,
                 mbconv_expand_ratio: float = 4.0, local_conv_size: int = 3,
                 merge_strides: Sequence[int] = (2, 2, 1), drop_path_rate: float = 0.0,
                 out_chans: int = 256, head_classes: int = 1000) -> None:
        super().__init__()
        embed_dims, depths = tuple(embed_dims), tuple(depths)
        num_heads, window_sizes = tuple(num_heads), tuple(window_sizes)
        merge_strides = tuple(merge_strides)
        n = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == n
                and len(merge_strides) == n - 1):
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per "
                             "stage and merge_strides one fewer")
        self.img_size = int(img_size)
        self.in_chans = in_chans
        self.embed_dims = embed_dims
        self.out_chans = out_chans
        self.patch_embed = TinyViTPatchEmbed(in_chans, embed_dims[0])
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(n):
            rates = dpr[sum(depths[:i]):sum(depths[:i + 1])]
            down = (PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i])
                    if i < n - 1 else None)
            if i == 0:
                layer: nn.Module = ConvLayer(embed_dims[0], depths[0], rates,
                                             mbconv_expand_ratio, down)
            else:
                layer = BasicLayer(embed_dims[i], depths[i], num_heads[i], window_sizes[i],
                                   mlp_ratio, rates, local_conv_size, down)
            self.layers.append(layer)
        if head_classes:
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], head_classes)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, 1, bias=False), LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False), LayerNorm2d(out_chans))
        self._init_weights()
        self.register_load_state_dict_pre_hook(_accept_mobile_sam_keys)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def unused_parameter_names(self) -> list[str]:
        """The ImageNet head MobileSAM's checkpoint carries; never part of the embedding."""
        return [n for n, _ in self.named_parameters() if n.startswith(("norm_head.", "head."))]

    def set_grad_checkpointing(self, enable: bool = True) -> "TinyViT":
        for layer in self.layers:
            layer.grad_checkpointing = bool(enable)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage features (B, C_last, H/16, W/16) before the neck."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.forward_features(x))


def _accept_mobile_sam_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                            *args: Any) -> None:
    """Load-state-dict pre-hook: rename MobileSAM's ``….c.weight`` Conv2d_BN keys in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + _tinyvit_key_from_mobile_sam(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)


# ---------------------------------------------------------------------------------------------
# Mask decoder
# ---------------------------------------------------------------------------------------------

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
        _, cu, hu, wu = up.shape
        masks = (hyper @ up.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        return masks, self.iou_prediction_head(iou_out)


# ---------------------------------------------------------------------------------------------
# HRMedSeg encoder as a SAM image encoder
# ---------------------------------------------------------------------------------------------

class HRMedSegImageEncoder(nn.Module):
    """HRMedSeg's LGViT encoder and neck as a SAM image encoder: image → (B, 256, H/16, W/16).

    Submodule names (``encoder``, ``neck``) are HRMedSeg's, so the ``encoder.*``/``neck.*``
    weights of a (distilled) HRMedSeg load under ``image_encoder.``.
    """

    def __init__(self, cfg: HRMedSegConfig) -> None:
        super().__init__()
        self.encoder = LGViT(cfg)
        self.neck = Neck(cfg.embed_dim, cfg.neck_dim)
        self.img_size = cfg.img_size[0]
        apply_fast_paths(self, cfg)  # as in HRMedSeg

    @classmethod
    def from_model(cls, model: HRMedSeg) -> "HRMedSegImageEncoder":
        """Wrap an existing HRMedSeg's encoder and neck (shared modules, no copy)."""
        obj = cls.__new__(cls)
        nn.Module.__init__(obj)
        obj.encoder = model.encoder
        obj.neck = model.neck
        obj.img_size = model.config.img_size[0]
        return obj

    def set_grad_checkpointing(self, enable: bool = True, fraction: float = 1.0
                               ) -> "HRMedSegImageEncoder":
        self.encoder.set_grad_checkpointing(enable, fraction)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.encoder(x))


# ---------------------------------------------------------------------------------------------
# The box-prompted model
# ---------------------------------------------------------------------------------------------

_ENCODERS = ("tinyvit", "hrmedseg", "custom")


@dataclass
class SamConfig:
    """Everything that defines a SAM-family model (saved as config.json).

    ``encoder`` picks the image encoder: ``"tinyvit"`` (MobileSAM; ``encoder_args`` = fields of
    :class:`TinyViT`), ``"hrmedseg"`` (HRMedSegSAM; ``encoder_args`` = fields of
    :class:`~hrmedseg.models.hrmedseg.HRMedSegConfig`) or ``"custom"`` (a module given with
    :meth:`SamModel.replace_image_encoder`; not rebuildable from the config alone).
    """

    num_classes: int = 1
    in_chans: int = 3
    img_size: int = 1024                 # the encoder's square input: longest side, then pad
    encoder: str = "tinyvit"
    encoder_args: dict[str, Any] = field(default_factory=dict)
    prompt_embed_dim: int = 256
    patch_size: int = 16                 # image size / embedding size
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    mask_threshold: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.img_size, (tuple, list)):
            if len(set(int(v) for v in self.img_size)) != 1:
                raise ValueError(f"SAM models take a square input (longest side resized to "
                                 f"img_size, then padded); got img_size={tuple(self.img_size)}")
            self.img_size = int(self.img_size[0])
        self.img_size = int(self.img_size)
        self.pixel_mean = tuple(float(v) for v in self.pixel_mean)
        self.pixel_std = tuple(float(v) for v in self.pixel_std)
        self.encoder_args = dict(self.encoder_args or {})
        if self.num_classes != 1:
            raise ValueError(f"box-prompted SAM models predict one mask per box prompt: "
                             f"num_classes must be 1, got {self.num_classes}")
        if self.in_chans != len(self.pixel_mean) or self.in_chans != len(self.pixel_std):
            raise ValueError(f"in_chans={self.in_chans} needs as many pixel_mean/pixel_std "
                             f"values (SAM takes RGB: 3)")
        if self.encoder not in _ENCODERS:
            raise ValueError(f"encoder must be one of {_ENCODERS}, got {self.encoder!r}")
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} is not a multiple of {self.patch_size}")

    @property
    def embedding_size(self) -> tuple[int, int]:
        s = self.img_size // self.patch_size
        return (s, s)


BoxesLike = torch.Tensor | Sequence[torch.Tensor]


class SamModel(SegmentationModel):
    """SAM: image encoder + :class:`~hrmedseg.layers.PromptEncoder` + :class:`MaskDecoder`.

    Images are RGB in SAM's 0-255 scale (uint8 or float), any size: :meth:`preprocess`
    resizes the longest side to ``img_size`` (bilinear, antialiased), normalises with SAM's
    pixel mean/std and pads bottom/right to ``img_size``². Box prompts are ``(x0, y0, x1, y1)``
    in pixels of the original image. ``forward(images, boxes)`` returns full-resolution logits
    (B, 1, H, W): the maximum over the image's box masks (one box per connected component is
    how the papers prompt; :func:`hrmedseg.inference.prompts.boxes_from_mask` makes them).
    """

    size_multiple = 1  # any input size: preprocessing resizes and pads

    def __init__(self, cfg: SamConfig, image_encoder: nn.Module | None = None,
                 model_name: str = "sam") -> None:
        super().__init__()
        self.config = cfg
        self.model_name = model_name
        if image_encoder is None:
            image_encoder = self._build_encoder(cfg)
        self.image_encoder = image_encoder
        d = cfg.prompt_embed_dim
        self.prompt_encoder = PromptEncoder(d, cfg.embedding_size, (cfg.img_size, cfg.img_size),
                                            cfg.mask_in_chans)
        self.mask_decoder = MaskDecoder(
            d, TwoWayTransformer(cfg.decoder_depth, d, cfg.decoder_heads, cfg.decoder_mlp_dim),
            cfg.num_multimask_outputs, nn.GELU, cfg.iou_head_depth, cfg.iou_head_hidden_dim)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(-1, 1, 1), False)

    @staticmethod
    def _build_encoder(cfg: SamConfig) -> nn.Module:
        if cfg.encoder == "tinyvit":
            args = {"img_size": cfg.img_size, "in_chans": cfg.in_chans,
                    "out_chans": cfg.prompt_embed_dim, **cfg.encoder_args}
            return TinyViT(**args)
        if cfg.encoder == "hrmedseg":
            args = {"img_size": cfg.img_size, "in_chans": cfg.in_chans,
                    "neck_dim": cfg.prompt_embed_dim, "patch_size": cfg.patch_size,
                    "drop_path_rate": 0.0, **cfg.encoder_args}
            return HRMedSegImageEncoder(HRMedSegConfig(**args))
        raise ValueError("encoder='custom' needs the image encoder module: "
                         "SamModel(cfg, image_encoder=...) or replace_image_encoder(...)")

    # -- parts -----------------------------------------------------------------------------
    def replace_image_encoder(self, encoder: nn.Module) -> "SamModel":
        """Swap in any module mapping a preprocessed (B, 3, S, S) image to
        (B, 256, S/16, S/16), S = ``img_size`` (e.g. :class:`HRMedSegImageEncoder`)."""
        self.image_encoder = encoder
        if isinstance(encoder, TinyViT):
            self.config.encoder = "tinyvit"
        elif isinstance(encoder, HRMedSegImageEncoder):
            self.config.encoder = "hrmedseg"
        else:
            self.config.encoder = "custom"
        return self

    def parameter_groups(self) -> dict[str, nn.Module]:
        return {"image_encoder": self.image_encoder, "prompt_encoder": self.prompt_encoder,
                "mask_decoder": self.mask_decoder}

    def unused_parameter_names(self) -> list[str]:
        """Parameters never used for box-prompted masks (TinyViT's ImageNet head)."""
        fn = getattr(self.image_encoder, "unused_parameter_names", None)
        return [f"image_encoder.{n}" for n in fn()] if fn else []

    @property
    def supports_partial_checkpointing(self) -> bool:  # type: ignore[override]
        return isinstance(self.image_encoder, HRMedSegImageEncoder)

    def set_grad_checkpointing(self, enable: bool = True, *, fraction: float = 1.0
                               ) -> "SamModel":
        super().set_grad_checkpointing(enable, fraction=fraction)
        fn = getattr(self.image_encoder, "set_grad_checkpointing", None)
        if fn is not None:
            if fraction < 1.0:  # only the HRMedSeg encoder takes one (checked above)
                fn(enable, fraction)
            else:
                fn(enable)
        return self

    # -- pre/post-processing (segment-anything's Sam.preprocess / postprocess_masks) ----------
    def preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size after resizing the longest side to ``img_size`` (SAM's ResizeLongestSide)."""
        scale = self.config.img_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) 0-255 RGB → normalised, resized, padded (B, 3, S, S) and the resized
        (h, w) before padding."""
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(f"{self.model_name} expects (B, {self.in_chans}, H, W) RGB images "
                             f"in 0-255, got shape {tuple(images.shape)}")
        x = images.to(self.pixel_mean.dtype if not images.is_floating_point() else images.dtype)
        size = self.preprocess_shape(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        s = self.config.img_size
        return F.pad(x, (0, s - size[1], 0, s - size[0])), size

    def postprocess_masks(self, masks: torch.Tensor, input_size: tuple[int, int],
                          original_size: tuple[int, int]) -> torch.Tensor:
        """Low-res logits → S² → crop the padding → original size (bilinear)."""
        s = self.config.img_size
        masks = F.interpolate(masks, (s, s), mode="bilinear", align_corners=False)
        masks = masks[..., :input_size[0], :input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def transform_boxes(self, boxes: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
        """Boxes (…, 4) in original pixels → pixels of the resized image."""
        h, w = original_size
        nh, nw = self.preprocess_shape(h, w)
        scale = boxes.new_tensor([nw / w, nh / h, nw / w, nh / h])
        return boxes.to(scale.dtype) * scale

    # -- encoder / decoder -------------------------------------------------------------------
    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (B, 256, S/16, S/16) of *preprocessed* images."""
        emb = self.image_encoder(x)
        want = (self.config.prompt_embed_dim, *self.config.embedding_size)
        if tuple(emb.shape[1:]) != want:
            raise ValueError(f"image encoder {type(self.image_encoder).__name__} gave an "
                             f"embedding of shape {tuple(emb.shape[1:])}; SAM's prompt encoder "
                             f"and mask decoder need {want}")
        return emb

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor | None = None,
               points: tuple[torch.Tensor, torch.Tensor] | None = None,
               mask_inputs: torch.Tensor | None = None, image_index: torch.Tensor | None = None,
               multimask_output: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on image embeddings; prompts in model-input pixels.

        ``image_index`` (P,) says which embedding row each of the P prompts belongs to
        (default: one prompt per embedding row). Returns low-res logits (P, K, S/4, S/4) and
        IoU predictions (P, K).
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_inputs,
                                            batch_size=embeddings.shape[0])
        if image_index is not None:
            embeddings = embeddings[image_index]
        elif sparse.shape[0] != embeddings.shape[0] and embeddings.shape[0] != 1:
            raise ValueError(f"{sparse.shape[0]} prompts for {embeddings.shape[0]} images: "
                             "pass image_index")
        return self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse,
                                 dense.to(embeddings.dtype), multimask_output)

    @staticmethod
    def _flatten_boxes(boxes: BoxesLike, batch: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        if isinstance(boxes, torch.Tensor):
            if boxes.ndim == 2 and boxes.shape == (batch, 4):
                per_image = list(boxes.unsqueeze(1))
            elif boxes.ndim == 3 and boxes.shape[0] == batch and boxes.shape[-1] == 4:
                per_image = list(boxes)
            else:
                raise ValueError(f"boxes must be (B, 4), (B, N, 4) or a list of B (N_i, 4) "
                                 f"tensors for B={batch} images, got shape {tuple(boxes.shape)}")
        else:
            per_image = [torch.as_tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
            if len(per_image) != batch:
                raise ValueError(f"{len(per_image)} box lists for {batch} images")
        counts = [int(b.shape[0]) for b in per_image]
        flat = (torch.cat([b.to(device=device, dtype=torch.float32) for b in per_image])
                if sum(counts) else torch.zeros(0, 4, device=device))
        index = torch.repeat_interleave(torch.arange(batch, device=device),
                                        torch.tensor(counts, device=device))
        return flat, index, counts

    def predict_boxes(self, images: torch.Tensor, boxes: BoxesLike,
                      multimask_output: bool = False, combine: bool = True,
                      return_iou: bool = False) -> Any:
        """Full-resolution mask logits for box prompts, batched over images and boxes.

        Args:
            images: (B, 3, H, W) RGB, 0-255 (uint8 or float).
            boxes: (B, 4) — one box per image; (B, N, 4); or a list of B tensors (N_i, 4)
                (N_i may be 0), ``(x0, y0, x1, y1)`` in pixels of the original image.
            multimask_output: let SAM propose 3 masks per box; with ``combine`` the one with the
                highest predicted IoU is kept.
            combine: True → (B, 1, H, W) logits, per pixel the maximum over the image's boxes
                (``EMPTY_LOGIT`` where an image has no box). False → a list of B tensors
                (N_i, K, H, W).
            return_iou: also return the IoU predictions (list of (N_i, K) tensors).
        """
        b = images.shape[0]
        original = (int(images.shape[-2]), int(images.shape[-1]))
        x, input_size = self.preprocess(images)
        flat, index, counts = self._flatten_boxes(boxes, b, x.device)
        emb = self.image_embeddings(x)
        if flat.shape[0]:
            low, iou = self.decode(emb, boxes=self.transform_boxes(flat, original),
                                   image_index=index, multimask_output=multimask_output)
            masks = self.postprocess_masks(low, input_size, original)
        else:
            k = self.config.num_multimask_outputs if multimask_output else 1
            masks = emb.new_zeros((0, k, *original))
            iou = emb.new_zeros((0, k))
        if combine:
            if masks.shape[1] > 1:
                best = iou.argmax(dim=1)
                masks = masks[torch.arange(masks.shape[0], device=masks.device), best].unsqueeze(1)
            out = []
            for i, part in enumerate(masks.split(counts)):
                out.append(part.amax(dim=0) if part.shape[0]
                           else masks.new_full((1, *original), EMPTY_LOGIT))
            result: Any = torch.stack(out)
        else:
            result = list(masks.split(counts))
        if return_iou:
            return result, list(iou.split(counts))
        return result

    def predict_from_masks(self, images: torch.Tensor, masks: torch.Tensor,
                           min_area: int = 1, **kwargs: Any) -> Any:
        """:meth:`predict_boxes` with one box per connected component of each (B, 1 or -, H, W)
        ground-truth mask (the papers' SAM protocol)."""
        from ..inference.prompts import boxes_from_mask
        if masks.ndim == 4:
            masks = masks[:, 0]
        boxes = [boxes_from_mask(m, min_area=min_area) for m in masks]
        return self.predict_boxes(images, boxes, **kwargs)

    def forward(self, images: torch.Tensor, boxes: BoxesLike | None = None,
                multimask_output: bool = False) -> torch.Tensor:
        """Logits (B, 1, H, W) for box prompts (see :meth:`predict_boxes`). Without boxes SAM
        runs unprompted (no sparse token, only the no-mask dense embedding)."""
        if boxes is not None:
            return self.predict_boxes(images, boxes, multimask_output=multimask_output)
        original = (int(images.shape[-2]), int(images.shape[-1]))
        x, input_size = self.preprocess(images)
        emb = self.image_embeddings(x)
        low, iou = self.decode(emb, multimask_output=multimask_output)
        if low.shape[1] > 1:
            low = low[torch.arange(low.shape[0], device=low.device), iou.argmax(1)].unsqueeze(1)
        return self.postprocess_masks(low, input_size, original)


# ---------------------------------------------------------------------------------------------
# Checkpoints: official ones as data, download with verification, loading by key
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamCheckpoint:
    """One official SAM-family checkpoint (a plain ``state_dict`` saved with torch.save)."""

    name: str
    url: str
    sha256: str
    image_encoder: str          # "vit_b" | "vit_l" | "vit_h" | "tinyvit"
    license: str = "Apache-2.0"
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


SAM_CHECKPOINTS: dict[str, SamCheckpoint] = {
    "sam_vit_h": SamCheckpoint(
        "sam_vit_h", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", "vit_h",
        notes="SAM ViT-H (636 M params); only the prompt encoder and mask decoder fit models "
              "of this package (no ViT image encoder here)"),
    "sam_vit_l": SamCheckpoint(
        "sam_vit_l", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", "vit_l",
        notes="SAM ViT-L (308 M params); prompt encoder and mask decoder load"),
    "sam_vit_b": SamCheckpoint(
        "sam_vit_b", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", "vit_b",
        notes="SAM ViT-B (91 M params); prompt encoder and mask decoder load"),
    "mobile_sam": SamCheckpoint(
        "mobile_sam", "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f", "tinyvit",
        notes="MobileSAM vit_t (10.13 M params); loads fully into `mobile_sam`"),
}

#: Environment variable naming a folder that holds checkpoints under their official file names.
CHECKPOINT_DIR_ENV = "HRMEDSEG_CHECKPOINT_DIR"


class ChecksumError(PretrainedWeightError):
    """A downloaded or found file whose sha256 is not the recorded one."""


def checkpoint_dirs() -> list[Path]:
    """Folders searched for official checkpoints: ``$HRMEDSEG_CHECKPOINT_DIR`` (``os.pathsep``
    separated), then ``~/.cache/hrmedseg/checkpoints``."""
    dirs = [Path(p) for p in os.environ.get(CHECKPOINT_DIR_ENV, "").split(os.pathsep) if p]
    return dirs + [Path.home() / ".cache" / "hrmedseg" / "checkpoints"]


def find_checkpoint(name: str, verify: bool = True) -> Path | None:
    """Local path of an official checkpoint (by its file name) in :func:`checkpoint_dirs`, or
    None. With ``verify`` a file whose sha256 differs raises :class:`ChecksumError`."""
    info = _checkpoint_info(name)
    for d in checkpoint_dirs():
        path = d / info.filename
        if path.is_file():
            if verify:
                digest = sha256_of(path)
                if digest != info.sha256:
                    raise ChecksumError(f"{path}: sha256 {digest} is not {info.sha256} "
                                        f"recorded for {name!r}")
            return path
    return None


def _checkpoint_info(name: str) -> SamCheckpoint:
    if name not in SAM_CHECKPOINTS:
        raise KeyError(f"unknown SAM checkpoint {name!r}; known: {sorted(SAM_CHECKPOINTS)}")
    return SAM_CHECKPOINTS[name]


def download_checkpoint(name: str, dest: str | os.PathLike | None = None, *,
                        url: str | None = None, sha256: str | None = None,
                        overwrite: bool = False, timeout: float = 60.0) -> Path:
    """Download an official checkpoint (or ``url``) to ``dest``, verifying its sha256.

    Args:
        name: a key of :data:`SAM_CHECKPOINTS`, or any label when ``url`` and ``sha256`` are
            given.
        dest: a folder (the official file name is used) or a file path; default: the last of
            :func:`checkpoint_dirs` (``~/.cache/hrmedseg/checkpoints``).
        url, sha256: override the recorded source / hash (a mirror, a ``file://`` URL).
        overwrite: download even if a file with the right hash is already there.

    The file is streamed into a temporary file beside ``dest``, hashed on the way, and renamed
    into place only if the hash matches; otherwise the temporary file is removed and
    :class:`ChecksumError` is raised, so no partial or wrong file is ever left at ``dest``.
    """
    info = SAM_CHECKPOINTS.get(name)
    if info is None and (url is None or sha256 is None):
        raise KeyError(f"unknown SAM checkpoint {name!r}; known: {sorted(SAM_CHECKPOINTS)} "
                       "(or pass both url= and sha256=)")
    src = url or info.url
    want = (sha256 or info.sha256).lower()
    filename = src.rsplit("/", 1)[-1] or f"{name}.pt"
    if dest is None:
        dest = checkpoint_dirs()[-1]
    as_dir = isinstance(dest, str) and dest.endswith(("/", os.sep))
    dest = Path(dest)
    if as_dir or dest.is_dir():
        dest = dest / filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and not overwrite and sha256_of(dest) == want:
        return dest
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(src, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != want:
            raise ChecksumError(f"{src}: sha256 {got} does not match the expected {want}; "
                                f"nothing was written to {dest}")
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


_SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def read_sam_state_dict(source: str | os.PathLike | dict[str, torch.Tensor],
                        sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A segment-anything / MobileSAM state dict from a file (torch ``.pt``/``.pth`` read with
    ``weights_only=True``, or ``.safetensors``) or a dict; ``{"model": …}`` /
    ``{"state_dict": …}`` wrappers and a ``module.`` prefix (DDP) are unwrapped."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        if sha256 is not None:
            digest = sha256_of(path)
            if digest != sha256.lower():
                raise ChecksumError(f"{path}: sha256 {digest} is not the expected {sha256}")
        if path.suffix == ".safetensors":
            from ._hub import load_safetensors
            state = load_safetensors(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickle errors, truncated files
                raise CheckpointError(f"{path}: not a readable torch checkpoint "
                                      f"(weights_only load failed: {exc})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_sam_checkpoint(model: SamModel, source: str | os.PathLike | dict[str, torch.Tensor],
                        parts: Iterable[str] | None = None, sha256: str | None = None,
                        strict: bool = True) -> list[str]:
    """Load a segment-anything / MobileSAM state dict (keys ``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*``) into ``model``.

    Args:
        source: file path or state dict (see :func:`read_sam_state_dict`).
        parts: which of the three parts to load. Default: all three when the model's image
            encoder is TinyViT (MobileSAM), else the prompt encoder and mask decoder (a SAM
            ViT encoder has nothing to load into; HRMedSegSAM's encoder comes from
            distillation — a full HRMedSegSAM state dict loads with ``parts`` naming all three).
        strict: every parameter/buffer of the chosen parts must be in the file with its shape,
            and the file may hold nothing else under those parts.

    Returns the list of parts loaded. Raises :class:`CheckpointError` with the first
    offending keys otherwise.
    """
    state = read_sam_state_dict(source, sha256)
    if parts is None:
        parts = _SAM_PARTS if isinstance(model.image_encoder, TinyViT) else _SAM_PARTS[1:]
    parts = tuple(parts)
    bad = [p for p in parts if p not in _SAM_PARTS]
    if bad:
        raise ValueError(f"unknown parts {bad}; choose from {_SAM_PARTS}")
    src_name = str(source) if not isinstance(source, dict) else "state dict"
    if "image_encoder" in parts and "image_encoder.pos_embed" in state:
        raise CheckpointError(f"{src_name}: holds a SAM ViT image encoder, which this package "
                              f"does not build ({type(model.image_encoder).__name__} here); "
                              f"load parts=('prompt_encoder', 'mask_decoder')")
    own = model.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        part = key.split(".", 1)[0]
        if part not in parts:
            continue
        if part == "image_encoder" and isinstance(model.image_encoder, TinyViT):
            key = "image_encoder." + _tinyvit_key_from_mobile_sam(key[len("image_encoder."):])
            if key.startswith(("image_encoder.norm_head.", "image_encoder.head.")) \
                    and key not in own:
                continue  # TinyViT built without the (unused) ImageNet head
        chosen[key] = value
    wanted = [k for k in own if k.split(".", 1)[0] in parts]
    load_state_dict_checked(model, chosen, src_name, strict=strict, expected=wanted,
                            what=f" parts {parts}")
    return list(parts)


def to_sam_state_dict(model: SamModel) -> dict[str, torch.Tensor]:
    """``model``'s state dict under segment-anything / MobileSAM key names (TinyViT's
    Conv-BN ``conv`` → ``c``), e.g. to load a fine-tuned model into MobileSAM's code."""
    out = {}
    tiny = isinstance(model.image_encoder, TinyViT)
    for k, v in model.state_dict().items():
        if tiny and k.startswith("image_encoder."):
            k = "image_encoder." + _tinyvit_key_to_mobile_sam(k[len("image_encoder."):])
        out[k] = v
    return out


def load_hrmedseg_encoder(model: SamModel,
                          source: HRMedSeg | dict[str, torch.Tensor]) -> SamModel:
    """Copy a (distilled) HRMedSeg's ``encoder.*`` and ``neck.*`` weights into an HRMedSegSAM
    image encoder (strict for those parts)."""
    if not isinstance(model.image_encoder, HRMedSegImageEncoder):
        raise TypeError(f"{model.model_name}'s image encoder is not an HRMedSegImageEncoder")
    state = source.state_dict() if isinstance(source, nn.Module) else source
    sub = {k: v for k, v in state.items() if k.startswith(("encoder.", "neck."))}
    model.image_encoder.load_state_dict(sub, strict=True)
    return model


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

_PAPER_MOBILESAM = ("MobileSAM (Zhang et al. 2023) / ESP-MedSAM light encoder "
                    "(papers/esp-medsam.txt)")
_PAPER_HRMEDSEGSAM = "HRMedSeg Table 4, SAM combination (papers/hrmedseg.txt)"


def _load_sam_pretrained(model: SamModel, name: str, pretrained: bool | str,
                         default_checkpoint: str | None) -> None:
    """pretrained: True → the model's official checkpoint found locally (else a weights.json
    default); a file path; an official checkpoint name; or a weights.json tag."""
    if isinstance(pretrained, str) and Path(pretrained).is_file():
        load_sam_checkpoint(model, pretrained)
        model.pretrained_weight = str(pretrained)
        return
    ckpt = pretrained if isinstance(pretrained, str) and pretrained in SAM_CHECKPOINTS else (
        default_checkpoint if pretrained is True else None)
    if ckpt is not None:
        path = find_checkpoint(ckpt)
        if path is not None:
            load_sam_checkpoint(model, path)
            model.pretrained_weight = ckpt
            return
        has_default = any(w.model == name and w.default for w in weight_index().values())
        if pretrained is not True or not has_default:
            raise PretrainedWeightError(
                f"checkpoint {ckpt!r} ({SAM_CHECKPOINTS[ckpt].filename}) is not in "
                f"{[str(d) for d in checkpoint_dirs()]}: fetch it with "
                f"hrmedseg.models.sam.download_checkpoint({ckpt!r}) or set "
                f"{CHECKPOINT_DIR_ENV}, or pass pretrained='/path/to/{SAM_CHECKPOINTS[ckpt].filename}'")
    load_pretrained(model, name, pretrained)


def _sam_config(defaults: dict[str, Any], kwargs: dict[str, Any]) -> SamConfig:
    return SamConfig(**{**defaults, **kwargs})


@register_model(paper=_PAPER_MOBILESAM, tags=("sam", "box-prompt"))
def mobile_sam(pretrained: bool | str = False, num_classes: int = 1, in_chans: int = 3,
               img_size: int | tuple[int, int] = 1024, **kwargs: Any) -> SamModel:
    """MobileSAM: TinyViT-5M encoder + SAM prompt encoder and mask decoder; box prompts."""
    cfg = _sam_config({"encoder": "tinyvit"}, {"num_classes": num_classes, "in_chans": in_chans,
                                               "img_size": img_size, **kwargs})
    model = SamModel(cfg, model_name="mobile_sam")
    if pretrained:
        _load_sam_pretrained(model, "mobile_sam", pretrained, "mobile_sam")
    return model


@register_model(paper=_PAPER_HRMEDSEGSAM, tags=("sam", "hrmedseg", "box-prompt"))
def hrmedseg_sam(pretrained: bool | str = False, num_classes: int = 1, in_chans: int = 3,
                 img_size: int | tuple[int, int] = 1024, sam_checkpoint: str | None = None,
                 **kwargs: Any) -> SamModel:
    """HRMedSegSAM: HRMedSeg encoder + neck in place of SAM's image encoder; box prompts.

    ``sam_checkpoint`` (a file or an official name such as ``"mobile_sam"``) supplies SAM's
    prompt encoder and mask decoder; ``pretrained`` a full HRMedSegSAM weight.
    """
    cfg = _sam_config({"encoder": "hrmedseg"}, {"num_classes": num_classes, "in_chans": in_chans,
                                                "img_size": img_size, **kwargs})
    model = SamModel(cfg, model_name="hrmedseg_sam")
    if sam_checkpoint is not None:
        path = sam_checkpoint if Path(sam_checkpoint).is_file() else find_checkpoint(sam_checkpoint)
        if path is None:
            raise PretrainedWeightError(
                f"SAM checkpoint {sam_checkpoint!r} not found in "
                f"{[str(d) for d in checkpoint_dirs()]}; see download_checkpoint")
        load_sam_checkpoint(model, path, parts=("prompt_encoder", "mask_decoder"))
    if pretrained:
        _load_sam_pretrained(model, "hrmedseg_sam", pretrained, None)
    return model
