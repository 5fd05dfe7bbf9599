"""Applying trained models: whole images of any size, files and folders."""
from .segmenter import Prediction, Segmenter

__all__ = ["Prediction", "Segmenter"]
