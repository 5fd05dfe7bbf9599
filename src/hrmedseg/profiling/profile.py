"""Profile a registered model: parameters, MACs, peak training memory, images/s.

One *training step* = forward, loss, backward and an Adam step, as the papers measure #Mem
(peak GPU memory of an fp32 training step divided by the batch size; SPEC "How the papers
measure"). Inference = forward under ``torch.inference_mode``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..provenance import source_commit
from .macs import count_macs
from .speed import autocast_or_none, sync

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ProfileResult:
    model: str
    size: tuple[int, int]
    batch: int
    device: str
    dtype: str
    params_total: int
    params_by_part: dict[str, int]
    macs_thop: int | None = None          # papers' convention (thop-style module hooks)
    macs_all_ops: int | None = None       # PyTorch FlopCounterMode, every matmul/conv op
    flops_all_ops: int | None = None      # = 2 × macs_all_ops
    peak_train_mem_bytes: int | None = None
    peak_train_mem_per_image_gb: float | None = None
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None
    grad_checkpointing: bool = False
    checkpoint_fraction: float = 0.0   # share of the encoder recomputed (0 = off)
    channels_last: bool = False
    notes: list[str] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
    }
    env["commit"] = source_commit()
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["cpu_threads"] = torch.get_num_threads()
    from .._version import __version__
    env["hrmedseg"] = __version__
    return env


def _simple_loss(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    # A loss of the training recipe's cost class (sigmoid/softmax + reduction over all
    # pixels); the exact loss barely moves memory compared with the activations.
    logits = logits.float()
    if num_classes == 1:
        target = torch.zeros_like(logits)
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    target = torch.zeros(logits.shape[0], *logits.shape[2:], dtype=torch.long, device=logits.device)
    return nn.functional.cross_entropy(logits, target)


def train_step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                  amp_dtype: torch.dtype | None, num_classes: int):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast_or_none(x.device, amp_dtype):
            out = model(x)
        loss = _simple_loss(out, num_classes)
        loss.backward()
        opt.step()
    return step


def _time(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def profile_model(model_name: str, size: int | tuple[int, int] = 1024, batch: int = 16,
                  device: str = "cpu", dtype: str = "fp32", warmup: int = 3, iters: int = 10,
                  macs: bool = True, memory: bool = True, speed: bool = True,
                  grad_checkpointing: bool = False, checkpoint_fraction: float = 1.0,
                  channels_last: bool = False, model: nn.Module | None = None,
                  **model_kwargs: Any) -> ProfileResult:
    """Measure one model. ``dtype`` is the autocast precision of the step ("fp32" = none);
    ``checkpoint_fraction`` < 1 recomputes that share of the encoder's blocks (HRMedSeg
    family) when ``grad_checkpointing`` is on."""
    from ..models._registry import create_model

    if isinstance(size, int):
        size = (size, size)
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available here")
    if model is None:
        model = create_model(model_name, img_size=size, **model_kwargs)
    # What is called: a model routed per modality (ESP-MedSAM) runs one modality's pass, whose
    # cost is that of any other; settings (checkpointing, layout) go to the model itself.
    call = model.for_modality(0) if hasattr(model, "for_modality") else model
    num_classes = int(getattr(getattr(model, "config", None), "num_classes", 1))
    in_chans = int(getattr(getattr(model, "config", None), "in_chans", 3))
    parts = model.parameter_groups() if hasattr(model, "parameter_groups") else {"model": model}
    res = ProfileResult(
        model=model_name, size=tuple(size), batch=batch, device=str(dev), dtype=dtype,
        params_total=sum(p.numel() for p in model.parameters()),
        params_by_part={k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()},
        grad_checkpointing=grad_checkpointing,
        checkpoint_fraction=checkpoint_fraction if grad_checkpointing else 0.0,
        channels_last=channels_last,
        env=environment(dev))
    if macs:
        x1 = torch.randn(1, in_chans, *size)
        mc = count_macs(call, x1)
        res.macs_thop, res.macs_all_ops, res.flops_all_ops = mc.module_macs, mc.ops_macs, mc.ops_flops
        res.notes.append("MACs of one forward at batch 1: macs_thop = papers' thop convention "
                         "(module hooks; transposed convs per output pixel); macs_all_ops = "
                         "torch FlopCounterMode over every matmul/conv op; FLOPs = 2 x MACs")
    if not (memory or speed):
        return res

    model = model.to(dev)
    if hasattr(model, "set_grad_checkpointing"):
        if grad_checkpointing and checkpoint_fraction != 1.0:
            model.set_grad_checkpointing(True, fraction=checkpoint_fraction)
        else:
            model.set_grad_checkpointing(grad_checkpointing)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=mf)
    x = torch.randn(batch, in_chans, *size, device=dev).to(memory_format=mf)
    amp = DTYPES[dtype] if dtype != "fp32" else None
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = train_step_fn(call, opt, x, amp, num_classes)
    if memory and dev.type == "cuda":
        step()  # allocate optimizer state first: the papers' figure includes it
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        step()
        sync(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        res.peak_train_mem_bytes = int(peak)
        res.peak_train_mem_per_image_gb = peak / batch / 1e9
        res.notes.append("peak_train_mem = torch.cuda.max_memory_allocated over one full step "
                         "(forward, loss, backward, Adam) incl. weights, grads, Adam state, input")
    elif memory:
        res.notes.append("peak training memory is measured on CUDA only")
    if speed:
        t = _time(step, dev, warmup, iters)
        res.train_images_per_s = batch / t
        model.eval()
        ctx = (torch.autocast(dev.type, dtype=amp) if amp is not None else contextlib.nullcontext())

        def infer() -> None:
            with torch.inference_mode(), ctx:
                call(x)
        res.infer_images_per_s = batch / _time(infer, dev, warmup, iters)
    return res


def format_table(results: list[ProfileResult]) -> str:
    """A Markdown table of results (one row each)."""
    head = ("| model | size | batch | dtype | params (M) | MACs thop (G) | MACs all ops (G) | "
            "peak train mem / img (GB) | train img/s | infer img/s |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for r in results:
        def f(v: float | None, fmt: str) -> str:
            return "—" if v is None else format(v, fmt)
        rows.append(
            f"| {r.model} | {r.size[0]}x{r.size[1]} | {r.batch} | {r.dtype} | {r.params_total / 1e6:.3f} | "
            f"{f(r.macs_thop and r.macs_thop / 1e9, '.2f')} | {f(r.macs_all_ops and r.macs_all_ops / 1e9, '.2f')} | "
            f"{f(r.peak_train_mem_per_image_gb, '.3f')} | {f(r.train_images_per_s, '.1f')} | "
            f"{f(r.infer_images_per_s, '.1f')} |")
    return "\n".join([head] + rows)
