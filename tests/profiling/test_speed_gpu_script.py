"""benchmarks/speed_gpu.py runs end to end in --quick mode on the CPU and writes its JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "speed_gpu.py"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_speed_gpu_quick_writes_json(tmp_path):
    out = tmp_path / "speed_quick.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env["HRMEDSEG_COMMIT"] = "test-commit"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "-o", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "== speed_gpu:" in proc.stdout and "parity" in proc.stdout

    data = json.loads(out.read_text())
    for key in ("device", "torch", "date_utc", "commit", "config", "targets", "rates", "parity",
                "profile", "infer", "tiled", "summary", "errors", "part_seconds", "status"):
        assert key in data, key
    assert data["commit"] == "test-commit"
    assert data["quick"] is True and data["device"]["type"] == "cpu"
    assert data["errors"] == {}, data["errors"]
    assert data["status"] == "complete"
    assert "compile" not in data  # skipped in --quick

    # rates
    assert data["rates"]["copy_bandwidth_GBps"] > 0 and data["rates"]["bf16_matmul_tflops"] > 0

    # parity: every check present with finite numbers; fp32-exact paths pass
    checks = data["parity"]["checks"]
    for name in ("bf16_autocast_vs_fp32", "channels_last_vs_contiguous",
                 "grad_checkpointing_vs_off", "sdpa_math_vs_default_fp32",
                 "all_fast_paths_vs_fp32", "fast_norm_bf16_vs_fp32", "fast_attention_bf16_vs_fp32",
                 "all_switches_bf16_vs_fp32", "pool_channels_first_vs_off",
                 "sdpa_default_vs_math_bf16",
                 "linear_attention_vs_quadratic_reference", "rope_vs_complex_reference",
                 "multiscale_pooling_vs_sum_count_reference"):
        assert name in checks, name
        c = checks[name]
        assert c["out_rel"] >= 0 and c["out_rel"] < 1, (name, c)
        assert isinstance(c["pass"], bool)
    for name in ("channels_last_vs_contiguous", "grad_checkpointing_vs_off",
                 "pool_channels_first_vs_off",
                 "sdpa_math_vs_default_fp32", "linear_attention_vs_quadratic_reference",
                 "rope_vs_complex_reference", "multiscale_pooling_vs_sum_count_reference"):
        assert checks[name]["pass"], (name, checks[name])
    # checkpointing really keeps fewer tensors for backward
    ck = checks["grad_checkpointing_vs_off"]["saved_forward_bytes_a_b"]
    assert ck[0] < ck[1]
    # the bf16 fast paths are judged by twice the plain path's own bf16 error (the yardstick)
    yard = checks["bf16_autocast_vs_fp32"]
    assert yard["criterion"].startswith("yardstick") and yard["pass"] == (yard["out_rel"] <= 2e-2)
    for name in ("fast_norm_bf16_vs_fp32", "all_switches_bf16_vs_fp32", "all_fast_paths_vs_fp32"):
        c = checks[name]
        assert c["bound_grad"] == pytest.approx(2 * yard["grad_rel"])
        assert c["pass"] == (c["out_rel"] <= c["bound_out"] and c["grad_rel"] <= c["bound_grad"])

    # profile: step time, top ops with shares, floors, saved activations
    prof = data["profile"]
    assert prof["step_ms_median"] > 0 and prof["train_images_per_s"] > 0
    top = prof["kernels"]["top_kernels"]
    assert 0 < len(top) <= 25 and all(r["total_ms"] >= 0 and r["count"] > 0 for r in top)
    assert prof["flops_step_flopcounter"] > 0
    assert prof["ops_step"]["flops_total"] > 0 and prof["ops_step"]["unfused_bytes_total"] > 0
    assert prof["saved_tensors"]["unique_bytes"] > 0
    for key in ("bytes_floor_ms", "unfused_op_bytes_ms", "flop_floor_ms"):
        assert prof["floors"][key] > 0, key

    # the bf16 yardstick ran, or says why not (smp is optional)
    ctx = data["parity"]["context_bf16_vs_fp32"]
    assert "grad_rel" in ctx or "error" in ctx

    # variants: every switch timed in the same run
    rows = data["variants"]["rows"]
    assert set(rows) == {"default", "fast_norm", "fast_attention", "pool_channels_first",
                         "pool_direct", "all_switches", "channels_last", "grad_checkpointing",
                         "all_switches+grad_checkpointing", "all_switches+grad_checkpointing_half"}
    assert all(r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0 for r in rows.values())

    # inference and tiled
    assert data["infer"]["infer_images_per_s"] > 0
    # composite ops under inference_mode are decomposed, so their matmuls are counted
    assert data["infer"]["ops_forward"]["flops_total"] > 0
    tiled = data["tiled"]
    assert tiled["image_hw"] == [1200, 1100]
    assert tiled["probabilities_shape"] == [1, 1200, 1100]
    assert tiled["labels_shape"] == [1200, 1100]
    assert tiled["covers_whole_image"] is True
    assert tiled["wall_s"] > 0


@pytest.mark.slow
def test_kernel_table_parses_device_events_without_a_gpu(tmp_path, load_benchmark):
    """The CUDA branch of the kernel table, fed fake profiler events (no GPU needed)."""
    import torch

    sg = load_benchmark("speed_gpu")
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

    kt = sg.kernel_table(Prof(), torch.device("cuda"), n_steps=2, step_ms=1.0, top=25)
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

    kt = sg.kernel_table(TraceProf(), torch.device("cuda"), n_steps=1, step_ms=0.01, top=25)
    assert kt["method"].startswith("chrome trace")
    assert [r["name"] for r in kt["top_kernels"]] == ["k1"]
    assert abs(kt["gpu_busy_fraction_of_step"] - 0.5) < 1e-9


def test_op_bandwidth_table_joins_profiler_times_and_op_bytes(load_benchmark):
    """Per-op achieved bandwidth: profiler self device time per step joined with the bytes
    each op moves (fake profiler averages, no GPU needed)."""
    import torch

    sg = load_benchmark("speed_gpu")

    class Avg:
        def __init__(self, key, dev_us, cpu_us=0.0):
            self.key, self.self_device_time_total, self.self_cpu_time_total = key, dev_us, cpu_us

    class Prof:
        def key_averages(self):
            return [Avg("aten::add", 2000.0), Avg("aten::mm", 1000.0),
                    Avg("aten::view", 0.0),                 # no kernels: left out
                    Avg("Optimizer.step#Adam.step", 5000.0)]  # not an aten op: left out

    op_ms = sg.aten_op_self_ms(Prof(), torch.device("cuda"), n_steps=2)
    assert op_ms == {"add": 1.0, "mm": 0.5}
    t = sg.op_bandwidth_table(op_ms, {"add": 3_000_000_000, "mm": 10**9, "relu": 5},
                              {"add": 7, "mm": 2}, {"mm": 10**9}, 3000.0,
                              torch.device("cuda"), top=5)
    add, mm = t["rows"]                                       # sorted by time; relu untimed
    assert add["op"] == "add" and add["calls"] == 7 and add["achieved_GBps"] == 3000.0
    assert add["fraction_of_copy_bw"] == 1.0 and add["achieved_TFLOPs"] is None
    assert mm["achieved_GBps"] == 2000.0 and mm["achieved_TFLOPs"] == 2.0
    assert t["ops_timed_ms"] == 1.5 and t["ops_with_bytes_ms"] == 1.5


def test_compile_runs_parse_and_child_writes_each_run(tmp_path, monkeypatch, load_benchmark):
    """The compile child's bookkeeping, with torch.compile stubbed out (inductor takes minutes
    on the CPU; the GPU run compiles for real)."""
    mod = load_benchmark("speed_gpu")
    assert mod.parse_compile_runs("train:all:default, infer:plain:reduce-overhead,parity") == [
        ("train", "all", "default"), ("infer", "plain", "reduce-overhead"),
        ("parity", "plain", "default")]
    assert mod.parse_compile_runs("train:all+ckpt0.5+mb0.4:reduce-overhead") == [
        ("train", "all+ckpt0.5+mb0.4", "reduce-overhead")]
    assert mod._switch_spec("all+ckpt0.5+mb0.4") == {
        "switches": mod.ALL_SWITCHES, "ckpt": 0.5, "memory_budget": 0.4}
    assert mod._switch_spec("plain+ckpt") == {"switches": {}, "ckpt": 1.0, "memory_budget": None}
    for bad in ("train:some:default", "train:all+ckpt1.5:default", "train:all+mb:default",
                "train:all+fast:default", "train:all+ckptx:default"):
        with pytest.raises(SystemExit, match="bad item"):
            mod.parse_compile_runs(bad)
    import torch
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: m)
    args = mod.parse_args(["--quick", "-o", str(tmp_path / "x.json"), "--size", "64",
                           "--batch", "2", "--reps", "1", "--warmup", "0",
                           "--compile-runs",
                           "train:all:default,infer:plain:reduce-overhead,"
                           "train_fp32:plain+ckpt:default,parity_bf16:all+ckpt:default,"
                           "train:all+ckpt0.5+mb0.5:default"])
    cfg = mod.make_config(args, torch.device("cpu"))
    out = tmp_path / "child.json"
    mod.compile_child(cfg, torch.device("cpu"), str(out))
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    train = res["runs"]["train:all:default"]
    assert train["train_images_per_s"] > 0 and train["switches"] == mod.ALL_SWITCHES
    infer = res["runs"]["infer:plain:reduce-overhead"]
    assert infer["infer_images_per_s"] > 0 and infer["switches"] == {}
    fp32 = res["runs"]["train_fp32:plain+ckpt:default"]
    assert fp32["dtype"] == "fp32" and fp32["grad_checkpointing"] is True
    half = res["runs"]["train:all+ckpt0.5+mb0.5:default"]
    assert half["checkpoint_fraction"] == 0.5 and half["activation_memory_budget"] == 0.5
    par = res["parity_bf16"]["all+ckpt:default"]
    # (compile stubbed: "compiled" is eager here, so it equals eager bf16 exactly)
    assert par["compiled_vs_eager_bf16"]["grad_rel"] == 0.0
    assert 0 < par["compiled_vs_fp32_reference"]["grad_rel"] < 0.5
    yard = par["yardstick_plain_bf16_vs_fp32_reference"]
    assert par["compiled_vs_fp32_reference"]["bound_grad"] == pytest.approx(2 * yard["grad_rel"])
