"""Optional dependencies: import them only where a feature needs them, and say which extra
installs them when they are missing.

The core install (``pip install hrmedseg``) is enough to build models and predict images; each
heavier feature names its extra, e.g. ``require("av", extra="video")`` fails with
``reading videos needs the 'av' package: pip install "hrmedseg[video]"``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from .errors import HrmedsegError

# import name -> (package to install, extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "cv2": ("opencv-python-headless", "train"),
    "matplotlib": ("matplotlib", "train"),
    "tensorboard": ("tensorboard", "train"),
    "av": ("av", "video"),
    "fastapi": ("fastapi", "serve"),
    "uvicorn": ("uvicorn", "serve"),
    "multipart": ("python-multipart", "serve"),
    "nibabel": ("nibabel", "medical"),
    "pydicom": ("pydicom", "medical"),
    "monai": ("monai", "medical"),
    "SimpleITK": ("SimpleITK", "medical"),
    "segmentation_models_pytorch": ("segmentation-models-pytorch", "baselines"),
    "onnx": ("onnx", "export"),
    "onnxscript": ("onnxscript", "export"),
    "onnxruntime": ("onnxruntime", "export"),
}


class MissingExtraError(HrmedsegError, ImportError):
    """An optional package a feature needs is not installed; the message says how to get it."""


def require(module: str, extra: str | None = None, feature: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` with a one-line install hint.

    ``extra`` defaults to the one listed in :data:`EXTRAS`; ``feature`` words the message
    ("reading videos"), by default "this feature".
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        package, default_extra = EXTRAS.get(top, (top, "all"))
        what = feature or "this feature"
        raise MissingExtraError(
            f"{what} needs the {package!r} package: pip install \"hrmedseg[{extra or default_extra}]\"",
            name=top) from exc
