"""HRMedSeg on one GPU: fast-path parity, a per-kernel profile of the bf16 training step with
the floors that bound it, inference speed, and tiled inference of an 8000x8000 image.

Built to run once, unattended, in about two minutes on an H100 (torch 2.11+cu130) with
PYTHONPATH pointing at this repo's ``src``; ``--quick`` runs every part at tiny sizes on the CPU
(used by tests/profiling/test_speed_gpu_script.py).

Parts (each in its own try/except; a failure is recorded under ``errors`` and the rest runs on;
the JSON is rewritten after every part, so a run killed midway keeps what it measured):

  rates     device copy bandwidth (one large device-to-device copy, bytes read + written / time)
            and matmul rates (bf16 8192^3, fp32 4096^3 with the default TF32 setting)
  parity    HRMedSeg fast paths vs the plain fp32 path: outputs and the concatenated parameter
            gradients, ||a-b|| / ||b||, fresh random inputs, TF32 off: bf16 autocast,
            channels_last, gradient checkpointing, SDPA default vs math backend, all fast paths
            together; plus the package's explicit fast/reference pairs at a small size (linear vs
            O(N^2) attention, RoPE vs complex multiplication, multiscale pooling vs a sum/count
            average pool). Tolerances: 1e-4 for fp32 paths, 2e-2 where bf16 is involved.
  profile   one bf16 training step (forward, Dice + BCE, backward, Adam) at batch 16, 1024^2:
            step time (median), peak memory per image, torch.profiler top kernels (count, total ms,
            share of the step, GPU-busy fraction), FLOPs (FlopCounterMode, and per dtype), saved
            activation bytes (saved_tensors_hooks, per module and dtype), and the floors
            flops / matmul rate and bytes / copy bandwidth against the measured step.
  infer     bf16 inference (batch 16, inference_mode) images/s, peak memory, FLOP/byte floors.
  variants  the bf16 step time, peak memory and inference time of each switchable fast path
            (fast_norm, channels_last, gradient checkpointing) beside the default, in one run.
  tiled     hrmedseg.inference.Segmenter(mode="tile") on a synthetic 8000x8000x3 uint8 image at
            tile 1024, bf16: wall time (and the part spent in the model), peak GPU memory, output
            shape and coverage.
  compile   (last, in a subprocess killed at the time budget) what --compile-runs lists, in
            order: compiled bf16 training steps (time, peak memory) and inference, each with the
            plain model or all speed switches and a torch.compile mode (reduce-overhead = CUDA
            graphs), and torch.compile vs eager parity in fp32. Skipped in --quick unless
            --compile.

Usage:
  python benchmarks/speed_gpu.py -o results/speed_gpu.json            # the GPU run
  python benchmarks/speed_gpu.py --quick -o /tmp/speed_quick.json     # tiny, CPU
"""
from __future__ import annotations

import time

T_START = time.time()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import datetime as _dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

try:
    import hrmedseg  # noqa: F401
except ImportError:  # run from a checkout without PYTHONPATH / install
    sys.path.insert(0, str(REPO / "src"))
    import hrmedseg  # noqa: F401
from hrmedseg.errors import first_line  # noqa: E402
from hrmedseg.provenance import source_commit  # noqa: E402

TARGETS = {"train_images_per_s_min": 350.0, "infer_images_per_s_min": 1500.0,
           "peak_train_mem_per_image_gb_max": 0.20}
TOL_FP32 = 1e-4
TOL_BF16 = 2e-2
# bf16 fast paths are judged against the plain path's own bf16 error, measured in the same run
# on the same inputs (the "yardstick": plain model, eager, bf16 autocast vs the fp32 reference):
# a fast path passes if its output and gradient errors vs fp32 are at most BF16_MULTIPLIER times
# the yardstick's. This is the rule of PyTorch's own compile accuracy checks
# (torch._dynamo.utils.same with an fp64 reference: error <= 3 x eager's error in bf16/fp16,
# 2 x in fp32), with the stricter factor. Why relative: the plain path itself is 2.7e-2 from
# fp32 on gradients (session 6, H200), so a fixed 2e-2 fails the reference and tells fast paths
# apart from nothing; the yardstick's own gradients are reported, its outputs held to TOL_BF16.
BF16_MULTIPLIER = 2.0
YARDSTICK = "bf16_autocast_vs_fp32"
# HRMedSegConfig's speed switches (HRMedSeg.set_fast_paths). build_model() turns them off: the
# plain path is this script's reference and "default" row (they became HRMedSeg's defaults
# after session 6 measured them here; before, both meant the same model).
ALL_SWITCHES = {"fast_norm": True, "fast_attention": True, "pool_channels_first": True}
PLAIN = {k: False for k in ALL_SWITCHES}


# ---------------------------------------------------------------------------------- helpers
LOG_TAG = "speed_gpu"


def log(msg: str) -> None:
    print(f"[{LOG_TAG} {time.time() - T_START:6.1f}s] {msg}", flush=True)


def elapsed() -> float:
    return time.time() - T_START


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def bench(fn: Callable[[], Any], dev: torch.device, warmup: int, reps: int, inner: int = 1
          ) -> list[float]:
    """Per-sample wall times in ms (each sample = ``inner`` calls between synchronizes)."""
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


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.detach().double().reshape(-1), b.detach().double().reshape(-1)
    nb = float(torch.linalg.vector_norm(b64))
    nd = float(torch.linalg.vector_norm(a64 - b64))
    if nb == 0.0:
        return 0.0 if nd == 0.0 else float("inf")
    return nd / nb


def peak_per_image_gb(fn: Callable[[], Any], dev: torch.device, batch: int) -> float:
    """Peak ``max_memory_allocated`` (GB) over one call of ``fn``, divided by ``batch``."""
    sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    sync(dev)
    return torch.cuda.max_memory_allocated(dev) / batch / 1e9


def free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()


def autocast(dev: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def tf32_state() -> dict[str, Any]:
    return {"matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


@contextlib.contextmanager
def strict_fp32():
    """TF32 off for matmuls and convolutions (parity at 1e-4 needs it), restored after."""
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


def build_model(size: int, seed: int, **kw: Any) -> nn.Module:
    """HRMedSeg with the speed switches off unless ``kw`` turns them on (the plain path)."""
    from hrmedseg.models import create_model
    torch.manual_seed(seed)
    return create_model("hrmedseg", num_classes=1, img_size=size, **{**PLAIN, **kw})


def make_loss() -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str]:
    """Dice + BCE (the package's DiceLoss and CELoss, which is BCE for one class)."""
    try:
        from hrmedseg.training.losses import CELoss, DiceLoss
        dice, ce = DiceLoss(), CELoss()

        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return dice(out, target) + ce(out, target)
        return loss, "hrmedseg DiceLoss (batch) + CELoss (BCE for 1 class), float32"
    except Exception:  # noqa: BLE001 - fall back to an inline equivalent
        def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            x, g = out.float(), target.float()
            p = torch.sigmoid(x)
            dice = 1 - (2 * (p * g).sum() + 1e-5) / (p.sum() + g.sum() + 1e-5)
            return dice + F.binary_cross_entropy_with_logits(x, g)
        return loss, "inline soft Dice + BCE (package losses not importable)"


def random_target(b: int, h: int, w: int, dev: torch.device, seed: int) -> torch.Tensor:
    """A (B, 1, H, W) uint8 mask of smooth random blobs (~30-50 % foreground)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    low = torch.randn(b, 1, max(1, h // 64), max(1, w // 64), generator=g)
    up = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (up > 0.2).to(torch.uint8).to(dev)


def train_step_fn(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                  target: torch.Tensor, amp: torch.dtype | None, loss_fn) -> Callable[[], None]:
    dev = x.device

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(dev, amp):
            out = model(x)
        loss = loss_fn(out, target)
        loss.backward()
        opt.step()
    return step


# -------------------------------------------------------------------------- op statistics
class OpStats:
    """A TorchDispatchMode counting, per aten op: FLOPs (torch.utils.flop_counter's formulas)
    by input dtype, and bytes of tensor inputs + outputs (views skipped) -- the traffic of an
    unfused eager execution in which every op reads its inputs and writes its outputs once."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten
        from torch.utils.flop_counter import flop_registry

        stats = self

        self.flops_by_dtype: dict[str, int] = defaultdict(int)
        self.flops_by_op: dict[str, int] = defaultdict(int)
        self.bytes_by_op: dict[str, int] = defaultdict(int)
        self.count_by_op: dict[str, int] = defaultdict(int)
        self.bytes = 0
        self.ops = 0
        self.failures = 0

        def tbytes(t: torch.Tensor) -> int:
            n = t.numel() * t.element_size()
            try:
                return min(n, t.untyped_storage().nbytes())
            except Exception:  # noqa: BLE001
                return n

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                kwargs = kwargs or {}
                # Composite ops (linear, conv2d, ... reach this mode undecomposed under
                # inference_mode): decompose them as FlopCounterMode does, so that their
                # matmuls/convolutions are counted and their bytes are those of the parts.
                if (func._overloadpacket not in flop_registry
                        and func is not torch.ops.prim.device.default):
                    try:
                        with self:
                            r = func.decompose(*args, **kwargs)
                    except Exception:  # noqa: BLE001 - run it whole instead
                        stats.failures += 1
                        r = NotImplemented
                    if r is not NotImplemented:
                        return r
                out = func(*args, **kwargs)
                try:
                    packet = func._overloadpacket
                    name = str(packet.__name__)
                    if packet in flop_registry:
                        fl = int(flop_registry[packet](*args, **kwargs, out_val=out))
                        tens = [a for a in tree_flatten((args, kwargs))[0]
                                if isinstance(a, torch.Tensor) and a.is_floating_point()]
                        dt = str(tens[0].dtype).replace("torch.", "") if tens else "?"
                        stats.flops_by_dtype[dt] += fl
                        stats.flops_by_op[name] += fl
                    rets = func._schema.returns
                    is_view = any(r.alias_info is not None and not r.alias_info.is_write
                                  for r in rets)
                    if not is_view:
                        b = sum(tbytes(a) for a in tree_flatten((args, kwargs))[0]
                                if isinstance(a, torch.Tensor))
                        b += sum(tbytes(o) for o in tree_flatten(out)[0]
                                 if isinstance(o, torch.Tensor))
                        stats.bytes += b
                        stats.bytes_by_op[name] += b
                    stats.ops += 1
                    stats.count_by_op[name] += 1
                except Exception:  # noqa: BLE001 - statistics must never break the step
                    stats.failures += 1
                return out

        self.mode = _Mode()

    def summary(self, top: int = 12) -> dict[str, Any]:
        return {
            "flops_total": int(sum(self.flops_by_dtype.values())),
            "flops_by_dtype": dict(self.flops_by_dtype),
            "flops_by_op": dict(sorted(self.flops_by_op.items(), key=lambda kv: -kv[1])),
            "unfused_bytes_total": int(self.bytes),
            "unfused_bytes_top_ops": dict(sorted(self.bytes_by_op.items(),
                                                 key=lambda kv: -kv[1])[:top]),
            "aten_ops": int(self.ops),
            "aten_op_counts_top": dict(sorted(self.count_by_op.items(),
                                              key=lambda kv: -kv[1])[:top]),
            "failures": int(self.failures),
        }


def flop_floor_ms(flops_by_dtype: dict[str, int], rates: dict[str, Any]) -> float | None:
    bf = rates.get("bf16_matmul_tflops")
    f32 = rates.get("fp32_matmul_tflops") or bf
    if not bf:
        return None
    ms = 0.0
    for dt, fl in flops_by_dtype.items():
        r = bf if dt in ("bfloat16", "float16") else f32
        ms += fl / (r * 1e12) * 1e3
    return ms


# ---------------------------------------------------------------------------------- parts
def part_rates(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"tf32": tf32_state()}
    # copy bandwidth
    nbytes = int(cfg["copy_bytes"])
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=dev).normal_()
    dst = torch.empty_like(src)
    t = bench(lambda: dst.copy_(src), dev, warmup=3, reps=cfg["reps"], inner=5)
    res["copy_bytes"] = nbytes
    res["copy_ms_median"] = med(t)
    res["copy_bandwidth_GBps"] = 2 * nbytes / (med(t) / 1e3) / 1e9
    res["copy_bandwidth_GBps_best"] = 2 * nbytes / (min(t) / 1e3) / 1e9
    del src, dst
    free(dev)
    # matmul rates
    for key, dtype, n in (("bf16", torch.bfloat16, cfg["mm_bf16"]),
                          ("fp32", torch.float32, cfg["mm_fp32"])):
        a = torch.randn(n, n, device=dev, dtype=dtype)
        b = torch.randn(n, n, device=dev, dtype=dtype)
        t = bench(lambda: torch.mm(a, b), dev, warmup=3, reps=cfg["reps"], inner=3)
        res[f"{key}_matmul_n"] = n
        res[f"{key}_matmul_ms_median"] = med(t)
        res[f"{key}_matmul_tflops"] = 2 * n ** 3 / (med(t) / 1e3) / 1e12
        del a, b
    res["notes"] = ["copy: bytes read + written / time of dst.copy_(src), median over samples",
                    "matmul: 2n^3 / median time, random normal data; fp32 uses the default "
                    "float32 matmul precision (recorded in tf32)"]
    free(dev)
    return res


def _perturb_affine(model: nn.Module, seed: int) -> None:
    """BN/LN weights near 1, biases near 0, randomised: MBConv's last BN starts at weight 0,
    which would leave every MBConv branch without gradient and out of the comparison."""
    from hrmedseg.layers import LayerNorm2d
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, LayerNorm2d)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _zero_drop_path(model: nn.Module) -> None:
    from hrmedseg.layers import DropPath
    for m in model.modules():
        if isinstance(m, DropPath):
            m.p = 0.0


