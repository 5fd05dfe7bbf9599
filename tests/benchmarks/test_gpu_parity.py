"""benchmarks/gpu_parity.py in its quick CPU mode (and its compiled checks, compile stubbed)."""
import json

import pytest
import torch

EXACT = ("channels_last_vs_contiguous", "grad_checkpointing_vs_off", "pool_channels_first_vs_off",
         "sdpa_math_vs_default_fp32", "cpu_vs_cpu_fp32", "linear_attention_vs_quadratic_reference",
         "rope_vs_complex_reference", "multiscale_pooling_vs_sum_count_reference")


def test_quick_parity_checks(tmp_path, load_benchmark):
    mod = load_benchmark("gpu_parity")
    out = tmp_path / "p.json"
    assert mod.main(["--quick", "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "complete" and r["device"]["type"] == "cpu" and "date_utc" in r
    checks = r["eager"]["checks"]
    for name in EXACT:  # fp32 paths agree with the reference on the CPU
        assert checks[name]["pass"], (name, checks[name])
    yard = checks[mod.YARDSTICK]
    for name in ("fast_norm_bf16_vs_fp32", "all_switches_bf16_vs_fp32", "all_fast_paths_vs_fp32"):
        c = checks[name]
        assert c["bound_grad"] == pytest.approx(2 * yard["grad_rel"])
        assert c["pass"] == (c["out_rel"] <= c["bound_out"] and c["grad_rel"] <= c["bound_grad"])
    assert 0 < yard["out_rel"] < 0.2  # bf16 differs from fp32, but not wildly
    ck = checks["grad_checkpointing_vs_off"]["saved_forward_bytes_a_b"]
    assert ck[0] < ck[1]  # checkpointing keeps fewer tensors for backward


def test_compiled_checks_with_compile_stubbed(tmp_path, load_benchmark, monkeypatch):
    mod = load_benchmark("gpu_parity")
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: m)
    out = tmp_path / "c.json"
    assert mod.main(["--quick", "-o", str(out), "--compiled", "all+ckpt:default"]) == 0
    comp = json.loads(out.read_text())["compiled"]
    assert comp["errors"] == {}
    assert comp["fp32"]["out_rel"] == 0.0 and comp["fp32"]["pass"]  # "compiled" is eager here
    par = comp["bf16"]["all+ckpt:default"]
    assert par["compiled_vs_eager_bf16"]["grad_rel"] == 0.0
    yard = par["yardstick_plain_bf16_vs_fp32_reference"]
    assert par["compiled_vs_fp32_reference"]["bound_grad"] == pytest.approx(2 * yard["grad_rel"])
