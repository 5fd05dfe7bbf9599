"""``torch.compile`` for the package (training, Segmenter, ``predict``, ``serve``): the modes
accepted, which of them replay CUDA graphs (those reuse their output buffers at the next replay,
so each call must be marked a new step and outputs kept past it must be copied), the ``auto``
policy, recognising a failed compile so the caller can fall back to eager, and the on-disk
compile cache that makes the second run of a model skip most of the compile."""
from __future__ import annotations

import os
from pathlib import Path

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")
# train.compile / predict --compile / serve --compile: auto = compile where it is known to pay
# and to be exact (CUDA, a model whose compiled training passed the GPU parity check).
COMPILE_SETTINGS = ("auto", "true", "false")
# In a run folder: the compiled artefacts of the run's first epoch, so a resume on a machine
# with an empty compile cache skips most of the compile.
COMPILE_ARTIFACTS = "compile_cache.bin"
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "")


def uses_cudagraphs(mode: str | None) -> bool:
    """Whether ``torch.compile(..., mode=mode)`` captures CUDA graphs (None = not compiled)."""
    return mode in CUDAGRAPH_MODES


def normalize_switch(value: object) -> str:
    """``auto``, ``true`` or ``false`` (train.compile, model.grad_checkpointing) from a bool or
    a spelling of one (YAML, CLI, JSON); ValueError for anything else."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text in _TRUE:
        return "true"
    if text in _FALSE:
        return "false"
    raise ValueError(f"expected auto, true or false, got {value!r}")


def resolve_compile(setting: str, mode: str, device_type: str, verified: bool,
                    distributed: bool = False) -> tuple[str | None, str]:
    """The ``torch.compile`` mode to use (None: eager) and why, in a few words.

    ``setting`` is auto/true/false; ``mode`` a :data:`COMPILE_MODES` entry or ``auto``, which
    means CUDA graphs on CUDA (``reduce-overhead``: HRMedSeg's step is bound by kernel launches)
    and ``default`` elsewhere. ``auto`` compiles only on CUDA and only a model whose class says
    its compiled training matched eager (``compile_verified``), in one process: on the CPU
    compiling costs minutes and gains little, and an unchecked model, or DDP (compiled
    multi-GPU training has no parity record), stays eager unless asked.
    """
    setting = normalize_switch(setting)
    chosen = ("reduce-overhead" if device_type == "cuda" else "default") if mode == "auto" else mode
    if setting == "false":
        return None, "compile off"
    if setting == "true":
        return chosen, "compile on"
    if device_type != "cuda":
        return None, f"auto: not compiled on {device_type}"
    if not verified:
        return None, "auto: this model has no compiled-vs-eager parity record; train.compile=true compiles it"
    if distributed:
        return None, "auto: no parity record for compiled DDP training; train.compile=true compiles it"
    return chosen, "auto: CUDA and a parity-checked model"


def is_compile_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from compiling (Dynamo tracing, AOTAutograd, Inductor, Triton) rather
    than from the model or the data; such a failure is worth one retry without compiling."""
    try:
        from torch._dynamo.exc import TorchDynamoException
        from torch._inductor.exc import InductorError, LoweringException
    except ImportError:   # a torch without these modules cannot have raised them
        return False
    if isinstance(exc, (TorchDynamoException, InductorError, LoweringException)):
        return True
    # Backends raise their own types through torch's wrapper; the module names say where from.
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor", "torch._functorch", "triton"))


def compile_error_line(exc: BaseException) -> str:
    """The first line of a compile failure, short enough for one log line."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first[:200]}"


def default_compile_cache_dir() -> Path:
    """Where compiled kernels are kept across runs: ``$HRMEDSEG_CACHE_DIR/torch-compile``, else
    ``$XDG_CACHE_HOME/hrmedseg/torch-compile``, else ``~/.cache/hrmedseg/torch-compile``."""
    root = os.environ.get("HRMEDSEG_CACHE_DIR")
    if root:
        return Path(root) / "torch-compile"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hrmedseg" / "torch-compile"


def use_compile_cache(path: str | os.PathLike | None = None) -> Path:
    """Point Inductor's on-disk caches (FX graphs, AOTAutograd, Triton kernels) at a folder that
    outlives the process, so a second run of the same model and shapes reuses the first one's
    compiled code instead of /tmp's. A ``TORCHINDUCTOR_CACHE_DIR`` the user set wins. Must run
    before the first compile; returns the folder in effect."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ and path is None:
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    folder = Path(path) if path is not None else default_compile_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def load_compile_artifacts(path: str | os.PathLike) -> bool:
    """Seed this process's compile caches from a file :func:`save_compile_artifacts` wrote (a
    run folder resumed on a fresh machine then skips most of the compile). False when the file
    is missing, unreadable or from another torch; compiling then simply starts from scratch."""
    import torch
    p = Path(path)
    if not p.is_file() or not hasattr(torch.compiler, "load_cache_artifacts"):
        return False
    try:
        return torch.compiler.load_cache_artifacts(p.read_bytes()) is not None
    except Exception:   # a stale or foreign cache file must never stop a run
        return False


def save_compile_artifacts(path: str | os.PathLike) -> bool:
    """Write the compiled artefacts of this process (``torch.compiler.save_cache_artifacts``) to
    ``path`` atomically; False when there is nothing to save."""
    import torch

    from .atomic import atomic_write_bytes
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return False
    try:
        saved = torch.compiler.save_cache_artifacts()
    except Exception:
        return False
    if not saved or not saved[0]:
        return False
    atomic_write_bytes(path, saved[0])
    return True
