"""benchmarks/kernel_profile.py in its quick CPU mode."""
import json


def test_quick_profile_has_kernels_ops_and_floors(tmp_path, load_benchmark):
    out = tmp_path / "kp.json"
    assert load_benchmark("kernel_profile").main(["--quick", "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["status"] == "complete" and r["device"]["type"] == "cpu" and "commit" in r
    step = r["train_step"]
    assert 0 < len(step["kernels"]["top_kernels"]) <= 25
    assert step["flops_step_flopcounter"] > 0 and step["ops_step"]["unfused_bytes_total"] > 0
    # the FLOP floor is the counted FLOPs at the measured matmul rates
    rates = r["rates"]
    by = step["ops_step"]["flops_by_dtype"]
    expect = sum(f / ((rates["bf16_matmul_tflops"] if d in ("bfloat16", "float16")
                       else rates["fp32_matmul_tflops"]) * 1e12) * 1e3 for d, f in by.items())
    assert abs(step["floors"]["flop_floor_ms"] - expect) <= 1e-9 * max(1.0, expect)
    assert step["saved_tensors"]["unique_bytes"] > 0
    assert r["inference"]["ops_forward"]["flops_total"] > 0
