"""The augmentation throughput benchmark writes its JSON (tiny sizes, a fraction of a second each)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "augment_throughput.py"


def test_benchmark_writes_rates_device_date_and_commit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("augment_throughput", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["augment_throughput.py", "-o", str(out), "--size", "32", "--batch", "2",
                                      "--item-size", "32", "--seconds", "0.05", "--devices", "cpu"])
    assert mod.main() == 0
    res = json.loads(out.read_text())
    rows = res["batch"]["images_per_s"]["cpu"]
    assert rows["device"].startswith("cpu") and rows["paper"] > 0 and rows["strong"] > 0
    assert res["item"]["images_per_s"]["paper"] > 0 and res["date"] and "commit" in res
