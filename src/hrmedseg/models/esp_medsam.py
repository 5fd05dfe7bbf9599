"""ESP-MedSAM: Efficient Self-Prompting SAM for universal medical image segmentation.

Xu, Li et al., "ESP-MedSAM" (papers/esp-medsam.txt; pinned details in SPEC "ESP-MedSAM").
Written from the paper; the light encoder reuses this package's TinyViT (MobileSAM's ``vit_t``).

    image (B,3,H,W) ─ TinyViT-5M + SAM neck, every attention block driven by the
                      modality controller bag n ───────────────────────────── E  256 @ H/16
    SPPG:  E ─ Conv2×2 s2 (256→64) → LN2d → GELU → Conv1×1 (64→1) ─────────── patch logits
                                                                              1 @ H/32
           (sigmoid ≥ 0.5, detached) → nearest ×2 → Conv1×1 (1→256) → LN2d → GELU = D
    QDMD:  query q_n ⟷ (E + D, PE) two-way transformer (depth 2, 256, 8 heads, MLP 2048)
           → upscaler (ConvT 256→64 → LN2d → GELU → ConvT 64→32 → GELU) · hypernet_n(q_n)
           → logits 1 @ H/4 → bilinear to H×W

Modality controller (eq. 2-3). One parameter bag per modality n; in every TinyViT attention
block (stages 1-3: 2 + 6 + 2 = 10 blocks) the bag holds

* a learned key token and value token per head (``W_k^n``, ``W_v^n``, eq. 2) appended to the
  window's K and V, plus a learned per-head logit bias for that extra token (the window's own
  keys carry TinyViT's relative-position bias; the appended token has no position, so it gets
  its own learned bias);
* a parallel adapter LN → Linear(d→4d) → GELU → Linear(4d→d) (``W_down^n``, ``W_up^n``, eq. 3)
  added beside the block's MLP: ``x ← x + MLP(x) + Adapter_n(x)``. Its last Linear starts at
  zero, so a fresh bag leaves a (MobileSAM-initialised) encoder's output unchanged in the MLP
  path.

The modality is always an explicit 0-based integer id (``forward(x, modality)``): one int for
the whole batch, or a (B,) tensor giving one id per sample (mixed batches route each sample
through its own bag, query and hypernetwork). It is never guessed.

Parameter count (default config, Σ p.numel() over ``model.parameters()``):

* one encoder bag: adapters Σ_blocks (8d² + 7d) = 2·131 968 (d=128) + 6·205 920 (d=160)
  + 2·821 440 (d=320) = 3 142 336; tokens Σ_blocks (2d + heads) = 3 770 → 3 146 106;
* decoder per modality: query 256 + hypernetwork MLP 256→256→256→32 = 139 808;
* so one modality costs 3 286 170 (3.29 M) in all. The paper's 28.46 − 12.79 = 15.67 M for
  five extra controllers is 3.134 M each, i.e. our encoder bag alone (adapters + tokens,
  3.146 M, +0.4 %): the authors' six-modality figure evidently does not include a separate
  hypernetwork (140 k) per modality. We keep the per-modality query and hypernetwork that the
  paper describes (eq. 7, "n-th MLP") and SPEC pins.
* Exact totals (pinned in tests/models/test_esp_medsam.py):

  ========================================  ===========  ==================  =========
  variant                                   ours         paper / authors     Δ
  ========================================  ===========  ==================  =========
  ``esp_medsam_single``                      12 462 095  12.79 M (released)  −2.56 %
  ``esp_medsam_single`` + ImageNet head      12 783 735  12.79 M (released)  −0.05 %
  ``esp_medsam`` (6 modalities)              28 892 945  28.46 M (paper)     +1.52 %
  ``esp_medsam`` + ImageNet head             29 214 585  28.46 M (paper)     +2.65 %
  ========================================  ===========  ==================  =========

  The authors' 12.79 M matches our single model *with* TinyViT's unused 1000-class ImageNet
  head (321 640 params, which MobileSAM's code builds) to 0.05 %; 12 783 735 + 5 × 3 146 106
  (encoder bags only) = 28 514 265 is within 0.2 % of the paper's 28.46 M. By default the
  head is left out (``include_imagenet_head=False``): it never touches the output.

Loss (a training objective, :func:`hrmedseg.training.losses.esp_medsam_loss`) = λ·focal + Dice +
BCE(SPPG patches, :func:`sppg_targets`) with λ = 20 by default (SAM's 20:1 focal:dice weighting;
the paper leaves λ unstated). Focal uses α = 0.25, γ = 2.

Inputs are float images normalised like SAM (ImageNet mean/std on a 0-1 scale is the same as
SAM's pixel mean/std on 0-255); height and width must be multiples of 32 (16 for the encoder
times 2 for the SPPG patch merge). MobileSAM weights load with ``pretrained="…/mobile_sam.pt"``
(see :func:`load_mobile_sam_weights`).

MMDKD distillation (eq. 1) and multi-dataset training (``hrmedseg train-esp``) live in
:mod:`hrmedseg.training.tasks.esp`; they use :meth:`ESPMedSAM.image_embeddings` (student
features with or without a controller bag).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..layers import (LayerNorm2d, MultiLayerMLP, PositionEmbeddingRandom, TwoWayTransformer,
                      token_masks)
from ._base import SegmentationModel
from ._registry import register_model
from .sam_checkpoints import download_checkpoint, find_checkpoint, read_sam_state_dict
from .tinyvit import (BasicLayer, TinyViT, TinyViTBlock, WindowAttention,
                      tinyvit_key_from_mobile_sam)

__all__ = ["ESPMedSAMConfig", "ESPMedSAM", "ModalityController", "ModalityBag", "Adapter",
           "ControlledWindowAttention", "ControlledTinyViTBlock", "SelfPatchPromptGenerator",
           "QueryDecoupledModalityDecoder", "sppg_targets",
           "load_mobile_sam_weights", "LoadReport"]

ModalityLike = int | torch.Tensor


# ---------------------------------------------------------------------------------------------
# Modality controller
# ---------------------------------------------------------------------------------------------

class Adapter(nn.Module):
    """LN → Linear(d → r·d) → GELU → Linear(r·d → d); the last Linear starts at zero."""

    def __init__(self, dim: int, ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.up = nn.Linear(hidden, dim)
        nn.init.trunc_normal_(self.down.weight, std=0.02)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))


class ModalityBag(nn.Module):
    """One modality's parameters for every controlled block: key/value tokens (heads, head_dim),
    a per-head logit bias for the appended token, and an adapter."""

    def __init__(self, blocks: Sequence[tuple[int, int]], adapter_ratio: float = 4.0,
                 token_std: float = 0.02) -> None:
        super().__init__()
        self.k_tokens = nn.ParameterList()
        self.v_tokens = nn.ParameterList()
        self.token_bias = nn.ParameterList()
        self.adapters = nn.ModuleList()
        for dim, heads in blocks:
            hd = dim // heads
            self.k_tokens.append(nn.Parameter(torch.randn(heads, hd) * token_std))
            self.v_tokens.append(nn.Parameter(torch.randn(heads, hd) * token_std))
            self.token_bias.append(nn.Parameter(torch.zeros(heads)))
            self.adapters.append(Adapter(dim, adapter_ratio))


class ModalityController(nn.Module):
    """``bags[n]`` = the parameter bag of modality n (f_MC in the paper)."""

    def __init__(self, num_modalities: int, blocks: Sequence[tuple[int, int]],
                 adapter_ratio: float = 4.0) -> None:
        super().__init__()
        if num_modalities < 1:
            raise ValueError(f"num_modalities must be ≥ 1, got {num_modalities}")
        self.num_modalities = num_modalities
        self.bags = nn.ModuleList(ModalityBag(blocks, adapter_ratio)
                                  for _ in range(num_modalities))

    def tokens(self, index: int, route: "_Route", windows_per_sample: int, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v (B_w or 1, heads, 1, hd) and logit bias (B_w or 1, heads, 1, 1) of block
        ``index`` for the routed batch."""
        if route.uniform is not None:
            bag = self.bags[route.uniform]
            k = bag.k_tokens[index][None, :, None]
            v = bag.v_tokens[index][None, :, None]
            b = bag.token_bias[index][None, :, None, None]
        else:
            ids = route.ids.repeat_interleave(windows_per_sample)
            k = torch.stack([bag.k_tokens[index] for bag in self.bags])[ids][:, :, None]
            v = torch.stack([bag.v_tokens[index] for bag in self.bags])[ids][:, :, None]
            b = torch.stack([bag.token_bias[index] for bag in self.bags])[ids][:, :, None, None]
        return k.to(dtype), v.to(dtype), b.to(dtype)

    def adapt(self, index: int, x: torch.Tensor, route: "_Route") -> torch.Tensor:
        """Adapter output for tokens x (B, N, C) of block ``index``."""
        if route.uniform is not None:
            return self.bags[route.uniform].adapters[index](x)
        out = torch.zeros_like(x)
        for m in route.present:
            sel = (route.ids == m).nonzero(as_tuple=True)[0]
            out = out.index_copy(0, sel, self.bags[m].adapters[index](x[sel]).to(x.dtype))
        return out


