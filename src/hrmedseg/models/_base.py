"""What every model of the package shares: a typed config, save/load, size rule, outputs."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ..atomic import atomic_write_bytes, write_json_atomic
from ..errors import HrmedsegError
from ._hub import CONFIG_NAME, README_NAME, WEIGHTS_NAME, from_pretrained as _load_pretrained

# The statistics images are normalised with before any model of the package ("imagenet").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InputSizeError(HrmedsegError, ValueError):
    """An input whose height/width the model cannot take; the message states the rule."""


def check_input_size(model_name: str, height: int, width: int, multiple: int) -> None:
    """Raise :class:`InputSizeError` unless both sides are positive multiples of ``multiple``."""
    if height <= 0 or width <= 0 or height % multiple or width % multiple:
        def up(v: int) -> int:
            return max(multiple, -(-v // multiple) * multiple)
        raise InputSizeError(
            f"{model_name} cannot take a {height}x{width} input: height and width must be "
            f"multiples of {multiple}; resize or pad to e.g. {up(height)}x{up(width)}"
        )


def config_to_dict(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}


class CheckpointingError(HrmedsegError, ValueError):
    """A gradient-checkpointing request the model cannot honour (the message says why)."""


def check_checkpoint_fraction(model_name: str, fraction: float, partial_ok: bool) -> float:
    """``fraction`` as a float in (0, 1]; a clear error for other values, and for a fraction
    below 1 on a model that recomputes all of its blocks or none."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise CheckpointingError(f"{model_name}: gradient checkpointing fraction must be a "
                                 f"number in (0, 1], got {fraction!r}") from None
    if not 0.0 < value <= 1.0:
        raise CheckpointingError(f"{model_name}: gradient checkpointing fraction must be in "
                                 f"(0, 1], got {value:g}")
    if value < 1.0 and not partial_ok:
        raise CheckpointingError(f"{model_name} recomputes all of its blocks or none: gradient "
                                 f"checkpointing fraction {value:g} is not supported (HRMedSeg, "
                                 "HER-Seg and the HRMedSeg-encoder SAM take a fraction)")
    return value


