"""HRMedSeg and HER-Seg.

* HRMedSeg: "HRMedSeg: Unlocking High-resolution Medical Image Segmentation via
  Memory-efficient Attention Modeling" (papers/hrmedseg.txt).
* HER-Seg: "HER-Seg: Holistically Efficient Segmentation for High-Resolution Medical Images"
  (papers/her-seg.txt) — the same network under other names (CE-Encoder = LGViT,
  DLA = DGLA with RoPE, pre-/post-filter = inter-/exter-gate, ME-Decoder = ECM-Decoder),
  softmax output with a background class, CE + Dice loss, and a 4×4 transposed-conv upscaler.

Layout (SPEC "HRMedSeg"):

    image (B,3,H,W) ─ PatchEmbed 16×16 ─ 2×MBConv (eq. 1) ─ L×DGLABlock (eq. 3-5) ─ Neck ─┐
    (B,256,H/16,W/16) ─ TwoWayTransformer with δ (eq. 6-7) ─ upscaler ─ · MLP(q') ─ bilinear (eq. 8)

Blocks live in :mod:`hrmedseg.layers`; this file wires them and registers the variants.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import (DGLABlock, DualGatedLinearAttention, LayerNorm2d, MBConv, MultiLayerMLP,
                      MultiscalePooling, PositionEmbeddingRandom, PromptEncoder, TwoWayTransformer,
                      set_fast_norm)
from ._base import SegmentationModel
from ._pretrained import load_pretrained
from ._registry import register_model

__all__ = ["HRMedSegConfig", "HRMedSeg", "LGViT", "Neck", "ECMDecoder", "apply_fast_paths", "FAST_PATH_DEFAULTS",
           "split_runtime_options",
           "default_stage_depths", "spread_evenly"]


#: Speed switches: runtime options of a built model (:meth:`HRMedSeg.set_fast_paths`), not
#: architecture: none adds or changes a parameter, and none is saved in ``config.json``
#: (``create_model``/``from_pretrained`` still take them as keywords). False everywhere (and
#: ``pool_impl="direct"``) is the plain reference path. On by default: together they made an
#: H200 training step at 1024², batch 16, bf16 11 % faster eager (205 → 229 img/s) and 23 %
#: faster compiled (351 → 431 img/s), peak memory 0.391 → 0.313 GB/img, inference 663 → 810
#: img/s, with the gradients 3.1e-2 from fp32 against plain bf16 autocast's 2.7e-2.
#:
#: * ``pool_impl``: δ as (1,k)+(k,1) passes ("separable", same values, 30 % faster H200
#:   training step at 1024²) or the direct k×k pooling ("direct", the reference).
#: * ``pool_channels_first``: δ on an NCHW copy of the (channels-last) embedding: PyTorch's
#:   NCHW pooling kernels read rows contiguously (layers/pooling.py). Same values.
#: * ``fast_norm``: under bf16/fp16 autocast, LayerNorm in that dtype instead of autocast's
#:   float32 (fewer casts, half the bytes saved; layers/norm.py). No effect in fp32.
#: * ``fast_attention``: under autocast, DGLA's core in that dtype instead of float32
#:   (layers/linear_attention.py). No effect in fp32.
FAST_PATH_DEFAULTS: dict[str, Any] = {"pool_impl": "separable", "pool_channels_first": True,
                                      "fast_norm": True, "fast_attention": True}


def split_runtime_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` without the speed switches, and the speed switches it held (old
    ``config.json`` files saved them among the architecture's arguments)."""
    arch = {k: v for k, v in kwargs.items() if k not in FAST_PATH_DEFAULTS}
    return arch, {k: v for k, v in kwargs.items() if k in FAST_PATH_DEFAULTS}


def default_stage_depths(depth: int) -> tuple[int, int, int]:
    """Split L blocks into the three head groups in the paper's 2 + 6 + 2 proportion."""
    outer = max(1, round(depth / 5)) if depth >= 3 else 0
    return (outer, depth - 2 * outer, outer)


