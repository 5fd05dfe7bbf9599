"""The one rule for choosing a device, shared by every verb and library entry point.

Accepted: ``auto`` (cuda if available, else cpu; mps only when asked for), ``cpu``, ``cuda``,
``cuda:N`` and ``mps``. Anything else, or a device this machine lacks, is a :class:`DeviceError`
whose message is one line saying what to pass instead.
"""
from __future__ import annotations

import re

import torch

from .errors import HrmedsegError

DEVICE_CHOICES = "auto | cpu | cuda | cuda:N | mps"
DEVICE_HELP = "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps"

_SPEC = re.compile(r"^(auto|cpu|mps|cuda(?::(\d+))?)$")


class DeviceError(HrmedsegError, ValueError):
    """A ``--device`` value that is malformed or names hardware this machine does not have."""


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def parse_device(spec: str | torch.device | None) -> torch.device:
    """``spec`` → the :class:`torch.device` to run on, checked against this machine.

    ``None`` means ``auto``. Raises :class:`DeviceError` (one line) for an unknown spelling such
    as ``gpu`` or for cuda/mps on a machine without them.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = "auto" if spec is None else str(spec).strip().lower()
    m = _SPEC.match(text)
    if m is None:
        raise DeviceError(f"unknown device {spec!r}; use {DEVICE_CHOICES}")
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {text} asked for, but this machine has no CUDA device "
                              "(use --device cpu or auto)")
        if m.group(2) is not None and int(m.group(2)) >= torch.cuda.device_count():
            raise DeviceError(f"--device {text}: this machine has {torch.cuda.device_count()} "
                              f"CUDA device(s), numbered from 0")
    if text == "mps" and not _mps_available():
        raise DeviceError("--device mps asked for, but this machine has no MPS device "
                          "(use --device cpu or auto)")
    return torch.device(text)
