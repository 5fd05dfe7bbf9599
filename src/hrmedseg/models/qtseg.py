"""QTSeg.

"QTSeg: A Query Token-Based Dual-Mix Attention Framework with Multi-Level Feature Distribution
for Medical Image Segmentation", P.-N. Tran, N. T. Pham, D. N. M. Dang, E.-N. Huh, C. S. Hong
(papers/qtseg.txt), with the details the paper leaves open pinned by SPEC "QTSeg".

Layout (Fig. 3)::

    image (B,3,H,W) ─ YOLOv8-n backbone + PAN neck ─ S0 (64, H/8), S1 (128, H/16), S2 (256, H/32)
      ─ MLFD (eq. 5-7) ─ SF0, SF1, SF2
      ─ DMAD(SF2, 256, depth 3) ─ up ×2 (+ SF1) ─ DMAD(128, depth 2) ─ up ×2 (+ SF0)
      ─ DMAD(64, depth 1) ─ two ConvT ×2 (H/2) ─ masks = tokens · features ─ bilinear (H, W)

* **Encoder** (§III-A): YOLOv8-nano backbone (``Conv`` = conv-BN-SiLU, ``C2f``, ``SPPF`` k=5,
  base width 16) and its PAN neck; outputs P3 = 64 ch @ stride 8, P4 = 128 @ 16, P5 = 256 @ 32.
* **MLFD** (§III-C, eq. 5-7): every output scale i is the concatenation of all three encoder
  outputs brought to its resolution, split 1:1:2 (its own scale gets half of F_i, each other
  scale a quarter): PROJ = 1×1 Conv (own), DOWN = 3×3 strided Conv (finer inputs), UP =
  ConvT with kernel = stride (coarser inputs), each with BN + SiLU::

      SF_0 = Concat(PROJ(S_0), UP(S_1), UP(S_2))        (5)
      SF_1 = Concat(DOWN(S_0), PROJ(S_1), UP(S_2))      (6)
      SF_2 = Concat(DOWN(S_0), DOWN(S_1), PROJ(S_2))    (7)

* **DMAD** (§III-B, Fig. 4), coarse → fine, widths 256/128/64, depths 3/2/1, 8 heads, MLP 2048.
  Query tokens QT: one learned token per class *including background* (softmax output). Each
  dual-mix attention (DMA) layer, on the feature map plus a random-Fourier positional encoding:

      S_CAB = γ · softmax(Q Kᵀ) V + S_skip,  Q = K = V = S_skip = Flatten(S)       (1)
      S_SAM = σ(f^{7×7}([AvgPool(S); MaxPool(S)])) · S_skip  (+ S_skip)            (2)
      CTFA: softmax(Q' K'ᵀ / √d_k) V' with Q' = QT W^q, K' = S W^k, V' = S W^v   (3)
      QT = LN(CTFA(QT, S_CAB) + CTFA(QT, S_SAM) + QT_skip)                          (4)
      QT = LN(MLP(QT)) + QT
      S  = S + CFTA(S_CAB + S_SAM, QT)     (features attend to the tokens)

  followed, after the last layer, by a final token → image attention and LayerNorm. Between
  scales the features go through an upsampling block (ConvT ×2 → LayerNorm2d → GELU) and are
  added to the next finer MLFD output, and each query token goes through its own 3-layer MLP
  mapping F_i → F_{i-1}. After the finest scale two more ConvT ×2 bring the features to H/2;
  the final per-token MLP gives each class its weight vector, and the mask logits are the dot
  products tokens · features (§III-B, Fig. 3), resized bilinearly to H × W.

Output: logits (B, K, H, W) with K = classes *including* background, to be soft-maxed
(``config.output = "softmax"``). ``create_model("qtseg", num_classes=1)`` means one
foreground class and builds K = 2 outputs (background, foreground), like HER-Seg.

Parameter count: 9,214,850 with 2 classes, exactly the authors' released model (SPEC). Every
part but one is fixed by the paper/SPEC (encoder 2,259,536 = YOLOv8n's 3,157,200 less its
Detect head; MLFD 279,424; the three DMADs, the two between-scale upsamplers, the query tokens
and the between-scale token MLPs). The one part neither the paper nor the SPEC states is the
width of the two final transposed convolutions (and of the last token MLP): we infer it from the
count. With everything else as specified, a search over final widths {8…128}², with/without
LayerNorm2d and bias on each ConvT, found one choice that reproduces 9,214,850: 64 → 32 → 64
channels, each ConvT followed by LayerNorm2d + GELU, and a 64 → 64 → 64 token MLP
(``final_up_dims = (32, 64)``); a SAM-style 64 → 16 → 8 upscaler would give 9,195,562
(−0.21 %) and a halving 64 → 32 → 16 one 9,202,290 (−0.14 %). Both stay available through
``final_up_dims`` / ``final_up_norms``.

The compute confirms that choice. At 512×512 with 2 classes the paper's 2.60 G (SPEC: 2.596 G)
is fvcore MACs + fvcore's activation count. Measured on this model, with attention written as
explicit matmuls as in the authors' SAM-derived code: fvcore MACs 2,603,114,992 + activations
18,034,176 (:func:`hrmedseg.profiling.activations.count_activations` gives the same number).
That sum includes 25,559,040 "MACs" that fvcore charges for our LayerNorm2d (one
``F.layer_norm`` call) but cannot see in segment-anything's hand-written LayerNorm2d (mean /
pow / sqrt, which fvcore skips), the one a SAM-derived decoder like the authors' uses; with that
LayerNorm2d the sum is 2,595,590,128 = 2.596 G, the released model's figure. (The SAM-style or halving final upscalers above would give 2.442 G / 2.485 G.) The
package's own counters at 512×512: PyTorch FlopCounterMode 2,553,804,288 MACs (convs,
matmuls, attention; no norms) and thop-style module hooks 3,365,969,664 MACs (transposed convs
counted stride² × their true cost, norms included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import (C2f, SPPF, Attention, ChannelAttentionBlock, Conv, ConvTranspose,
                      LayerNorm2d, MLPBlock, MultiLayerMLP, PositionEmbeddingRandom,
                      SpatialAttention, is_channels_last, token_masks)
from ._base import SegmentationModel
from ._pretrained import load_pretrained
from ._registry import register_model

__all__ = ["QTSegConfig", "QTSeg", "YOLOv8Encoder", "MLFD", "DualMixAttentionLayer", "DMAD",
           "QTSegDecoder"]

_ACTS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class QTSegConfig:
    """Everything that defines a QTSeg network (saved as config.json)."""

    num_classes: int = 2            # output channels, background included (softmax)
    in_chans: int = 3
    img_size: tuple[int, int] = (512, 512)
    # -- encoder: YOLOv8 backbone + PAN neck (nano: width 0.25, depth 0.33) -----------------
    widths: tuple[int, int, int, int, int] = (16, 32, 64, 128, 256)  # strides 2, 4, 8, 16, 32
    backbone_depths: tuple[int, int, int, int] = (1, 2, 2, 1)       # C2f repeats, strides 4-32
    neck_depth: int = 1                                              # C2f repeats in the PAN
    sppf_kernel: int = 5
    # -- MLFD (eq. 5-7) ------------------------------------------------------------------------
    use_mlfd: bool = True
    mlfd_own_parts: int = 2         # 1:1:2 split — own scale 2 parts ...
    mlfd_other_parts: int = 1       # ... each other scale 1 part (of 4)
    mlfd_down_kernel: int = 3
    # -- DMAD decoder, coarse → fine (widths are the encoder's P5, P4, P3) ---------------------
    decoder_depths: tuple[int, ...] = (3, 2, 1)
    num_heads: int = 8
    mlp_dim: int = 2048
    mlp_act: str = "relu"           # the SAM-derived decoder's MLP activation
    attention_downsample_rate: int = 2
    spatial_kernel: int = 7         # CBAM spatial attention kernel (eq. 2)
    spatial_residual: bool = True   # S_SAM = S·a + S (released model) instead of S·a
    channel_gamma_init: float = 0.0
    token_mlp_layers: int = 3
    final_up_dims: tuple[int, ...] = (32, 64)      # the two ConvT ×2 after the finest scale
    final_up_norms: tuple[bool, ...] = (True, True)  # LayerNorm2d after each of them
    output: str = "softmax"

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(v) for v in self.img_size)
        self.widths = tuple(int(v) for v in self.widths)
        self.backbone_depths = tuple(int(v) for v in self.backbone_depths)
        self.decoder_depths = tuple(int(v) for v in self.decoder_depths)
        self.final_up_dims = tuple(int(v) for v in self.final_up_dims)
        self.final_up_norms = tuple(bool(v) for v in self.final_up_norms)
        if self.num_classes < 2:
            raise ValueError(f"QTSeg needs num_classes >= 2 (background included), got "
                             f"{self.num_classes}; create_model('qtseg', num_classes=1) maps one "
                             "foreground class to 2 outputs")
        if len(self.widths) != 5 or len(self.backbone_depths) != 4:
            raise ValueError("widths needs 5 entries (strides 2..32) and backbone_depths 4")
        if len(self.decoder_depths) != 3:
            raise ValueError(f"decoder_depths needs one depth per scale (3), got {self.decoder_depths}")
        if len(self.final_up_dims) != len(self.final_up_norms) or not self.final_up_dims:
            raise ValueError("final_up_dims and final_up_norms must be non-empty and of equal length")
        if self.mlp_act not in _ACTS:
            raise ValueError(f"mlp_act must be one of {sorted(_ACTS)}, got {self.mlp_act!r}")
        if self.output != "softmax":
            raise ValueError(f"QTSeg's output is a softmax over classes, got output={self.output!r}")
        parts = 2 * self.mlfd_other_parts + self.mlfd_own_parts
        for d in self.decoder_dims:
            if d % parts:
                raise ValueError(f"MLFD split {self.mlfd_other_parts}:{self.mlfd_other_parts}:"
                                 f"{self.mlfd_own_parts} does not divide width {d}")
            if (d // self.attention_downsample_rate) % self.num_heads:
                raise ValueError(f"attention width {d // self.attention_downsample_rate} not "
                                 f"divisible by {self.num_heads} heads")

    @property
    def decoder_dims(self) -> tuple[int, int, int]:
        """DMAD widths coarse → fine = the encoder's P5, P4, P3 widths."""
        return (self.widths[4], self.widths[3], self.widths[2])


