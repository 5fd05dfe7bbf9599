"""benchmarks/equal_time.py on a tiny synthetic dataset: one model, one seed, a 2-s budget."""
import json

import pytest


@pytest.mark.slow  # trains and evaluates: about 20 s on two shared cores
@pytest.mark.timeout(300)
def test_one_budgeted_run_is_reported(tmp_path, load_benchmark, monkeypatch, toy_dataset):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "e9e9e9e")
    toy_dataset(tmp_path / "data" / "toy")
    out = tmp_path / "out"
    assert load_benchmark("equal_time").main([
        "--data-root", str(tmp_path / "data"), "--datasets", "toy", "--sweep-dataset", "toy",
        "--pretrained", "none", "--runs", "pretrained", "--lrs", "1e-3", "--seeds", "0",
        "--budget-s", "2", "--size", "32", "--batch", "2", "--workers", "0", "--device", "cpu",
        "--precision", "fp32", "--augment", "none", "--work", str(tmp_path / "work"),
        "--out", str(out)]) == 0
    r = json.loads((out / "equal_time.json").read_text())
    assert r["commit"] == "e9e9e9e" and r["device"] == "cpu" and r["date"]
    (rows,) = r["comparison"]["toy"].values()
    (run,) = rows
    assert 0.0 <= run["dice@model"] <= 100.0 and run["lr"] == 1e-3
    assert (out / "equal_time.md").read_text().startswith("# Equal GPU time")
