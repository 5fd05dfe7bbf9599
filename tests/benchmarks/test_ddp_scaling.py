"""benchmarks/ddp_scaling.py in one CPU process (no torchrun): the engine's step timed, then the
report over the result folder."""
import json

import pytest


@pytest.mark.slow  # the engine builds the full HRMedSeg: 10-40 s on two shared cores
def test_single_process_then_report(tmp_path, load_benchmark, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "1234abc")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    mod = load_benchmark("ddp_scaling")
    out = tmp_path / "ddp"
    assert mod.main(["--out", str(out), "--device", "cpu", "--size", "64", "--batch", "2",
                     "--precision", "fp32", "--warmup", "1", "--iters", "2"]) == 0
    r = json.loads((out / "ddp_scaling_w1.json").read_text())
    assert r["world_size"] == 1 and r["global_batch"] == 2 and r["ddp"] is False
    assert r["train_images_per_s"] == pytest.approx(2 / r["step_s"], abs=0.06)  # both rounded
    assert r["commit"] == "1234abc" and r["device"] == ["cpu"] and r["date"]
    assert mod.main(["--report", str(out)]) == 0
    assert "| 1 | 2 |" in (out / "ddp_scaling.md").read_text()
