"""Pretrained weights, described as data in ``hrmedseg/weights/weights.json``.

Each entry names the file shipped in ``hrmedseg/weights/``, its sha256, what it was trained
on and how well it does. ``create_model(name, pretrained=True)`` picks the entry marked
``"default": true`` for that model; ``pretrained="TAG"`` picks one by tag. Loading a shipped
file is offline; the hash is checked every time.

External checkpoints (the official SAM and MobileSAM ones, ``"format": "sam"``) are described
the same way, with the Hugging Face Hub repository and file they are fetched from
(:mod:`hrmedseg.models.sam_checkpoints` fetches, verifies and loads them).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import HrmedsegError
from ._hub import load_safetensors, load_state_dict_checked

WEIGHTS_INDEX = "weights.json"


class PretrainedWeightError(HrmedsegError, RuntimeError):
    """No weight for a model, a missing file or a checksum that does not match."""


@dataclass(frozen=True)
class PretrainedWeight:
    tag: str
    model: str
    file: str
    sha256: str
    applies_to: str = "full"          # "full" or a module prefix such as "encoder,neck"
    num_classes: int | None = None
    default: bool = False
    source: str = ""
    dataset: str = ""
    license: str = ""
    url: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)   # size + normalisation it expects
    notes: str = ""
    teacher: str = ""                 # distilled weights: the teacher they learned from
    # "safetensors": a file shipped in the package, keys of this package's model;
    # "sam": an external segment-anything/MobileSAM torch state dict fetched from the Hub.
    format: str = "safetensors"
    hf_repo: str = ""                 # Hugging Face Hub repository the file is fetched from
    hf_repo_type: str = "model"       # "model" or "space"
    hf_file: str = ""                 # path of the file in that repository
    image_encoder: str = ""           # SAM checkpoints: "vit_b" | "vit_l" | "vit_h" | "tinyvit"

    @property
    def shipped(self) -> bool:
        """True for a file inside the package (no download)."""
        return self.format == "safetensors" and not self.hf_repo

    @property
    def filename(self) -> str:
        return Path(self.file).name

    def path(self) -> Path:
        return Path(str(resources.files("hrmedseg") / "weights" / self.file))

    def prefixes(self) -> tuple[str, ...]:
        return () if self.applies_to == "full" else tuple(
            p.strip() + "." for p in self.applies_to.split(",") if p.strip())


@lru_cache(maxsize=1)
def weight_index() -> dict[str, PretrainedWeight]:
    index = resources.files("hrmedseg") / "weights" / WEIGHTS_INDEX
    if not index.is_file():
        return {}
    raw = json.loads(index.read_text())
    return {tag: PretrainedWeight(tag=tag, **entry) for tag, entry in raw.items()}


def list_pretrained(model: str | None = None, shipped: bool | None = None
                    ) -> list[PretrainedWeight]:
    """Catalogue entries, of one model and/or only shipped (``True``) or external (``False``)."""
    return [w for w in weight_index().values()
            if (model is None or w.model == model) and (shipped is None or w.shipped == shipped)]


def resolve_weight(model_name: str, pretrained: bool | str) -> PretrainedWeight:
    """``True``: the model's default weight (for HRMedSeg the distilled encoder, a starting
    point for training); ``"full"``: its default *whole-model* weight (what inference by model
    name needs: ``hrmedseg predict hrmedseg``); any other string: a tag."""
    index = weight_index()
    if pretrained == "full":
        full = [w for w in index.values()
                if w.model == model_name and w.applies_to == "full" and w.shipped]
        if not full:
            raise PretrainedWeightError(
                f"model {model_name!r} ships no whole-model weight to predict with; give a "
                f"trained model folder (hrmedseg train -> RUN/checkpoints/best) or a tag")
        return sorted(full, key=lambda w: not w.default)[0]
    if isinstance(pretrained, str):
        if pretrained not in index:
            raise PretrainedWeightError(
                f"no pretrained weight tagged {pretrained!r}; available: {sorted(index) or 'none'}")
        return index[pretrained]
    for w in index.values():
        if w.model == model_name and w.default and w.shipped:
            return w
    own = [w.tag for w in index.values() if w.model == model_name]
    raise PretrainedWeightError(
        f"model {model_name!r} has no default pretrained weight"
        + (f"; tags for it: {own}" if own else "; build it with pretrained=False"))


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_pretrained(model: nn.Module, model_name: str, pretrained: bool | str) -> PretrainedWeight:
    """Load the resolved weight into ``model`` (all of it, or only the parts it applies to)."""
    weight = resolve_weight(model_name, pretrained)
    if not weight.shipped:
        raise PretrainedWeightError(
            f"{weight.tag!r} is an external {weight.format} checkpoint (from {weight.hf_repo}); "
            f"the {weight.model} model family loads it, not {model_name!r}")
    path = weight.path()
    if not path.is_file():
        raise PretrainedWeightError(f"{path}: weight file of {weight.tag!r} is missing from the package")
    digest = sha256_of(path)
    if digest != weight.sha256:
        raise PretrainedWeightError(
            f"{path}: sha256 {digest} does not match the recorded {weight.sha256} for {weight.tag!r}")
    state = load_safetensors(path)
    prefixes = weight.prefixes()
    if prefixes:
        state = {k: v for k, v in state.items() if k.startswith(prefixes)}
        load_state_dict_checked(model, state, source=str(path), strict=False)
    else:
        load_state_dict_checked(model, state, source=str(path), strict=True)
    model.pretrained_weight = weight.tag
    return weight
