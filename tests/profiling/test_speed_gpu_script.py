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
                 "all_fast_paths_vs_fp32", "sdpa_default_vs_math_bf16",
                 "linear_attention_vs_quadratic_reference", "rope_vs_complex_reference",
                 "multiscale_pooling_vs_sum_count_reference"):
        assert name in checks, name
        c = checks[name]
        assert c["out_rel"] >= 0 and c["out_rel"] < 1, (name, c)
        assert isinstance(c["pass"], bool)
    for name in ("channels_last_vs_contiguous", "grad_checkpointing_vs_off",
                 "sdpa_math_vs_default_fp32", "linear_attention_vs_quadratic_reference",
                 "rope_vs_complex_reference", "multiscale_pooling_vs_sum_count_reference"):
        assert checks[name]["pass"], (name, checks[name])
    # checkpointing really keeps fewer tensors for backward
    ck = checks["grad_checkpointing_vs_off"]["saved_forward_bytes_a_b"]
    assert ck[0] < ck[1]

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

    # inference and tiled
    assert data["infer"]["infer_images_per_s"] > 0
    tiled = data["tiled"]
    assert tiled["image_hw"] == [1200, 1100]
    assert tiled["probabilities_shape"] == [1, 1200, 1100]
    assert tiled["labels_shape"] == [1200, 1100]
    assert tiled["covers_whole_image"] is True
    assert tiled["wall_s"] > 0
