"""Model families (one file each) and the registry that builds them by name.

Importing this package imports every family, which registers its variants; the registry
(:mod:`._registry`) is a table that imports none of them. Families whose third-party library
is optional (smp baselines) import it only when such a model is built.
"""
from ._registry import create_model, list_models, register_model, is_model, model_info
from ._hub import from_pretrained
from . import hrmedseg as _hrmedseg_family  # noqa: F401  (registers its variants)
from . import qtseg, baselines, sam, esp_medsam  # noqa: F401  (register their variants)
from .hrmedseg import HRMedSeg, HRMedSegConfig

__all__ = ["create_model", "list_models", "register_model", "is_model", "model_info",
           "from_pretrained", "HRMedSeg", "HRMedSegConfig"]
