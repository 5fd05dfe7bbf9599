"""hrmedseg: memory-efficient segmentation of high-resolution medical images."""
from __future__ import annotations

from ._version import __version__

from .errors import HrmedsegError
from .models._registry import create_model, is_model, list_models, model_info
from .models._hub import from_pretrained
from .models._base import InputSizeError, SegmentationModel

__all__ = ["__version__", "create_model", "list_models", "is_model", "model_info",
           "from_pretrained", "HrmedsegError", "InputSizeError", "SegmentationModel"]