class SegmentationModel(nn.Module):
    """Base class: subclasses set ``config`` (a dataclass) and ``model_name``.

    Convention for every model: ``forward(images (B, in_chans, H, W)) -> logits
    (B, num_classes, H, W)``; ``num_classes == 1`` means sigmoid (binary), more means softmax.
    """

    size_multiple: ClassVar[int] = 1
    # Models whose encoder can recompute only some of its blocks (set_grad_checkpointing's
    # ``fraction``); the others recompute all of their heavy blocks or none.
    supports_partial_checkpointing: ClassVar[bool] = False
    # Compiled training matched eager in a GPU parity check (benchmarks/gpu_parity.py): the
    # trainer's train.compile=auto and predict/serve's --compile auto compile it on CUDA.
    compile_verified: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        self.model_name: str = type(self).__name__.lower()
        self.grad_checkpointing = False
        self.grad_checkpointing_fraction = 0.0

    # -- outputs ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    @property
    def in_chans(self) -> int:
        return int(self.config.in_chans)

    @property
    def activation(self) -> str:
        """'sigmoid' for one output channel, else 'softmax' (overridable by config.output)."""
        out = getattr(self.config, "output", None)
        if out:
            return out
        return "sigmoid" if self.num_classes == 1 else "softmax"

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits.softmax(dim=1)

    def check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"{self.model_name} expects a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"{self.model_name} was built for {self.in_chans} input channels, "
                             f"got {x.shape[1]} (shape {tuple(x.shape)})")
        check_input_size(self.model_name, x.shape[-2], x.shape[-1], self.size_multiple)

    # -- memory/speed switches -------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True, *, fraction: float = 1.0
                               ) -> "SegmentationModel":
        """Recompute activations of the heavy blocks in backward instead of storing them.

        ``fraction`` (0, 1] recomputes only that share of the encoder's blocks, spread evenly
        (models with ``supports_partial_checkpointing``): memory and extra compute in between.
        """
        fraction = check_checkpoint_fraction(self.model_name, fraction,
                                             self.supports_partial_checkpointing)
        self.grad_checkpointing = bool(enable)
        self.grad_checkpointing_fraction = fraction if enable else 0.0
        return self

    def parameter_groups(self) -> dict[str, nn.Module]:
        """Named parts for the profiler's per-part parameter counts."""
        return {"model": self}

    # -- what the model expects ------------------------------------------------------------
    def preprocessing(self) -> dict[str, Any]:
        """How images are prepared for this model: size (H, W), channels, normalisation and
        its mean/std on 0-1 values. Saved in ``config.json`` by :meth:`save_pretrained`."""
        size = getattr(self.config, "img_size", None)
        if isinstance(size, int):
            size = (size, size)
        c = self.in_chans
        mean = IMAGENET_MEAN if c == 3 else (sum(IMAGENET_MEAN) / 3,) * c
        std = IMAGENET_STD if c == 3 else (sum(IMAGENET_STD) / 3,) * c
        return {"size": list(size) if size else None, "channels": c, "normalize": "imagenet",
                "mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std]}

    def model_card(self, preprocess: dict[str, Any] | None = None) -> str:
        """A README.md for the model folder: name, parameters, task, outputs, preprocessing."""
        pre = preprocess if preprocess is not None else self.preprocessing()
        n_params = sum(p.numel() for p in self.parameters())
        classes = self.num_classes
        output = ("one logit channel; sigmoid gives the foreground probability"
                  if self.activation == "sigmoid" else
                  f"{classes} logit channels; softmax over channel 1 gives class probabilities, "
                  "argmax the label map")
        lines = [
            "---", "library_name: hrmedseg", "tags:", "- image-segmentation",
            "- medical-imaging", "---", "", f"# {self.model_name}", "",
            f"Segmentation model `{self.model_name}` of hrmedseg "
            f"(`hrmedseg.from_pretrained(\"<this folder or org/name>\")`).", "",
            f"- Parameters: {n_params:,}",
            f"- Task: {'binary' if classes == 1 else f'{classes}-class'} semantic segmentation "
            f"of {self.in_chans}-channel images",
            f"- Input: (B, {self.in_chans}, H, W) float; height and width multiples of "
            f"{self.size_multiple}",
            f"- Output: logits (B, {classes}, H, W) at the input size; {output}",
            "- Preprocessing: " + ", ".join(f"{k} = {v}" for k, v in pre.items()), "",
            "Files: `config.json` (architecture, arguments, preprocessing) and "
            "`model.safetensors` (weights).", ""]
        return "\n".join(lines)

    # -- persistence -----------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a model card ``README.md`` into
        ``directory`` (atomically). Runtime options (speed switches) are not architecture and
        are not saved; the preprocessing is (``metadata["preprocess"]`` when given, e.g. by the
        trainer, else the model's own :meth:`preprocessing`)."""
        from safetensors.torch import save as st_save
        from .._version import __version__

        directory = Path(directory)
        preprocess = dict((metadata or {}).get("preprocess") or self.preprocessing())
        cfg = {"architecture": self.model_name, "model_args": config_to_dict(self.config),
               "preprocess": preprocess, "hrmedseg_version": __version__}
        if metadata:
            cfg["metadata"] = metadata
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write_bytes(directory / WEIGHTS_NAME, st_save(tensors))
        atomic_write_bytes(directory / README_NAME, self.model_card(preprocess).encode())
        write_json_atomic(directory / CONFIG_NAME, cfg)
        return directory

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **overrides: Any) -> "SegmentationModel":
        """A model saved by :meth:`save_pretrained` (a folder or a Hub ``org/name``); it must
        be an instance of ``cls``."""
        model = _load_pretrained(source, **overrides)
        if not isinstance(model, cls):
            raise TypeError(f"{source}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model

