"""``Segmenter``: apply a model to images of any size and format, as ``hrmedseg predict`` does.

Resize mode: the image is mapped to the model's channels, normalised as the model was trained,
resized to the model size, segmented, and the logits are resized back to the original size
(bilinear on logits, then threshold/argmax), so the mask has the image's own size.

Tile mode (``mode="tile"``): the image is segmented at its own resolution by a sliding window of
the model size (overlap, Gaussian blending, ``tile_batch`` tiles per forward; see
:mod:`hrmedseg.inference.tiling`), so memory is bounded by the tile batch on the device and by
the output accumulator on the host; :meth:`Segmenter.predict_file` reads TIFFs window by window.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..compiling import (COMPILE_MODES, compile_error_line, is_compile_error, resolve_compile,
                         use_compile_cache, uses_cudagraphs)
from ..devices import parse_device


@dataclass
class Prediction:
    labels: np.ndarray          # (H, W) uint8/uint16 labels at the original size
    probabilities: np.ndarray   # (K, H, W) float32 probabilities at the original size (K=1: sigmoid)
    image: np.ndarray           # the image as read (for overlays)
    source: str = ""
    model_labels: np.ndarray | None = None   # (h, w) labels at the model input size


def _resolve_model(source: str | os.PathLike | nn.Module, device: torch.device
                   ) -> tuple[nn.Module, dict[str, Any]]:
    """A model object, a saved model folder (config.json + model.safetensors), a checkpoint of
    a training run (its folder or the run folder, best first) or a registered name
    (``name`` or ``name:pretrained-tag``)."""
    from ..models._hub import from_pretrained, read_config
    from ..models._registry import create_model, is_model

    if isinstance(source, nn.Module):
        return source.to(device), {}
    p = Path(source)
    for cand in (p, p / "checkpoints" / "best", p / "checkpoints" / "last"):
        if (cand / "config.json").is_file():
            pre = folder_preprocess(cand / "config.json", read_config(cand))
            return from_pretrained(cand).to(device), pre
    name, _, tag = str(source).partition(":")
    if is_model(name):
        # A name alone means the model's shipped whole-model weight ("full"), never an
        # encoder-only pretraining weight with an untrained decoder.
        model = create_model(name, pretrained=(tag or "full"))
        w = getattr(model, "pretrained_weight", None)
        return model.to(device), (_weight_preprocess(w) if w else {})
    if p.exists():
        raise FileNotFoundError(f"{p}: not a model folder (no config.json in it, "
                                f"nor in checkpoints/best or checkpoints/last)")
    raise FileNotFoundError(f"{source}: neither a model folder nor a registered model name")


def folder_preprocess(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a model folder's ``config.json`` (``path``, read as ``config``) records.

    Layouts written by the package: ``preprocess`` at the top level (every
    :meth:`~hrmedseg.models._base.SegmentationModel.save_pretrained`: the trainer's
    ``metadata["preprocess"]`` when given, else the model's own), and ``metadata.preprocess``
    alone (folders saved before the top-level key); the top level wins where both are. Neither:
    ``{}`` (the model's defaults apply). Anything else -- a ``preprocess`` or ``metadata`` that
    is not a mapping, a ``size`` that is not a side or [height, width] of positive integers, a
    ``normalize`` that is not a name -- is refused, before any weights are read, with a one-line
    :class:`~hrmedseg.models._hub.CheckpointError` naming the file.
    """
    from ..models._hub import CheckpointError

    meta = config.get("metadata", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: 'metadata' is a {type(meta).__name__}, not a mapping")
    for where, pre in (("preprocess", config.get("preprocess")), ("metadata.preprocess", meta.get("preprocess"))):
        if pre is None:
            continue
        if not isinstance(pre, dict):
            raise CheckpointError(f"{path}: '{where}' is a {type(pre).__name__}, not a mapping of "
                                  "size, normalize, ...")
        size = pre.get("size")
        sides = [size, size] if isinstance(size, int) else size
        if size is not None and not (isinstance(sides, list) and len(sides) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides)):
            raise CheckpointError(f"{path}: '{where}.size' is {size!r}, not a side or [height, width] "
                                  "of positive integers")
        if "normalize" in pre and not isinstance(pre["normalize"], str):
            raise CheckpointError(f"{path}: '{where}.normalize' is {pre['normalize']!r}, not a "
                                  "normalisation name")
        if pre:
            return dict(pre)
    return {}


