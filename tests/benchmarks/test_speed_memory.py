"""benchmarks/speed_memory.py in its quick CPU mode: one result file with provenance, every
eager row, tiled inference covering the image, and compiled runs (torch.compile stubbed)."""
import json

import pytest
import torch


def test_quick_run_writes_every_row(tmp_path, load_benchmark, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "abc1234")
    mod = load_benchmark("speed_memory")
    out = tmp_path / "speed.json"
    assert mod.main(["--quick", "-o", str(out), "--parts", "rates,eager,tiled"]) == 0
    r = json.loads(out.read_text())
    assert r["commit"] == "abc1234" and r["device"]["type"] == "cpu" and r["date_utc"]
    assert r["script"] == "benchmarks/speed_memory.py" and r["status"] == "complete"
    assert set(r["eager"]["rows"]) == set(mod.EAGER_ROWS)
    for row in r["eager"]["rows"].values():
        # images/s is the batch over the median step time
        assert row["train_images_per_s"] == pytest.approx(2 / (row["step_ms_median"] / 1e3))
        assert row["infer_images_per_s"] > 0 and row["peak_train_mem_per_image_gb"] is None
    assert r["rates"]["copy_bandwidth_GBps"] > 0
    assert r["tiled"]["labels_shape"] == [300, 280] and r["tiled"]["probabilities_finite"]


def test_compiled_runs_record_their_settings(tmp_path, load_benchmark, monkeypatch):
    mod = load_benchmark("speed_memory")
    monkeypatch.setattr(torch, "compile", lambda m, mode=None: m)  # inductor takes minutes on CPU
    out = tmp_path / "c.json"
    assert mod.main(["--quick", "-o", str(out), "--parts", "compiled", "--compiled",
                     "train:all+ckpt0.5+mb0.5:reduce-overhead,infer_fp32:plain:default"]) == 0
    runs = json.loads(out.read_text())["compiled"]["runs"]
    t = runs["train:all+ckpt0.5+mb0.5:reduce-overhead"]
    assert t["checkpoint_fraction"] == 0.5 and t["activation_memory_budget"] == 0.5
    assert t["switches"] == mod.ALL_SWITCHES and t["dtype"] == "bf16 autocast"
    assert t["first_call_seconds"] >= 0 and t["images_per_s"] > 0
    assert runs["infer_fp32:plain:default"]["dtype"] == "fp32"


@pytest.mark.parametrize("bad", ["train:some:default", "train:all+ckpt1.5:default",
                                 "train:all+mb:default", "fit:all:default", "train:all"])
def test_bad_compiled_items_are_refused(bad, load_benchmark):
    with pytest.raises(SystemExit, match="bad item"):
        load_benchmark("speed_memory").parse_compiled(bad)
