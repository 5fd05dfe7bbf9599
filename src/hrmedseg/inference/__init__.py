"""Applying trained models: whole images of any size (resize or tiled), volumes, ONNX."""
from .segmenter import Prediction, Segmenter
from .tiling import predict_tiled

__all__ = ["Prediction", "Segmenter", "predict_tiled", "OnnxSegmenter", "export_onnx"]


def __getattr__(name: str):
    # onnx/onnxruntime are optional: import the export module only when asked for.
    if name in ("OnnxSegmenter", "export_onnx"):
        from . import export
        return getattr(export, name)
    raise AttributeError(name)
