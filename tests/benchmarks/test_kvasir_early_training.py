"""benchmarks/kvasir_early_training.py for two steps on a tiny synthetic dataset."""
import json

import pytest


@pytest.mark.slow  # builds datasets and the engine: about 10 s on two shared cores
@pytest.mark.timeout(300)
def test_two_steps_log_every_step_and_validate(tmp_path, load_benchmark, monkeypatch, toy_dataset):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "a1b2c3d")
    toy_dataset(tmp_path / "toy")
    out = tmp_path / "out"
    assert load_benchmark("kvasir_early_training").main([
        "--data-root", str(tmp_path / "toy"), "--out", str(out), "--work", str(tmp_path / "w"),
        "--variants", "default", "--steps", "2", "--size", "32", "--batch", "2",
        "--val-every", "1", "--print-every", "1", "--warmup-steps", "1", "--train-images", "8",
        "--augment", "none"]) == 0
    r = json.loads((out / "kvasir_early_training.json").read_text())
    assert r["commit"] == "a1b2c3d" and r["device"] == "cpu" and r["date"]
    (run,) = r["runs"]
    assert run["variant"] == "default" and 0.0 <= run["val_dice"] <= 100.0
    assert (out / "kvasir_early_training.md").is_file()