class _Route:
    """The batch's modality ids: ``uniform`` (one int for all) or per-sample ``ids`` (B,)."""

    def __init__(self, modality: ModalityLike, batch: int, num_modalities: int,
                 device: torch.device) -> None:
        if isinstance(modality, torch.Tensor):
            if modality.is_floating_point() or modality.is_complex():
                raise TypeError(f"modality ids must be integers, got dtype {modality.dtype}")
            ids = modality.reshape(-1).to(device=device, dtype=torch.long)
            if ids.numel() == 1:
                ids = ids.expand(batch)
            if ids.numel() != batch:
                raise ValueError(f"{ids.numel()} modality ids for a batch of {batch}")
            values = sorted(set(ids.tolist()))
        elif isinstance(modality, (int,)) and not isinstance(modality, bool):
            values = [int(modality)]
            ids = torch.full((batch,), int(modality), dtype=torch.long, device=device)
        else:
            raise TypeError(f"modality must be an int or an integer tensor, got "
                            f"{type(modality).__name__} (it is never guessed)")
        bad = [v for v in values if not 0 <= v < num_modalities]
        if bad:
            raise ValueError(f"modality id(s) {bad} out of range: this model has "
                             f"{num_modalities} modalities (ids 0..{num_modalities - 1})")
        self.ids = ids
        self.present = values
        self.uniform: int | None = values[0] if len(values) == 1 else None


