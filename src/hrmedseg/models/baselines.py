"""Baselines of the papers, taken from MONAI and segmentation_models_pytorch (not re-written).

One thin adapter, :class:`LibraryModel`, gives a library network the package's model contract
(:class:`~hrmedseg.models._base.SegmentationModel`): a typed config saved as ``config.json``,
``forward(images (B, in_chans, H, W)) -> logits (B, num_classes, H, W)`` with one logit channel
for a binary task (sigmoid) and softmax over ``num_classes > 1``, a stated size rule, named
parameter groups and gradient checkpointing.

Registered variants (1 class, 3 input channels; counts at ``img_size=1024``):

============================  ===========================================  =========  ======
name                          network                                      params     size
============================  ===========================================  =========  ======
``unet``                      MONAI BasicUNet, widths 64…1024, BN + ReLU   31.11 M    ×16
``unet_small``                MONAI BasicUNet, widths 32…512, BN + ReLU     7.78 M    ×16
``unetplusplus``              MONAI BasicUNetPlusPlus, widths 32…512        9.12 M    ×16
``attention_unet``            MONAI AttentionUnet, widths 64…1024          31.74 M    ×16
``swin_unetr``                MONAI SwinUNETR 2-D, feature size 48         25.14 M    ×32
``unetr``                     MONAI UNETR 2-D, ViT-B/16, built for img     (by size)  =img
``unet_resnet34``             smp.Unet('resnet34')                         24.44 M    ×32
``unetplusplus_resnet34``     smp.UnetPlusPlus('resnet34')                 26.08 M    ×32
``segformer_b0``              smp.Segformer('mit_b0'), decoder 256          3.71 M    ×32
``segformer_b2``              smp.Segformer('mit_b2'), decoder 768         27.35 M    ×32
============================  ===========================================  =========  ======

* The MONAI ones need only MONAI (a dependency of the package); SwinUNETR and UNETR also need
  MONAI's optional ``einops``. The smp ones are always registered, but building one without
  ``segmentation-models-pytorch`` raises :class:`MissingDependencyError` (an ``ImportError``)
  naming the extra to install. Nothing here imports MONAI or smp until a model is built.
* Encoders are built from scratch (``encoder_weights=None``): no download happens.
* Every registered function takes the registry's ``pretrained, num_classes, in_chans, img_size``
  and, as overrides, any :class:`BaselineConfig` field or any keyword of the library class, e.g.
  ``create_model("swin_unetr", feature_size=12)`` or ``library_kwargs={"features": (...)}``.
* Size rule (``size_multiple``): the network's total stride, so that every level of the U-shape
  lines up without padding (MONAI's BasicUNet and smp's Unet would pad/interpolate odd sizes; we
  hold inputs to the stride so all inputs see the same network). UNETR's learned position
  embeddings fix its input to exactly ``img_size``.
* UNeXt and TransUNet, also in the papers' tables, are in neither library and are not provided.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import math
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import HrmedsegError, first_line
from ._base import InputSizeError, SegmentationModel, check_checkpoint_fraction
from ._pretrained import load_pretrained
from ._registry import register_model

__all__ = ["BaselineConfig", "LibraryModel", "MissingDependencyError", "SMP_EXTRA_HINT"]

SMP_EXTRA_HINT = "pip install 'hrmedseg[baselines]'"


class MissingDependencyError(HrmedsegError, ImportError):
    """A baseline whose library is not installed (or does not import); one line saying what to do."""


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

def _freeze(value: Any) -> Any:
    """JSON turns tuples into lists; turn them back so a reloaded config equals the saved one."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {str(k): _freeze(v) for k, v in value.items()}
    return value