def _maybe_checkpoint(enabled: bool, fn: Callable[..., Any], *args: Any) -> Any:
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


# ---------------------------------------------------------------------------------------------
# Encoder: YOLOv8 backbone + PAN neck
# ---------------------------------------------------------------------------------------------

class YOLOv8Encoder(nn.Module):
    """YOLOv8 backbone (strides 2…32, SPPF) and PAN neck (top-down then bottom-up).

    Returns [P3 (stride 8), P4 (16), P5 (32)] with widths (w2, w3, w4) = (64, 128, 256) for
    the nano model.
    """

    def __init__(self, cfg: QTSegConfig) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = cfg.widths
        n1, n2, n3, n4 = cfg.backbone_depths
        nn_ = cfg.neck_depth
        # backbone
        self.stem = Conv(cfg.in_chans, w0, 3, 2)                       # /2
        self.down1 = Conv(w0, w1, 3, 2)                                # /4
        self.c2f1 = C2f(w1, w1, n1, shortcut=True)
        self.down2 = Conv(w1, w2, 3, 2)                                # /8
        self.c2f2 = C2f(w2, w2, n2, shortcut=True)
        self.down3 = Conv(w2, w3, 3, 2)                                # /16
        self.c2f3 = C2f(w3, w3, n3, shortcut=True)
        self.down4 = Conv(w3, w4, 3, 2)                                # /32
        self.c2f4 = C2f(w4, w4, n4, shortcut=True)
        self.sppf = SPPF(w4, w4, cfg.sppf_kernel)
        # PAN neck
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.td4 = C2f(w4 + w3, w3, nn_, shortcut=False)                # top-down /16
        self.td3 = C2f(w3 + w2, w2, nn_, shortcut=False)                # P3 out /8
        self.bu3 = Conv(w2, w2, 3, 2)
        self.bu4 = C2f(w2 + w3, w3, nn_, shortcut=False)                # P4 out /16
        self.bu4_down = Conv(w3, w3, 3, 2)
        self.bu5 = C2f(w3 + w4, w4, nn_, shortcut=False)                # P5 out /32
        self.out_channels = (w2, w3, w4)
        self.grad_checkpointing = False

    def _c2f(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return _maybe_checkpoint(self.grad_checkpointing, block, x)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        x = self._c2f(self.c2f1, self.down1(x))
        c3 = self._c2f(self.c2f2, self.down2(x))
        c4 = self._c2f(self.c2f3, self.down3(c3))
        c5 = self.sppf(self._c2f(self.c2f4, self.down4(c4)))
        t4 = self._c2f(self.td4, torch.cat([self.upsample(c5), c4], dim=1))
        p3 = self._c2f(self.td3, torch.cat([self.upsample(t4), c3], dim=1))
        p4 = self._c2f(self.bu4, torch.cat([self.bu3(p3), t4], dim=1))
        p5 = self._c2f(self.bu5, torch.cat([self.bu4_down(p4), c5], dim=1))
        return [p3, p4, p5]


# ---------------------------------------------------------------------------------------------
# MLFD: multi-level feature distribution (eq. 5-7)
# ---------------------------------------------------------------------------------------------

class MLFD(nn.Module):
    """Redistributes the three encoder outputs so each scale sees all of them (eq. 5-7).

    ``branches[i][j]`` brings input j (0 = finest) to output scale i with F_i·share channels:
    a 1×1 Conv if i == j (PROJ, own share 2/4), a k×k Conv of stride 2^(i-j) if j is finer
    (DOWN), a ConvT of kernel = stride = 2^(j-i) if j is coarser (UP); all with BN + SiLU.
    """

    def __init__(self, channels: tuple[int, ...], own_parts: int = 2, other_parts: int = 1,
                 down_kernel: int = 3) -> None:
        super().__init__()
        n = len(channels)
        total = own_parts + (n - 1) * other_parts
        self.branches = nn.ModuleList()
        for i, c_out in enumerate(channels):
            row = nn.ModuleList()
            for j, c_in in enumerate(channels):
                share = c_out * (own_parts if i == j else other_parts) // total
                if i == j:
                    row.append(Conv(c_in, share, 1, 1))
                elif j < i:
                    row.append(Conv(c_in, share, down_kernel, 2 ** (i - j)))
                else:
                    s = 2 ** (j - i)
                    row.append(ConvTranspose(c_in, share, s, s))
            self.branches.append(row)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([blk(f) for blk, f in zip(row, feats)], dim=1) for row in self.branches]


