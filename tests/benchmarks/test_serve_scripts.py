"""benchmarks/serve_load.py and benchmarks/serve_batching.py, tiny and on the CPU, in their own
processes (each starts a server; serve_batching's watchdog may end its process)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], timeout: float = 120) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p)
    env["HRMEDSEG_COMMIT"] = "feed123"
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


@pytest.mark.slow  # the server subprocess loads torch and the weights: about 15 s
@pytest.mark.timeout(180)
def test_serve_load_counts_every_request(tmp_path):
    out = tmp_path / "load.json"
    _run(["benchmarks/serve_load.py", "--size", "64", "--requests", "8", "--clients", "2",
          "-o", str(out)])
    r = json.loads(out.read_text())
    assert r["git_commit"] == "feed123" and r["date"] and r["device"].startswith("cpu")
    assert r["ok"] + r["failed"] == r["requests"] == 8 and r["failed"] == 0
    lat = r["latency_ms"]
    assert lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert r["malformed_request_mid_load"]["status"] == 400  # a bad upload fails alone


@pytest.mark.timeout(180)
def test_serve_batching_quick_compares_both_phases(tmp_path):
    out = tmp_path / "batching.json"
    _run(["benchmarks/serve_batching.py", "--quick", "-o", str(out)])
    r = json.loads(out.read_text())
    assert r["commit"] == "feed123" and r["date"] and r["device"] == "cpu"
    off, on = r["phases"]
    assert off["phase"] == "batching_off" and off["max_batch_seen"] == 1
    assert on["phase"] == "batching_on" and on["max_batch_seen"] <= 4
    for ph in (off, on):
        assert ph["ok"] == ph["requests"] == 12 and ph["failed"] == 0
    assert r["speedup_requests_per_s"] == pytest.approx(
        on["requests_per_s"] / off["requests_per_s"], rel=1e-2)
