"""Atomic checkpoints: weights as safetensors (+ config.json), training state as a plain
tensor/number dict loadable with ``torch.load(weights_only=True)``.

A checkpoint is a folder ``checkpoints/<tag>/`` written completely under a temporary name and
then swapped in, so a crash at any moment leaves either the old or the new one, never half.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_NAME = "state.pt"


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def save_checkpoint(ckpt_root: Path, tag: str, model: nn.Module, state: dict[str, Any],
                    metadata: dict[str, Any] | None = None) -> Path:
    from ..atomic import atomic_replace_dir

    def write(tmp: Path) -> None:
        _unwrap(model).save_pretrained(tmp, metadata=metadata)
        with open(tmp / STATE_NAME, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_replace_dir(Path(ckpt_root) / tag, write)


def find_checkpoint(ckpt_root: Path, tag: str) -> Path | None:
    """The folder of ``tag``, or its previous version if a crash hit between the two renames."""
    for cand in (Path(ckpt_root) / tag, Path(ckpt_root) / f".{tag}.old"):
        if (cand / STATE_NAME).is_file() and (cand / "model.safetensors").is_file():
            return cand
    return None


def load_state(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / STATE_NAME, map_location="cpu", weights_only=True)