@dataclass
class BaselineConfig:
    """Which library network, built with which arguments (saved as config.json)."""

    library: str = "monai"                 # "monai" or "smp"
    arch: str = "BasicUNet"                # class name in monai.networks.nets / smp
    library_kwargs: dict[str, Any] = field(default_factory=dict)
    num_classes: int = 1
    in_chans: int = 3
    img_size: tuple[int, int] = (1024, 1024)

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = (self.img_size, self.img_size)
        self.img_size = tuple(int(v) for v in self.img_size)
        if len(self.img_size) != 2:
            raise ValueError(f"img_size must be one int or (height, width), got {self.img_size}")
        if self.library not in _LIBRARIES:
            raise ValueError(f"library must be one of {sorted(_LIBRARIES)}, got {self.library!r}")
        if (self.library, self.arch) not in _ARCHS:
            known = sorted(f"{lib}.{arch}" for lib, arch in _ARCHS)
            raise ValueError(f"no adapter for {self.library}.{self.arch}; known: {', '.join(known)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {self.in_chans}")
        self.library_kwargs = _freeze(dict(self.library_kwargs or {}))
        try:
            json.dumps(self.library_kwargs)
        except TypeError as exc:
            raise ValueError(f"library_kwargs must hold JSON values (they are saved in config.json): "
                             f"{exc}") from None


# ---------------------------------------------------------------------------------------------
# What differs per library network: size rule, blocks to checkpoint, parameter groups
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _ArchSpec:
    size_multiple: Callable[[nn.Module, dict[str, Any]], int]
    checkpoint_blocks: tuple[str, ...]           # class names; the outermost ones are wrapped
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # group -> child-name prefixes
    needs: tuple[str, ...] = ()                  # extra importable modules the network uses
    exact_size: bool = False                     # input must equal img_size (learned pos. emb.)
    # patterns (re.search on the network's parameter names) of parameters its forward never
    # uses, given the library kwargs
    unused: Callable[[dict[str, Any]], tuple[str, ...]] = lambda kw: ()


def _fixed(n: int) -> Callable[[nn.Module, dict[str, Any]], int]:
    return lambda net, kw: n


def _strides_product(net: nn.Module, kw: dict[str, Any]) -> int:
    return int(math.prod(int(s) for s in kw.get("strides", (2, 2, 2, 2))))


def _swin_multiple(net: nn.Module, kw: dict[str, Any]) -> int:
    return int(kw.get("patch_size", 2)) ** 5      # MONAI's own check: divisible by patch_size**5


def _encoder_stride(net: nn.Module, kw: dict[str, Any]) -> int:
    return int(getattr(getattr(net, "encoder", None), "output_stride", 32) or 32)


# Parameter groups: for SwinUNETR/UNETR "encoder" is the transformer; MONAI's conv blocks named
# encoder1..10 sit on the skip paths and count with the decoder. AttentionUnet nests its levels
# (one module per depth holds encoder and decoder parts), so it is one group.
_CNN_UNET_BLOCKS = ("TwoConv", "Down", "UpCat")
_SMP_GROUPS = (("encoder", ("encoder",)), ("decoder", ("decoder",)),
               ("head", ("segmentation_head", "classification_head")))
_SMP_BLOCKS = ("BasicBlock", "Bottleneck", "Block",               # resnet / mit encoder blocks
               "UnetDecoderBlock", "DecoderBlock")                 # decoder blocks (smp 0.3-0.6)

_ARCHS: dict[tuple[str, str], _ArchSpec] = {
    ("monai", "BasicUNet"): _ArchSpec(
        _fixed(16), _CNN_UNET_BLOCKS, (("encoder", ("conv_0", "down_")), ("decoder", ("upcat_", "final_conv")))),
    ("monai", "BasicUNetPlusPlus"): _ArchSpec(
        _fixed(16), _CNN_UNET_BLOCKS, (("encoder", ("conv_0_0", "conv_1_0", "conv_2_0", "conv_3_0", "conv_4_0")),
                                       ("decoder", ("upcat_", "final_conv"))),
        # without deep supervision only the last head (final_conv_0_4) gives the output
        unused=lambda kw: () if kw.get("deep_supervision") else (r"^final_conv_0_[123]\.",)),
    ("monai", "AttentionUnet"): _ArchSpec(
        _strides_product, ("ConvBlock", "AttentionBlock", "UpConv", "Convolution")),
    ("monai", "SwinUNETR"): _ArchSpec(
        _swin_multiple, ("SwinTransformerBlock", "UnetrBasicBlock", "UnetrUpBlock"),
        (("encoder", ("swinViT",)), ("decoder", ("encoder", "decoder", "out"))), needs=("einops",)),
    ("monai", "UNETR"): _ArchSpec(
        _fixed(16), ("TransformerBlock", "UnetrBasicBlock", "UnetrPrUpBlock", "UnetrUpBlock"),
        (("encoder", ("vit",)), ("decoder", ("encoder", "decoder", "out"))), needs=("einops",),
        # MONAI's TransformerBlock builds a cross-attention norm even without cross-attention
        exact_size=True, unused=lambda kw: (r"\.norm_cross_attn\.",)),
    ("smp", "Unet"): _ArchSpec(_encoder_stride, _SMP_BLOCKS, _SMP_GROUPS),
    ("smp", "UnetPlusPlus"): _ArchSpec(_encoder_stride, _SMP_BLOCKS, _SMP_GROUPS),
    ("smp", "Segformer"): _ArchSpec(_encoder_stride, _SMP_BLOCKS, _SMP_GROUPS),
}