# ---------------------------------------------------------------------------------------------
# DMAD: dual-mix attention decoder
# ---------------------------------------------------------------------------------------------

class DualMixAttentionLayer(nn.Module):
    """One DMA layer (eq. 1-4 + CFTA): query tokens read the spatial- and channel-attended
    feature map, then the feature map reads the tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, act: type[nn.Module],
                 downsample_rate: int, spatial_kernel: int, spatial_residual: bool,
                 gamma_init: float) -> None:
        super().__init__()
        self.spatial_attn = SpatialAttention(spatial_kernel, residual=spatial_residual)  # SAM
        self.channel_attn = ChannelAttentionBlock(gamma_init)                           # CAB
        self.ctfa_spatial = Attention(dim, num_heads, downsample_rate)
        self.ctfa_channel = Attention(dim, num_heads, downsample_rate)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_dim, act)
        self.norm2 = nn.LayerNorm(dim)
        self.cfta = Attention(dim, num_heads, downsample_rate)

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor, pe: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, K, C), feats (B, C, h, w), pe (1, C, h, w)."""
        b, c, h, w = feats.shape
        x = feats + pe
        s_sam = self.spatial_attn(x).flatten(2).transpose(1, 2)   # (B, hw, C)
        s_cab = self.channel_attn(x).flatten(2).transpose(1, 2)
        # eq. (4): QT = LN(CTFA(QT, S_CAB) + CTFA(QT, S_SAM) + QT_skip)
        tok = self.norm1(tokens + self.ctfa_spatial(tokens, s_sam, s_sam)
                         + self.ctfa_channel(tokens, s_cab, s_cab))
        tokens = tok + self.norm2(self.mlp(tok))
        # CFTA: the features (S_CAB + S_SAM as queries) attend to the tokens
        upd = self.cfta(s_sam + s_cab, tokens, tokens)             # (B, hw, C)
        feats = feats + upd.transpose(1, 2).reshape(b, c, h, w)
        return tokens, feats


