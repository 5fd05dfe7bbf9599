"""The ``torch.compile`` modes the package accepts (training config, Segmenter, ``predict``),
and which of them replay CUDA graphs: those reuse their output buffers at the next replay, so
each call must be marked a new step and outputs kept past it must be copied."""
from __future__ import annotations

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")


def uses_cudagraphs(mode: str | None) -> bool:
    """Whether ``torch.compile(..., mode=mode)`` captures CUDA graphs (None = not compiled)."""
    return mode in CUDAGRAPH_MODES
