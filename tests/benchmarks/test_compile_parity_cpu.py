"""benchmarks/compile_parity_cpu.py with torch.compile stubbed (inductor takes minutes on two
cores; tests/models/test_hrmedseg_compile.py runs the real compile, marked slow)."""
import json

import pytest
import torch


@pytest.mark.slow  # eager fp32 + bf16 passes of the small model: 5-20 s on two shared cores
def test_writes_both_precisions_with_provenance(tmp_path, load_benchmark, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "beef001")
    monkeypatch.setattr(torch, "compile", lambda m, **kw: m)
    out = tmp_path / "cp.json"
    assert load_benchmark("compile_parity_cpu").main(["-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["commit"] == "beef001" and r["date_utc"] and r["device"].startswith("CPU")
    # "compiled" is the eager model here: identical in both precisions
    assert r["fp32"] == {"compiled_vs_eager_out": 0.0, "compiled_vs_eager_grad": 0.0}
    assert r["bf16"]["compiled_vs_eager_grad"] == 0.0
    # bf16 autocast really ran: it differs from fp32, and the compiled path by the same amount
    assert 0 < r["bf16"]["eager_vs_fp32_grad"] == r["bf16"]["compiled_vs_fp32_grad"] < 0.5
