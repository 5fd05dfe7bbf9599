"""TinyViT image encoder (MobileSAM's ``vit_t``, ESP-MedSAM's light encoder).

TinyViT: Wu et al., "TinyViT: Fast Pretraining Distillation for Small Vision Transformers",
ECCV 2022. MobileSAM (Zhang et al. 2023) distilled TinyViT-5M onto SAM's 256×64×64 embedding;
ESP-MedSAM uses the same network as its light image encoder. Written from the TinyViT paper and
MobileSAM's description:

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

Checkpoint key names: everything matches MobileSAM except the Conv-BN pairs, which this
package's shared :class:`~hrmedseg.layers.ConvBN` names ``conv``/``bn`` where MobileSAM's
``Conv2d_BN`` says ``c``/``bn``. :class:`TinyViT` maps ``.c.`` → ``.conv.`` when a state dict
is loaded (:func:`tinyvit_key_from_mobile_sam`), so ``load_state_dict(mobile_sam_weights,
strict=True)`` works; :func:`tinyvit_key_to_mobile_sam` maps back for export.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import ConvBN, DropPath, LayerNorm2d, MBConv, Mlp

__all__ = ["TinyViT", "TinyViTBlock", "TinyViTPatchEmbed", "WindowAttention", "PatchMerging",
           "ConvLayer", "BasicLayer", "tinyvit_key_from_mobile_sam",
           "tinyvit_key_to_mobile_sam"]

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
_CONVBN_KEY_OWN = re.compile(r"(?<=\.)conv(?=\.(weight|bias)$)")


def tinyvit_key_from_mobile_sam(key: str) -> str:
    """A TinyViT state-dict key of MobileSAM's checkpoint (relative to the image encoder) under
    this package's name: MobileSAM's ``Conv2d_BN`` names its conv ``c``, the shared ConvBN
    ``conv``; every other key is the same."""
    return _CONVBN_KEY.sub("conv", key)


def tinyvit_key_to_mobile_sam(key: str) -> str:
    """Inverse of :func:`tinyvit_key_from_mobile_sam` (``conv`` → ``c``), for export."""
    return _CONVBN_KEY_OWN.sub("c", key)


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
            SAM never uses (0 leaves it out; :func:`~hrmedseg.models.sam_checkpoints.load_sam_checkpoint` then skips its keys).
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
        new = prefix + tinyvit_key_from_mobile_sam(key[len(prefix):])
        if new != key:
            state_dict[new] = state_dict.pop(key)
