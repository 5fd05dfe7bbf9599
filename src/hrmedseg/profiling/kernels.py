"""Where a step's time goes: per-kernel tables from torch.profiler, FLOPs and bytes per aten op
(the traffic of unfused eager execution), achieved bandwidth per op, and the tensors saved for
backward, with the FLOP/byte floors they imply at measured device rates."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import defaultdict
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry


class OpStats:
    """A TorchDispatchMode counting, per aten op: FLOPs (torch.utils.flop_counter's formulas)
    by input dtype, and bytes of tensor inputs + outputs (views skipped) -- the traffic of an
    unfused eager execution in which every op reads its inputs and writes its outputs once."""

    def __init__(self) -> None:
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
    """Milliseconds the FLOPs would take at the measured matmul rates (bf16/fp16 FLOPs at the
    bf16 rate, the rest at the fp32 rate); None without a bf16 rate."""
    bf = rates.get("bf16_matmul_tflops")
    f32 = rates.get("fp32_matmul_tflops") or bf
    if not bf:
        return None
    ms = 0.0
    for dt, fl in flops_by_dtype.items():
        r = bf if dt in ("bfloat16", "float16") else f32
        ms += fl / (r * 1e12) * 1e3
    return ms


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


def device_events(prof) -> tuple[list[tuple[str, float, float]], str]:  # noqa: ANN001
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
    with tempfile.TemporaryDirectory() as td:
        path = os.path.join(td, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as fh:
            trace = json.load(fh)
    for e in trace.get("traceEvents", []) if isinstance(trace, dict) else trace:
        if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset"):
            evs.append((e.get("name", "?"), float(e.get("ts", 0.0)), float(e.get("dur", 0.0))))
    return evs, "chrome trace (cat kernel/gpu_memcpy/gpu_memset)"


def busy_us(evs: list[tuple[str, float, float]]) -> float:
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
        evs, method = device_events(prof)
        out["method"] = method
        agg: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        for name, _, dur in evs:
            agg[name][0] += 1
            agg[name][1] += dur
        total_us = sum(v[1] for v in agg.values())
        busy = busy_us(evs)
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
