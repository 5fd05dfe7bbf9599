"""Model registry in the style of timm: one small registered function per variant.

The registry is a table only: it imports no model family. ``hrmedseg.models`` (the package)
imports every family, which registers its variants, before any name is looked up.

    >>> import hrmedseg
    >>> hrmedseg.list_models("hrmedseg*")
    >>> model = hrmedseg.create_model("hrmedseg", num_classes=1, img_size=1024)
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..errors import HrmedsegError

__all__ = ["register_model", "create_model", "list_models", "is_model", "model_info",
           "ModelInfo", "UnknownModelError"]


class UnknownModelError(HrmedsegError, KeyError):
    """Raised for a model name that is not registered; the message lists close names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one registered name."""

    name: str
    family: str
    summary: str
    paper: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}
_INFO: dict[str, ModelInfo] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   paper: str = "", tags: tuple[str, ...] = ()) -> Any:
    """Decorator registering ``fn`` under its function name (or ``name``).

    The first line of the function's docstring becomes the model's summary in
    :func:`list_models` and the CLI.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _ENTRYPOINTS:
            raise ValueError(f"model name {key!r} is registered twice")
        family = f.__module__.rsplit(".", 1)[-1]
        summary = (f.__doc__ or "").strip().splitlines()[0] if f.__doc__ else ""
        _ENTRYPOINTS[key] = f
        _INFO[key] = ModelInfo(key, family, summary, paper, tuple(tags))
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*", family: str | None = None, tag: str | None = None) -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    names = [n for n in _ENTRYPOINTS if fnmatch.fnmatch(n, pattern)]
    if family is not None:
        names = [n for n in names if _INFO[n].family == family]
    if tag is not None:
        names = [n for n in names if tag in _INFO[n].tags]
    return sorted(names)


def is_model(name: str) -> bool:
    return name in _ENTRYPOINTS


def model_info(name: str) -> ModelInfo:
    _check_name(name)
    return _INFO[name]


def _check_name(name: str) -> None:
    if name not in _ENTRYPOINTS:
        import difflib
        close = difflib.get_close_matches(name, _ENTRYPOINTS.keys(), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} `hrmedseg models` lists all {len(_ENTRYPOINTS)} names."
        )


def create_model(name: str, pretrained: bool | str = False, num_classes: int = 1,
                 in_chans: int = 3, img_size: int | tuple[int, int] | None = None,
                 **overrides: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        pretrained: False, True (the variant's default shipped weight) or a weight tag.
        num_classes: output channels; 1 = binary (sigmoid), >1 = softmax over classes.
        in_chans: input channels.
        img_size: the training/inference size the model is built for (default: the variant's
            own, e.g. 1024 for hrmedseg, 512 for qtseg). Models of this package accept other
            sizes at run time (see each model's size rule).
        **overrides: any field of the model's config dataclass.
    """
    _check_name(name)
    if img_size is not None:
        overrides["img_size"] = img_size
    return _ENTRYPOINTS[name](pretrained=pretrained, num_classes=num_classes,
                              in_chans=in_chans, **overrides)
