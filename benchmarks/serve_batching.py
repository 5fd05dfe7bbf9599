"""Dynamic batching on vs off: throughput and latency of ``hrmedseg serve`` in one process.

Builds one Segmenter (default: ``hrmedseg`` at 1024x1024 on CUDA when available, else CPU), then
serves it twice with the app's own ``create_app`` under uvicorn in a thread on 127.0.0.1:
once with dynamic batching off (max batch 1) and once on (default max batch 16, wait 5 ms).
Each phase: a warm-up burst, then --clients concurrent clients each send --requests-per-client
``POST /v1/segment`` requests of the same 1024x1024 RGB PNG (raw ``image/png`` body, PNG mask
back) one after another. Bounded: the total number of requests is fixed and the whole run stops
after --time-limit seconds (default 55; a phase that runs out of time reports what finished, with
``timed_out: true``; a watchdog writes what it has and ends the process 5 s after the limit if
the model hangs).
Clients and server share one process (and its GIL), so the numbers include client overhead.

    python benchmarks/serve_batching.py -o serve_batching_h100.json        # ~30-50 s on an H100
    python benchmarks/serve_batching.py --quick -o /tmp/serve_batching_quick.json   # CPU smoke run

Writes one JSON: device, torch/CUDA versions, date, commit (env HRMEDSEG_COMMIT, else git),
settings, and per phase requests/s, p50/p95/p99 latency, failures, batches formed and the mean
batch size (batcher statistics and the X-Batch-Size header of each response).
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import io
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> pip name, for everything `hrmedseg serve` and this script import
NEEDED = {"numpy": "numpy", "PIL": "pillow", "torch": "torch", "fastapi": "fastapi", "starlette": "starlette",
          "uvicorn": "uvicorn", "python_multipart": "python-multipart", "httpx": "httpx"}


def check_modules() -> None:
    def absent(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is None
        except (ImportError, ValueError):
            return True
    missing = [name for name in NEEDED if absent(name)]
    if missing:
        print("serve_batching.py: missing Python modules needed by hrmedseg serve / this benchmark: "
              + ", ".join(missing) + "\n  install: pip install " + " ".join(NEEDED[m] for m in missing),
              file=sys.stderr)
        sys.exit(2)
    try:
        import hrmedseg  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))  # a checkout without `pip install -e .`
        import hrmedseg  # noqa: F401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_png(side: int) -> bytes:
    """A deterministic microscopy-like RGB image (bright blobs on a dark, slightly noisy ground)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side].astype(np.float32)
    img = np.zeros((side, side), np.float32)
    for cx, cy, r in rng.uniform([0, 0, side / 60], [side, side, side / 20], (40, 3)):
        img = np.maximum(img, np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
    img = img * 200 + 20 + rng.normal(0, 4, img.shape)
    rgb = np.clip(np.stack([img, img * 0.8, img * 0.9], -1), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def device_info(seg) -> dict:
    import torch
    info = {"device": str(seg.device), "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version()}
    if seg.device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(seg.device)
    else:
        info["device_name"] = (f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} logical "
                               f"cores visible, torch threads {torch.get_num_threads()})")
    return info


class Server:
    """The app (create_app) under uvicorn in a daemon thread on 127.0.0.1."""

    def __init__(self, app) -> None:
        import uvicorn
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                 access_log=False))
        self.thread = threading.Thread(target=self.srv.run, name="uvicorn", daemon=True)

    def __enter__(self) -> "Server":
        self.thread.start()
        t0 = time.monotonic()
        while not self.srv.started:
            if not self.thread.is_alive() or time.monotonic() - t0 > 30:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.srv.should_exit = True
        self.thread.join(15)
        for m in self.app.state.models.values():
            m.batcher.close()


def pct(ms: list[float], q: float) -> float | None:
    import numpy as np
    return round(float(np.percentile(ms, q)), 2) if ms else None


