"""Model folders (config.json + model.safetensors): reading them, and ``from_pretrained``
from a local folder or a Hugging Face Hub repository (``"org/name"``).

Below the model families and :mod:`~hrmedseg.models._base`: this module imports only the
registry table, so no family and no base class imports back into it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import HrmedsegError
from ._registry import create_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
README_NAME = "README.md"


class CheckpointError(HrmedsegError, RuntimeError):
    """A model folder or weight file that cannot be used; the message names the file."""


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: not found (a model folder holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if "architecture" not in cfg:
        raise CheckpointError(f"{path}: no 'architecture' key")
    return cfg


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _looks_like_repo_id(source: str) -> bool:
    """``org/name`` (optionally ``org/name@revision``): two path parts, no local meaning."""
    parts = source.split("@", 1)[0].split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def resolve_model_folder(source: str | os.PathLike, revision: str | None = None,
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """A local model folder for ``source``: the folder itself when it exists, else the
    snapshot of the Hugging Face Hub repository ``org/name`` (downloaded once into the
    Hugging Face cache; ``HF_HUB_OFFLINE=1`` uses the cache only)."""
    path = Path(source)
    if path.is_dir() or not _looks_like_repo_id(str(source)):
        return path
    repo_id, _, at = str(source).partition("@")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of the package
        raise CheckpointError(f"{source}: not a local folder, and huggingface_hub (needed to "
                              "fetch a Hub repository) is not installed") from None
    try:
        folder = snapshot_download(repo_id, revision=revision or at or None,
                                   cache_dir=cache_dir,
                                   allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, README_NAME])
    except Exception as exc:  # offline cache miss, unknown repo, network errors
        raise CheckpointError(f"{source}: not a local folder, and the Hugging Face Hub "
                              f"repository could not be fetched ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    return Path(folder)


def load_model_folder(directory: str | os.PathLike, map_location: str | torch.device = "cpu",
                      **overrides: Any) -> nn.Module:
    """Rebuild a model from a local ``save_pretrained`` folder."""
    cfg = read_config(directory)
    args = dict(cfg.get("model_args", {}))
    args.update(overrides)
    args.pop("pretrained", None)
    model = create_model(cfg["architecture"], pretrained=False, **args)
    state = load_safetensors(Path(directory) / WEIGHTS_NAME)
    load_state_dict_checked(model, state, source=str(Path(directory) / WEIGHTS_NAME))
    return model.to(map_location)


def from_pretrained(source: str | os.PathLike, map_location: str | torch.device = "cpu",
                    revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                    **overrides: Any) -> nn.Module:
    """Rebuild a model from a ``save_pretrained`` folder or a Hugging Face Hub repository
    (``"org/name"``, ``"org/name@revision"``) holding one; ``overrides`` change config
    fields that do not change parameter shapes (e.g. ``drop_path_rate``) and runtime options
    (e.g. ``fast_norm``)."""
    folder = resolve_model_folder(source, revision=revision, cache_dir=cache_dir)
    return load_model_folder(folder, map_location, **overrides)


def load_state_dict_checked(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                            strict: bool = True, expected: list[str] | None = None,
                            what: str = "") -> tuple[list[str], list[str]]:
    """``load_state_dict`` with one readable error for missing/unexpected/mis-shaped keys.

    ``expected``: the model keys the file must provide (default: all of them); ``what`` names
    the part being loaded in the error message.
    """
    own = model.state_dict()
    bad_shape = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in (own if expected is None else expected) if k not in state]
    unexpected = [k for k in state if k not in own]
    if bad_shape or (strict and (missing or unexpected)):
        parts = []
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {bad_shape[0]})")
        if strict and missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if strict and unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{source}: does not fit {type(model).__name__}{what}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return missing, unexpected
