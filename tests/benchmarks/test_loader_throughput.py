"""benchmarks/loader_throughput.py on a tiny synthetic dataset: one timed item path per policy."""
import json


def test_loader_throughput_times_each_policy(tmp_path, load_benchmark, toy_dataset, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "0a0a0a0")
    toy_dataset(tmp_path / "ds", n=6)
    out = tmp_path / "r.json"
    mod = load_benchmark("loader_throughput")
    assert mod.main(["--config", "paper", f"data.root={tmp_path / 'ds'}", "data.size=[32,32]",
                     f"data.cache_dir={tmp_path / 'cache'}", "--policies", "paper,strong",
                     "--seconds", "0.2", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["items_per_s"]) == {"paper", "strong"}
    # items/s is the items timed over the time they took
    assert all(n >= 1 for n in res["items_timed"].values()) and res["size"] == [32, 32]
    assert all(v > 0 for v in res["items_per_s"].values())
    assert res["commit"] == "0a0a0a0"