async def load(url: str, png: bytes, clients: int, per_client: int, budget_s: float) -> dict:
    """``clients`` concurrent clients x ``per_client`` sequential requests; stops at ``budget_s``."""
    import httpx
    lat: list[float] = []
    batch_sizes: list[int] = []
    failures: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.monotonic() + budget_s

    async with httpx.AsyncClient(base_url=url, limits=limits) as c:
        async def client() -> None:
            for _ in range(per_client):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/segment", content=png, headers={"content-type": "image/png"},
                                     timeout=left)
                    ok = r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n"
                    why = "" if ok else f"{r.status_code} {r.text[:120]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{type(exc).__name__}: {str(exc)[:120]}"
                if ok:
                    lat.append((time.perf_counter() - t0) * 1000)
                    batch_sizes.append(int(r.headers.get("x-batch-size", 0)))
                else:
                    failures.append(why)

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(client()) for _ in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=max(budget_s + 1, 0.1))
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
    total = clients * per_client
    return {"lat": lat, "batch_sizes": batch_sizes, "failures": failures, "wall": wall,
            "not_finished": total - len(lat) - len(failures)}


def run_phase(seg, name: str, png: bytes, a, max_batch: int, wait_ms: float, budget_s: float) -> dict:
    from hrmedseg.serve.app import create_app
    settings = {"max_batch": max_batch, "batch_wait_ms": wait_ms, "queue_size": a.queue_size}
    t_phase = time.monotonic()
    app = create_app({a.model: seg}, max_batch=max_batch, batch_wait_ms=wait_ms, queue_size=a.queue_size,
                     timeout_s=max(budget_s, 1.0), max_pixels=max(64_000_000, a.image_size ** 2))
    batcher = app.state.models[a.model].batcher
    with Server(app) as srv:
        # warm-up, not measured: --warmup requests per client, all clients at once (full batches)
        warm = asyncio.run(load(srv.url, png, a.clients, a.warmup, min(budget_s / 3, 20)))
        before = dict(batcher.stats)
        left = budget_s - (time.monotonic() - t_phase)
        res = asyncio.run(load(srv.url, png, a.clients, a.requests_per_client, left))
        after = dict(batcher.stats)
    d = {k: after[k] - before[k] for k in ("requests", "batches", "rejected", "timeouts")}
    lat, n = res["lat"], a.clients * a.requests_per_client
    ok = len(lat)
    batches = sum(1.0 / b for b in res["batch_sizes"] if b > 0)
    out = {
        "phase": name, "settings": settings,
        "requests": n, "ok": ok, "failed": len(res["failures"]), "not_finished": res["not_finished"],
        "timed_out": res["not_finished"] > 0 or any("Timeout" in f for f in res["failures"]),
        "failures": res["failures"][:5],
        "wall_s": round(res["wall"], 3), "requests_per_s": round(ok / res["wall"], 2) if res["wall"] > 0 else None,
        "latency_ms": {"p50": pct(lat, 50), "p95": pct(lat, 95), "p99": pct(lat, 99),
                       "mean": round(sum(lat) / ok, 2) if ok else None, "max": round(max(lat), 2) if ok else None},
        # from each response's X-Batch-Size: a batch of b answers b requests, so sum(1/b) batches
        "batches_formed": round(batches) if ok else 0,
        "mean_batch_size": round(ok / batches, 2) if ok else None,
        "mean_batch_size_seen_by_request": round(sum(res["batch_sizes"]) / ok, 2) if ok else None,
        "max_batch_seen": max(res["batch_sizes"], default=0),
        "batcher_stats_delta": d,   # the batcher's own counters over the measured window
        "warmup": {"requests": a.clients * a.warmup, "ok": len(warm["lat"]),
                   "failed": len(warm["failures"]) + warm["not_finished"]},
    }
    print(f"  {name:>12}: {out['requests_per_s']} req/s, p50 {out['latency_ms']['p50']} ms, "
          f"p95 {out['latency_ms']['p95']} ms, p99 {out['latency_ms']['p99']} ms, failed {out['failed']}, "
          f"not finished {out['not_finished']}, mean batch {out['mean_batch_size']} "
          f"({out['batches_formed']} batches)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("-o", "--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--model", default="hrmedseg", help="model name or folder, as for `hrmedseg serve`")
    ap.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda or cpu")
    ap.add_argument("--size", type=int, default=1024, help="model input side (default 1024)")
    ap.add_argument("--image-size", type=int, default=1024, help="side of the uploaded PNG (default 1024)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    ap.add_argument("--requests-per-client", type=int, default=16, help="per client and phase (default 16)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up requests per client and phase (default 2)")
    ap.add_argument("--max-batch", type=int, default=16, help="max batch of the batching-on phase (default 16)")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0, help="batching-on wait (default 5 ms)")
    ap.add_argument("--queue-size", type=int, default=None, help="default: 4 x clients, at least 64")
    ap.add_argument("--time-limit", type=float, default=55.0, help="whole run, seconds (default 55)")
    ap.add_argument("--quick", action="store_true",
                    help="CPU smoke run: 64x64 model and image, 4 clients x 3 requests, max batch 4")
    if ap.parse_known_args()[0].quick:  # new defaults; options given explicitly still win
        ap.set_defaults(size=64, image_size=64, clients=4, requests_per_client=3, warmup=1, max_batch=4)
    a = ap.parse_args()
    if min(a.clients, a.requests_per_client, a.max_batch, a.size, a.image_size) < 1 or a.warmup < 0:
        ap.error("sizes, counts and --max-batch must be >= 1")
    a.queue_size = a.queue_size or max(64, 4 * a.clients)
    t_start = time.monotonic()
    check_modules()
    from hrmedseg.atomic import write_json_atomic   # importable only after check_modules
    from hrmedseg.provenance import source_commit

    results: list[dict] = []
    hard_limit = a.time_limit + 5

    def watchdog() -> None:  # the model or a thread hangs past every timeout: end the process
        msg = f"still running {hard_limit:.0f} s after start (--time-limit {a.time_limit:g}); gave up"
        print("serve_batching.py: " + msg, file=sys.stderr, flush=True)
        try:
            write_json_atomic(a.out, {"error": msg, "command": " ".join(sys.argv), "phases": results})
        finally:
            os._exit(3)
    timer = threading.Timer(hard_limit, watchdog)
    timer.daemon = True
    timer.start()

    import torch
    from hrmedseg.inference.segmenter import Segmenter
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    seg = Segmenter(a.model, device=device, size=a.size, precision=a.precision)
    png = test_png(a.image_size)
    env = device_info(seg)
    print(f"serve_batching: {a.model} at {a.size}x{a.size} ({a.precision}) on {env['device_name']}, "
          f"{a.image_size}x{a.image_size} PNG ({len(png) / 1e6:.2f} MB), {a.clients} clients x "
          f"{a.requests_per_client} requests per phase", flush=True)

    phases = [("batching_off", 1, 0.0), ("batching_on", a.max_batch, a.batch_wait_ms)]
    for i, (name, mb, wait) in enumerate(phases):
        left = a.time_limit - (time.monotonic() - t_start)
        budget = left / (len(phases) - i)
        if budget < 1:
            results.append({"phase": name, "skipped": "no time left", "timed_out": True})
            continue
        results.append(run_phase(seg, name, png, a, mb, wait, budget))
    timer.cancel()

    off, on = results
    speedup = None
    if off.get("requests_per_s") and on.get("requests_per_s"):
        speedup = round(on["requests_per_s"] / off["requests_per_s"], 2)
    result = {
        "what": "hrmedseg serve, dynamic batching off vs on, one process: app in uvicorn (thread) on "
                "127.0.0.1 + asyncio httpx clients; POST /v1/segment with a raw image/png body, PNG mask back",
        **env, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": source_commit() or "unknown",
        "command": "python benchmarks/serve_batching.py " + " ".join(sys.argv[1:]),
        "settings": {"model": a.model, "model_input_size": a.size, "image_size": a.image_size,
                     "image_png_bytes": len(png), "precision": a.precision, "clients": a.clients,
                     "requests_per_client": a.requests_per_client, "warmup_per_client": a.warmup,
                     "time_limit_s": a.time_limit, "quick": a.quick},
        "phases": results,
        "speedup_requests_per_s": speedup,
        "total_s": round(time.monotonic() - t_start, 1),
    }
    write_json_atomic(a.out, result)
    print(f"serve_batching: speedup {speedup if speedup is not None else 'n/a'}x, "
          f"{result['total_s']} s in all; wrote {a.out}", flush=True)
    bad = any(r.get("timed_out") or r.get("failed") for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # do not wait for a model thread still busy with requests that timed out
