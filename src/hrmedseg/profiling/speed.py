"""Timing and memory of training steps and inference: wall-clock medians between device
synchronisations, peak memory per image, device copy/matmul rates, the relative errors the
parity checks use, and the provenance header every benchmark result file starts with."""
from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import write_json_atomic
from ..provenance import source_commit

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sync(dev: torch.device) -> None:
    """Wait for the device (a no-op on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_calls(fn: Callable[[], Any], dev: torch.device, warmup: int, reps: int,
               inner: int = 1) -> list[float]:
    """Per-sample wall times in ms; each sample is ``inner`` calls between synchronisations."""
    for _ in range(warmup):
        fn()
    sync(dev)
    out = []
    for _ in range(reps):
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(dev)
        out.append((time.perf_counter() - t0) * 1e3 / inner)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero, inf when only b is)."""
    a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    nb = float(torch.linalg.vector_norm(b64))
    nd = float(torch.linalg.vector_norm(a64 - b64))
    if nb == 0.0:
        return 0.0 if nd == 0.0 else float("inf")
    return nd / nb


def cos_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 - cosine similarity of the flattened tensors, in float64."""
    a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    den = float(a64.norm() * b64.norm())
    return 0.0 if den == 0.0 else 1.0 - float((a64 @ b64) / den)


def peak_memory_per_image_gb(fn: Callable[[], Any], dev: torch.device, batch: int) -> float | None:
    """Peak ``torch.cuda.max_memory_allocated`` over one call of ``fn`` / ``batch``, in GB
    (None off CUDA). Under CUDA graphs the graph pool escapes this count: see measure_call."""
    if dev.type != "cuda":
        return None
    sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    sync(dev)
    return torch.cuda.max_memory_allocated(dev) / batch / 1e9


def free_memory(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def autocast_or_none(dev: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype``, or nothing for None (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def tf32_state() -> dict[str, Any]:
    return {"matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 and cuDNN autotuning off (fp32 parity at 1e-4 needs it), restored after."""
    old_mm, old_cudnn = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    old_bench = torch.backends.cudnn.benchmark
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old_mm)
        torch.backends.cudnn.allow_tf32 = old_cudnn
        torch.backends.cudnn.benchmark = old_bench


@contextlib.contextmanager
def activation_memory_budget(budget: float | None) -> Iterator[None]:
    """torch.compile's min-cut partitioner keeps at most this share of the activations it would
    save by default and recomputes the rest (torch._functorch.config.activation_memory_budget;
    None leaves its default of 1.0). Read when the first call compiles."""
    if budget is None:
        yield
        return
    import torch._functorch.config as functorch_config
    with functorch_config.patch(activation_memory_budget=budget):
        yield


def random_blob_mask(b: int, h: int, w: int, dev: torch.device, seed: int) -> torch.Tensor:
    """A (B, 1, H, W) uint8 mask of smooth random blobs (30-50 % foreground)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    low = torch.randn(b, 1, max(1, h // 64), max(1, w // 64), generator=g)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (up > 0.2).to(torch.uint8).to(dev)


def make_train_step(model: nn.Module | Callable, opt: torch.optim.Optimizer, x: torch.Tensor,
                    target: torch.Tensor, amp: torch.dtype | None, loss_fn: LossFn,
                    mark_cudagraph_step: bool = False) -> Callable[[], None]:
    """One training step as a closure: zero grads, forward under ``amp`` autocast, loss in
    float32, backward, optimizer step. ``mark_cudagraph_step`` starts each call as a new
    CUDA-graph step (needed when ``model`` is compiled with mode="reduce-overhead")."""
    dev = x.device

    def step() -> None:
        if mark_cudagraph_step:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with autocast_or_none(dev, amp):
            out = model(x)
        loss = loss_fn(out, target)
        loss.backward()
        opt.step()
    return step


def set_checkpointing(model: nn.Module, fraction: float) -> None:
    """Gradient checkpointing of ``fraction`` of the encoder's layers (0 = off, 1 = all)."""
    if fraction > 0:
        model.set_grad_checkpointing(True, fraction=fraction)
    else:
        model.set_grad_checkpointing(False)


