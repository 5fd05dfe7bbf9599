"""ONNX export and an onnxruntime inference path.

:func:`export_onnx` uses PyTorch's dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``,
i.e. ``torch.export`` + onnxscript). With ``dynamic=True`` the batch, height and width are
symbolic (height and width as 16·k, k >= 2), so the RoPE cos/sin tables and the decoder's dense
positional encoding are computed from the actual token grid *inside the graph* — the exported
model takes any size the PyTorch model takes. Without ``dynamic`` the graph is fixed to
``(1, C, size)``.

The preprocessing the model expects (size, normalisation, channels, classes) is stored in the
ONNX metadata, so :class:`OnnxSegmenter` — a :class:`~hrmedseg.inference.Segmenter` whose
forward runs in onnxruntime — segments exactly like the PyTorch one (resize or tile mode).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write_bytes
from .segmenter import Segmenter, _resolve_model

__all__ = ["export_onnx", "OnnxSegmenter", "onnx_available"]

META_KEY = "hrmedseg"


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


class _ImageOnly(nn.Module):
    """``image -> logits``: the exported signature (no optional box prompts)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def export_onnx(model: str | os.PathLike | nn.Module, path: str | os.PathLike,
                size: int | Sequence[int] | None = None, dynamic: bool = True,
                opset: int | None = None, optimize: bool = True, verbose: bool = False,
                normalize: str | None = None) -> Path:
    """Export ``model`` (module, saved folder, run folder or ``name[:tag]``) to ``path``.

    ``size`` is the example input (default: the size the model was trained at); with
    ``dynamic`` batch, height and width are free (height/width multiples of the model's size
    rule). Returns the written path.
    """
    if not onnx_available():
        raise ImportError("ONNX export needs onnx and onnxscript: pip install onnx onnxscript")
    net, pre = _resolve_model(model, torch.device("cpu"))
    net = net.eval().float()
    cfg = getattr(net, "config", None)
    size = _size_pair(size or pre.get("size") or list(getattr(cfg, "img_size", (1024, 1024))))
    multiple = int(getattr(net, "size_multiple", 1))
    from ..models._base import check_input_size
    check_input_size(getattr(net, "model_name", type(net).__name__), size[0], size[1], multiple)
    in_chans = int(getattr(cfg, "in_chans", 3))
    num_classes = int(getattr(cfg, "num_classes", 1))
    wrapper = _ImageOnly(net).eval()
    kwargs: dict[str, Any] = {}
    if dynamic:
        # batch 2 as the example: torch.export specialises sizes 0/1.
        example = torch.randn(2, in_chans, *size)
        b = torch.export.Dim("batch", min=1, max=4096)
        hk = torch.export.Dim("height_blocks", min=2, max=65536 // multiple)
        wk = torch.export.Dim("width_blocks", min=2, max=65536 // multiple)
        kwargs["dynamic_shapes"] = {"image": {0: b, 2: multiple * hk, 3: multiple * wk}}
    else:
        example = torch.randn(1, in_chans, *size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["image"],
                                    output_names=["logits"], opset_version=opset,
                                    optimize=optimize, verbose=verbose, **kwargs)
    meta = {"model_name": getattr(net, "model_name", type(net).__name__), "size": list(size),
            "normalize": normalize or pre.get("normalize", "imagenet"), "in_chans": in_chans,
            "num_classes": num_classes, "activation": getattr(net, "activation", ""),
            "size_multiple": multiple, "dynamic": bool(dynamic),
            "exporter": f"torch.onnx dynamo (torch {torch.__version__})"}
    import onnx
    proto = program.model_proto
    entry = onnx.StringStringEntryProto(key=META_KEY, value=json.dumps(meta))
    del proto.metadata_props[:]
    proto.metadata_props.append(entry)
    return atomic_write_bytes(path, proto.SerializeToString())


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    import onnx
    m = onnx.load(str(path), load_external_data=False)
    for p in m.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    return {}


class OnnxSegmenter(Segmenter):
    """:class:`Segmenter` with the forward in onnxruntime; same preprocessing/postprocessing,
    resize and tile modes.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (default: onnxruntime's choice).
        providers: onnxruntime execution providers (default: CPU).
        Other arguments as :class:`Segmenter` (``device``/``precision`` do not apply).
    """

    def __init__(self, path: str | os.PathLike, size: int | Sequence[int] | None = None,
                 normalize: str | None = None, batch_size: int = 4, mode: str = "resize",
                 overlap: float = 0.25, tile_batch: int = 4, accum_dtype: str = "float32",
                 threads: int | None = None, providers: Sequence[str] | None = None) -> None:
        import onnxruntime as ort

        if mode not in ("resize", "tile"):
            raise ValueError(f"mode must be 'resize' or 'tile', got {mode!r}")
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ONNX file")
        meta = read_onnx_metadata(path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts,
                                            providers=list(providers or ["CPUExecutionProvider"]))
        inp = self.session.get_inputs()[0]
        self._input_name = inp.name
        self._static_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.model = None
        self.device = torch.device("cpu")
        size = size or meta.get("size") or [int(inp.shape[2]), int(inp.shape[3])]
        self.size = _size_pair(size)
        self.normalize = normalize or meta.get("normalize", "imagenet")
        self.in_chans = int(meta.get("in_chans", inp.shape[1]))
        self.num_classes = int(meta.get("num_classes", self.session.get_outputs()[0].shape[1]))
        self.precision = "fp32"
        self.batch_size = batch_size
        self.mode = mode
        self.overlap = float(overlap)
        self.tile_batch = int(tile_batch)
        self.accum_dtype = accum_dtype
        act = meta.get("activation")
        self.activation = act if act in ("sigmoid", "softmax") else (
            "sigmoid" if self.num_classes == 1 else "softmax")
        self.metadata = meta

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().float().cpu().numpy()
        step = self._static_batch or x.shape[0]
        outs = [self.session.run(None, {self._input_name: np.ascontiguousarray(x[i:i + step])})[0]
                for i in range(0, x.shape[0], step)]
        return torch.from_numpy(np.concatenate(outs) if len(outs) > 1 else outs[0])