# ---------------------------------------------------------------------------------------------
# Building the library networks (imports happen here, never at registration)
# ---------------------------------------------------------------------------------------------

def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _import(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _import_smp(model_name: str) -> types.ModuleType:
    try:
        return _import("segmentation_models_pytorch")
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("segmentation_models_pytorch", ""):
            raise MissingDependencyError(
                f"{model_name} needs segmentation-models-pytorch: {SMP_EXTRA_HINT}") from None
        raise MissingDependencyError(
            f"{model_name} needs segmentation-models-pytorch, which is installed but misses "
            f"{exc.name!r}: {SMP_EXTRA_HINT}") from exc
    except Exception as exc:  # e.g. a torchvision built for another torch
        raise MissingDependencyError(
            f"{model_name} needs segmentation-models-pytorch, which is installed but does not "
            f"import ({first_line(exc)}); it needs a torchvision built for torch "
            f"{torch.__version__}") from exc


def _call(model_name: str, cls: type, kwargs: dict[str, Any], where: str) -> nn.Module:
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise TypeError(f"{model_name}: {where} rejected its arguments ({exc}); "
                        f"arguments were {sorted(kwargs)}") from exc


def _build_monai(model_name: str, cfg: BaselineConfig) -> nn.Module:
    from .._optional import require
    nets = require("monai.networks.nets", extra="baselines", feature=model_name)  # imports slowly

    cls = getattr(nets, cfg.arch)
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"spatial_dims": 2, "in_channels": cfg.in_chans,
                              "out_channels": cfg.num_classes}
    if "img_size" in params:           # UNETR (and SwinUNETR of MONAI < 1.5) take the size
        kwargs["img_size"] = cfg.img_size
    kwargs.update(cfg.library_kwargs)
    return _call(model_name, cls, kwargs, f"monai.networks.nets.{cfg.arch}")


def _build_smp(model_name: str, cfg: BaselineConfig) -> nn.Module:
    smp = _import_smp(model_name)
    version = getattr(smp, "__version__", "?")
    cls = getattr(smp, cfg.arch, None)
    if cls is None:
        raise MissingDependencyError(
            f"{model_name} needs a segmentation-models-pytorch with {cfg.arch} (the installed "
            f"{version} has none): pip install -U segmentation-models-pytorch")
    kwargs: dict[str, Any] = {"encoder_weights": None, "in_channels": cfg.in_chans,
                              "classes": cfg.num_classes}
    kwargs.update(cfg.library_kwargs)
    return _call(model_name, cls, kwargs, f"segmentation_models_pytorch.{cfg.arch} {version}")


_LIBRARIES: dict[str, Callable[[str, BaselineConfig], nn.Module]] = {
    "monai": _build_monai, "smp": _build_smp}


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------

def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Bound onto a block instance: its class's forward, recomputed in backward."""
    forward = type(self).forward.__get__(self)
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def _outermost(root: nn.Module, class_names: tuple[str, ...]) -> list[nn.Module]:
    """Submodules whose class name is listed, skipping those inside an already chosen one."""
    chosen: list[nn.Module] = []
    prefixes: list[str] = []
    for name, module in root.named_modules():
        if not name or type(module).__name__ not in class_names:
            continue
        if any(name.startswith(p) for p in prefixes):
            continue
        chosen.append(module)
        prefixes.append(name + ".")
    return chosen


