"""What the HRMedSeg speed scripts share: the model they time (plain path or speed switches,
full size or a tiny CPU version for --quick), the training loss, and a timestamped log line."""
from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

try:
    import hrmedseg  # noqa: F401 - is the package importable?
except ImportError:  # a checkout without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from hrmedseg.errors import first_line
from hrmedseg.models import create_model
from hrmedseg.profiling.speed import free_memory, pick_device, write_result
from hrmedseg.training.losses import CELoss, DiceLoss

T_START = time.time()

# HRMedSegConfig's speed switches (HRMedSeg.set_fast_paths). The scripts' reference is the plain
# path (all off), so that a switch is always measured against the same baseline.
ALL_SWITCHES = {"fast_norm": True, "fast_attention": True, "pool_channels_first": True}
PLAIN = {k: False for k in ALL_SWITCHES}
# A small HRMedSeg for --quick on the CPU: same blocks, a few thousand times less work.
TINY = dict(embed_dim=24, depth=2, num_heads=(6, 6, 6), neck_dim=32, decoder_heads=4,
            decoder_mlp_dim=32, drop_path_rate=0.0)


def log(tag: str, msg: str) -> None:
    print(f"[{tag} {time.time() - T_START:6.1f}s] {msg}", flush=True)


def script_device(name: str, quick: bool) -> torch.device:
    """The device a script runs on: ``--quick`` defaults to the CPU, with one thread there
    (shared small cores make multi-threaded tiny kernels erratic)."""
    dev = pick_device("cpu" if quick and name == "auto" else name)
    if quick and dev.type == "cpu":
        torch.set_num_threads(1)
    return dev


def run_parts(tag: str, result: dict[str, Any], output: str,
              parts: list[tuple[str, Callable[[], dict[str, Any]]]], dev: Any = None) -> None:
    """Runs each part into ``result[name]``; a failing part is recorded under ``errors`` and
    the others still run. The file is rewritten after every part (a run killed midway keeps
    what it measured); ``status`` says whether any part, or any row inside one, failed."""
    for name, fn in parts:
        log(tag, f"--- {name} ---")
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one part never loses the others
            result["errors"][name] = traceback.format_exc(limit=8)
            log(tag, f"{name}: ERROR {first_line(exc)}")
            if dev is not None:
                free_memory(dev)
        write_result(output, result)
    nested = [e for name, _ in parts for e in (result.get(name) or {}).get("errors", {})]
    result["status"] = "complete" if not result["errors"] and not nested else "complete_with_errors"
    write_result(output, result)
    log(tag, f"{result['status']}: {output}")


def build_hrmedseg(size: int, seed: int, tiny: bool = False, **switches: Any) -> torch.nn.Module:
    """HRMedSeg (one class) with the speed switches off unless ``switches`` turns them on."""
    torch.manual_seed(seed)
    return create_model("hrmedseg", num_classes=1, img_size=size, **(TINY if tiny else {}),
                        **{**PLAIN, **switches})


def make_loss():  # noqa: ANN201 - a loss callable
    """Dice + BCE as the trainer computes them (the package's DiceLoss and CELoss)."""
    dice, ce = DiceLoss(), CELoss()

    def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return dice(out, target) + ce(out, target)
    return loss


def parse_switches(spec: str) -> dict[str, Any]:
    """``plain|all`` then optional ``+ckpt`` / ``+ckptF`` (a fraction F of the encoder's layers
    checkpointed) and ``+mbB`` (torch.compile's activation memory budget B in (0, 1]) ->
    {"switches", "ckpt", "memory_budget"}; ValueError on anything else."""
    head, *mods = spec.split("+")
    if head not in ("plain", "all"):
        raise ValueError(f"bad switches {spec!r}: start with plain or all")
    out: dict[str, Any] = {"switches": dict(ALL_SWITCHES) if head == "all" else {},
                           "ckpt": 0.0, "memory_budget": None}
    for m in mods:
        if m.startswith("ckpt"):
            key, num = "ckpt", m[4:]
        elif m.startswith("mb"):
            key, num = "memory_budget", m[2:]
        else:
            raise ValueError(f"bad switches modifier {m!r} in {spec!r}")
        try:
            value = float(num) if num else (1.0 if key == "ckpt" else float("nan"))
        except ValueError:
            raise ValueError(f"bad switches modifier {m!r} in {spec!r}") from None
        if not 0.0 < value <= 1.0:
            raise ValueError(f"bad switches modifier {m!r} in {spec!r}")
        out[key] = value
    return out
