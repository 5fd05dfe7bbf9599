"""SAM family: the box-prompted model (image encoder + prompt encoder + mask decoder) and its
registered builders.

* SAM: Kirillov et al., "Segment Anything", ICCV 2023 (segment-anything). Image encoder →
  256×64×64 embedding at 1024²; prompt encoder (points, boxes, low-res masks); mask decoder =
  two-way transformer + ×4 upscaler + one hypernetwork MLP per mask token + IoU head
  (:mod:`~hrmedseg.models.mask_decoder`).
* MobileSAM: Zhang et al., "Faster Segment Anything: Towards Lightweight SAM for Mobile
  Applications", 2023 — SAM with its ViT-H encoder replaced by TinyViT-5M
  (:mod:`~hrmedseg.models.tinyvit`) distilled onto SAM's embedding.
* HRMedSegSAM (HRMedSeg Table 4, SPEC "SAM combination"): a distilled encoder with its neck
  (256×64×64) in place of SAM's image encoder; SAM's prompt encoder and mask decoder unchanged,
  box prompts = tight box of each ground-truth connected component.

Batched prediction over lists of boxes per image, with IoU outputs and boxes from masks, is
:class:`hrmedseg.inference.predictor.SamPredictor`; the official checkpoints are fetched and
loaded by :mod:`~hrmedseg.models.sam_checkpoints`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F

from ..layers import PromptEncoder, TwoWayTransformer
from ._base import SegmentationModel
from ._pretrained import load_pretrained
from ._registry import register_model
from .hrmedseg import (HRMedSeg, HRMedSegConfig, LGViT, Neck, apply_fast_paths,
                       split_runtime_options)
from .mask_decoder import MaskDecoder
from .sam_checkpoints import (download_checkpoint, find_checkpoint, load_sam_checkpoint,
                              sam_checkpoints)
from .sam_transforms import (EMPTY_LOGIT, BoxesLike, combine_box_masks, flatten_boxes,
                             postprocess_masks, resized_shape, transform_boxes)
from .tinyvit import TinyViT

__all__ = ["SamConfig", "SamModel", "HRMedSegImageEncoder", "load_hrmedseg_encoder",
           "EMPTY_LOGIT", "mobile_sam", "hrmedseg_sam"]


# ---------------------------------------------------------------------------------------------
# HRMedSeg encoder as a SAM image encoder
# ---------------------------------------------------------------------------------------------

class HRMedSegImageEncoder(nn.Module):
    """HRMedSeg's LGViT encoder and neck as a SAM image encoder: image → (B, 256, H/16, W/16).

    Submodule names (``encoder``, ``neck``) are HRMedSeg's, so the ``encoder.*``/``neck.*``
    weights of a (distilled) HRMedSeg load under ``image_encoder.``.
    """

    def __init__(self, cfg: HRMedSegConfig, fast_paths: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.encoder = LGViT(cfg)
        self.neck = Neck(cfg.embed_dim, cfg.neck_dim)
        self.img_size = cfg.img_size[0]
        self.fast_paths = apply_fast_paths(self, fast_paths or {})  # as in HRMedSeg

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


class SamModel(SegmentationModel):
    """SAM: image encoder + :class:`~hrmedseg.layers.PromptEncoder` + :class:`MaskDecoder`.

    Images are RGB in SAM's 0-255 scale (uint8 or float), any size: :meth:`preprocess`
    resizes the longest side to ``img_size`` (bilinear, antialiased), normalises with SAM's
    pixel mean/std and pads bottom/right to ``img_size``². Box prompts are ``(x0, y0, x1, y1)``
    in pixels of the original image. ``forward(images, boxes)`` returns full-resolution logits
    (B, 1, H, W): the maximum over the image's box masks (one box per connected component is
    how the papers prompt; :class:`hrmedseg.inference.predictor.SamPredictor` makes them).
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
            # Speed switches in encoder_args (as old config.json files hold them) are runtime
            # options of the encoder, not HRMedSegConfig fields.
            args, fast_paths = split_runtime_options(args)
            return HRMedSegImageEncoder(HRMedSegConfig(**args), fast_paths)
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

    # -- image preprocessing (segment-anything's ResizeLongestSide + Sam.preprocess) ----------
    def preprocess_shape(self, height: int, width: int) -> tuple[int, int]:
        """Size after resizing the longest side to ``img_size`` (SAM's ResizeLongestSide)."""
        return resized_shape(height, width, self.config.img_size)

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

    def preprocessing(self) -> dict[str, Any]:
        s = self.config.img_size
        return {"size": [s, s], "channels": self.in_chans, "normalize": "sam",
                "value_range": "RGB 0-255; the model resizes the longest side, normalises with "
                               "its pixel mean/std and pads",
                "mean": list(self.config.pixel_mean), "std": list(self.config.pixel_std)}

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

    def box_masks(self, images: torch.Tensor, boxes: BoxesLike, multimask_output: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Per-box logits (P, K, H, W) at the input size, IoU predictions (P, K) and the number
        of boxes per image, every box of every image decoded in one call. ``boxes`` as in
        :meth:`forward`."""
        original = (int(images.shape[-2]), int(images.shape[-1]))
        x, input_size = self.preprocess(images)
        flat, index, counts = flatten_boxes(boxes, images.shape[0], x.device)
        emb = self.image_embeddings(x)
        if not flat.shape[0]:
            k = self.config.num_multimask_outputs if multimask_output else 1
            return emb.new_zeros((0, k, *original)), emb.new_zeros((0, k)), counts
        side = self.config.img_size
        low, iou = self.decode(emb, boxes=transform_boxes(flat, original, side),
                               image_index=index, multimask_output=multimask_output)
        return postprocess_masks(low, input_size, original, side), iou, counts

    def forward(self, images: torch.Tensor, boxes: BoxesLike | None = None,
                multimask_output: bool = False) -> torch.Tensor:
        """Logits (B, 1, H, W) at the input size. ``boxes``: (B, 4), (B, N, 4) or a list of B
        (N_i, 4) tensors, ``(x0, y0, x1, y1)`` in input pixels; per pixel the maximum over the
        image's box masks (``EMPTY_LOGIT`` for an image without boxes). Without boxes SAM runs
        unprompted (no sparse token, only the no-mask dense embedding). Per-box masks and IoU
        predictions: :meth:`box_masks`, :class:`hrmedseg.inference.predictor.SamPredictor`."""
        original = (int(images.shape[-2]), int(images.shape[-1]))
        if boxes is not None:
            return combine_box_masks(*self.box_masks(images, boxes, multimask_output), original)
        x, input_size = self.preprocess(images)
        emb = self.image_embeddings(x)
        low, iou = self.decode(emb, multimask_output=multimask_output)
        return combine_box_masks(postprocess_masks(low, input_size, original, self.config.img_size),
                                 iou, [1] * emb.shape[0], original)

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


def _checkpoint_path(source: str) -> Path:
    """A checkpoint file: ``source`` itself, or the official checkpoint of that name found
    locally or fetched from the Hugging Face Hub (sha256 checked)."""
    if Path(source).is_file():
        return Path(source)
    return find_checkpoint(source) or download_checkpoint(source)


def _load_sam_pretrained(model: SamModel, name: str, pretrained: bool | str,
                         default_checkpoint: str | None) -> None:
    """pretrained: a checkpoint file; an official checkpoint name (``True``/``"full"``: the
    model's own, ``default_checkpoint``), found locally or fetched from the Hub; or a tag of
    a shipped weight."""
    official = sam_checkpoints()
    if isinstance(pretrained, str) and (Path(pretrained).is_file() or pretrained in official):
        ckpt: str | None = pretrained
    else:
        ckpt = default_checkpoint if pretrained in (True, "full") else None
    if ckpt is None:
        load_pretrained(model, name, pretrained)
        return
    load_sam_checkpoint(model, _checkpoint_path(ckpt))
    model.pretrained_weight = ckpt


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
        load_sam_checkpoint(model, _checkpoint_path(sam_checkpoint),
                            parts=("prompt_encoder", "mask_decoder"))
    if pretrained:
        _load_sam_pretrained(model, "hrmedseg_sam", pretrained, None)
    return model