class LibraryModel(SegmentationModel):
    """A MONAI or smp network behind the package's model contract.

    ``self.net`` is the library's own module (its state-dict keys are prefixed with ``net.``).
    """

    def __init__(self, cfg: BaselineConfig, model_name: str = "baseline") -> None:
        super().__init__()
        self.config = cfg
        self.model_name = model_name
        spec = _ARCHS[(cfg.library, cfg.arch)]
        for module in spec.needs:
            if not _module_available(module):
                raise MissingDependencyError(
                    f"{model_name} needs {module} (an optional dependency of {cfg.library} for "
                    f"{cfg.arch}): pip install {module}")
        self._spec = spec
        self.net = _LIBRARIES[cfg.library](model_name, cfg)
        self.size_multiple = spec.size_multiple(self.net, cfg.library_kwargs)
        if spec.exact_size:
            check = [v for v in cfg.img_size if v % self.size_multiple]
            if check:
                raise ValueError(f"{model_name}: img_size {cfg.img_size} must be multiples of "
                                 f"{self.size_multiple} (its patch size)")

    # -- contract --------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        super().check_input(x)
        if self._spec.exact_size and tuple(x.shape[-2:]) != self.config.img_size:
            h, w = self.config.img_size
            raise InputSizeError(
                f"{self.model_name} was built for {h}x{w} inputs (learned position embeddings of "
                f"a {h // self.size_multiple}x{w // self.size_multiple} patch grid) and cannot take "
                f"{x.shape[-2]}x{x.shape[-1]}; resize to {h}x{w} or build it with "
                f"img_size=({x.shape[-2]}, {x.shape[-1]})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes, H, W)."""
        self.check_input(x)
        out = self.net(x)
        if isinstance(out, (list, tuple)):
            # MONAI's UNet++ returns a list (deep supervision last = full output);
            # smp returns (masks, labels) when built with aux_params.
            out = out[-1] if self.config.library == "monai" else out[0]
        return out

    def set_grad_checkpointing(self, enable: bool = True, *, fraction: float = 1.0
                               ) -> "LibraryModel":
        """Recompute the library's blocks (conv blocks, transformer blocks) in backward.

        Done by binding a checkpointing ``forward`` onto each block instance, so parameter
        names and saved files do not change. BatchNorm running statistics see the recomputed
        forward too (as in torchvision's memory-efficient DenseNet).
        """
        check_checkpoint_fraction(self.model_name, fraction, self.supports_partial_checkpointing)
        blocks = _outermost(self.net, self._spec.checkpoint_blocks)
        if not blocks:
            raise NotImplementedError(
                f"{self.model_name}: gradient checkpointing is not available for "
                f"{self.config.library}.{self.config.arch} (no known blocks to recompute)")
        for block in blocks:
            if enable:
                block.forward = types.MethodType(_checkpointed_forward, block)
            else:
                block.__dict__.pop("forward", None)
        return super().set_grad_checkpointing(enable, fraction=fraction)

    def unused_parameter_names(self) -> list[str]:
        """Parameters the library network builds but its forward never uses."""
        patterns = [re.compile(p) for p in self._spec.unused(self.config.library_kwargs)]
        return [f"net.{n}" for n, _ in self.net.named_parameters()
                if any(p.search(n) for p in patterns)]

    def parameter_groups(self) -> dict[str, nn.Module]:
        if not self._spec.groups:
            return {"model": self.net}
        groups: dict[str, list[nn.Module]] = {}
        for child_name, child in self.net.named_children():
            group = next((g for g, prefixes in self._spec.groups
                          if child_name.startswith(prefixes)), "other")
            groups.setdefault(group, []).append(child)
        return {g: (mods[0] if len(mods) == 1 else nn.ModuleList(mods)) for g, mods in groups.items()}


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------

_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(BaselineConfig))
_RELU_BN = {"act": ("relu", {"inplace": True}), "norm": ("batch", {"affine": True})}


