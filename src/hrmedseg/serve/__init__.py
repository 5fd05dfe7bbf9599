"""``hrmedseg serve``: a REST API and a web page for segmentation (FastAPI + uvicorn).

``create_app(segmenter_or_source, ...)`` builds the app; ``hrmedseg serve MODEL`` runs it.
FastAPI, uvicorn and python-multipart are imported only when this subpackage is used.
"""
from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app
        return create_app
    raise AttributeError(name)
