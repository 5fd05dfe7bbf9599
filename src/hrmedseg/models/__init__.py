"""Model families (one file each) and the registry that builds them by name."""
from ._registry import create_model, list_models, register_model, is_model, model_info
from ._hub import from_pretrained
from .hrmedseg import HRMedSeg, HRMedSegConfig

__all__ = ["create_model", "list_models", "register_model", "is_model", "model_info",
           "from_pretrained", "HRMedSeg", "HRMedSegConfig"]