def _build(name: str, library: str, arch: str, defaults: dict[str, Any],
           pretrained: bool | str, /, **kwargs: Any) -> LibraryModel:
    """Registry defaults, then ``library_kwargs`` and loose library keywords on top."""
    cfg_args: dict[str, Any] = {"library": library, "arch": arch}
    lib_kwargs = dict(defaults)
    lib_kwargs.update(kwargs.pop("library_kwargs", None) or {})
    for key, value in kwargs.items():
        if key in _CONFIG_FIELDS:
            cfg_args[key] = value
        else:
            lib_kwargs[key] = value
    model = LibraryModel(BaselineConfig(library_kwargs=lib_kwargs, **cfg_args), model_name=name)
    if pretrained:
        load_pretrained(model, name, pretrained)
    return model


def _register(name: str, library: str, arch: str, defaults: dict[str, Any], summary: str,
              paper: str) -> None:
    def fn(pretrained: bool | str = False, **kwargs: Any) -> LibraryModel:
        return _build(name, library, arch, defaults, pretrained, **kwargs)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = summary
    tags = ("baseline", library)
    register_model(fn, paper=paper, tags=tags)
    globals()[name] = fn


_UNET = "U-Net (Ronneberger et al., MICCAI 2015)"

# -- MONAI (always available) ------------------------------------------------------------------
_register("unet", "monai", "BasicUNet", {"features": (64, 128, 256, 512, 1024, 64), **_RELU_BN},
          "Classic U-Net, widths 64-1024, conv-BN-ReLU (MONAI BasicUNet); 31.1 M params.", _UNET)
_register("unet_small", "monai", "BasicUNet", {"features": (32, 64, 128, 256, 512, 32), **_RELU_BN},
          "U-Net at half width, 32-512 (MONAI BasicUNet); 7.8 M params.", _UNET)
_register("unetplusplus", "monai", "BasicUNetPlusPlus",
          {"features": (32, 64, 128, 256, 512, 32), **_RELU_BN},
          "UNet++ with the paper's widths 32-512 (MONAI BasicUNetPlusPlus); 9.1 M params.",
          "UNet++ (Zhou et al., TMI 2019)")
_register("attention_unet", "monai", "AttentionUnet",
          {"channels": (64, 128, 256, 512, 1024), "strides": (2, 2, 2, 2)},
          "Attention U-Net, widths 64-1024 (MONAI AttentionUnet); 31.7 M params.",
          "Attention U-Net (Oktay et al., MIDL 2018)")
_register("swin_unetr", "monai", "SwinUNETR", {"feature_size": 48},
          "Swin UNETR 2-D, feature size 48 (MONAI SwinUNETR; needs einops); inputs x32.",
          "Swin UNETR (Hatamizadeh et al., BrainLes 2021)")
_register("unetr", "monai", "UNETR",
          {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12},
          "UNETR 2-D, ViT-B/16 encoder (MONAI UNETR; needs einops); input fixed to img_size.",
          "UNETR (Hatamizadeh et al., WACV 2022)")

# -- segmentation_models_pytorch (optional extra; imported only when built) ----------------------
_register("unet_resnet34", "smp", "Unet", {"encoder_name": "resnet34"},
          "U-Net with a ResNet-34 encoder (smp.Unet, from scratch); needs hrmedseg[baselines].", _UNET)
_register("unetplusplus_resnet34", "smp", "UnetPlusPlus", {"encoder_name": "resnet34"},
          "UNet++ with a ResNet-34 encoder (smp.UnetPlusPlus); needs hrmedseg[baselines].",
          "UNet++ (Zhou et al., TMI 2019)")
_register("segformer_b0", "smp", "Segformer",
          {"encoder_name": "mit_b0", "decoder_segmentation_channels": 256},
          "SegFormer-B0 (smp.Segformer, MiT-B0, decoder 256); needs hrmedseg[baselines].",
          "SegFormer (Xie et al., NeurIPS 2021)")
_register("segformer_b2", "smp", "Segformer",
          {"encoder_name": "mit_b2", "decoder_segmentation_channels": 768},
          "SegFormer-B2 (smp.Segformer, MiT-B2, decoder 768 as the paper); needs hrmedseg[baselines].",
          "SegFormer (Xie et al., NeurIPS 2021)")