class ControlledWindowAttention(WindowAttention):
    """TinyViT window attention with one extra key/value token per head (eq. 2)."""

    def forward(self, x: torch.Tensor, k_tok: torch.Tensor | None = None,  # type: ignore[override]
                v_tok: torch.Tensor | None = None,
                tok_bias: torch.Tensor | None = None) -> torch.Tensor:
        if k_tok is None:
            return super().forward(x)
        b, n, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)
        k = torch.cat([k, k_tok.expand(b, -1, -1, -1)], dim=2)
        v = torch.cat([v, v_tok.expand(b, -1, -1, -1)], dim=2)
        rel = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)      # (h, N, N)
        bb = tok_bias.shape[0]
        mask = torch.cat([rel.unsqueeze(0).expand(bb, -1, -1, -1),
                          tok_bias.expand(bb, -1, n, 1)], dim=-1)                # (·, h, N, N+1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class ControlledTinyViTBlock(TinyViTBlock):
    """A TinyViT block whose attention takes the controller's tokens and whose MLP has the
    controller's adapter beside it. Same submodules and key names as :class:`TinyViTBlock`;
    built from an existing block by :meth:`from_block` (the encoder is TinyViT from sam.py,
    converted in place)."""

    @classmethod
    def from_block(cls, block: TinyViTBlock) -> "ControlledTinyViTBlock":
        if type(block) is not TinyViTBlock:
            raise TypeError(f"expected a TinyViTBlock, got {type(block).__name__}")
        new = cls.__new__(cls)
        new.__dict__.update(block.__dict__)          # shares the submodules, no copy
        new._modules = dict(block._modules)
        attn = ControlledWindowAttention.__new__(ControlledWindowAttention)
        attn.__dict__.update(block.attn.__dict__)
        new._modules["attn"] = attn
        return new

    def _controlled_windows(self, x: torch.Tensor, h: int, w: int, ctrl: ModalityController,
                            index: int, route: _Route) -> torch.Tensor:
        def attend(windows: torch.Tensor, per_image: int) -> torch.Tensor:
            return self.attn(windows, *ctrl.tokens(index, route, per_image, windows.dtype))
        return self._windows(x, h, w, attend)

    def forward(self, x: torch.Tensor, h: int, w: int,  # type: ignore[override]
                ctrl: ModalityController | None = None, index: int = 0,
                route: _Route | None = None) -> torch.Tensor:
        if ctrl is None or route is None:
            return super().forward(x, h, w)
        b, n, c = x.shape
        x = x + self.drop_path(self._controlled_windows(x, h, w, ctrl, index, route))
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.flatten(2).transpose(1, 2)
        return x + self.drop_path(self.mlp(x) + ctrl.adapt(index, x, route))


