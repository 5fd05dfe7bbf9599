"""benchmarks/equal_time.py on a tiny synthetic dataset: one model, one seed, a 2-s budget."""
import json

import numpy as np
import pytest
from PIL import Image


def _dataset(root, n=12, side=40):
    rng = np.random.default_rng(0)
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True)
    for i in range(n):
        img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        mask = np.zeros((side, side), np.uint8)
        mask[8:24, 10:30] = 255
        img[mask > 0] = 230  # a bright square to find
        Image.fromarray(img).save(root / "images" / f"c{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"c{i:02d}.png")


@pytest.mark.slow  # trains and evaluates: about 20 s on two shared cores
@pytest.mark.timeout(300)
def test_one_budgeted_run_is_reported(tmp_path, load_benchmark, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "e9e9e9e")
    _dataset(tmp_path / "data" / "toy")
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
