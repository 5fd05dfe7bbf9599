"""Bounded load test of ``hrmedseg serve`` on loopback.

Starts ``hrmedseg serve`` in a subprocess on a free 127.0.0.1 port, sends --requests requests
from --clients concurrent clients (shipped DSB-2018 samples, PNG responses), injects one malformed
request in the middle of the load, and writes p50/p95/p99 latency, requests/s, failures and the
server's RSS before/after as JSON. Stops by itself.

    python benchmarks/serve_load.py --device cpu --size 256 --requests 320 --clients 16 \
        -o benchmarks/results/serve_load_cpu.json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install
from hrmedseg.atomic import write_json_atomic  # noqa: E402
from hrmedseg.provenance import source_commit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "hrmedseg" / "samples" / "dsb2018" / "images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hrmedseg")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--requests", type=int, default=320)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--batch-wait-ms", type=float, default=10)
    ap.add_argument("--queue-size", type=int, default=64)
    ap.add_argument("-o", "--out", type=Path, required=True, help="result JSON file")
    a = ap.parse_args(argv)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "hrmedseg", "serve", a.model, "--port", str(port), "--device", a.device,
           "--size", str(a.size), "--max-batch", str(a.max_batch), "--batch-wait-ms", str(a.batch_wait_ms),
           "--queue-size", str(a.queue_size)]
    srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(timeout=120) as c:
            for _ in range(600):
                try:
                    if c.get(base + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            else:
                raise SystemExit("server did not start")
            files = [p.read_bytes() for p in sorted(SAMPLES.glob("*.png"))]
            for f in files:  # warm-up, outside the measurement
                assert c.post(base + "/v1/segment", files={"file": ("a.png", f, "image/png")}).status_code == 200
            proc = psutil.Process(srv.pid)
            rss_before = proc.memory_info().rss

            lock = threading.Lock()
            counter = iter(range(a.requests))
            lat: list[float] = []
            failures: list[str] = []
            injected: dict = {}

            def client() -> None:
                with httpx.Client(timeout=120) as cc:
                    while True:
                        with lock:
                            i = next(counter, None)
                        if i is None:
                            return
                        if i == a.requests // 2 and not injected:
                            r = cc.post(base + "/v1/segment", files={"file": ("bad.png", b"\x89PNG\r\n\x1a\ngarbage", "image/png")})
                            injected.update(status=r.status_code, body=r.json())
                        t0 = time.perf_counter()
                        try:
                            r = cc.post(base + "/v1/segment", files={"file": ("a.png", files[i % len(files)], "image/png")})
                            ok = r.status_code == 200 and r.content[:4] == b"\x89PNG"
                            why = f"{r.status_code} {r.text[:80]}"
                        except httpx.HTTPError as exc:
                            ok, why = False, repr(exc)
                        dt_ = time.perf_counter() - t0
                        with lock:
                            (lat.append(dt_) if ok else failures.append(why))

            t0 = time.perf_counter()
            threads = [threading.Thread(target=client) for _ in range(a.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            rss_after = proc.memory_info().rss
            stats = c.get(base + "/v1/models").json()["stats"]
    finally:
        srv.terminate()
        try:
            srv.wait(20)
        except subprocess.TimeoutExpired:
            srv.kill()
    ms = np.asarray(lat) * 1000
    commit = source_commit()
    import torch
    device = a.device if a.device != "cpu" else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical cores visible, torch threads {torch.get_num_threads()})"
    if a.device.startswith("cuda") and torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    result = {
        "what": "hrmedseg serve load test on loopback: POST /v1/segment?format=png, shipped DSB-2018 samples (256x256/360x360 RGBA PNG)",
        "model": a.model, "model_input_size": a.size,
        "note": f"shipped hrmedseg weights run at {a.size}x{a.size} (smaller than the trained 1024) to keep the CPU run quick",
        "device": device, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "server_command": " ".join(["hrmedseg"] + cmd[3:]),
        "clients": a.clients, "requests": a.requests, "ok": len(lat), "failed": len(failures),
        "failures": failures[:5], "wall_s": round(wall, 3), "requests_per_s": round(len(lat) / wall, 2),
        "latency_ms": {"p50": round(float(np.percentile(ms, 50)), 1), "p95": round(float(np.percentile(ms, 95)), 1),
                       "p99": round(float(np.percentile(ms, 99)), 1), "max": round(float(ms.max()), 1)} if len(ms) else None,
        "malformed_request_mid_load": injected,
        "server_rss_mb": {"before": round(rss_before / 2**20, 1), "after": round(rss_after / 2**20, 1)},
        "batcher": stats,
    }
    write_json_atomic(a.out, result)
    print(json.dumps(result, indent=2))
    return 0 if not failures and injected.get("status", 0) // 100 == 4 else 1


if __name__ == "__main__":
    sys.exit(main())
