"""Official SAM-family checkpoints: found locally or fetched from the Hugging Face Hub
(``hf_hub_download``) with their sha256 checked, read as state dicts, and loaded by key.

The checkpoints are described as data in ``hrmedseg/weights/weights.json`` (entries with
``"format": "sam"``: file name, sha256, Hub repository, image encoder). A plain
segment-anything / MobileSAM ``state_dict`` (keys ``image_encoder.*``, ``prompt_encoder.*``,
``mask_decoder.*``) loads by key; TinyViT's Conv-BN names are mapped
(:func:`~hrmedseg.models.tinyvit.tinyvit_key_from_mobile_sam`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ._hub import CheckpointError, load_safetensors, load_state_dict_checked
from ._pretrained import PretrainedWeight, PretrainedWeightError, sha256_of, weight_index
from .tinyvit import TinyViT, tinyvit_key_from_mobile_sam, tinyvit_key_to_mobile_sam

__all__ = ["ChecksumError", "CHECKPOINT_DIR_ENV", "sam_checkpoints", "sam_checkpoint",
           "checkpoint_dirs", "find_checkpoint", "download_checkpoint", "read_sam_state_dict",
           "load_sam_checkpoint", "to_sam_state_dict", "SAM_PARTS"]

#: Environment variable naming folders that hold checkpoints under their official file names.
CHECKPOINT_DIR_ENV = "HRMEDSEG_CHECKPOINT_DIR"


class ChecksumError(PretrainedWeightError):
    """A downloaded or found file whose sha256 is not the recorded one."""


def sam_checkpoints() -> dict[str, PretrainedWeight]:
    """The official SAM-family checkpoints of the weights catalogue, by tag."""
    return {t: w for t, w in weight_index().items() if w.format == "sam"}


def sam_checkpoint(name: str) -> PretrainedWeight:
    known = sam_checkpoints()
    if name not in known:
        raise PretrainedWeightError(f"unknown SAM checkpoint {name!r}; known: {sorted(known)}")
    return known[name]


def checkpoint_dirs() -> list[Path]:
    """Folders searched for official checkpoints before the Hugging Face cache:
    ``$HRMEDSEG_CHECKPOINT_DIR`` (``os.pathsep`` separated), then
    ``~/.cache/hrmedseg/checkpoints``."""
    dirs = [Path(p) for p in os.environ.get(CHECKPOINT_DIR_ENV, "").split(os.pathsep) if p]
    return dirs + [Path.home() / ".cache" / "hrmedseg" / "checkpoints"]


def _verified(path: Path, info: PretrainedWeight, remove: bool = False) -> Path:
    digest = sha256_of(path)
    if digest != info.sha256:
        if remove:  # in the Hugging Face cache: the blob and the snapshot's link to it
            for p in {path.resolve(), path}:
                p.unlink(missing_ok=True)
        raise ChecksumError(f"{path}: sha256 {digest} is not {info.sha256} recorded for "
                            f"{info.tag!r}" + ("; the file was removed" if remove else ""))
    return path


def _hf_download(info: PretrainedWeight, cache_dir: str | os.PathLike | None,
                 local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(info.hf_repo, info.hf_file, repo_type=info.hf_repo_type,
                                cache_dir=cache_dir, local_files_only=local_only))


def find_checkpoint(name: str, verify: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Local path of an official checkpoint: by its file name in :func:`checkpoint_dirs`, else
    in the Hugging Face cache (no download); None when absent. With ``verify`` a file whose
    sha256 differs raises :class:`ChecksumError`."""
    info = sam_checkpoint(name)
    for d in checkpoint_dirs():
        path = d / info.filename
        if path.is_file():
            return _verified(path, info) if verify else path
    try:
        path = _hf_download(info, cache_dir, local_only=True)
    except Exception:  # not in the cache (huggingface_hub raises its own error types)
        return None
    return _verified(path, info) if verify else path