def parity_base(cfg: dict[str, Any], dev: torch.device
                ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model (train mode, stochastic depth 0, randomised norms), a fresh random input, an
    output cotangent and a training target, all on ``dev``."""
    s, b = cfg["size"], cfg["parity_batch"]
    model = build_model(s, cfg["seed"])
    _perturb_affine(model, cfg["seed"] + 1)
    _zero_drop_path(model)
    model.train().to(dev)
    g = torch.Generator().manual_seed(cfg["seed"] + 2)
    x = torch.randn(b, 3, s, s, generator=g).to(dev)
    w = torch.randn(b, 1, s, s, generator=g).to(dev)
    target = random_target(b, s, s, dev, cfg["seed"] + 3)
    return model, x, w, target


def set_checkpointing(model: nn.Module, fraction: float) -> None:
    """Gradient checkpointing of ``fraction`` of the encoder's layers (0 = off, 1 = all)."""
    if fraction > 0:
        model.set_grad_checkpointing(True, fraction=fraction)
    else:
        model.set_grad_checkpointing(False)


def run_variant(base: nn.Module, x: torch.Tensor, w: torch.Tensor, target: torch.Tensor, *,
                amp: torch.dtype | None = None, channels_last: bool = False,
                ckpt: bool | float = False,
                compiled: bool = False, sdpa_math: bool = False,
                fast_paths: dict[str, bool] | None = None, compile_mode: str = "default"
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Output and concatenated parameter gradients of a copy of ``base`` under the loss
    mean(out * w) (a fixed random cotangent: gradients differ only by the model), and
    diagnostics: the neck's embedding, the encoder/neck/decoder parts of those gradients, and
    the gradients under the training loss (Dice + BCE against ``target``, a second pass)."""
    model = copy.deepcopy(base)
    set_checkpointing(model, float(ckpt))
    if fast_paths:
        model.set_fast_paths(**fast_paths)
    inp = x
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inp = x.contiguous(memory_format=torch.channels_last)
    diag: dict[str, torch.Tensor] = {}
    fn: Callable = torch.compile(model, mode=compile_mode) if compiled else model
    loss_fn, _ = make_loss()

    def once(kind: str) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        model.zero_grad(set_to_none=True)
        ctx = contextlib.nullcontext()
        if sdpa_math:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            ctx = sdpa_kernel([SDPBackend.MATH])
        hook = None
        saved = contextlib.nullcontext()
        if kind == "cot" and not compiled:
            hook = model.neck.register_forward_hook(
                lambda m, i, o: diag.__setitem__("embedding", o.detach().float()))
            seen: set[int] = set()
            diag["_saved_forward_bytes"] = 0

            def pack(t: torch.Tensor) -> torch.Tensor:
                try:
                    st = t.untyped_storage()
                    if st.data_ptr() not in seen:
                        seen.add(st.data_ptr())
                        diag["_saved_forward_bytes"] += st.nbytes()
                except Exception:  # noqa: BLE001
                    pass
                return t
            # tensors saved for backward outside checkpointed regions (checkpointing's own
            # hooks take those inside): shows that checkpointing is really on
            saved = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        try:
            with ctx:
                if compiled:
                    # CUDA graphs (reduce-overhead) reuse their output buffers on the next
                    # replay: mark each call a new step, and copy what is kept (below).
                    torch.compiler.cudagraph_mark_step_begin()
                with saved, autocast(x.device, amp):
                    out = fn(inp)
                loss = (out.float() * w).mean() if kind == "cot" else loss_fn(out, target)
                loss.backward()
        finally:
            if hook is not None:
                hook.remove()
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        for name, p in model.named_parameters():
            g = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float()
            parts[name.split(".")[0]].append(g.reshape(-1))
        return out.detach().float().clone(), parts

    out, parts = once("cot")
    grads = torch.cat([g for v in parts.values() for g in v])
    for k, v in parts.items():
        diag[f"grad_{k}"] = torch.cat(v)
    _, parts_t = once("train")
    diag["grad_train_loss"] = torch.cat([g for v in parts_t.values() for g in v])
    return out, grads, diag


def _cos_dist(a: torch.Tensor, b: torch.Tensor) -> float:
    a64, b64 = a.double().reshape(-1), b.double().reshape(-1)
    den = float(a64.norm() * b64.norm())
    return 0.0 if den == 0.0 else 1.0 - float((a64 @ b64) / den)


def _check(name: str, a: tuple, b: tuple, tol: float, note: str = "", t0: float | None = None,
           yardstick: dict[str, Any] | None = None, is_yardstick: bool = False
           ) -> dict[str, Any]:
    """rel(a, b) of outputs and gradients against ``tol``; with ``yardstick`` (a bf16 row of
    the plain path vs fp32) against BF16_MULTIPLIER times its errors instead (``tol`` is then
    reported as ``within_fixed_tol``); ``is_yardstick``: this row is that reference, held to
    ``tol`` on outputs only."""
    out_rel, grad_rel = rel(a[0], b[0]), rel(a[1], b[1])
    row: dict[str, Any] = {"out_rel": out_rel, "grad_rel": grad_rel, "tol": tol,
                           "pass": bool(out_rel <= tol and grad_rel <= tol),
                           "grad_one_minus_cos": _cos_dist(a[1], b[1])}
    if yardstick is not None:
        bound_out = BF16_MULTIPLIER * yardstick["out_rel"]
        bound_grad = BF16_MULTIPLIER * yardstick["grad_rel"]
        row.update(criterion=f"<= {BF16_MULTIPLIER:g} x the plain bf16 path's error",
                   bound_out=bound_out, bound_grad=bound_grad, within_fixed_tol=row["pass"],
                   **{"pass": bool(out_rel <= bound_out and grad_rel <= bound_grad)})
    elif is_yardstick:
        row.update(criterion="yardstick: outputs <= tol; gradients reported, they set the "
                             "bound for the bf16 fast paths",
                   within_fixed_tol=row["pass"], **{"pass": bool(out_rel <= tol)})
    if len(a) > 2 and len(b) > 2:  # where the difference arises
        row["diagnostics_rel"] = {k: rel(a[2][k], b[2][k]) for k in b[2]
                                  if k in a[2] and not k.startswith("_")}
        if "_saved_forward_bytes" in a[2] and "_saved_forward_bytes" in b[2]:
            row["saved_forward_bytes_a_b"] = [a[2]["_saved_forward_bytes"],
                                              b[2]["_saved_forward_bytes"]]
    if note:
        row["note"] = note
    if t0 is not None:
        row["seconds"] = round(time.time() - t0, 2)
    bound = (f"bound {row['bound_out']:.2e}/{row['bound_grad']:.2e}" if "bound_out" in row
             else f"tol {tol:g}" + (" (outputs; yardstick)" if is_yardstick else ""))
    log(f"parity {name}: out {out_rel:.2e} grad {grad_rel:.2e} {bound} "
        f"{'PASS' if row['pass'] else 'FAIL'}"
        + (" | " + ", ".join(f"{k} {v:.1e}" for k, v in row["diagnostics_rel"].items())
           if row.get("diagnostics_rel") else ""))
    return row


def part_parity(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"size": cfg["size"], "batch": cfg["parity_batch"], "checks": {},
                           "errors": {},
                           "method": "HRMedSeg in train mode (BN batch stats) with stochastic "
                                     "depth 0 and randomised BN/LN affine; x ~ N(0,1); loss = "
                                     "mean(out * w), w ~ N(0,1); rel = ||a-b||/||b|| of the "
                                     "output and of all parameter gradients concatenated (pass/"
                                     "fail on these two); TF32 off; each variant runs on a deep "
                                     "copy of one model. diagnostics_rel: the neck embedding, "
                                     "the gradient parts, and the gradients under the training "
                                     "loss (Dice + BCE vs a random blob mask, second pass); "
                                     "grad_one_minus_cos = 1 - cosine of the gradients"}
    checks = res["checks"]
    with strict_fp32():
        res["tf32"] = tf32_state()
        base, x, w, tgt = parity_base(cfg, dev)
        t0 = time.time()
        ref = run_variant(base, x, w, tgt)
        res["reference_seconds"] = round(time.time() - t0, 2)
        res["out_norm"] = float(ref[0].norm())
        res["grad_norm"] = float(ref[1].norm())
        res["params_with_zero_grad_fraction"] = float((ref[1] == 0).float().mean())
        variants = [
            (YARDSTICK, dict(amp=torch.bfloat16), TOL_BF16,
             "the plain path under bf16 autocast: the yardstick of the bf16 fast paths"),
            ("channels_last_vs_contiguous", dict(channels_last=True), TOL_FP32, ""),
            ("grad_checkpointing_vs_off", dict(ckpt=True), TOL_FP32, ""),
            ("sdpa_math_vs_default_fp32", dict(sdpa_math=True), TOL_FP32,
             "default = the SDPA kernel PyTorch picks (fused on CUDA); a = math backend"),
            ("all_fast_paths_vs_fp32", dict(amp=torch.bfloat16, channels_last=True, ckpt=True),
             TOL_BF16, "bf16 + channels_last + checkpointing together"),
            ("pool_channels_first_vs_off", dict(fast_paths={"pool_channels_first": True}),
             TOL_FP32, "δ on an NCHW copy (HRMedSegConfig.pool_channels_first)"),
            ("fast_norm_bf16_vs_fp32", dict(amp=torch.bfloat16, fast_paths={"fast_norm": True}),
             TOL_BF16, "bf16 autocast with LayerNorm in bf16 (HRMedSegConfig.fast_norm)"),
            ("fast_attention_bf16_vs_fp32", dict(amp=torch.bfloat16,
                                                 fast_paths={"fast_attention": True}),
             TOL_BF16, "bf16 autocast with DGLA's core in bf16 (HRMedSegConfig.fast_attention)"),
            ("all_switches_bf16_vs_fp32", dict(amp=torch.bfloat16, fast_paths=dict(ALL_SWITCHES)),
             TOL_BF16, "bf16 autocast with fast_norm, fast_attention, pool_channels_first"),
        ]
        for name, kw, tol, note in variants:
            t0 = time.time()
            try:
                cand = run_variant(base, x, w, tgt, **kw)
                bf16 = kw.get("amp") is torch.bfloat16
                checks[name] = _check(name, cand, ref, tol, note, t0,
                                      yardstick=checks.get(YARDSTICK) if bf16 else None,
                                      is_yardstick=name == YARDSTICK)
                del cand
            except Exception as exc:  # noqa: BLE001
                res["errors"][name] = traceback.format_exc(limit=6)
                log(f"parity {name}: ERROR {first_line(exc)}")
        # The GPU's own fp32 path against the CPU's: the fast-path checks above compare GPU runs
        # with each other, so a wrong CUDA kernel shared by both sides goes unseen (session 5:
        # the channels-last avg_pool2d backward, results/avgpool_nhwc_backward_h200/).
        # (On the CPU, --quick, this compares the CPU with itself: it only exercises the code.)
        name = f"{dev.type}_vs_cpu_fp32"
        t0 = time.time()
        try:
            c_out, c_grads, c_diag = run_variant(copy.deepcopy(base).cpu(), x.cpu(), w.cpu(),
                                                 tgt.cpu())
            cand = (c_out.to(dev), c_grads.to(dev),
                    {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in c_diag.items()})
            checks[name] = _check(name, ref, cand, TOL_FP32,
                                  f"a = the {dev.type} fp32 reference, b = the same model "
                                  "and inputs on the CPU", t0)
            del cand, c_out, c_grads, c_diag
        except Exception as exc:  # noqa: BLE001
            res["errors"][name] = traceback.format_exc(limit=6)
            log(f"parity {name}: ERROR {first_line(exc)}")
        # SDPA math vs default in bf16 (both bf16; the fused kernel is the one training uses)
        t0 = time.time()
        try:
            bf_def = run_variant(base, x, w, tgt, amp=torch.bfloat16)
            bf_math = run_variant(base, x, w, tgt, amp=torch.bfloat16, sdpa_math=True)
            checks["sdpa_default_vs_math_bf16"] = _check(
                "sdpa_default_vs_math_bf16", bf_def, bf_math, TOL_BF16,
                "both bf16 autocast; b = math backend", t0)
            del bf_def, bf_math
        except Exception as exc:  # noqa: BLE001
            res["errors"]["sdpa_default_vs_math_bf16"] = traceback.format_exc(limit=6)
            log(f"parity sdpa bf16: ERROR {first_line(exc)}")
        del ref, base, x, w, tgt
        free(dev)
        # A yardstick for the fixed bf16 tolerance: what bf16 autocast alone costs a common CNN
        # (smp's ResNet-34 U-Net) under the same method. Context, not a pass/fail check.
        try:
            res["context_bf16_vs_fp32"] = _bf16_error_of("unet_resnet34", dev, cfg)
            c = res["context_bf16_vs_fp32"]
            log(f"parity context unet_resnet34 bf16 vs fp32: out {c['out_rel']:.2e} "
                f"grad {c['grad_rel']:.2e}")
        except Exception as exc:  # noqa: BLE001 - smp is optional
            res["context_bf16_vs_fp32"] = {"error": first_line(exc)}
            log(f"parity context: not run ({first_line(exc)})")
        free(dev)
        # explicit fast/reference implementations of the package's layers
        for name, fn in (("linear_attention_vs_quadratic_reference", _parity_linear_attention),
                         ("rope_vs_complex_reference", _parity_rope),
                         ("multiscale_pooling_vs_sum_count_reference", _parity_pooling)):
            t0 = time.time()
            try:
                row = fn(dev, cfg)
                row["seconds"] = round(time.time() - t0, 2)
                checks[name] = row
                log(f"parity {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in row.items()
                                                   if k.endswith("_rel"))
                    + f" {'PASS' if row['pass'] else 'FAIL'}")
            except Exception as exc:  # noqa: BLE001
                res["errors"][name] = traceback.format_exc(limit=6)
                log(f"parity {name}: ERROR {first_line(exc)}")
    res["all_pass"] = bool(checks) and all(c.get("pass") for c in checks.values())
    return res


def _bf16_error_of(model_name: str, dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    """bf16 autocast vs fp32 for any registered model, with the method of the HRMedSeg checks
    (train mode, randomised norms, loss mean(out * w), TF32 off by the caller)."""
    from hrmedseg.models import create_model
    s, b = cfg["size"], cfg["parity_batch"]
    torch.manual_seed(cfg["seed"])
    model = create_model(model_name, num_classes=1)
    _perturb_affine(model, cfg["seed"] + 1)
    model.train().to(dev)
    g = torch.Generator().manual_seed(cfg["seed"] + 2)
    x = torch.randn(b, 3, s, s, generator=g).to(dev)
    w = torch.randn(b, 1, s, s, generator=g).to(dev)

    def run(amp: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        m = copy.deepcopy(model)
        with autocast(dev, amp):
            out = m(x)
        (out.float() * w).mean().backward()
        grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).float()
                           .reshape(-1) for p in m.parameters()])
        return out.detach().float(), grads
    ref, cand = run(None), run(torch.bfloat16)
    return {"model": model_name, "out_rel": rel(cand[0], ref[0]),
            "grad_rel": rel(cand[1], ref[1]), "grad_one_minus_cos": _cos_dist(cand[1], ref[1]),
            "note": "bf16 autocast vs fp32, same method as the HRMedSeg checks"}


def _parity_linear_attention(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    from hrmedseg.layers import (RotaryEmbedding2d, elu_feature_map, linear_attention,
                                 quadratic_attention_reference)
    g = torch.Generator().manual_seed(cfg["seed"] + 3)
    b, heads, side = 2, 6, cfg["ref_grid"]
    c = 96
    n, d = side * side, c // heads
    rope = RotaryEmbedding2d(c)

    def heads_(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, heads, d).transpose(1, 2)

    qr, kr, vr = (torch.randn(b, n, c, generator=g).to(dev) for _ in range(3))
    cot = torch.randn(b, heads, n, d, generator=g).to(dev)
    outs = {}
    for key, fn in (("linear", linear_attention), ("quadratic", quadratic_attention_reference)):
        leaves = [t.clone().requires_grad_(True) for t in (qr, kr, vr)]
        q, k = elu_feature_map(leaves[0]), elu_feature_map(leaves[1])
        qrot, krot = rope(q, side, side), rope(k, side, side)
        o = fn(heads_(q), heads_(k), heads_(leaves[2]), heads_(qrot), heads_(krot))
        (o * cot).sum().backward()
        outs[key] = (o.detach(), torch.cat([t.grad.reshape(-1) for t in leaves]))
    out_rel = rel(outs["linear"][0], outs["quadratic"][0])
    grad_rel = rel(outs["linear"][1], outs["quadratic"][1])
    return {"out_rel": out_rel, "grad_rel": grad_rel, "tol": TOL_FP32,
            "pass": bool(out_rel <= TOL_FP32 and grad_rel <= TOL_FP32),
            "shape": [b, heads, n, d],
            "note": "fp32; phi = ELU+1 and 2-D RoPE as in DGLA; grads w.r.t. the pre-feature "
                    "q, k, v"}


def _parity_rope(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    from hrmedseg.layers import RotaryEmbedding2d, rope_angles
    g = torch.Generator().manual_seed(cfg["seed"] + 4)
    h, w, c = cfg["ref_grid"], cfg["ref_grid"] + 3, 96
    x = torch.randn(2, h * w, c, generator=g, dtype=torch.float64).to(dev)
    fast = RotaryEmbedding2d(c)(x.float(), h, w).double()
    ang = rope_angles(h, w, c, device=dev)                       # (N, C/2) float64
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(ang), ang)
    ref = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    r = rel(fast, ref)
    return {"out_rel": r, "tol": TOL_FP32, "pass": bool(r <= TOL_FP32), "grid": [h, w],
            "note": "module in fp32 vs complex multiplication in float64 (non-square grid)"}


def _parity_pooling(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    from hrmedseg.layers import MultiscalePooling
    g = torch.Generator().manual_seed(cfg["seed"] + 5)
    x = torch.randn(2, 16, cfg["ref_grid"], cfg["ref_grid"] + 5, generator=g).to(dev)
    ks = (5, 9, 13)
    fast = MultiscalePooling(ks)(x)
    ones = torch.ones_like(x[:, :1])
    ref = x.double().clone()
    for k in ks:  # delta(h) = h + sum_k (avg_k(h) - h), avg over real pixels only
        s = F.avg_pool2d(x.double(), k, 1, k // 2, count_include_pad=True) * k * k
        cnt = F.avg_pool2d(ones.double(), k, 1, k // 2, count_include_pad=True) * k * k
        ref = ref + (s / cnt - x.double())
    r = rel(fast, ref)
    # The separable path (impl="separable") against the direct one: output and input gradient,
    # channels-last as in training.
    xd = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    xs = x.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(x.shape, generator=g).to(dev)
    od, os_ = MultiscalePooling(ks)(xd), MultiscalePooling(ks, impl="separable")(xs)
    (od * w).sum().backward()
    (os_ * w).sum().backward()
    r_sep, r_sep_grad = rel(os_.detach(), od.detach()), rel(xs.grad, xd.grad)
    ok = r <= TOL_FP32 and r_sep <= TOL_FP32 and r_sep_grad <= TOL_FP32
    return {"out_rel": r, "separable_out_rel": r_sep, "separable_grad_rel": r_sep_grad,
            "tol": TOL_FP32, "pass": bool(ok),
            "note": "fp32 module vs float64 window sum / window count; separable vs direct "
                    "(output and input gradient, channels-last)"}


# ---------------------------------------------------------------------------------- profile
_KERNEL_CATEGORIES = (  # first match wins; lower-case substrings of kernel names
    ("attention(sdpa)", ("flash", "fmha", "attention", "mem_eff", "cutlass_sm90_fmha", "sdpa")),
    ("copy/cast/transpose", ("nchwtonhwc", "nhwctonchw", "copy_kernel", "memcpy", "memset")),
    ("norm", ("layer_norm", "layernorm", "batch_norm", "batchnorm", "welford", "gammabeta")),
    ("conv", ("conv", "cudnn", "implicit_gemm", "implicit_convolve", "dgrad", "wgrad", "xmma_fprop",
              "fprop", "winograd")),
    ("gemm", ("gemm", "cutlass", "sm90_xmma", "cublas", "matmul", "nvjet", "_mma", "wgmma")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm", ("layer_norm", "layernorm", "batch_norm", "batchnorm", "welford", "cunn_layer_norm")),
    ("pool/upsample", ("pool", "upsample", "interp")),
    ("reduction", ("reduce", "sum_kernel", "mean", "norm_kernel")),
    ("copy/cast/transpose", ("copy", "memcpy", "memset", "transpose", "cat", "contiguous",
                             "fill")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "pointwise", "triton")),
)


_ANNOTATION_PREFIXES = ("Optimizer.", "ProfilerStep", "## ", "Torch-Compiled Region",
                        "CompiledFunction", "autograd::", "aten::")


def kernel_category(name: str) -> str:
    n = name.lower()
    for cat, keys in _KERNEL_CATEGORIES:
        if any(k in n for k in keys):
            return cat
    return "other"


def _device_events(prof) -> tuple[list[tuple[str, float, float]], str]:  # noqa: ANN001
    """(name, start_us, duration_us) of every device-side event (kernels, memcpy, memset)."""
    evs: list[tuple[str, float, float]] = []
    try:
        cuda_type = torch.autograd.DeviceType.CUDA
        for e in prof.events():
            if getattr(e, "device_type", None) != cuda_type:
                continue
            # record_function ranges (e.g. "Optimizer.step#Adam.step") are mirrored on the
            # device timeline as user annotations that span kernels: not kernels themselves
            if getattr(e, "is_user_annotation", False) or e.name.startswith(_ANNOTATION_PREFIXES):
                continue
            tr = e.time_range
            evs.append((e.name, float(tr.start), float(tr.end - tr.start)))
    except Exception:  # noqa: BLE001
        evs = []
    if evs:
        return evs, "profiler events (device_type CUDA)"
    # fallback: the chrome trace
    import tempfile
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    for e in trace.get("traceEvents", []) if isinstance(trace, dict) else trace:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            evs.append((e.get("name", "?"), float(e.get("ts", 0.0)), float(e.get("dur", 0.0))))
    return evs, "chrome trace (cat kernel/gpu_memcpy/gpu_memset)"


def _busy_us(evs: list[tuple[str, float, float]]) -> float:
    busy, end = 0.0, -math.inf
    for _, s, d in sorted(evs, key=lambda e: e[1]):
        e = s + d
        if s >= end:
            busy += d
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy


def kernel_table(prof, dev: torch.device, n_steps: int, step_ms: float, top: int  # noqa: ANN001
                 ) -> dict[str, Any]:
    out: dict[str, Any] = {"steps_profiled": n_steps}
    if dev.type == "cuda":
        evs, method = _device_events(prof)
        out["method"] = method
        agg: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for name, _, dur in evs:
            agg[name][0] += 1
            agg[name][1] += dur
        total_us = sum(v[1] for v in agg.values())
        busy = _busy_us(evs)
        out["kernels_per_step"] = len(evs) / n_steps
        out["kernel_time_per_step_ms"] = total_us / n_steps / 1e3
        out["gpu_busy_per_step_ms"] = busy / n_steps / 1e3
        out["gpu_busy_fraction_of_step"] = (busy / n_steps / 1e3) / step_ms if step_ms else None
        out["mean_kernel_us"] = total_us / max(1, len(evs))
        rows = sorted(agg.items(), key=lambda kv: -kv[1][1])
        out["top_kernels"] = [
            {"name": name[:160], "category": kernel_category(name), "count": int(c / n_steps)
             if c % n_steps == 0 else c / n_steps, "total_ms": us / n_steps / 1e3,
             "share_of_step": (us / n_steps / 1e3) / step_ms if step_ms else None}
            for name, (c, us) in rows[:top]]
        cats: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for name, (c, us) in rows:
            k = kernel_category(name)
            cats[k][0] += c
            cats[k][1] += us
        out["by_category"] = {k: {"count": v[0] / n_steps, "total_ms": v[1] / n_steps / 1e3,
                                  "share_of_step": (v[1] / n_steps / 1e3) / step_ms}
                              for k, v in sorted(cats.items(), key=lambda kv: -kv[1][1])}
        out["note"] = ("per step (totals / steps profiled); share_of_step = kernel time / "
                       "unprofiled median step time; gpu_busy = union of kernel intervals")
    else:
        out["method"] = "CPU ops, self CPU time (no device kernels on CPU)"
        ka = prof.key_averages()
        rows = sorted(ka, key=lambda e: -e.self_cpu_time_total)
        out["top_kernels"] = [
            {"name": e.key[:160], "category": "cpu_op", "count": e.count / n_steps,
             "total_ms": e.self_cpu_time_total / n_steps / 1e3,
             "share_of_step": (e.self_cpu_time_total / n_steps / 1e3) / step_ms if step_ms else None}
            for e in rows[:top]]
    return out


def aten_op_self_ms(prof, dev: torch.device, n_steps: int) -> dict[str, float]:  # noqa: ANN001
    """Self time per step of each aten op: on CUDA the time of the kernels it launched itself
    (its children's kernels count for the children), on the CPU its own CPU time."""
    out: dict[str, float] = {}
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        if dev.type == "cuda":
            us = getattr(e, "self_device_time_total", None)
            if us is None:
                us = getattr(e, "self_cuda_time_total", 0.0)
        else:
            us = e.self_cpu_time_total
        if us:
            out[e.key[len("aten::"):]] = float(us) / n_steps / 1e3
    return out


def op_bandwidth_table(op_ms: dict[str, float], bytes_by_op: dict[str, int],
                       count_by_op: dict[str, int], flops_by_op: dict[str, int],
                       copy_gbps: float | None, dev: torch.device, top: int) -> dict[str, Any]:
    """Per aten op: the bytes its calls move in one step (inputs read + outputs written, as
    eager runs them) against the time its own kernels take: achieved GB/s and the fraction of
    the measured copy bandwidth (and TFLOP/s for the ops FlopCounter counts). Far below 1 with
    little arithmetic = the op is bound by kernel launches, occupancy or access pattern, not
    by memory bandwidth."""
    rows = []
    for name, ms in op_ms.items():
        nb = bytes_by_op.get(name)
        if not nb or ms <= 0:
            continue
        gbps = nb / (ms / 1e3) / 1e9
        fl = flops_by_op.get(name, 0)
        rows.append({"op": name, "calls": count_by_op.get(name), "ms": round(ms, 4),
                     "bytes": int(nb), "achieved_GBps": round(gbps, 1),
                     "fraction_of_copy_bw": round(gbps / copy_gbps, 4) if copy_gbps else None,
                     "achieved_TFLOPs": round(fl / (ms / 1e3) / 1e12, 2) if fl else None})
    rows.sort(key=lambda r: -r["ms"])
    timed = sum(op_ms.values())
    matched = sum(r["ms"] for r in rows)
    return {"time": "self device time of the op's kernels" if dev.type == "cuda" else
                    "self CPU time (no device kernels on the CPU)",
            "bytes": "inputs + outputs of every call in one step (OpStats, views free)",
            "ops_timed_ms": round(timed, 3), "ops_with_bytes_ms": round(matched, 3),
            "copy_bandwidth_GBps": copy_gbps, "rows": rows[:top]}


def saved_tensor_stats(model: nn.Module, step_forward: Callable[[], torch.Tensor],
                       x: torch.Tensor) -> dict[str, Any]:
    """Bytes of tensors saved for backward in one forward (+ loss), deduplicated by storage,
    attributed to the innermost module running when they were saved."""
    stack: list[str] = []
    hooks = []
    depth_names = {}
    for name, m in model.named_modules():
        parts = name.split(".") if name else []
        depth_names[id(m)] = ".".join(parts[:3]) if parts else "(model)"

        def pre(mod, inp, _n=depth_names[id(m)]):  # noqa: ANN001
            stack.append(_n)

        def post(mod, inp, out):  # noqa: ANN001
            if stack:
                stack.pop()
        hooks.append(m.register_forward_pre_hook(pre))
        hooks.append(m.register_forward_hook(post))
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    input_ptr = x.untyped_storage().data_ptr()
    seen: set[int] = set()
    st = {"raw_bytes": 0, "unique_bytes": 0, "count": 0, "unique_count": 0}
    by_module: dict[str, int] = defaultdict(int)
    by_dtype: dict[str, int] = defaultdict(int)
    by_kind: dict[str, int] = defaultdict(int)

    def pack(t: torch.Tensor):  # noqa: ANN202
        try:
            nb = t.numel() * t.element_size()
            st["raw_bytes"] += nb
            st["count"] += 1
            s = t.untyped_storage()
            ptr = s.data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                sb = s.nbytes()
                st["unique_bytes"] += sb
                st["unique_count"] += 1
                kind = ("parameter" if ptr in param_ptrs else "input" if ptr == input_ptr
                        else "activation")
                by_kind[kind] += sb
                by_dtype[str(t.dtype).replace("torch.", "")] += sb
                by_module[stack[-1] if stack else "(outside model: loss)"] += sb
        except Exception:  # noqa: BLE001
            pass
        return t

    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = step_forward()
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    st["by_kind"] = dict(by_kind)
    st["by_dtype"] = dict(by_dtype)
    st["by_module"] = dict(sorted(by_module.items(), key=lambda kv: -kv[1]))
    return st


def part_profile(dev: torch.device, cfg: dict[str, Any], rates: dict[str, Any]) -> dict[str, Any]:
    s, b = cfg["size"], cfg["batch"]
    amp = torch.bfloat16
    res: dict[str, Any] = {"size": s, "batch": b, "dtype": "bf16 autocast", "errors": {}}
    torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
    res["tf32"] = tf32_state()
    model = build_model(s, cfg["seed"]).to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    res["params"] = n_params
    loss_fn, loss_desc = make_loss()
    res["loss"] = loss_desc
    g = torch.Generator().manual_seed(cfg["seed"] + 10)
    x = torch.randn(b, 3, s, s, generator=g).to(dev)
    target = random_target(b, s, s, dev, cfg["seed"] + 11)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    res["optimizer"] = "torch.optim.Adam(lr=1e-4), default implementation (foreach on CUDA)"
    step = train_step_fn(model, opt, x, target, amp, loss_fn)

    # -- timing ----------------------------------------------------------------------------
    log(f"profile: timing the training step (batch {b}, {s}x{s}, bf16)")
    t = bench(step, dev, cfg["warmup"], cfg["reps"])
    step_ms = med(t)
    res["step_ms_median"] = step_ms
    res["step_ms_all"] = [round(v, 3) for v in t]
    res["train_images_per_s"] = b / (step_ms / 1e3)
    log(f"profile: step {step_ms:.2f} ms -> {res['train_images_per_s']:.1f} img/s")

    # -- memory ----------------------------------------------------------------------------
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base_alloc = torch.cuda.memory_allocated(dev)
        step()
        sync(dev)
        peak = torch.cuda.max_memory_allocated(dev)
        res["peak_train_mem_bytes"] = int(peak)
        res["peak_train_mem_per_image_gb"] = peak / b / 1e9
        res["resident_before_step_bytes"] = int(base_alloc)
        res["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(dev))
        res["memory_note"] = ("torch.cuda.max_memory_allocated over one step after warm-up "
                              "(weights, grads, Adam state, input, target included) / batch; "
                              "cudnn.benchmark as in tf32.cudnn_benchmark")
        if torch.backends.cudnn.benchmark:  # the same without autotuned cudnn algorithms
            try:
                torch.backends.cudnn.benchmark = False
                step()
                sync(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                step()
                sync(dev)
                res["peak_train_mem_per_image_gb_cudnn_benchmark_off"] = (
                    torch.cuda.max_memory_allocated(dev) / b / 1e9)
            finally:
                torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
        log(f"profile: peak {peak / 1e9:.2f} GB = {res['peak_train_mem_per_image_gb']:.3f} GB/img")
    else:
        res["peak_train_mem_per_image_gb"] = None
        res["memory_note"] = "peak memory is measured on CUDA only"

    # -- per-kernel profile -----------------------------------------------------------------
    op_ms: dict[str, float] = {}
    try:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(ProfilerActivity.CUDA)
        n_prof = cfg["profile_steps"]
        log(f"profile: torch.profiler over {n_prof} step(s)")
        sync(dev)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for _ in range(n_prof):
                step()
            sync(dev)
        res["profiled_wall_ms_per_step"] = (time.perf_counter() - t0) * 1e3 / n_prof
        res["kernels"] = kernel_table(prof, dev, n_prof, step_ms, cfg["top"])
        op_ms = aten_op_self_ms(prof, dev, n_prof)
        kt = res["kernels"]
        log(f"profile: top {len(kt['top_kernels'])} by total time per step ({kt['method']}):")
        for row in kt["top_kernels"]:
            share = row.get("share_of_step")
            print(f"    {row['total_ms']:9.3f} ms {100 * share if share else 0:5.1f}% "
                  f"x{row['count']:<7g} {row['category']:20s} {row['name'][:110]}", flush=True)
        if cfg.get("trace_dir"):
            Path(cfg["trace_dir"]).mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(Path(cfg["trace_dir"]) / "train_step_trace.json"))
        del prof
    except Exception as exc:  # noqa: BLE001
        res["errors"]["profiler"] = traceback.format_exc(limit=6)
        log(f"profile: profiler ERROR {first_line(exc)}")

    # -- FLOPs and op bytes -----------------------------------------------------------------
    log("profile: FLOPs and op bytes of one step")
    try:
        from torch.utils.flop_counter import FlopCounterMode
        ops = OpStats()
        with FlopCounterMode(display=False) as fc:
            with ops.mode:
                step()
        sync(dev)
        res["flops_step_flopcounter"] = int(fc.get_total_flops())
        res["ops_step"] = ops.summary()
        if op_ms:
            res["op_bandwidth"] = op_bandwidth_table(op_ms, ops.bytes_by_op, ops.count_by_op,
                                                     ops.flops_by_op,
                                                     rates.get("copy_bandwidth_GBps"), dev,
                                                     cfg["top"])
            log("profile: per-op self time vs bytes moved (top by time):")
            for r in res["op_bandwidth"]["rows"][:10]:
                print(f"    {r['ms']:9.3f} ms x{r['calls'] or 0:<5} {r['achieved_GBps']:9.1f} GB/s "
                      f"({100 * (r['fraction_of_copy_bw'] or 0):5.1f}% of copy) {r['op']}", flush=True)
    except Exception as exc:  # noqa: BLE001
        res["errors"]["flops"] = traceback.format_exc(limit=6)
        log(f"profile: flop count ERROR {first_line(exc)}")

    # -- saved activations --------------------------------------------------------------------
    log("profile: tensors saved for backward")
    try:
        opt.zero_grad(set_to_none=True)

        def fwd() -> torch.Tensor:
            with autocast(dev, amp):
                out = model(x)
            return loss_fn(out, target)
        res["saved_tensors"] = saved_tensor_stats(model, fwd, x)
        res["saved_tensors"]["unique_bytes_per_image"] = res["saved_tensors"]["unique_bytes"] / b
        opt.zero_grad(set_to_none=True)
    except Exception as exc:  # noqa: BLE001
        res["errors"]["saved_tensors"] = traceback.format_exc(limit=6)
        log(f"profile: saved-tensor count ERROR {first_line(exc)}")

    # -- floors -------------------------------------------------------------------------------
    fl: dict[str, Any] = {}
    bw = rates.get("copy_bandwidth_GBps")
    if "saved_tensors" in res and bw:
        saved = res["saved_tensors"]["unique_bytes"]
        # param fp32 read in forward (4) + grad written (4) + Adam reads p, g, m, v (16) and
        # writes p, m, v (12)
        opt_bytes = 36 * n_params
        io_bytes = x.numel() * x.element_size() + target.numel() * target.element_size()
        floor_bytes = 2 * saved + opt_bytes + io_bytes
        fl["bytes_floor"] = int(floor_bytes)
        fl["bytes_floor_formula"] = ("2 x saved-for-backward bytes (unique storages; written "
                                     "once in forward, read once in backward) + 36 B/param "
                                     "(param read, grad write, Adam p/g/m/v read, p/m/v write) "
                                     "+ input and target read once")
        fl["bytes_floor_ms"] = floor_bytes / (bw * 1e9) * 1e3
    if "ops_step" in res and bw:
        ub = res["ops_step"]["unfused_bytes_total"]
        fl["unfused_op_bytes_ms"] = ub / (bw * 1e9) * 1e3
        fl["unfused_op_bytes_note"] = ("every aten op reads its inputs and writes its outputs "
                                       "once (views free): the traffic of eager execution "
                                       "without caches, / copy bandwidth")
        ff = flop_floor_ms(res["ops_step"]["flops_by_dtype"], rates)
        if ff is not None:
            fl["flop_floor_ms"] = ff
            fl["flop_floor_note"] = ("FLOPs by input dtype / measured matmul rate (bf16/fp16 at "
                                     "the bf16 rate, fp32 at the fp32 rate)")
    if "kernels" in res and dev.type == "cuda":
        fl["kernels_per_step"] = res["kernels"].get("kernels_per_step")
        fl["gpu_busy_fraction_of_step"] = res["kernels"].get("gpu_busy_fraction_of_step")
    for k in ("bytes_floor_ms", "unfused_op_bytes_ms", "flop_floor_ms"):
        if fl.get(k):
            fl[k.replace("_ms", "_x")] = step_ms / fl[k]   # measured / floor
    fl["target_step_ms_for_350_img_s"] = b / TARGETS["train_images_per_s_min"] * 1e3
    res["floors"] = fl

    del opt, step, model, x, target
    free(dev)
    return res


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "fast_norm": {"model": {"fast_norm": True}},
    "fast_attention": {"model": {"fast_attention": True}},
    "pool_channels_first": {"model": {"pool_channels_first": True}},
    "pool_direct": {"model": {"pool_impl": "direct"}},
    "all_switches": {"model": dict(ALL_SWITCHES)},
    "channels_last": {"channels_last": True},
    "grad_checkpointing": {"ckpt": 1.0},
    "all_switches+grad_checkpointing": {"model": dict(ALL_SWITCHES), "ckpt": 1.0},
    "all_switches+grad_checkpointing_half": {"model": dict(ALL_SWITCHES), "ckpt": 0.5},
}


def part_variants(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    """The bf16 training step and inference of each switchable fast path, in one run: step
    time, peak training memory per image, inference batch time (same method as profile/infer,
    without the profiler)."""
    s, b = cfg["size"], cfg["batch"]
    res: dict[str, Any] = {"size": s, "batch": b, "dtype": "bf16 autocast", "rows": {},
                           "errors": {}}
    torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
    loss_fn, _ = make_loss()
    g = torch.Generator().manual_seed(cfg["seed"] + 10)
    x0 = torch.randn(b, 3, s, s, generator=g).to(dev)
    target = random_target(b, s, s, dev, cfg["seed"] + 11)
    for name, spec in VARIANTS.items():
        try:
            model = build_model(s, cfg["seed"], **spec.get("model", {})).to(dev).train()
            set_checkpointing(model, float(spec.get("ckpt", 0.0)))
            x = x0
            if spec.get("channels_last"):
                model = model.to(memory_format=torch.channels_last)
                x = x0.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            step = train_step_fn(model, opt, x, target, torch.bfloat16, loss_fn)
            t = bench(step, dev, cfg["warmup"], cfg["reps"])
            row: dict[str, Any] = {"step_ms_median": med(t), "train_images_per_s": b / (med(t) / 1e3)}
            if dev.type == "cuda":
                row["peak_train_mem_per_image_gb"] = peak_per_image_gb(step, dev, b)
            del opt, step
            model.eval()

            def infer() -> None:
                with torch.inference_mode(), autocast(dev, torch.bfloat16):
                    model(x)
            ti = bench(infer, dev, cfg["warmup"], cfg["reps"])
            row["infer_batch_ms_median"] = med(ti)
            row["infer_images_per_s"] = b / (med(ti) / 1e3)
            res["rows"][name] = row
            log(f"variants {name}: step {row['step_ms_median']:.2f} ms = "
                f"{row['train_images_per_s']:.1f} img/s, "
                f"{_f(row.get('peak_train_mem_per_image_gb'), '.3f')} GB/img, infer "
                f"{row['infer_images_per_s']:.1f} img/s")
            del model
        except Exception as exc:  # noqa: BLE001
            res["errors"][name] = traceback.format_exc(limit=6)
            log(f"variants {name}: ERROR {first_line(exc)}")
        free(dev)
    res["note"] = ("each row: a fresh model with that switch (HRMedSegConfig field, "
                   "set_grad_checkpointing, or channels_last model and input), Adam, bf16 "
                   "autocast; medians over the timed repetitions")
    return res


def part_infer(dev: torch.device, cfg: dict[str, Any], rates: dict[str, Any]) -> dict[str, Any]:
    s, b = cfg["size"], cfg["infer_batch"]
    res: dict[str, Any] = {"size": s, "batch": b, "dtype": "bf16 autocast", "errors": {}}
    torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
    model = build_model(s, cfg["seed"]).to(dev).eval()
    x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(cfg["seed"] + 20)).to(dev)

    def infer() -> None:
        with torch.inference_mode(), autocast(dev, torch.bfloat16):
            model(x)
    t = bench(infer, dev, cfg["warmup"], cfg["reps"])
    res["batch_ms_median"] = med(t)
    res["batch_ms_all"] = [round(v, 3) for v in t]
    res["infer_images_per_s"] = b / (med(t) / 1e3)
    log(f"infer: batch {b} {med(t):.2f} ms -> {res['infer_images_per_s']:.1f} img/s")
    if dev.type == "cuda":
        res["peak_infer_mem_per_image_gb"] = peak_per_image_gb(infer, dev, b)
    try:
        ops = OpStats()
        with torch.inference_mode(), autocast(dev, torch.bfloat16), ops.mode:
            model(x)
        sync(dev)
        res["ops_forward"] = ops.summary()
        bw = rates.get("copy_bandwidth_GBps")
        if bw:
            res["unfused_op_bytes_ms"] = ops.bytes / (bw * 1e9) * 1e3
        ff = flop_floor_ms(ops.flops_by_dtype, rates)
        if ff is not None:
            res["flop_floor_ms"] = ff
        res["io_floor_ms"] = ((x.numel() * 4 + b * s * s * 2) / (bw * 1e9) * 1e3) if bw else None
        res["io_floor_note"] = "fp32 input read + bf16 logits written once, / copy bandwidth"
    except Exception as exc:  # noqa: BLE001
        res["errors"]["ops"] = traceback.format_exc(limit=6)
        log(f"infer: op count ERROR {first_line(exc)}")
    res["target_batch_ms_for_1500_img_s"] = b / TARGETS["infer_images_per_s_min"] * 1e3
    del model, x
    free(dev)
    return res


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """An (H, W, 3) uint8 image with smooth structure and noise, built without big temporaries."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), dtype=np.uint8)
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    band = 512
    for y0 in range(0, h, band):
        yy = ys[y0:y0 + band]
        blob = (np.sin(yy / 97.0) * np.cos(xs / 131.0) * 90 + 128)
        img[y0:y0 + band, :, 0] = blob.astype(np.uint8)
        img[y0:y0 + band, :, 1] = ((yy + xs) % 256).astype(np.uint8)
        img[y0:y0 + band, :, 2] = rng.integers(0, 256, size=(yy.shape[0], w), dtype=np.uint8)
    return img


def part_tiled(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    from hrmedseg.inference.segmenter import Segmenter
    from hrmedseg.inference.tiling import tile_starts

    h, w = cfg["tiled_hw"]
    tile, tb, ov = cfg["tile"], cfg["tile_batch"], cfg["overlap"]
    res: dict[str, Any] = {"image_hw": [h, w], "tile": tile, "tile_batch": tb, "overlap": ov,
                           "precision": cfg["tiled_precision"], "device": str(dev)}
    torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
    t0 = time.time()
    img = synthetic_image(h, w, cfg["seed"] + 30)
    res["image_build_s"] = round(time.time() - t0, 2)
    log(f"tiled: image {img.shape} {img.dtype} built in {res['image_build_s']} s")
    model = build_model(tile, cfg["seed"])
    seg = Segmenter(model, device=str(dev), size=tile, precision=cfg["tiled_precision"], mode="tile",
                    overlap=ov, tile_batch=tb)
    rows, cols = tile_starts(h, tile, ov), tile_starts(w, tile, ov)
    n_tiles = len(rows) * len(cols)
    res["tiles"] = n_tiles
    res["grid"] = [len(rows), len(cols)]
    # warm up exactly the batch shapes of the run (cudnn autotune, lazy init) outside the timing
    shapes = {min(tb, n_tiles)} | ({n_tiles % tb} if n_tiles % tb else set())
    for nb in sorted(shapes):
        seg.logits(torch.randn(nb, 3, tile, tile))
    sync(dev)
    model_time = [0.0]
    inner = seg.logits

    def timed_logits(batch: torch.Tensor) -> torch.Tensor:
        sync(dev)
        t1 = time.perf_counter()
        out = inner(batch)
        sync(dev)
        model_time[0] += time.perf_counter() - t1
        return out
    seg.logits = timed_logits  # instance attribute: _predict_tiled calls self.logits
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    t0 = time.perf_counter()
    pred = seg.predict(img)
    wall = time.perf_counter() - t0
    res["wall_s"] = wall
    res["model_s"] = model_time[0]
    res["host_s"] = wall - model_time[0]
    res["megapixels_per_s"] = h * w / 1e6 / wall
    if dev.type == "cuda":
        res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(dev) / 1e9
        res["resident_before_gb"] = before / 1e9
        res["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved(dev) / 1e9
    try:
        import resource
        res["host_maxrss_gb_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    except Exception:  # noqa: BLE001
        pass
    probs, labels = pred.probabilities, pred.labels
    res["labels_shape"] = list(labels.shape)
    res["probabilities_shape"] = list(probs.shape)
    res["probabilities_dtype"] = str(probs.dtype)
    cover = np.zeros(h, bool)
    for y in rows:
        cover[y:y + tile] = True
    cover_w = np.zeros(w, bool)
    for x in cols:
        cover_w[x:x + tile] = True
    finite = bool(np.isfinite(probs).all())
    in_range = bool(probs.min() >= 0.0 and probs.max() <= 1.0 + 1e-6)
    res["checks"] = {
        "labels_shape_is_image": list(labels.shape) == [h, w],
        "probabilities_shape_is_image": list(probs.shape) == [1, h, w],
        "tiles_cover_every_row_and_column": bool(cover.all() and cover_w.all()),
        "probabilities_finite": finite,
        "probabilities_in_0_1": in_range,
    }
    res["foreground_fraction"] = float(labels.mean())
    res["covers_whole_image"] = all(res["checks"].values())
    assert res["covers_whole_image"], f"tiled output does not cover the image: {res['checks']}"
    log(f"tiled: {n_tiles} tiles in {wall:.2f} s (model {model_time[0]:.2f} s), "
        f"peak GPU {res.get('peak_gpu_mem_gb', float('nan')):.2f} GB, "
        f"output {tuple(probs.shape)} covered")
    del pred, probs, labels, img, seg, model
    free(dev)
    return res


# ---------------------------------------------------------------------------------- compile
def _die_with_parent(parent_pid: int | None) -> None:
    """Linux: SIGKILL this process when the parent dies (no orphan left holding the GPU)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: best effort only
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(3)  # the parent died before the prctl took effect


COMPILE_RUNS_DEFAULT = ("train:all:default,parity_bf16:all:reduce-overhead,"
                        "train:all:reduce-overhead,infer:all:reduce-overhead,parity")


_SWITCHES_HELP = ("switches plain|all, then optionally +ckpt (gradient checkpointing), "
                  "+ckptF (a fraction F of the encoder's layers, e.g. +ckpt0.5) and +mbB "
                  "(torch.compile's activation memory budget B in (0, 1), e.g. +mb0.5)")


def parse_compile_runs(spec: str) -> list[tuple[str, str, str]]:
    """``kind:switches:mode`` items and ``parity``, comma-separated, in the order they are to
    run. kind: train|infer in bf16 autocast, train_fp32|infer_fp32 without, parity_bf16 (the
    compiled bf16 model against eager bf16 and eager fp32); switches: see _SWITCHES_HELP;
    mode: a torch.compile mode."""
    runs = []
    for item in (t.strip() for t in spec.split(",")):
        if not item:
            continue
        if item == "parity":
            runs.append(("parity", "plain", "default"))
            continue
        parts = item.split(":")
        ok = len(parts) == 3 and parts[0] in ("train", "infer", "train_fp32", "infer_fp32",
                                              "parity_bf16")
        if ok:
            try:
                _switch_spec(parts[1])
            except ValueError:
                ok = False
        if not ok:
            raise SystemExit(f"--compile-runs: bad item {item!r} (want kind:switches:mode, "
                             "kind train|infer|train_fp32|infer_fp32|parity_bf16, "
                             f"{_SWITCHES_HELP}; or 'parity')")
        runs.append((parts[0], parts[1], parts[2]))
    return runs


def _switch_spec(switches: str) -> dict[str, Any]:
    """A --compile-runs switches item → {"switches": model switches, "ckpt": the fraction of
    the encoder checkpointed (0 = off), "memory_budget": torch.compile's activation memory
    budget or None}."""
    head, *mods = switches.split("+")
    if head not in ("plain", "all"):
        raise ValueError(f"bad switches {switches!r}")
    spec: dict[str, Any] = {"switches": dict(ALL_SWITCHES) if head == "all" else {},
                            "ckpt": 0.0, "memory_budget": None}
    for m in mods:
        key, num = ("ckpt", m[4:]) if m.startswith("ckpt") else ("memory_budget", m[2:]) \
            if m.startswith("mb") else (None, "")
        if key is None:
            raise ValueError(f"bad switches modifier {m!r}")
        value = float(num) if num else (1.0 if key == "ckpt" else float("nan"))
        if not 0.0 < value <= 1.0:
            raise ValueError(f"bad switches modifier {m!r}")
        spec[key] = value
    return spec


@contextlib.contextmanager
def _memory_budget(budget: float | None):
    """torch.compile's min-cut partitioner keeps at most this share of the activations it
    would save by default and recomputes the rest, picking the cheapest to recompute
    (torch._functorch.config.activation_memory_budget; 1.0 = its default)."""
    if budget is None:
        yield
        return
    import torch._functorch.config as functorch_config
    with functorch_config.patch(activation_memory_budget=budget):
        yield


def _compiled_train(cfg: dict[str, Any], dev: torch.device, switches: str, mode: str,
                    amp: torch.dtype | None = torch.bfloat16) -> dict[str, Any]:
    s, b = cfg["size"], cfg["batch"]
    spec = _switch_spec(switches)
    kw, ckpt = spec["switches"], spec["ckpt"]
    model = build_model(s, cfg["seed"], **kw).to(dev).train()
    set_checkpointing(model, ckpt)
    cmodel = torch.compile(model, mode=mode)
    loss_fn, _ = make_loss()
    x = torch.randn(b, 3, s, s).to(dev)
    target = random_target(b, s, s, dev, cfg["seed"] + 11)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = train_step_fn(cmodel, opt, x, target, amp, loss_fn)
    with torch.no_grad(), autocast(dev, amp):
        model(x)  # RoPE table cache (see note_rope_cache)
    row: dict[str, Any] = {"batch": b, "switches": kw, "mode": mode,
                           "grad_checkpointing": ckpt > 0, "checkpoint_fraction": ckpt,
                           "activation_memory_budget": spec["memory_budget"],
                           "dtype": "bf16 autocast" if amp else "fp32"}
    with _memory_budget(spec["memory_budget"]):  # read when the first call compiles
        return _measure_compiled(step, dev, cfg, row, "train")


def _compiled_infer(cfg: dict[str, Any], dev: torch.device, switches: str, mode: str,
                    amp: torch.dtype | None = torch.bfloat16) -> dict[str, Any]:
    s, b = cfg["size"], cfg["infer_batch"]
    kw = _switch_spec(switches)["switches"]
    model = build_model(s, cfg["seed"], **kw).to(dev).eval()
    x = torch.randn(b, 3, s, s).to(dev)
    with torch.no_grad(), autocast(dev, amp):
        model(x)  # RoPE table cache
    cmodel = torch.compile(model, mode=mode)

    def infer() -> None:
        with torch.inference_mode(), autocast(dev, amp):
            cmodel(x)
    row: dict[str, Any] = {"batch": b, "switches": kw, "mode": mode,
                           "dtype": "bf16 autocast" if amp else "fp32"}
    return _measure_compiled(infer, dev, cfg, row, "infer")


def _measure_compiled(fn: Callable[[], None], dev: torch.device, cfg: dict[str, Any],
                      row: dict[str, Any], kind: str) -> dict[str, Any]:
    """Into ``row``: the first call's time (the compile), the median call time and images/s,
    and peak memory per image (``kind`` "train" names them step/train, "infer" batch/infer)."""
    b = row["batch"]
    ms_key, rate_key, mem_key = (("step_ms", "train_images_per_s", "peak_train_mem_per_image_gb")
                                 if kind == "train" else
                                 ("batch_ms", "infer_images_per_s", "peak_infer_mem_per_image_gb"))
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.time()
    fn()
    sync(dev)
    row["compile_seconds"] = round(time.time() - t0, 2)
    t = bench(fn, dev, cfg["warmup"], cfg["reps"])
    if dev.type == "cuda":
        # CUDA graphs (reduce-overhead) replay into a private pool without allocator calls, so
        # max_memory_allocated after a reset misses them; the reserved peak over the whole run
        # (compile, warm-up, recording, replays) bounds the call's memory from above.
        row["peak_reserved_whole_run_per_image_gb"] = torch.cuda.max_memory_reserved(dev) / b / 1e9
    row[f"{ms_key}_median"] = med(t)
    row[f"{ms_key}_all"] = [round(v, 3) for v in t]
    row[rate_key] = b / (med(t) / 1e3)
    if dev.type == "cuda":
        row[mem_key] = peak_per_image_gb(fn, dev, b)
        # A tighter bound at steady state: the cache emptied after warm-up (compile and
        # recording peaks gone), the graph pool kept, the reserved peak over one more call.
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        sync(dev)
        row["peak_reserved_steady_per_image_gb"] = torch.cuda.max_memory_reserved(dev) / b / 1e9
    return row


def _compiled_bf16_parity(cfg: dict[str, Any], dev: torch.device, switches: str, mode: str
                          ) -> dict[str, Any]:
    """The compiled bf16 model (with these switches and mode) against the same model eager in
    bf16 (what compiling changes) and against the plain eager fp32 reference (what the whole
    fast path changes), by the parity part's method."""
    spec = _switch_spec(switches)
    fast, ckpt = spec["switches"], spec["ckpt"]
    with strict_fp32():
        base, x, w, tgt = parity_base(cfg, dev)
        with torch.no_grad():
            base(x)  # RoPE table cache
        ref32 = run_variant(base, x, w, tgt)
        plain = run_variant(base, x, w, tgt, amp=torch.bfloat16)
        yard = _check("yardstick: eager bf16 plain vs eager fp32 plain", plain, ref32,
                      TOL_BF16, "the plain path under bf16 autocast", is_yardstick=True)
        del plain
        eager = run_variant(base, x, w, tgt, amp=torch.bfloat16, fast_paths=fast, ckpt=ckpt)
        t0 = time.time()
        with _memory_budget(spec["memory_budget"]):
            comp = run_variant(base, x, w, tgt, amp=torch.bfloat16, fast_paths=fast, ckpt=ckpt,
                               compiled=True, compile_mode=mode)
        out = {"compiled_vs_eager_bf16": _check(
                   f"compiled {switches}:{mode} vs eager bf16", comp, eager, TOL_BF16,
                   "same switches, both bf16 autocast", t0, yardstick=yard),
               "compiled_vs_fp32_reference": _check(
                   f"compiled {switches}:{mode} vs eager fp32 plain", comp, ref32, TOL_BF16,
                   "the whole fast path against the plain fp32 reference", yardstick=yard),
               "eager_bf16_vs_fp32_reference": _check(
                   f"eager bf16 {switches} vs eager fp32 plain", eager, ref32, TOL_BF16,
                   "for comparison: the same switches without compiling", yardstick=yard),
               "yardstick_plain_bf16_vs_fp32_reference": yard}
    return out


def compile_child(cfg: dict[str, Any], dev: torch.device, out_path: str) -> None:
    """Runs in a subprocess, in the order of ``cfg["compile_runs"]`` (most wanted first: the
    parent kills it at the budget): compiled bf16 training steps and inference per switch set
    and mode, and compile vs eager parity (fp32)."""
    res: dict[str, Any] = {"errors": {}, "runs": {}, "note_rope_cache": (
        "one eager forward runs before each compile. Before commit aedcf81 it filled "
        "RotaryEmbedding2d's cos/sin cache, which a trace with an empty cache would have filled "
        "inside the graph (graph breaks, recompiles); since then compiled graphs compute the "
        "tables in the graph and leave the cache alone, and the warm-up changes nothing"),
        "note": ("torch.compile(model, mode), bf16 autocast, loss and Adam eager; compile time "
                 "(first call) excluded from the step time; switches 'all' = "
                 + ", ".join(ALL_SWITCHES))}

    def dump() -> None:
        tmp = out_path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
        os.replace(tmp, out_path)

    torch.backends.cudnn.benchmark = cfg["cudnn_benchmark"]
    for kind, switches, mode in cfg["compile_runs"]:
        label = "parity" if kind == "parity" else f"{kind}:{switches}:{mode}"
        log(f"compile run {label}")
        torch._dynamo.reset()
        try:
            if kind == "parity":
                with strict_fp32():
                    base, x, w, tgt = parity_base(cfg, dev)
                    with torch.no_grad():
                        base(x)  # fills RotaryEmbedding2d's table cache
                    ref = run_variant(base, x, w, tgt)
                    t0 = time.time()
                    cand = run_variant(base, x, w, tgt, compiled=True)
                    res["compile_parity_seconds"] = round(time.time() - t0, 2)
                    res["parity"] = _check("compile_vs_eager_fp32", cand, ref, TOL_FP32,
                                           "torch.compile(model) default mode, fp32, first call "
                                           "(compiles forward and backward)", t0)
                    del base, x, w, tgt, ref, cand
            elif kind == "parity_bf16":
                res.setdefault("parity_bf16", {})[f"{switches}:{mode}"] = _compiled_bf16_parity(
                    cfg, dev, switches, mode)
            else:
                fn = _compiled_train if kind.startswith("train") else _compiled_infer
                row = fn(cfg, dev, switches, mode,
                         None if kind.endswith("_fp32") else torch.bfloat16)
                res["runs"][label] = row
                rate = row.get("train_images_per_s", row.get("infer_images_per_s"))
                log(f"compiled {label}: {rate:.1f} img/s (compile {row['compile_seconds']} s)")
        except Exception:  # noqa: BLE001
            res["errors"][label] = traceback.format_exc(limit=8)
            log(f"compile run {label}: ERROR")
        dump()
        free(dev)


def part_compile(dev: torch.device, cfg: dict[str, Any], args: argparse.Namespace
                 ) -> dict[str, Any]:
    remaining = cfg["budget_s"] - elapsed() - 3.0
    res: dict[str, Any] = {"budget_left_s": round(remaining, 1)}
    if remaining < cfg["compile_min_s"]:
        res["skipped"] = (f"only {remaining:.0f} s of the {cfg['budget_s']:.0f} s budget left "
                          f"(< {cfg['compile_min_s']:.0f} s)")
        log(f"compile: skipped ({res['skipped']})")
        return res
    import tempfile
    free(dev)
    fd, child_out = tempfile.mkstemp(suffix=".json", prefix="speed_gpu_compile_")
    os.close(fd)
    os.remove(child_out)
    cmd = [sys.executable, os.path.abspath(__file__), "--_compile-child", child_out,
           "--_parent-pid", str(os.getpid()), "-o", child_out + ".unused", "--device", str(dev)]
    cmd += ["--quick"] if args.quick else []
    for k in ("size", "batch", "infer_batch", "parity_batch", "warmup", "reps", "seed"):
        cmd += [f"--{k.replace('_', '-')}", str(cfg[k])]
    cmd += ["--compile-runs", cfg["compile_runs_spec"]]
    if not cfg["cudnn_benchmark"]:
        cmd += ["--no-cudnn-benchmark"]
    if dev.type == "cpu":
        cmd += ["--threads", str(cfg["cpu_threads"])]
    log(f"compile: subprocess with {remaining:.0f} s left")
    env = dict(os.environ)
    if str(REPO / "src") not in env.get("PYTHONPATH", ""):
        env["PYTHONPATH"] = os.pathsep.join(
            [p for p in (env.get("PYTHONPATH"), str(REPO / "src")) if p])
    t0 = time.time()
    # Same process group as this one (a runner that kills the group kills it too); the child
    # also asks the kernel to kill it if this process dies, and inductor's compile workers
    # exit when their parent (the child) is gone.
    proc = subprocess.Popen(cmd, env=env)
    try:
        rc = proc.wait(timeout=remaining)
        res["returncode"] = rc
    except subprocess.TimeoutExpired:
        res["timed_out_after_s"] = round(remaining, 1)
        log("compile: time budget reached, stopping the subprocess")
        proc.kill()
        proc.wait()
    res["wall_s"] = round(time.time() - t0, 1)
    try:
        with open(child_out) as fh:
            res.update(json.load(fh))
    except Exception as exc:  # noqa: BLE001
        res.setdefault("errors", {})["read"] = f"no result from the subprocess ({first_line(exc)})"
    finally:
        for p in (child_out, child_out + ".tmp"):
            with contextlib.suppress(OSError):
                os.remove(p)
    return res


# ---------------------------------------------------------------------------------- output
def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _f(v: Any, fmt: str, none: str = "-") -> str:
    if v is None:
        return none
    try:
        return format(v, fmt)
    except (TypeError, ValueError):
        return str(v)


def summary_table(r: dict[str, Any]) -> str:
    L = []
    L.append(f"== speed_gpu: {r['device']['name']} | torch {r['torch']} | "
             f"{r['date_utc']} | commit {str(r.get('commit'))[:12]} | "
             f"{'QUICK ' if r['quick'] else ''}{r['total_s']:.0f} s ==")
    rt = r.get("rates") or {}
    if rt:
        L.append(f"device: copy {_f(rt.get('copy_bandwidth_GBps'), '.0f')} GB/s, "
                 f"bf16 mm {_f(rt.get('bf16_matmul_tflops'), '.1f')} TFLOP/s "
                 f"(n={rt.get('bf16_matmul_n')}), fp32 mm {_f(rt.get('fp32_matmul_tflops'), '.1f')}"
                 f" TFLOP/s (n={rt.get('fp32_matmul_n')})")
    par = r.get("parity") or {}
    checks = dict(par.get("checks") or {})
    cp = (r.get("compile") or {}).get("parity")
    if cp:
        checks["compile_vs_eager_fp32"] = cp
    if checks:
        L.append(f"{'parity (rel = |a-b|/|b|)':44s} {'out_rel':>9s} {'grad_rel':>9s} "
                 f"{'tol':>7s}  ok")
        for k, c in checks.items():
            L.append(f"  {k:42s} {_f(c.get('out_rel'), '9.2e')} {_f(c.get('grad_rel'), '9.2e'):>9s} "
                     f"{_f(c.get('tol'), '7.0e')}  {'PASS' if c.get('pass') else 'FAIL'}")
    for k in (par.get("errors") or {}):
        L.append(f"  {k:42s} ERROR")
    p = r.get("profile") or {}
    if "step_ms_median" in p:
        L.append(f"train bf16 b{p['batch']} {p['size']}^2: step {p['step_ms_median']:.2f} ms = "
                 f"{p['train_images_per_s']:.1f} img/s (target >= "
                 f"{TARGETS['train_images_per_s_min']:.0f}); peak "
                 f"{_f(p.get('peak_train_mem_per_image_gb'), '.3f')} GB/img (target <= "
                 f"{TARGETS['peak_train_mem_per_image_gb_max']:.2f})")
        fl = p.get("floors") or {}
        st = p.get("saved_tensors") or {}
        L.append(f"  floors: flops {_f(fl.get('flop_floor_ms'), '.2f')} ms, saved-act bytes "
                 f"{_f(fl.get('bytes_floor_ms'), '.2f')} ms, unfused op bytes "
                 f"{_f(fl.get('unfused_op_bytes_ms'), '.2f')} ms | step/floor x"
                 f"{_f(fl.get('flop_floor_x'), '.1f')}, x{_f(fl.get('bytes_floor_x'), '.1f')}, "
                 f"x{_f(fl.get('unfused_op_bytes_x'), '.2f')}")
        k = p.get("kernels") or {}
        L.append(f"  saved for backward {_f(st.get('unique_bytes_per_image', None) and st['unique_bytes_per_image'] / 1e9, '.3f')} GB/img;"
                 f" kernels/step {_f(k.get('kernels_per_step'), '.0f')}, GPU busy "
                 f"{_f(k.get('gpu_busy_fraction_of_step') and 100 * k['gpu_busy_fraction_of_step'], '.0f')}%"
                 f" of step, mean kernel {_f(k.get('mean_kernel_us'), '.1f')} us")
        cats = k.get("by_category") or {}
        if cats:
            L.append("  by category: " + ", ".join(
                f"{c} {v['total_ms']:.1f}ms" for c, v in list(cats.items())[:7]))
        for row in (k.get("top_kernels") or [])[:8]:
            L.append(f"    {row['total_ms']:8.3f} ms {_f(row.get('share_of_step') and 100 * row['share_of_step'], '5.1f')}% "
                     f"x{_f(row['count'], 'g'):>5s}  {row['name'][:90]}")
    inf = r.get("infer") or {}
    if "infer_images_per_s" in inf:
        L.append(f"infer bf16 b{inf['batch']}: {inf['batch_ms_median']:.2f} ms = "
                 f"{inf['infer_images_per_s']:.1f} img/s (target >= "
                 f"{TARGETS['infer_images_per_s_min']:.0f}); peak "
                 f"{_f(inf.get('peak_infer_mem_per_image_gb'), '.3f')} GB/img; floors flops "
                 f"{_f(inf.get('flop_floor_ms'), '.2f')} ms, unfused bytes "
                 f"{_f(inf.get('unfused_op_bytes_ms'), '.2f')} ms")
    for name, row in ((r.get("variants") or {}).get("rows") or {}).items():
        L.append(f"  variant {name:28s} step {row['step_ms_median']:7.2f} ms = "
                 f"{row['train_images_per_s']:6.1f} img/s, "
                 f"{_f(row.get('peak_train_mem_per_image_gb'), '.3f')} GB/img, infer "
                 f"{row['infer_images_per_s']:7.1f} img/s")
    ctx = (r.get("parity") or {}).get("context_bf16_vs_fp32") or {}
    if "grad_rel" in ctx:
        L.append(f"  bf16 yardstick {ctx['model']}: out {ctx['out_rel']:.2e} grad "
                 f"{ctx['grad_rel']:.2e}")
    tl = r.get("tiled") or {}
    if "wall_s" in tl:
        L.append(f"tiled {tl['image_hw'][0]}x{tl['image_hw'][1]} tile {tl['tile']} "
                 f"({tl['tiles']} tiles, batch {tl['tile_batch']}): {tl['wall_s']:.2f} s "
                 f"(model {tl['model_s']:.2f} s), peak GPU {_f(tl.get('peak_gpu_mem_gb'), '.2f')} GB,"
                 f" out {tl['probabilities_shape']} covers image: {tl['covers_whole_image']}")
    cm = r.get("compile") or {}
    if cm:
        if "skipped" in cm:
            L.append(f"compile: skipped ({cm['skipped']})")
        else:
            for label, row in (cm.get("runs") or {}).items():
                if "train_images_per_s" in row:
                    L.append(f"compile {label}: step {row['step_ms_median']:.2f} ms = "
                             f"{row['train_images_per_s']:.1f} img/s, "
                             f"{_f(row.get('peak_train_mem_per_image_gb'), '.3f')} GB/img "
                             f"(reserved: steady "
                             f"{_f(row.get('peak_reserved_steady_per_image_gb'), '.3f')}, whole "
                             f"run {_f(row.get('peak_reserved_whole_run_per_image_gb'), '.3f')}; "
                             f"compile {row['compile_seconds']:.0f} s)")
                else:
                    L.append(f"compile {label}: batch {row['batch_ms_median']:.2f} ms = "
                             f"{row['infer_images_per_s']:.1f} img/s "
                             f"(compile {row['compile_seconds']:.0f} s)")
            for label, checks in (cm.get("parity_bf16") or {}).items():
                for name, c in checks.items():
                    L.append(f"compile parity {label} {name}: out {c['out_rel']:.2e} grad "
                             f"{c['grad_rel']:.2e} (1-cos {c['grad_one_minus_cos']:.1e})")
            if "timed_out_after_s" in cm:
                L.append(f"compile: timed out after {cm['timed_out_after_s']} s")
            if cm.get("errors"):
                L.append(f"compile errors: {', '.join(cm['errors'])}")
    errs = r.get("errors") or {}
    L.append("errors: " + (", ".join(f"{k}: {v.strip().splitlines()[-1][:100]}"
                                     for k, v in errs.items()) if errs else "none"))
    return "\n".join(L)


# ---------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True, help="JSON file to write")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (128^2, batch 2, 1200x1100 tiled at tile 256), CPU unless "
                         "--device says otherwise; no compile unless --compile")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, cpu in --quick), "
                                                     "cuda or cpu")
    ap.add_argument("--parts", default="rates,parity,profile,infer,variants,tiled,compile",
                    help="comma-separated subset of rates,parity,profile,infer,variants,tiled,"
                         "compile")
    ap.add_argument("--size", type=int, help="model input side (1024; quick 128)")
    ap.add_argument("--batch", type=int, help="training batch (16; quick 2)")
    ap.add_argument("--infer-batch", type=int, help="inference batch (16; quick 2)")
    ap.add_argument("--parity-batch", type=int, help="parity batch (2)")
    ap.add_argument("--tiled-hw", type=int, nargs=2, metavar=("H", "W"),
                    help="tiled image size (8000 8000; quick 1200 1100)")
    ap.add_argument("--tile", type=int, help="tile side (1024; quick 256)")
    ap.add_argument("--tile-batch", type=int, default=8, help="tiles per forward (8)")
    ap.add_argument("--overlap", type=float, default=0.25, help="tile overlap (0.25)")
    ap.add_argument("--tiled-precision", choices=("fp32", "bf16", "fp16"),
                    help="Segmenter precision of the tiled part (bf16 on CUDA; fp32 on the CPU, "
                         "whose bf16 depthwise convolutions take a very slow path)")
    ap.add_argument("--warmup", type=int, help="warm-up iterations (3; quick 1)")
    ap.add_argument("--reps", type=int, help="timed repetitions, median reported (10; quick 3)")
    ap.add_argument("--profile-steps", type=int, default=2, help="steps under torch.profiler (2)")
    ap.add_argument("--top", type=int, default=25, help="kernels in the table (25)")
    ap.add_argument("--budget-s", type=float, default=115.0,
                    help="wall-clock budget from start; compile gets what is left (115)")
    ap.add_argument("--compile-min-s", type=float, default=25.0,
                    help="skip compile if less than this is left of the budget (25)")
    ap.add_argument("--compile", dest="compile", action="store_true", default=None,
                    help="run the compile part (default: yes, except in --quick)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-runs", default=COMPILE_RUNS_DEFAULT,
                    help="what the compile part runs, in order: kind:switches:mode items (kind "
                         "train|infer, switches plain|all, a torch.compile mode) and 'parity' "
                         f"({COMPILE_RUNS_DEFAULT})")
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="leave torch.backends.cudnn.benchmark off in the timed parts")
    ap.add_argument("--trace-dir", help="also write the profiler's chrome trace here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int,
                    help="torch CPU threads (default: 1 in --quick on the CPU, where shared cores "
                         "make multi-threaded small kernels erratic; else torch's default)")
    ap.add_argument("--_compile-child", dest="compile_child", help=argparse.SUPPRESS)
    ap.add_argument("--_parent-pid", dest="parent_pid", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def make_config(args: argparse.Namespace, dev: torch.device) -> dict[str, Any]:
    q = args.quick

    def pick(v: Any, full: Any, quick: Any) -> Any:
        return v if v is not None else (quick if q else full)
    cfg = {
        "size": pick(args.size, 1024, 128),
        "batch": pick(args.batch, 16, 2),
        "infer_batch": pick(args.infer_batch, 16, 2),
        "parity_batch": pick(args.parity_batch, 2, 2),
        "tiled_hw": list(pick(args.tiled_hw, (8000, 8000), (1200, 1100))),
        "tile": pick(args.tile, 1024, 256),
        "tile_batch": args.tile_batch,
        "tiled_precision": args.tiled_precision or ("bf16" if dev.type == "cuda" else "fp32"),
        "overlap": args.overlap,
        "warmup": pick(args.warmup, 3, 1),
        "reps": pick(args.reps, 10, 3),
        "profile_steps": args.profile_steps,
        "top": args.top,
        "seed": args.seed,
        "budget_s": args.budget_s,
        "compile_min_s": args.compile_min_s,
        "compile_runs_spec": args.compile_runs,
        "compile_runs": parse_compile_runs(args.compile_runs),
        "cudnn_benchmark": not args.no_cudnn_benchmark,
        "copy_bytes": (32 << 20) if q else (1 << 30),
        "mm_bf16": 512 if q else 8192,
        "mm_fp32": 512 if q else 4096,
        "ref_grid": 16 if q else 32,
        "trace_dir": args.trace_dir,
    }
    if dev.type == "cpu" and not q:
        log("WARNING: full sizes on the CPU will be very slow; use --quick")
    return cfg


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        dev = torch.device("cuda" if (torch.cuda.is_available() and not args.quick) else "cpu")
    else:
        dev = torch.device(args.device)
    if dev.type == "cuda":
        if dev.index is None:  # torch.cuda.set_device needs an explicit index
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if args.threads or (args.quick and dev.type == "cpu"):
        torch.set_num_threads(args.threads or 1)
    cfg = make_config(args, dev)
    cfg["cpu_threads"] = torch.get_num_threads()
    if args.compile_child:
        global LOG_TAG
        LOG_TAG = "speed_gpu compile-child"
        _die_with_parent(args.parent_pid)
        compile_child(cfg, dev, args.compile_child)
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    do_compile = args.compile if args.compile is not None else not args.quick
    if not do_compile and "compile" in parts:
        parts.remove("compile")
    out_path = Path(args.output)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        dinfo = {"type": "cuda", "name": torch.cuda.get_device_name(dev),
                 "capability": list(torch.cuda.get_device_capability(dev)),
                 "multiprocessors": props.multi_processor_count,
                 "total_memory_gb": props.total_memory / 1e9}
    else:
        dinfo = {"type": "cpu", "name": f"CPU {platform.processor() or platform.machine()} "
                                        f"({torch.get_num_threads()} threads)"}
    R: dict[str, Any] = {
        "script": "benchmarks/speed_gpu.py", "argv": sys.argv[1:], "quick": bool(args.quick),
        "device": dinfo, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": (torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None),
        "python": platform.python_version(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit(), "hrmedseg": getattr(hrmedseg, "__version__", None),
        "config": cfg, "targets": TARGETS, "parts": parts,
        "tolerances": {"fp32": TOL_FP32, "bf16": TOL_BF16},
        "errors": {}, "part_seconds": {}, "status": "running",
    }
    log(f"device {dinfo['name']}, torch {torch.__version__}, parts {parts}, "
        f"size {cfg['size']}, batch {cfg['batch']}")
    write_json(out_path, R)
    rates: dict[str, Any] = {}
    runners: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("rates", lambda: part_rates(dev, cfg)),
        ("parity", lambda: part_parity(dev, cfg)),
        ("profile", lambda: part_profile(dev, cfg, rates)),
        ("infer", lambda: part_infer(dev, cfg, rates)),
        ("variants", lambda: part_variants(dev, cfg)),
        ("tiled", lambda: part_tiled(dev, cfg)),
        ("compile", lambda: part_compile(dev, cfg, args)),
    ]
    for name, fn in runners:
        if name not in parts:
            continue
        log(f"--- {name} ---")
        t0 = time.time()
        try:
            R[name] = fn()
            if name == "rates":
                rates.update(R[name])
        except Exception as exc:  # noqa: BLE001 - one part never loses the others
            R["errors"][name] = traceback.format_exc(limit=8)
            log(f"{name}: ERROR {first_line(exc)}")
            free(dev)
        R["part_seconds"][name] = round(time.time() - t0, 2)
        R["total_s"] = round(elapsed(), 2)
        write_json(out_path, R)
    # summary
    prof, inf = R.get("profile") or {}, R.get("infer") or {}
    R["summary"] = {
        "train_images_per_s": prof.get("train_images_per_s"),
        "infer_images_per_s": inf.get("infer_images_per_s"),
        "peak_train_mem_per_image_gb": prof.get("peak_train_mem_per_image_gb"),
        "meets_train_target": (prof.get("train_images_per_s") or 0) >= TARGETS["train_images_per_s_min"],
        "meets_infer_target": (inf.get("infer_images_per_s") or 0) >= TARGETS["infer_images_per_s_min"],
        "meets_memory_target": (prof.get("peak_train_mem_per_image_gb") is not None
                                and prof["peak_train_mem_per_image_gb"]
                                <= TARGETS["peak_train_mem_per_image_gb_max"]),
        "compiled": {label: {k: row.get(k) for k in ("train_images_per_s",
                                                      "peak_train_mem_per_image_gb",
                                                      "infer_images_per_s") if k in row}
                     for label, row in ((R.get("compile") or {}).get("runs") or {}).items()},
        "parity_all_pass": (R.get("parity") or {}).get("all_pass"),
        "tiled_covers_image": (R.get("tiled") or {}).get("covers_whole_image"),
    }
    R["status"] = "complete" if not R["errors"] else "complete_with_errors"
    R["total_s"] = round(elapsed(), 2)
    write_json(out_path, R)
    print(summary_table(R), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