@dataclass
class HRMedSegConfig:
    """Everything that defines an HRMedSeg/HER-Seg network (saved as config.json)."""

    num_classes: int = 1
    in_chans: int = 3
    img_size: tuple[int, int] = (1024, 1024)
    patch_size: int = 16
    # LGViT encoder
    embed_dim: int = 96
    depth: int = 10
    num_heads: tuple[int, int, int] = (6, 12, 24)
    stage_depths: tuple[int, int, int] | None = None
    mlp_ratio: float = 2.0
    num_mbconv: int = 2
    mbconv_expand: float = 2.0
    value_reduction: int = 4
    use_exter_gate: bool = True
    rope_base: float = 10000.0
    drop_path_rate: float = 0.1
    # neck + ECM decoder
    neck_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 256
    attention_downsample_rate: int = 2
    pool_sizes: tuple[int, ...] = (5, 9, 13)
    upscaler: str = "convt2x2"
    hypernet_layers: int = 3
    released_layout: bool = True
    output: str = ""  # "" = sigmoid for one class, softmax otherwise

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(v) for v in self.img_size)
        self.num_heads = tuple(self.num_heads)
        self.pool_sizes = tuple(self.pool_sizes)
        if self.stage_depths is None:
            self.stage_depths = default_stage_depths(self.depth)
        self.stage_depths = tuple(self.stage_depths)
        if sum(self.stage_depths) != self.depth:
            raise ValueError(f"stage_depths {self.stage_depths} do not add up to depth {self.depth}")
        if self.upscaler not in ("convt2x2", "convt4x4"):
            raise ValueError(f"upscaler must be 'convt2x2' or 'convt4x4', got {self.upscaler!r}")
        if self.output not in ("", "sigmoid", "softmax"):
            raise ValueError(f"output must be 'sigmoid' or 'softmax', got {self.output!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        for h in self.num_heads:
            if self.embed_dim % h:
                raise ValueError(f"embed_dim {self.embed_dim} is not divisible by {h} heads")
        if self.embed_dim % 4:
            raise ValueError(f"embed_dim must be divisible by 4 for 2-D RoPE, got {self.embed_dim}")


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → C channels (no norm)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def spread_evenly(n: int, k: int) -> tuple[bool, ...]:
    """``k`` of ``n`` slots marked, as evenly spaced as integers allow (k = n/2: every other
    slot, starting with the second)."""
    if not 0 <= k <= n:
        raise ValueError(f"cannot mark {k} of {n} slots")
    return tuple((i + 1) * k // n > i * k // n for i in range(n))


class LGViT(nn.Module):
    """Lightweight gated ViT: patch embedding, channel-interactive MBConvs, token-interactive
    DGLA blocks. Single scale: every block runs on the H/16 × W/16 grid at width C. Its owner
    sets the speed switches on it (:func:`apply_fast_paths`)."""

    def __init__(self, cfg: HRMedSegConfig) -> None:
        super().__init__()
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.in_chans, c, cfg.patch_size)
        dpr = torch.linspace(0, cfg.drop_path_rate, cfg.num_mbconv + cfg.depth).tolist()
        self.conv_layers = nn.ModuleList(
            MBConv(c, cfg.mbconv_expand, drop_path=dpr[i]) for i in range(cfg.num_mbconv))
        heads = [h for h, n in zip(cfg.num_heads, cfg.stage_depths) for _ in range(n)]
        self.blocks = nn.ModuleList(
            DGLABlock(c, heads[i], cfg.mlp_ratio, cfg.value_reduction,
                      drop_path=dpr[cfg.num_mbconv + i], use_exter_gate=cfg.use_exter_gate,
                      rope_base=cfg.rope_base)
            for i in range(cfg.depth))
        # Per layer (MBConvs, then DGLA blocks): recompute it in backward.
        self.checkpointed: tuple[bool, ...] = (False,) * self.num_layers

    @property
    def num_layers(self) -> int:
        return len(self.conv_layers) + len(self.blocks)

    @property
    def grad_checkpointing(self) -> bool:
        return any(self.checkpointed)

    def set_grad_checkpointing(self, enable: bool = True, fraction: float = 1.0) -> "LGViT":
        """Recompute ``fraction`` of the layers in backward, spread evenly over the encoder
        (:func:`spread_evenly`); every layer runs at H/16 with the same width, so each one
        recomputed saves about the same memory and costs about the same time."""
        n = self.num_layers
        k = max(1, round(fraction * n)) if enable and fraction > 0 else 0
        self.checkpointed = spread_evenly(n, k)
        return self

    def _run(self, i: int, fn: nn.Module, *args: Any) -> torch.Tensor:
        if self.checkpointed[i] and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for i, layer in enumerate(self.conv_layers):
            x = self._run(i, layer, x)
        b, c, h, w = x.shape
        t = x.flatten(2).transpose(1, 2)
        first = len(self.conv_layers)
        for i, blk in enumerate(self.blocks):
            t = self._run(first + i, blk, t, h, w)
        return t.transpose(1, 2).reshape(b, c, h, w)


class Neck(nn.Module):
    """SAM's neck: 1×1 conv → LN2d → 3×3 conv → LN2d, to the 256-channel embedding that
    feature distillation matches against the teacher."""

    def __init__(self, in_dim: int, out_dim: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim, 1, bias=False)
        self.norm1 = LayerNorm2d(out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False)
        self.norm2 = LayerNorm2d(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


class Upscaler(nn.Module):
    """F_trans of eq. 8. HRMedSeg: two 2×2 transposed convs (×4 in total, SAM's upscaler);
    HER-Seg: one 4×4 transposed conv with stride 4."""

    def __init__(self, dim: int, kind: str = "convt2x2") -> None:
        super().__init__()
        self.kind = kind
        if kind == "convt2x2":
            self.layers = nn.Sequential(
                nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
                nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU())
        else:
            self.layers = nn.Sequential(
                nn.ConvTranspose2d(dim, dim // 8, 4, stride=4), LayerNorm2d(dim // 8), nn.GELU())
        self.out_dim = dim // 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ECMDecoder(nn.Module):
    """Efficient cross-multiscale decoder (eq. 6-8), batched over images and classes.

    Learned mask queries (one per class) go through SAM's two-way transformer whose image side
    is refined by the parameter-free multiscale pooling δ; the embedding is upscaled ×4; each
    class query's hypernetwork MLP(q'_c) is dotted with every upscaled pixel; bilinear to the
    input size.

    ``released_layout`` reproduces the token layout of the authors' released model (the one
    whose totals the paper reports, 3,526,364 parameters): SAM's prompt encoder sits in front
    (with no prompt its learned ``no_mask_embed`` is added to the image embedding; box prompts
    become sparse tokens), and beside the class queries there is an IoU-style token and two
    more mask tokens with their own hypernetworks — SAM's mask-decoder layout, whose extra
    masks are not part of the output. Without it the decoder is exactly the paper's equations
    (3,239,760 parameters for one class). Names follow segment-anything's mask decoder, so
    its transformer/upscaler/hypernetwork weights load by key.
    """

    def __init__(self, cfg: HRMedSegConfig) -> None:
        super().__init__()
        d = cfg.neck_dim
        self.num_classes = cfg.num_classes
        self.released_layout = cfg.released_layout
        grid = (cfg.img_size[0] // cfg.patch_size, cfg.img_size[1] // cfg.patch_size)
        if cfg.released_layout:
            self.prompt_encoder = PromptEncoder(d, grid, cfg.img_size)
            self.iou_token = nn.Embedding(1, d)
            self.num_mask_tokens = cfg.num_classes + 2
        else:
            self.pe_layer = PositionEmbeddingRandom(d // 2)
            self.num_mask_tokens = cfg.num_classes
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, d)
        mixer = MultiscalePooling(cfg.pool_sizes) if cfg.pool_sizes else None
        self.transformer = TwoWayTransformer(cfg.decoder_depth, d, cfg.decoder_heads,
                                             cfg.decoder_mlp_dim, nn.ReLU,
                                             cfg.attention_downsample_rate, key_mixer=mixer)
        self.output_upscaling = Upscaler(d, cfg.upscaler)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MultiLayerMLP(d, d, self.output_upscaling.out_dim, cfg.hypernet_layers)
            for _ in range(self.num_mask_tokens))

    def unused_parameter_names(self) -> list[str]:
        """Parameters the released layout carries but never uses for the class masks
        (SAM's point/mask-prompt parts and the extra mask tokens' hypernetworks)."""
        if not self.released_layout:
            return []
        names = [n for n, _ in self.named_parameters()
                 if n.startswith(("prompt_encoder.point_embeddings", "prompt_encoder.not_a_point",
                                  "prompt_encoder.mask_downscaling"))]
        for i in range(self.num_classes, self.num_mask_tokens):
            names += [n for n, _ in self.named_parameters()
                      if n.startswith(f"output_hypernetworks_mlps.{i}.")]
        return names

    def forward(self, embedding: torch.Tensor, out_size: tuple[int, int],
                boxes: torch.Tensor | None = None) -> torch.Tensor:
        b, _, h, w = embedding.shape
        dtype = embedding.dtype
        # Looked up, not the parameter itself: a view of a parameter made under no_grad
        # requires grad without a grad_fn, which breaks FlopCounterMode's module hooks.
        queries = self.mask_tokens(torch.arange(self.num_mask_tokens, device=embedding.device))
        if self.released_layout:
            sparse, dense = self.prompt_encoder(boxes=boxes, batch_size=b, embedding_size=(h, w),
                                                image_size=tuple(out_size))
            embedding = embedding + dense.to(dtype)
            pe = self.prompt_encoder.get_dense_pe((h, w))
            queries = torch.cat([self.iou_token.weight, queries], dim=0)
            tokens = torch.cat([queries.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
            first = 1
        else:
            if boxes is not None:
                raise ValueError("box prompts need the released layout (a prompt encoder); "
                                 "this decoder was built with released_layout=False")
            pe = self.pe_layer((h, w)).unsqueeze(0)
            tokens = queries.unsqueeze(0).expand(b, -1, -1)
            first = 0
        tokens, keys = self.transformer(embedding, pe.to(dtype), tokens.to(dtype))
        grid = keys.transpose(1, 2).reshape(b, -1, h, w)
        up = self.output_upscaling(grid)                                       # (B, 32, 4h, 4w)
        weights = torch.stack([self.output_hypernetworks_mlps[i](tokens[:, first + i])
                               for i in range(self.num_classes)], dim=1)      # (B, K, 32)
        masks = torch.einsum("bkc,bchw->bkhw", weights, up)                     # (B, K, 4h, 4w)
        if masks.shape[-2:] != tuple(out_size):
            masks = F.interpolate(masks, size=tuple(out_size), mode="bilinear", align_corners=False)
        return masks


def apply_fast_paths(module: nn.Module, options: dict[str, Any]) -> dict[str, Any]:
    """Set the speed switches (:data:`FAST_PATH_DEFAULTS` updated by ``options``) on every
    layer of ``module`` that has one (HRMedSeg, or its encoder alone as a SAM image encoder);
    returns the full set now in effect."""
    unknown = set(options) - set(FAST_PATH_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown speed switches {sorted(unknown)}; "
                         f"known: {sorted(FAST_PATH_DEFAULTS)}")
    opts = {**FAST_PATH_DEFAULTS, **options}
    if opts["pool_impl"] not in ("direct", "separable"):
        raise ValueError(f"pool_impl must be 'direct' or 'separable', got {opts['pool_impl']!r}")
    for name in ("pool_channels_first", "fast_norm", "fast_attention"):
        opts[name] = bool(opts[name])
    set_fast_norm(module, opts["fast_norm"])
    for m in module.modules():
        if isinstance(m, DualGatedLinearAttention):
            m.upcast = not opts["fast_attention"]
        elif isinstance(m, MultiscalePooling):
            m.channels_first = opts["pool_channels_first"]
            m.impl = opts["pool_impl"]
    return opts


class HRMedSeg(SegmentationModel):
    """LGViT encoder + neck + ECM-Decoder. ``forward`` returns logits (B, num_classes, H, W)."""

    supports_partial_checkpointing = True
    # benchmarks/results/speed_hrmedseg_1024_h200/cudagraphs_checkpointing_parity.json
    # (parity_bf16 runs: reduce-overhead, with and without checkpointing); the HER-Seg variants
    # are this class with another head and upscaler.
    compile_verified = True

    def __init__(self, cfg: HRMedSegConfig, model_name: str = "hrmedseg") -> None:
        super().__init__()
        self.config = cfg
        self.model_name = model_name
        self.size_multiple = cfg.patch_size
        self.encoder = LGViT(cfg)
        self.neck = Neck(cfg.embed_dim, cfg.neck_dim)
        self.decoder = ECMDecoder(cfg)
        self.fast_paths: dict[str, Any] = apply_fast_paths(self, {})

    def set_fast_paths(self, *, fast_norm: bool | None = None, fast_attention: bool | None = None,
                       pool_channels_first: bool | None = None,
                       pool_impl: str | None = None) -> "HRMedSeg":
        """Switch the speed options (:data:`FAST_PATH_DEFAULTS`) on a built (or loaded) model;
        ``None`` keeps the current value. Runtime options: none of them adds or changes a
        parameter, and :meth:`save_pretrained` does not save them."""
        given = {"fast_norm": fast_norm, "fast_attention": fast_attention,
                 "pool_channels_first": pool_channels_first, "pool_impl": pool_impl}
        self.fast_paths = apply_fast_paths(
            self, {**self.fast_paths, **{k: v for k, v in given.items() if v is not None}})
        return self

    def set_grad_checkpointing(self, enable: bool = True, *, fraction: float = 1.0
                               ) -> "HRMedSeg":
        """Recompute the encoder's layers in backward (all, or ``fraction`` of them spread
        evenly); the neck and decoder keep their activations."""
        super().set_grad_checkpointing(enable, fraction=fraction)
        self.encoder.set_grad_checkpointing(enable, fraction)
        return self

    def parameter_groups(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "neck": self.neck, "decoder": self.decoder}

    def forward_embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Image embedding (B, 256, H/16, W/16): the neck output used for distillation."""
        self.check_input(x)
        return self.neck(self.encoder(x))

    def unused_parameter_names(self) -> list[str]:
        return [f"decoder.{n}" for n in self.decoder.unused_parameter_names()]

    def forward(self, x: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_classes, H, W). ``boxes`` (B, 4) x0,y0,x1,y1 in input pixels are
        optional box prompts (released layout only)."""
        emb = self.forward_embedding(x)
        return self.decoder(emb, (x.shape[-2], x.shape[-1]), boxes)


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

_PAPER_HRMEDSEG = "HRMedSeg (papers/hrmedseg.txt)"
_PAPER_HERSEG = "HER-Seg (papers/her-seg.txt)"


def _build(name: str, defaults: dict[str, Any], pretrained: bool | str, **kwargs: Any) -> HRMedSeg:
    args, fast_paths = split_runtime_options({**defaults, **kwargs})
    cfg = HRMedSegConfig(**args)
    model = HRMedSeg(cfg, model_name=name)
    if fast_paths:
        model.set_fast_paths(**fast_paths)
    if pretrained:
        load_pretrained(model, name, pretrained)
    return model


@register_model(paper=_PAPER_HRMEDSEG, tags=("hrmedseg", "paper-default"))
def hrmedseg(pretrained: bool | str = False, **kwargs: Any) -> HRMedSeg:
    """HRMedSeg as published: C=96, L=10, δ = pools 5/9/13, sigmoid for one class."""
    return _build("hrmedseg", {}, pretrained, **kwargs)


def _register_table6(depth: int, width: int) -> None:
    name = f"hrmedseg_l{depth}_c{width}"

    def fn(pretrained: bool | str = False, **kwargs: Any) -> HRMedSeg:
        return _build(name, {"depth": depth, "embed_dim": width}, pretrained, **kwargs)

    fn.__name__ = name
    fn.__doc__ = f"HRMedSeg Table 6 variant: depth L={depth}, width C={width}."
    register_model(fn, paper=_PAPER_HRMEDSEG + ", Table 6", tags=("hrmedseg", "table6"))


for _depth in (4, 8, 10, 12, 16):
    _register_table6(_depth, 96)
for _width in (24, 48, 192, 384):
    _register_table6(10, _width)


@register_model(paper=_PAPER_HRMEDSEG, tags=("hrmedseg",))
def hrmedseg_lean(pretrained: bool | str = False, **kwargs: Any) -> HRMedSeg:
    """HRMedSeg exactly as the paper's equations: class queries only, no SAM leftovers."""
    return _build("hrmedseg_lean", {"released_layout": False}, pretrained, **kwargs)


@register_model(paper=_PAPER_HRMEDSEG + ", Table 9", tags=("hrmedseg", "ablation"))
def hrmedseg_nopool(pretrained: bool | str = False, **kwargs: Any) -> HRMedSeg:
    """HRMedSeg without the multiscale pooling δ (the authors' released decoder)."""
    return _build("hrmedseg_nopool", {"pool_sizes": ()}, pretrained, **kwargs)


def _herseg_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # Softmax needs a background channel: one foreground class means two outputs.
    if kwargs.get("num_classes", 1) == 1:
        kwargs["num_classes"] = 2
    return kwargs


@register_model(paper=_PAPER_HERSEG, tags=("herseg",))
def herseg(pretrained: bool | str = False, **kwargs: Any) -> HRMedSeg:
    """HER-Seg: softmax over classes incl. background (min. 2 outputs); 3.67 M params at 2 classes."""
    return _build("herseg", {"output": "softmax"}, pretrained, **_herseg_kwargs(kwargs))


@register_model(paper=_PAPER_HERSEG, tags=("herseg",))
def herseg_convt4x4(pretrained: bool | str = False, **kwargs: Any) -> HRMedSeg:
    """HER-Seg with the single 4×4 stride-4 transposed conv that its eq. 8 names as F_trans."""
    return _build("herseg_convt4x4", {"upscaler": "convt4x4", "output": "softmax"}, pretrained,
                  **_herseg_kwargs(kwargs))