def _controlled_blocks(encoder: TinyViT) -> list[ControlledTinyViTBlock]:
    """Convert every TinyViT block of ``encoder`` in place; returns them in order."""
    out = []
    for layer in encoder.layers:
        if isinstance(layer, BasicLayer):
            for i, blk in enumerate(layer.blocks):
                if not isinstance(blk, ControlledTinyViTBlock):
                    blk = ControlledTinyViTBlock.from_block(blk)
                    layer.blocks[i] = blk
                out.append(blk)
    return out


# ---------------------------------------------------------------------------------------------
# SPPG
# ---------------------------------------------------------------------------------------------

def sppg_targets(mask: torch.Tensor, grid: int | tuple[int, int] = 32) -> torch.Tensor:
    """Patch targets: max-pool of a binary mask over a ``grid``×``grid`` lattice of patches
    (a patch is 1 if any of its pixels is foreground). mask (B, 1, H, W) or (B, H, W), H and W
    multiples of the grid → (B, 1, gh, gw) float."""
    if mask.ndim == 3:
        mask = mask.unsqueeze(1)
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W) or (B, H, W), got {tuple(mask.shape)}")
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    h, w = mask.shape[-2:]
    if h % gh or w % gw:
        raise ValueError(f"a {h}x{w} mask does not split into a {gh}x{gw} grid of patches")
    m = (mask > 0).float()
    return F.max_pool2d(m, kernel_size=(h // gh, w // gw))


class SelfPatchPromptGenerator(nn.Module):
    """Patch generator δ (L × [Conv2×2 s2 → LN2d], GELU, Conv1×1 → 1) and dense-prompt encoder
    (binarised, detached patches → nearest ×2^L → Conv1×1 (1→C) → LN2d → GELU)."""

    def __init__(self, embed_dim: int = 256, hidden: int = 64, num_layers: int = 1) -> None:
        super().__init__()
        self.num_layers = num_layers
        layers: list[nn.Module] = []
        c = embed_dim
        for _ in range(num_layers):
            layers += [nn.Conv2d(c, hidden, 2, stride=2), LayerNorm2d(hidden)]
            c = hidden
        layers += [nn.GELU(), nn.Conv2d(hidden, 1, 1)]
        self.patch_generator = nn.Sequential(*layers)
        self.dense_encoder = nn.Sequential(nn.Conv2d(1, embed_dim, 1), LayerNorm2d(embed_dim),
                                           nn.GELU())

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """emb (B, C, h, w) → patch logits (B, 1, h/2^L, w/2^L), dense prompt (B, C, h, w)."""
        logits = self.patch_generator(emb)
        patches = (logits.detach() >= 0).to(emb.dtype)          # sigmoid ≥ 0.5
        patches = F.interpolate(patches, size=emb.shape[-2:], mode="nearest")
        return logits, self.dense_encoder(patches)


# ---------------------------------------------------------------------------------------------
# QDMD
# ---------------------------------------------------------------------------------------------

class QueryDecoupledModalityDecoder(nn.Module):
    """SAM's mask decoder with one query token and one hypernetwork MLP per modality."""

    def __init__(self, num_modalities: int, dim: int = 256, depth: int = 2, heads: int = 8,
                 mlp_dim: int = 2048) -> None:
        super().__init__()
        self.num_modalities = num_modalities
        self.transformer = TwoWayTransformer(depth, dim, heads, mlp_dim)
        self.modality_queries = nn.ParameterList(
            nn.Parameter(torch.randn(1, dim)) for _ in range(num_modalities))
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, stride=2), LayerNorm2d(dim // 4), nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, stride=2), nn.GELU())
        self.output_hypernetworks_mlps = nn.ModuleList(
            MultiLayerMLP(dim, dim, dim // 8, 3) for _ in range(num_modalities))

    def forward(self, emb: torch.Tensor, pe: torch.Tensor, dense: torch.Tensor,
                route: _Route) -> torch.Tensor:
        """Low-res logits (B, 1, 4h, 4w) of each sample's own modality."""
        b, c, h, w = emb.shape
        if route.uniform is not None:
            tokens = self.modality_queries[route.uniform].unsqueeze(0).expand(b, -1, -1)
        else:
            tokens = torch.stack(list(self.modality_queries))[route.ids]       # (B, 1, C)
        src = emb + dense
        hs, src = self.transformer(src, pe.to(emb.dtype).expand(b, -1, -1, -1),
                                   tokens.to(emb.dtype))
        up = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        q = hs[:, 0]
        if route.uniform is not None:
            hyper = self.output_hypernetworks_mlps[route.uniform](q)
        else:
            hyper = q.new_zeros(b, up.shape[1])
            for m in route.present:
                sel = (route.ids == m).nonzero(as_tuple=True)[0]
                hyper = hyper.index_copy(0, sel, self.output_hypernetworks_mlps[m](q[sel]))
        return token_masks(hyper.unsqueeze(1), up)


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

@dataclass
class ESPMedSAMConfig:
    """Everything that defines an ESP-MedSAM (saved as config.json)."""

    num_classes: int = 1
    in_chans: int = 3
    img_size: int = 1024
    num_modalities: int = 6
    encoder_args: dict[str, Any] = field(default_factory=dict)   # TinyViT overrides
    include_imagenet_head: bool = False      # TinyViT's unused ImageNet head (MobileSAM has it)
    embed_dim: int = 256
    adapter_ratio: float = 4.0
    sppg_layers: int = 1                     # patch = 16·2^L px (paper: L = 1, 32 px)
    sppg_hidden: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.img_size, (tuple, list)):
            if len(set(int(v) for v in self.img_size)) != 1:
                raise ValueError(f"ESP-MedSAM is built for a square input, got {self.img_size}")
            self.img_size = int(self.img_size[0])
        self.img_size = int(self.img_size)
        self.encoder_args = dict(self.encoder_args or {})
        if self.num_classes != 1:
            raise ValueError(f"ESP-MedSAM predicts one binary mask per image (the chosen "
                             f"modality's): num_classes must be 1, got {self.num_classes}")
        if self.num_modalities < 1:
            raise ValueError(f"num_modalities must be ≥ 1, got {self.num_modalities}")
        if self.sppg_layers < 1:
            raise ValueError(f"sppg_layers must be ≥ 1, got {self.sppg_layers}")
        mult = 16 * 2 ** self.sppg_layers
        if self.img_size % mult:
            raise ValueError(f"img_size {self.img_size} is not a multiple of {mult}")


class ESPMedSAM(SegmentationModel):
    """ESP-MedSAM: light encoder + modality controller, SPPG, QDMD (see the module docstring).

    ``forward(x, modality)`` → logits (B, 1, H, W); ``forward_with_aux`` also returns the SPPG
    patch logits (B, 1, H/32, W/32) for :func:`~hrmedseg.training.losses.esp_medsam_loss`.
    """

    def __init__(self, cfg: ESPMedSAMConfig, model_name: str = "esp_medsam") -> None:
        super().__init__()
        self.config = cfg
        self.model_name = model_name
        self.size_multiple = 16 * 2 ** cfg.sppg_layers
        args = {"img_size": cfg.img_size, "in_chans": cfg.in_chans, "out_chans": cfg.embed_dim,
                "drop_path_rate": cfg.drop_path_rate,
                "head_classes": 1000 if cfg.include_imagenet_head else 0, **cfg.encoder_args}
        self.image_encoder = TinyViT(**args)
        blocks = _controlled_blocks(self.image_encoder)
        self.controller = ModalityController(
            cfg.num_modalities, [(blk.attn.num_heads * blk.attn.head_dim, blk.attn.num_heads)
                                 for blk in blocks], cfg.adapter_ratio)
        self.sppg = SelfPatchPromptGenerator(cfg.embed_dim, cfg.sppg_hidden, cfg.sppg_layers)
        self.pe_layer = PositionEmbeddingRandom(cfg.embed_dim // 2)
        self.decoder = QueryDecoupledModalityDecoder(cfg.num_modalities, cfg.embed_dim,
                                                     cfg.decoder_depth, cfg.decoder_heads,
                                                     cfg.decoder_mlp_dim)

    # -- parts -----------------------------------------------------------------------------
    @property
    def num_modalities(self) -> int:
        return self.config.num_modalities

    def parameter_groups(self) -> dict[str, nn.Module]:
        return {"image_encoder": self.image_encoder, "controller": self.controller,
                "sppg": self.sppg, "decoder": self.decoder}

    def modality_parameters(self, n: int) -> dict[str, nn.Parameter]:
        """Everything private to modality ``n``: its controller bag, query, hypernetwork."""
        out = {f"controller.bags.{n}.{k}": p
               for k, p in self.controller.bags[n].named_parameters()}
        out[f"decoder.modality_queries.{n}"] = self.decoder.modality_queries[n]
        out.update({f"decoder.output_hypernetworks_mlps.{n}.{k}": p for k, p in
                    self.decoder.output_hypernetworks_mlps[n].named_parameters()})
        return out

    def unused_parameter_names(self) -> list[str]:
        return [f"image_encoder.{n}" for n in self.image_encoder.unused_parameter_names()]

    def set_grad_checkpointing(self, enable: bool = True, *, fraction: float = 1.0
                               ) -> "ESPMedSAM":
        super().set_grad_checkpointing(enable, fraction=fraction)
        self.image_encoder.set_grad_checkpointing(enable)
        return self

    # -- forward ---------------------------------------------------------------------------
    def route(self, modality: ModalityLike, batch: int, device: torch.device) -> _Route:
        return _Route(modality, batch, self.num_modalities, device)

    def image_embeddings(self, x: torch.Tensor, modality: ModalityLike | None) -> torch.Tensor:
        """E^n (B, 256, H/16, W/16); ``modality=None`` runs the bare light encoder (f_LIE,
        the first MMDKD term)."""
        route = None if modality is None else self.route(modality, x.shape[0], x.device)
        return self._encode(x, route)

    def _encode(self, x: torch.Tensor, route: _Route | None) -> torch.Tensor:
        enc = self.image_encoder
        x = enc.patch_embed(x)
        index = 0
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for layer in enc.layers:
            if not isinstance(layer, BasicLayer):
                x = layer(x)
                continue
            b, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2)
            for blk in layer.blocks:
                ctrl = self.controller if route is not None else None
                if ckpt:
                    t = checkpoint(blk, t, h, w, ctrl, index, route, use_reentrant=False)
                else:
                    t = blk(t, h, w, ctrl, index, route)
                index += 1
            x = t.transpose(1, 2).reshape(b, c, h, w)
            if layer.downsample is not None:
                x = layer.downsample(x)
        return enc.neck(x)

    def forward_with_aux(self, x: torch.Tensor, modality: ModalityLike
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, 1, H, W), SPPG patch logits (B, 1, H/16/2^L, W/16/2^L))."""
        logits, patch_logits, _ = self.forward_parts(x, modality)
        return logits, patch_logits

    def forward_parts(self, x: torch.Tensor, modality: ModalityLike
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits, SPPG patch logits and the controlled embedding E^n from one encoder pass
        (training needs E^n for MMDKD's second term)."""
        self.check_input(x)
        route = self.route(modality, x.shape[0], x.device)
        emb = self._encode(x, route)
        patch_logits, dense = self.sppg(emb)
        pe = self.pe_layer(tuple(emb.shape[-2:])).unsqueeze(0)
        low = self.decoder(emb, pe, dense, route)
        logits = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits, patch_logits, emb

    def forward(self, x: torch.Tensor, modality: ModalityLike | None = None  # type: ignore[override]
                ) -> torch.Tensor:
        """Logits for ``x`` routed through ``modality``; a model of one modality needs none."""
        if modality is None:
            if self.num_modalities != 1:
                raise TypeError(f"{self.model_name} has {self.num_modalities} modalities: pass "
                                "modality (an int id or per-sample ids); it is never guessed")
            modality = 0
        return self.forward_with_aux(x, modality)[0]

    def for_modality(self, modality: int) -> "FixedModality":
        """This model as ``forward(x)`` for one modality: prompt-free prediction (Segmenter),
        and profiling, whose cost is the same for every modality (one controller bag a pass)."""
        return FixedModality(self, modality)


class FixedModality(nn.Module):
    """``forward(x) = model(x, modality)``; ``config`` is the model's."""

    def __init__(self, model: ESPMedSAM, modality: int) -> None:
        super().__init__()
        self.model = model
        self.modality = int(modality)
        self.config = model.config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.modality)


# ---------------------------------------------------------------------------------------------
# MobileSAM weights
# ---------------------------------------------------------------------------------------------

@dataclass
class LoadReport:
    """What :func:`load_mobile_sam_weights` did: model keys filled (and from which file key),
    model parameters left at their initialisation, file keys with no place in the model."""

    loaded: dict[str, str]
    not_loaded: list[str]
    unused: list[str]

    def summary(self) -> str:
        return (f"{len(self.loaded)} tensors loaded, {len(self.not_loaded)} model tensors kept "
                f"at init, {len(self.unused)} checkpoint tensors unused")


def load_mobile_sam_weights(model: ESPMedSAM, source: str | Path | dict[str, torch.Tensor]
                            ) -> LoadReport:
    """Load a MobileSAM (segment-anything key names) checkpoint where shapes match.

    * ``image_encoder.*`` → the light encoder (TinyViT + neck), ``c`` → ``conv`` key mapping;
    * ``mask_decoder.transformer.*`` and ``mask_decoder.output_upscaling.*`` → QDMD;
    * ``mask_decoder.output_hypernetworks_mlps.0.*`` (SAM's single-mask output) → every
      modality's hypernetwork, ``mask_decoder.mask_tokens.weight[0]`` → every modality query;
    * ``prompt_encoder.pe_layer.*`` → the positional encoding.

    The controller bags, SPPG, IoU head, other mask tokens and SAM's prompt embeddings have no
    counterpart and are reported. Shape mismatches are skipped and reported, never forced.
    """
    state = read_sam_state_dict(source)
    own = model.state_dict()
    plan: dict[str, tuple[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.startswith("image_encoder."):
            plan["image_encoder." + tinyvit_key_from_mobile_sam(key[len("image_encoder."):])] = \
                (key, value)
        elif key.startswith(("mask_decoder.transformer.", "mask_decoder.output_upscaling.")):
            plan["decoder." + key[len("mask_decoder."):]] = (key, value)
        elif key.startswith("mask_decoder.output_hypernetworks_mlps.0."):
            rest = key[len("mask_decoder.output_hypernetworks_mlps.0."):]
            for n in range(model.num_modalities):
                plan[f"decoder.output_hypernetworks_mlps.{n}.{rest}"] = (key, value)
        elif key == "mask_decoder.mask_tokens.weight":
            for n in range(model.num_modalities):
                plan[f"decoder.modality_queries.{n}"] = (key + "[0]", value[:1])
        elif key.startswith("prompt_encoder.pe_layer."):
            plan[key[len("prompt_encoder."):]] = (key, value)
    chosen = {k: v for k, (_, v) in plan.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(chosen, strict=False)
    used = {src for k, (src, _) in plan.items() if k in chosen}
    used |= {s.split("[")[0] for s in used}
    return LoadReport(loaded={k: plan[k][0] for k in chosen},
                      not_loaded=[k for k in own if k not in chosen],
                      unused=[k for k in state if k not in used])


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

_PAPER = "ESP-MedSAM (Xu, Li et al.; papers/esp-medsam.txt)"


def _build(name: str, defaults: dict[str, Any], pretrained: bool | str,
           kwargs: dict[str, Any]) -> ESPMedSAM:
    cfg = ESPMedSAMConfig(**{**defaults, **kwargs})
    model = ESPMedSAM(cfg, model_name=name)
    if pretrained:
        if pretrained is True or pretrained == "mobile_sam":
            # ESP-MedSAM has no released weights: MobileSAM's checkpoint initialises the light
            # encoder and decoder (found locally, else fetched from the Hub).
            path = find_checkpoint("mobile_sam") or download_checkpoint("mobile_sam")
        else:
            path = Path(pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not a file (pretrained takes the path of a "
                                        f"MobileSAM checkpoint, or True)")
        model.pretrained_report = load_mobile_sam_weights(model, path)
        model.pretrained_weight = str(path)
    return model


@register_model(paper=_PAPER, tags=("sam", "self-prompting", "multi-modality"))
def esp_medsam(pretrained: bool | str = False, num_classes: int = 1, in_chans: int = 3,
               img_size: int | tuple[int, int] = 1024, **kwargs: Any) -> ESPMedSAM:
    """ESP-MedSAM, 6 modalities: TinyViT-5M + modality controller, SPPG, QDMD (≈28.9 M)."""
    return _build("esp_medsam", {"num_modalities": 6}, pretrained,
                  {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
                   **kwargs})


@register_model(paper=_PAPER, tags=("sam", "self-prompting"))
def esp_medsam_single(pretrained: bool | str = False, num_classes: int = 1, in_chans: int = 3,
                      img_size: int | tuple[int, int] = 1024, **kwargs: Any) -> ESPMedSAM:
    """ESP-MedSAM with one modality controller (the authors' released form, ≈12.5 M)."""
    return _build("esp_medsam_single", {"num_modalities": 1}, pretrained,
                  {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
                   **kwargs})