class DMAD(nn.Module):
    """Dual-mix attention decoder of one scale: ``depth`` DMA layers on the feature map plus
    its random-Fourier positional encoding, then a final token → image attention + LN."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int,
                 act: type[nn.Module], downsample_rate: int, spatial_kernel: int,
                 spatial_residual: bool, gamma_init: float) -> None:
        super().__init__()
        self.pe_layer = PositionEmbeddingRandom(dim // 2)
        self.layers = nn.ModuleList(
            DualMixAttentionLayer(dim, num_heads, mlp_dim, act, downsample_rate, spatial_kernel,
                                  spatial_residual, gamma_init)
            for _ in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate)
        self.norm_final_attn = nn.LayerNorm(dim)
        self.grad_checkpointing = False

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = feats.shape[-2:]
        # In the feature map's layout: an elementwise op across two layouts is several times
        # slower, and the encoding (built channels-last) meets every feature map of this scale.
        layout = torch.channels_last if is_channels_last(feats) else torch.contiguous_format
        pe = self.pe_layer((h, w)).unsqueeze(0).to(feats.dtype).contiguous(memory_format=layout)
        for layer in self.layers:
            tokens, feats = _maybe_checkpoint(self.grad_checkpointing, layer, tokens, feats, pe)
        keys = feats.flatten(2).transpose(1, 2)
        k = keys + pe.flatten(2).transpose(1, 2)
        tokens = self.norm_final_attn(tokens + self.final_attn_token_to_image(tokens, k, keys))
        return tokens, feats


class UpBlock(nn.Sequential):
    """ConvT ×2 (→ LayerNorm2d) → GELU: the decoder's upsampling block."""

    def __init__(self, in_dim: int, out_dim: int, norm: bool = True) -> None:
        super().__init__()
        self.add_module("conv", nn.ConvTranspose2d(in_dim, out_dim, 2, stride=2))
        if norm:
            self.add_module("norm", LayerNorm2d(out_dim))
        self.add_module("act", nn.GELU())


