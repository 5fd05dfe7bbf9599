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
    assert load_benchmark("compile_parity_cpu").main(["-o", str(out), "--families", "herseg"]) == 0
    r = json.loads(out.read_text())
    assert r["commit"] == "beef001" and r["date_utc"] and r["device"].startswith("CPU")
    # "compiled" is the eager model here: identical in both precisions
    assert r["fp32"] == {"compiled_vs_eager_out": 0.0, "compiled_vs_eager_grad": 0.0}
    assert r["bf16"]["compiled_vs_eager_grad"] == 0.0
    # bf16 autocast really ran: it differs from fp32, and the compiled path by the same amount
    assert 0 < r["bf16"]["eager_vs_fp32_grad"] == r["bf16"]["compiled_vs_fp32_grad"] < 0.5
    fam = r["families"]
    assert list(fam) == ["herseg"] and fam["herseg"]["model"] == "herseg"
    assert fam["herseg"]["out_max_abs_diff"] == fam["herseg"]["grad_max_abs_diff"] == 0.0
    assert fam["herseg"]["parity_passed"] and fam["herseg"]["grad_max_abs"] > 0


def test_graph_breaks_are_counted(load_benchmark):
    """A forward with a data-dependent Python branch breaks the graph once; dynamo's count
    reaches the result."""
    class Branchy(torch.nn.Module):
        def forward(self, x):
            y = x * 2
            if y.sum() > 0:          # needs the value: graph break
                return y + 1
            return y - 1

    r = load_benchmark("compile_parity_cpu").graph_breaks(Branchy(), torch.ones(2))
    assert r["graph_breaks"] == 1 and r["graphs"] == 2 and r["break_reasons"]
    assert load_benchmark("compile_parity_cpu").graph_breaks(torch.nn.ReLU(), torch.ones(2)) == \
        {"graphs": 1, "graph_breaks": 0, "break_reasons": []}


def test_a_compiler_failure_is_recorded_for_its_family(load_benchmark, monkeypatch):
    bench = load_benchmark("compile_parity_cpu")

    class Failing(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise AssertionError("expected size 16==16, stride 1==4096\nmore")

    def failing(model, **kw):
        return Failing(model)

    monkeypatch.setattr(torch, "compile", failing)
    monkeypatch.setitem(bench.FAMILIES, "baseline",
                        ("unet_small", {"features": (4, 4, 4, 4, 4, 4)}))
    r = bench.measure_family("baseline")
    assert r["parity_passed"] is False
    assert r["compile_error"] == "AssertionError: expected size 16==16, stride 1==4096"
