"""hrmedseg.profiling.kernels on fake profiler events and op counts (no GPU needed)."""
import json
from pathlib import Path

import torch

from hrmedseg.profiling import kernels


def test_kernel_table_parses_device_events_without_a_gpu():
    """The CUDA branch of the kernel table, fed fake profiler events (no GPU needed)."""
    cuda = torch.autograd.DeviceType.CUDA

    class Ev:
        def __init__(self, name, start, dur, dev=cuda, annot=False):
            self.name, self.device_type, self.is_user_annotation = name, dev, annot
            self.time_range = type("TR", (), {"start": start, "end": start + dur})()

    evs = [Ev("ampere_bf16_gemm_128x64", 0, 100), Ev("ampere_bf16_gemm_128x64", 150, 100),
           Ev("vectorized_elementwise_kernel<add>", 260, 20),
           Ev("Optimizer.step#Adam.step", 0, 1000, annot=True),       # annotation: skipped
           Ev("aten::mm", 0, 500, dev=torch.autograd.DeviceType.CPU)]  # CPU op: skipped

    class Prof:
        def events(self):
            return evs

    kt = kernels.kernel_table(Prof(), torch.device("cuda"), n_steps=2, step_ms=1.0, top=25)
    assert kt["kernels_per_step"] == 1.5
    top = kt["top_kernels"]
    assert [r["name"] for r in top] == ["ampere_bf16_gemm_128x64", "vectorized_elementwise_kernel<add>"]
    assert top[0]["count"] == 1 and abs(top[0]["total_ms"] - 0.1) < 1e-9
    assert abs(top[0]["share_of_step"] - 0.1) < 1e-9 and top[0]["category"] == "gemm"
    assert abs(kt["gpu_busy_per_step_ms"] - 0.11) < 1e-9

    # fallback: no device events in prof.events(), kernels only in the chrome trace
    class TraceProf:
        def events(self):
            return []

        def export_chrome_trace(self, path):
            Path(path).write_text(json.dumps({"traceEvents": [
                {"ph": "X", "cat": "kernel", "name": "k1", "ts": 10.0, "dur": 5.0},
                {"ph": "X", "cat": "gpu_user_annotation", "name": "a", "ts": 0.0, "dur": 99.0},
                {"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 0.0, "dur": 9.0}]}))

    kt = kernels.kernel_table(TraceProf(), torch.device("cuda"), n_steps=1, step_ms=0.01, top=25)
    assert kt["method"].startswith("chrome trace")
    assert [r["name"] for r in kt["top_kernels"]] == ["k1"]
    assert abs(kt["gpu_busy_fraction_of_step"] - 0.5) < 1e-9


def test_op_bandwidth_table_joins_profiler_times_and_op_bytes():
    """Per-op achieved bandwidth: profiler self device time per step joined with the bytes
    each op moves (fake profiler averages, no GPU needed)."""

    class Avg:
        def __init__(self, key, dev_us, cpu_us=0.0):
            self.key, self.self_device_time_total, self.self_cpu_time_total = key, dev_us, cpu_us

    class Prof:
        def key_averages(self):
            return [Avg("aten::add", 2000.0), Avg("aten::mm", 1000.0),
                    Avg("aten::view", 0.0),                 # no kernels: left out
                    Avg("Optimizer.step#Adam.step", 5000.0)]  # not an aten op: left out

    op_ms = kernels.aten_op_self_ms(Prof(), torch.device("cuda"), n_steps=2)
    assert op_ms == {"add": 1.0, "mm": 0.5}
    t = kernels.op_bandwidth_table(op_ms, {"add": 3_000_000_000, "mm": 10**9, "relu": 5},
                              {"add": 7, "mm": 2}, {"mm": 10**9}, 3000.0,
                              torch.device("cuda"), top=5)
    add, mm = t["rows"]                                       # sorted by time; relu untimed
    assert add["op"] == "add" and add["calls"] == 7 and add["achieved_GBps"] == 3000.0
    assert add["fraction_of_copy_bw"] == 1.0 and add["achieved_TFLOPs"] is None
    assert mm["achieved_GBps"] == 2000.0 and mm["achieved_TFLOPs"] == 2.0
    assert t["ops_timed_ms"] == 1.5 and t["ops_with_bytes_ms"] == 1.5


def test_op_stats_counts_matmul_flops_and_bytes():
    """A (4x8) @ (8x16) matmul: 2*4*8*16 FLOPs, inputs + output bytes, no view counted."""
    a, b = torch.randn(4, 8), torch.randn(8, 16)
    stats = kernels.OpStats()
    with stats.mode:
        a.t().contiguous().t()  # a view and a copy: the copy moves 2 x 128 B
        torch.mm(a, b)
    s = stats.summary()
    assert s["flops_by_op"]["mm"] == 2 * 4 * 8 * 16
    assert stats.bytes_by_op["mm"] == (4 * 8 + 8 * 16 + 4 * 16) * 4
    assert "t" not in stats.bytes_by_op


def test_saved_tensor_stats_counts_each_storage_once():
    lin = torch.nn.Linear(8, 8, bias=False)
    x = torch.randn(2, 8)

    def fwd() -> torch.Tensor:
        h = torch.relu(lin(x))
        return (h * h).sum()
    st = kernels.saved_tensor_stats(lin, fwd, x)
    # x does not require grad, so linear saves only x (for the weight's gradient); relu's
    # output h is saved by relu, and twice by h * h: one storage, counted once
    assert st["by_kind"] == {"input": 2 * 8 * 4, "activation": 2 * 8 * 4}
    assert st["count"] == 4 and st["unique_count"] == 2 and st["raw_bytes"] == 4 * 64
    assert st["by_module"] == {"(model)": 64, "(outside model: loss)": 64}


def test_flop_floor_uses_the_rate_of_each_dtype():
    ms = kernels.flop_floor_ms({"bfloat16": 2e12, "float32": 1e12},
                               {"bf16_matmul_tflops": 100.0, "fp32_matmul_tflops": 10.0})
    assert abs(ms - (2e12 / 100e12 + 1e12 / 10e12) * 1e3) < 1e-9
    assert kernels.flop_floor_ms({"float32": 1.0}, {}) is None