class TokenMLPs(nn.Module):
    """One ``num_layers``-layer MLP per query token (F_in → F_in → … → F_out)."""

    def __init__(self, num_tokens: int, in_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(MultiLayerMLP(in_dim, in_dim, out_dim, num_layers)
                                  for _ in range(num_tokens))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(self.mlps)], dim=1)


class QTSegDecoder(nn.Module):
    """Mask decoder: DMADs coarse → fine with upsampling blocks and per-token MLPs between
    scales, a final ×4 upscaler to H/2, and the tokens · features dot product."""

    def __init__(self, cfg: QTSegConfig) -> None:
        super().__init__()
        dims = cfg.decoder_dims
        act = _ACTS[cfg.mlp_act]
        k = cfg.num_classes
        self.query_tokens = nn.Embedding(k, dims[0])
        self.stages = nn.ModuleList(
            DMAD(d, n, cfg.num_heads, cfg.mlp_dim, act, cfg.attention_downsample_rate,
                 cfg.spatial_kernel, cfg.spatial_residual, cfg.channel_gamma_init)
            for d, n in zip(dims, cfg.decoder_depths))
        self.upsamplers = nn.ModuleList(UpBlock(dims[i], dims[i + 1]) for i in range(len(dims) - 1))
        self.token_mlps = nn.ModuleList(TokenMLPs(k, dims[i], dims[i + 1], cfg.token_mlp_layers)
                                        for i in range(len(dims) - 1))
        ups, c = [], dims[-1]
        for c_out, norm in zip(cfg.final_up_dims, cfg.final_up_norms):
            ups.append(UpBlock(c, c_out, norm))
            c = c_out
        self.output_upscaling = nn.Sequential(*ups)
        self.output_token_mlps = TokenMLPs(k, dims[-1], c, cfg.token_mlp_layers)

    def set_grad_checkpointing(self, enable: bool) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = bool(enable)

    def forward(self, feats: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        """feats = MLFD outputs fine → coarse [SF0 (/8), SF1 (/16), SF2 (/32)]."""
        levels = feats[::-1]                                              # coarse → fine
        b = levels[0].shape[0]
        tokens = self.query_tokens.weight.unsqueeze(0).expand(b, -1, -1).to(levels[0].dtype)
        x = levels[0]
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = levels[i] + self.upsamplers[i - 1](x)
            tokens, x = stage(tokens, x)
            if i < len(self.token_mlps):
                tokens = self.token_mlps[i](tokens)
        up = self.output_upscaling(x)                                     # (B, c, H/2, W/2)
        weights = self.output_token_mlps(tokens)                          # (B, K, c)
        masks = token_masks(weights, up)
        if masks.shape[-2:] != tuple(out_size):
            masks = F.interpolate(masks, size=tuple(out_size), mode="bilinear", align_corners=False)
        return masks


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

class QTSeg(SegmentationModel):
    """YOLOv8 encoder + MLFD + DMAD mask decoder. ``forward`` returns logits (B, K, H, W) over
    K = classes incl. background (softmax). Height and width must be multiples of 32."""

    size_multiple = 32

    def __init__(self, cfg: QTSegConfig, model_name: str = "qtseg") -> None:
        super().__init__()
        self.config = cfg
        self.model_name = model_name
        self.encoder = YOLOv8Encoder(cfg)
        self.mlfd = (MLFD(self.encoder.out_channels, cfg.mlfd_own_parts, cfg.mlfd_other_parts,
                          cfg.mlfd_down_kernel) if cfg.use_mlfd else nn.Identity())
        self.decoder = QTSegDecoder(cfg)

    def set_grad_checkpointing(self, enable: bool = True, *, fraction: float = 1.0) -> "QTSeg":
        super().set_grad_checkpointing(enable, fraction=fraction)
        self.encoder.grad_checkpointing = bool(enable)
        self.decoder.set_grad_checkpointing(enable)
        return self

    def parameter_groups(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "mlfd": self.mlfd, "decoder": self.decoder}

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """MLFD outputs [SF0 (64, H/8), SF1 (128, H/16), SF2 (256, H/32)]."""
        self.check_input(x)
        feats = self.encoder(x)
        return self.mlfd(feats) if self.config.use_mlfd else feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return self.decoder(feats, (x.shape[-2], x.shape[-1]))


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

_PAPER = "QTSeg (papers/qtseg.txt)"


def _qtseg_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Softmax over classes incl. background: one foreground class means two outputs.
    if kwargs.get("num_classes", 1) == 1:
        kwargs["num_classes"] = 2
    return kwargs


def _build(name: str, defaults: dict[str, Any], pretrained: bool | str, **kwargs: Any) -> QTSeg:
    args = {**defaults, **_qtseg_kwargs(dict(kwargs))}
    model = QTSeg(QTSegConfig(**args), model_name=name)
    if pretrained:
        load_pretrained(model, name, pretrained)
    return model


@register_model(paper=_PAPER, tags=("qtseg", "paper-default"))
def qtseg(pretrained: bool | str = False, **kwargs: Any) -> QTSeg:
    """QTSeg at 512×512: YOLOv8-n + MLFD + DMAD, softmax incl. background; 9.21 M params (2 classes)."""
    kwargs.setdefault("img_size", (512, 512))
    return _build("qtseg", {}, pretrained, **kwargs)


@register_model(paper=_PAPER, tags=("qtseg",))
def qtseg_1024(pretrained: bool | str = False, **kwargs: Any) -> QTSeg:
    """QTSeg at 1024×1024 (the paper's retinal-vessel setting); same network as ``qtseg``."""
    kwargs.setdefault("img_size", (1024, 1024))
    return _build("qtseg_1024", {}, pretrained, **kwargs)