def _weight_preprocess(tag: str) -> dict[str, Any]:
    from ..models._pretrained import weight_index
    w = weight_index().get(tag)
    return dict(w.preprocess) if w else {}


class Segmenter:
    """Segment images with a model; see the module docstring for the resize pipeline.

    Args:
        model: a model, a saved-model/run folder, or ``name[:pretrained-tag]``.
        device: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:N" or "mps".
        size: model input (H, W); default: what the model was trained at.
        normalize: "imagenet", "minmax" or "none"; default: what the model was trained with.
        precision: "fp32", "bf16" or "fp16" autocast.
        batch_size: images per forward in :meth:`predict_files`.
        mode: "resize" (default: the whole image resized to the model size) or "tile"
            (sliding window of the model size over the image at its own resolution).
        overlap: tile overlap in [0, 1) (tile mode).
        tile_batch: tiles per forward (tile mode): bounds the device memory.
        accum_dtype: "float32" or "float16" probability accumulator (tile mode); with float16
            the returned probabilities are float16.
        compile: None (eager), a ``torch.compile`` mode ("default", or "reduce-overhead": CUDA
            graphs, HRMedSeg's fastest inference, 2019 vs 810 eager images/s at 1024², batch 16,
            bf16 on an H200; benchmarks/results/speed_hrmedseg_1024_h200/), or "auto": CUDA
            graphs on CUDA for a model whose compiled run passed the parity check, else eager
            (``predict`` and ``serve`` use auto). The first batch of each new shape compiles
            (about 30-40 s there; kernels are cached on disk for the next run); a compile that
            fails costs one line on stderr and the model runs eager.
    """

    def __init__(self, model: str | os.PathLike | nn.Module, device: str = "auto",
                 size: int | Sequence[int] | None = None, normalize: str | None = None,
                 precision: str = "fp32", batch_size: int = 4, mode: str = "resize",
                 overlap: float = 0.25, tile_batch: int = 4, accum_dtype: str = "float32",
                 compile: str | None = None) -> None:
        if mode not in ("resize", "tile"):
            raise ValueError(f"mode must be 'resize' or 'tile', got {mode!r}")
        if compile is not None and compile not in ("auto", *COMPILE_MODES):
            raise ValueError(f"compile must be one of None, auto, {', '.join(COMPILE_MODES)}, "
                             f"got {compile!r}")
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if tile_batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.device = parse_device(device)
        self.model, pre = _resolve_model(model, self.device)
        self.model.eval()
        self.set_compile(compile)
        cfg = getattr(self.model, "config", None)
        cfg_size = getattr(cfg, "img_size", (1024, 1024))
        if isinstance(cfg_size, int):  # SAM-family configs keep one side
            cfg_size = (cfg_size, cfg_size)
        default_size = pre.get("size") or list(cfg_size)
        if size is None:
            size = default_size
        self.size = (size, size) if isinstance(size, int) else tuple(int(v) for v in size)
        self.normalize = normalize or pre.get("normalize", "imagenet")
        self.in_chans = int(getattr(cfg, "in_chans", 3))
        self.num_classes = int(getattr(cfg, "num_classes", 1))
        self.precision = precision
        self.batch_size = batch_size
        self.mode = mode
        self.overlap = float(overlap)
        self.tile_batch = int(tile_batch)
        self.accum_dtype = accum_dtype
        act = getattr(self.model, "activation", None)
        self.activation = act if act in ("sigmoid", "softmax") else (
            "sigmoid" if self.num_classes == 1 else "softmax")

    def set_compile(self, compile: str | None, auto_mode: str = "auto") -> str | None:
        """Compile the forward (see the class's ``compile``); ``auto_mode`` is the mode "auto"
        compiles with ("auto": CUDA graphs on CUDA). Returns the mode in effect (None: eager);
        ``compile_reason`` says why."""
        setting, mode = ("false", "auto") if compile is None else (
            ("auto", auto_mode) if compile == "auto" else ("true", compile))
        verified = bool(getattr(self.model, "compile_verified", False))
        chosen, self.compile_reason = resolve_compile(setting, mode, self.device.type, verified)
        self.compile = chosen
        if chosen is not None:
            use_compile_cache()
        self._forward: Any = self.model if chosen is None else torch.compile(self.model, mode=chosen)
        return chosen

    # -- core ---------------------------------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        from ..data.io import normalize, to_model_channels
        x = normalize(to_model_channels(image, self.in_chans), self.normalize)
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
        if tuple(t.shape[-2:]) != self.size:
            t = F.interpolate(t, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return t[0]

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dt = {"bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]
        return torch.autocast(self.device.type, dtype=dt)

    @torch.inference_mode()
    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        graphs = uses_cudagraphs(self.compile)
        if graphs:
            # CUDA graphs reuse their output buffer at the next replay: a new step per call,
            # and the logits copied out (clone) before the caller keeps them.
            torch.compiler.cudagraph_mark_step_begin()
        try:
            with self._autocast():
                out = self._forward(batch.to(self.device)).float()
        except Exception as exc:
            if self.compile is None or not is_compile_error(exc):
                raise
            print(f"torch.compile failed ({compile_error_line(exc)}); predicting without "
                  "compiling", file=sys.stderr, flush=True)
            torch._dynamo.reset()
            self.set_compile(None)
            return self.logits(batch)
        return out.clone() if graphs else out

    def _to_original(self, logits: torch.Tensor, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        up = logits[None]
        if tuple(up.shape[-2:]) != hw:
            up = F.interpolate(up, size=hw, mode="bilinear", align_corners=False)
        up = up[0]
        if self.num_classes == 1:
            probs = torch.sigmoid(up)
            labels = (up[0] > 0).to(torch.uint8)
        else:
            probs = up.softmax(0)
            labels = up.argmax(0).to(torch.uint8 if self.num_classes < 256 else torch.int32)
        return labels.cpu().numpy(), probs.cpu().numpy().astype(np.float32)

    def _predict_tiled(self, image, source: str = "") -> Prediction:  # noqa: ANN001
        from .tiling import predict_tiled
        res = predict_tiled(self.logits, image, self.size, in_chans=self.in_chans,
                            num_classes=self.num_classes, activation=self.activation,
                            normalize=self.normalize, overlap=self.overlap,
                            tile_batch=self.tile_batch, accum_dtype=self.accum_dtype,
                            desc=Path(source).name if source else "tiles")
        return Prediction(res.labels, res.probabilities, image, source, None)

    def predict_arrays(self, images: Sequence[np.ndarray], sources: Sequence[str] | None = None
                       ) -> list[Prediction]:
        if self.mode == "tile":
            return [self._predict_tiled(im, sources[i] if sources else "")
                    for i, im in enumerate(images)]
        batch = torch.stack([self.preprocess(im) for im in images])
        lg = self.logits(batch)
        from ..metrics.tensor import logits_to_labels
        model_labels = logits_to_labels(lg).to(torch.uint8 if self.num_classes < 256 else torch.int32)
        out = []
        for i, im in enumerate(images):
            labels, probs = self._to_original(lg[i], im.shape[:2])
            out.append(Prediction(labels, probs, im, sources[i] if sources else "",
                                  model_labels[i].cpu().numpy()))
        return out

    def predict(self, image: np.ndarray | str | os.PathLike) -> Prediction:
        if isinstance(image, (str, os.PathLike)):
            from ..data.io import read_image
            return self.predict_arrays([read_image(image)], [str(image)])[0]
        return self.predict_arrays([image])[0]

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        """Segment one file. In tile mode a TIFF is read lazily, window by window (memory map,
        zarr or per-chunk decoding), so images larger than memory work; ``Prediction.image`` is
        then a :class:`~hrmedseg.inference.tiling.ImageSource` (``np.asarray`` reads it whole).
        In resize mode this is :meth:`predict` on the file."""
        if self.mode != "tile":
            return self.predict(path)
        from .tiling import open_source
        src = open_source(path, lazy=True)
        return self._predict_tiled(src, str(path))

    def predict_files(self, paths: Iterable[str | os.PathLike]) -> Iterable[Prediction]:
        """Yield predictions file by file, reading ``batch_size`` files per forward."""
        if self.mode == "tile":
            for p in paths:
                yield self.predict_file(p)
            return
        from ..data.io import read_image
        chunk: list[tuple[str, np.ndarray]] = []
        for p in paths:
            chunk.append((str(p), read_image(p)))
            if len(chunk) == self.batch_size:
                yield from self.predict_arrays([c[1] for c in chunk], [c[0] for c in chunk])
                chunk = []
        if chunk:
            yield from self.predict_arrays([c[1] for c in chunk], [c[0] for c in chunk])