def device_rates(dev: torch.device, copy_bytes: int = 1 << 30, mm_bf16: int = 8192,
                 mm_fp32: int = 4096, reps: int = 10) -> dict[str, Any]:
    """Measured device copy bandwidth (bytes read + written / time of one large copy) and
    matmul rates (2n³ / time) in bf16 and fp32 (fp32 at the current matmul precision)."""
    res: dict[str, Any] = {"tf32": tf32_state()}
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=dev).normal_()
    dst = torch.empty_like(src)
    t = time_calls(lambda: dst.copy_(src), dev, warmup=3, reps=reps, inner=5)
    res.update(copy_bytes=copy_bytes, copy_ms_median=median(t),
               copy_bandwidth_GBps=2 * copy_bytes / (median(t) / 1e3) / 1e9,
               copy_bandwidth_GBps_best=2 * copy_bytes / (min(t) / 1e3) / 1e9)
    del src, dst
    free_memory(dev)
    for key, dtype, n in (("bf16", torch.bfloat16, mm_bf16), ("fp32", torch.float32, mm_fp32)):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        t = time_calls(lambda: torch.mm(a, b), dev, warmup=3, reps=reps, inner=3)
        res[f"{key}_matmul_n"] = n
        res[f"{key}_matmul_ms_median"] = median(t)
        res[f"{key}_matmul_tflops"] = 2 * n ** 3 / (median(t) / 1e3) / 1e12
        del a, b
    free_memory(dev)
    return res


def measure_call(fn: Callable[[], None], dev: torch.device, batch: int, warmup: int, reps: int,
                 first_call_seconds: bool = False) -> dict[str, Any]:
    """Median ms per call, images/s and peak memory per image of ``fn`` (a training step or an
    inference batch). ``first_call_seconds`` times the first call alone (a compile). On CUDA
    also the reserved peaks: CUDA graphs replay into a private pool that
    ``max_memory_allocated`` misses, so for them the reserved peak is the bound to quote
    (``peak_reserved_steady_per_image_gb``: cache emptied after warm-up, one more call)."""
    row: dict[str, Any] = {"batch": batch}
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    if first_call_seconds:
        t0 = time.perf_counter()
        fn()
        sync(dev)
        row["first_call_seconds"] = round(time.perf_counter() - t0, 2)
    t = time_calls(fn, dev, warmup, reps)
    row["ms_median"] = median(t)
    row["ms_all"] = [round(v, 3) for v in t]
    row["images_per_s"] = batch / (median(t) / 1e3)
    if dev.type == "cuda":
        row["peak_reserved_whole_run_per_image_gb"] = (
            torch.cuda.max_memory_reserved(dev) / batch / 1e9)
        row["peak_mem_per_image_gb"] = peak_memory_per_image_gb(fn, dev, batch)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        sync(dev)
        row["peak_reserved_steady_per_image_gb"] = torch.cuda.max_memory_reserved(dev) / batch / 1e9
    else:
        row["peak_mem_per_image_gb"] = None
    return row


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 image with smooth structure and noise, built in bands (no big
    float temporaries, so 8000² fits in little host memory)."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    xs = np.arange(w, dtype=np.float32)[None, :]
    band = 512
    for y0 in range(0, h, band):
        yy = np.arange(y0, min(h, y0 + band), dtype=np.float32)[:, None]
        img[y0:y0 + band, :, 0] = (np.sin(yy / 97.0) * np.cos(xs / 131.0) * 90 + 128).astype(np.uint8)
        img[y0:y0 + band, :, 1] = ((yy + xs) % 256).astype(np.uint8)
        img[y0:y0 + band, :, 2] = rng.integers(0, 256, size=(yy.shape[0], w), dtype=np.uint8)
    return img


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = the current CUDA device if there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def device_info(dev: torch.device) -> dict[str, Any]:
    """Name and size of the device a result was measured on."""
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return {"type": "cuda", "name": torch.cuda.get_device_name(dev),
                "capability": list(torch.cuda.get_device_capability(dev)),
                "multiprocessors": props.multi_processor_count,
                "total_memory_gb": props.total_memory / 1e9}
    return {"type": "cpu", "name": f"CPU {platform.processor() or platform.machine()}",
            "threads": torch.get_num_threads()}


def result_header(script: str, dev: torch.device, argv: list[str] | None = None) -> dict[str, Any]:
    """The provenance every benchmark result file starts with: script, arguments, device,
    library versions, UTC date and source commit."""
    return {"script": script, "argv": list(sys.argv[1:] if argv is None else argv),
            "device": device_info(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "commit": source_commit()}


def write_result(path: str | Path, data: dict[str, Any]) -> Path:
    """The result as indented JSON, written atomically (a run killed midway keeps the last
    complete file)."""
    return write_json_atomic(path, data, default=str)
