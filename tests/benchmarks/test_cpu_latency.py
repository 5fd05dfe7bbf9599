"""benchmarks/cpu_latency.py at 64² with one timed run: the result file and its provenance."""
import json


def test_quick_latency_run(tmp_path, load_benchmark):
    out = tmp_path / "lat.json"
    assert load_benchmark("cpu_latency").main(
        ["--size", "64", "--threads", "1", "--runs", "2", "--warmup", "0",
         "--variants", "torch_fp32", "--no-profile", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    res = r["results"]["torch_fp32"]
    assert len(res["runs_s"]) == 2 and sorted(res["runs_s"])[0] <= res["median_s"]
    assert r["medians_s"]["torch_fp32"] == res["median_s"]
    assert r["env"]["device"] == "cpu" and r["env"]["date"] and "commit" in r["env"]