def download_checkpoint(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of an official checkpoint, fetched with ``huggingface_hub.hf_hub_download`` into
    the Hugging Face cache (``cache_dir``, ``HF_HUB_CACHE``) unless already there, and its
    sha256 checked: a file that does not match is removed and :class:`ChecksumError` raised.
    ``HF_HUB_OFFLINE=1`` uses the cache only."""
    info = sam_checkpoint(name)
    try:
        path = _hf_download(info, cache_dir, local_only=False)
    except Exception as exc:  # offline cache miss, network or repository errors
        raise PretrainedWeightError(
            f"checkpoint {name!r} ({info.hf_file} of the Hugging Face {info.hf_repo_type} "
            f"{info.hf_repo}) could not be fetched: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}; put {info.filename} in "
            f"${CHECKPOINT_DIR_ENV} or pass its path") from None
    return _verified(path, info, remove=True)


SAM_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder")


def read_sam_state_dict(source: str | os.PathLike | dict[str, torch.Tensor],
                        sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A segment-anything / MobileSAM state dict from a file (torch ``.pt``/``.pth`` read with
    ``weights_only=True``, or ``.safetensors``) or a dict; ``{"model": …}`` /
    ``{"state_dict": …}`` wrappers and a ``module.`` prefix (DDP) are unwrapped."""
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{path}: checkpoint not found")
        if sha256 is not None:
            digest = sha256_of(path)
            if digest != sha256.lower():
                raise ChecksumError(f"{path}: sha256 {digest} is not the expected {sha256}")
        if path.suffix == ".safetensors":
            state = load_safetensors(path)
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # pickle errors, truncated files
                raise CheckpointError(f"{path}: not a readable torch checkpoint "
                                      f"(weights_only load failed: {exc})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_sam_checkpoint(model: nn.Module, source: str | os.PathLike | dict[str, torch.Tensor],
                        parts: Iterable[str] | None = None, sha256: str | None = None,
                        strict: bool = True) -> list[str]:
    """Load a segment-anything / MobileSAM state dict (keys ``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*``) into ``model``.

    Args:
        source: file path or state dict (see :func:`read_sam_state_dict`).
        parts: which of the three parts to load. Default: all three when the model's image
            encoder is TinyViT (MobileSAM), else the prompt encoder and mask decoder (a SAM
            ViT encoder has nothing to load into; HRMedSegSAM's encoder comes from
            distillation — a full HRMedSegSAM state dict loads with ``parts`` naming all three).
        strict: every parameter/buffer of the chosen parts must be in the file with its shape,
            and the file may hold nothing else under those parts.

    Returns the list of parts loaded. Raises :class:`CheckpointError` with the first
    offending keys otherwise.
    """
    state = read_sam_state_dict(source, sha256)
    if parts is None:
        parts = SAM_PARTS if isinstance(model.image_encoder, TinyViT) else SAM_PARTS[1:]
    parts = tuple(parts)
    bad = [p for p in parts if p not in SAM_PARTS]
    if bad:
        raise ValueError(f"unknown parts {bad}; choose from {SAM_PARTS}")
    src_name = str(source) if not isinstance(source, dict) else "state dict"
    if "image_encoder" in parts and "image_encoder.pos_embed" in state:
        raise CheckpointError(f"{src_name}: holds a SAM ViT image encoder, which this package "
                              f"does not build ({type(model.image_encoder).__name__} here); "
                              f"load parts=('prompt_encoder', 'mask_decoder')")
    own = model.state_dict()
    chosen: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        part = key.split(".", 1)[0]
        if part not in parts:
            continue
        if part == "image_encoder" and isinstance(model.image_encoder, TinyViT):
            key = "image_encoder." + tinyvit_key_from_mobile_sam(key[len("image_encoder."):])
            if key.startswith(("image_encoder.norm_head.", "image_encoder.head.")) \
                    and key not in own:
                continue  # TinyViT built without the (unused) ImageNet head
        chosen[key] = value
    wanted = [k for k in own if k.split(".", 1)[0] in parts]
    load_state_dict_checked(model, chosen, src_name, strict=strict, expected=wanted,
                            what=f" parts {parts}")
    return list(parts)


def to_sam_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict under segment-anything / MobileSAM key names (TinyViT's
    Conv-BN ``conv`` → ``c``), e.g. to load a fine-tuned model into MobileSAM's code."""
    out = {}
    tiny = isinstance(model.image_encoder, TinyViT)
    for k, v in model.state_dict().items():
        if tiny and k.startswith("image_encoder."):
            k = "image_encoder." + tinyvit_key_to_mobile_sam(k[len("image_encoder."):])
        out[k] = v
    return out
