"""benchmarks/count_compute.py on HRMedSeg at 64²: its counts against independent ones."""
import json

import pytest
import torch

import hrmedseg
from hrmedseg.profiling.macs import count_macs


@pytest.mark.slow  # the op-level counts take about 10 s each at 64² on two cores
def test_counts_match_the_profiling_functions(tmp_path, load_benchmark, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "c0ffee1")
    out = tmp_path / "counts.json"
    assert load_benchmark("count_compute").main(["--models", "hrmedseg", "--size", "64",
                                                 "-o", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["commit"] == "c0ffee1" and r["date"] and r["device"].startswith("cpu")
    (row,) = r["results"]
    model = hrmedseg.create_model("hrmedseg").eval()
    assert row["params"] == 3_526_364 == sum(p.numel() for p in model.parameters())
    mc = count_macs(model, torch.randn(1, 3, 64, 64))
    assert row["macs_thop"] == mc.module_macs and row["macs_all_ops"] == mc.ops_macs
    assert row["macs_all_ops_plus_activations"] == row["macs_all_ops"] + row["activations"]
