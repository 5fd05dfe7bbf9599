"""Training items per second of one DataLoader worker, as ``hrmedseg train`` builds them.

    python benchmarks/loader_throughput.py --config paper data.root=DSB2018_DIR \
        "data.size=[1024,1024]" data.cache_dir=/tmp/cache1024 \
        --policies paper,strong -o loader_throughput.json

One item = the trainer's whole per-sample path in a worker: read the pre-resized cache entry,
augment with the recipe's policy, make tensors (``SeededDataset`` over the training split,
OpenCV single-threaded as in a worker). Multiply by ``data.workers`` for what a machine with that many free
cores could feed the GPU; the main process's collation and host-to-device copy are not in it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import cv2

from hrmedseg.atomic import write_json_atomic
from hrmedseg.provenance import source_commit
from hrmedseg.training.config import load_config
from hrmedseg.training.data_setup import build_datasets
from hrmedseg.training.sampler import SeededDataset


def items_per_s(dataset: SeededDataset, seconds: float) -> tuple[float, int]:
    """Items per second over at least ``seconds`` (after one warm-up item), cycling the split."""
    dataset[(0, 0)]
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dataset[(n % len(dataset), 1)]
        n += 1
    return n / (time.perf_counter() - t0), n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="paper", help="recipe name or YAML file (paper)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=20.0, help="timing per policy (20)")
    ap.add_argument("--policies", default="", help="comma-separated data.augment values to "
                    "time (default: the recipe's)")
    args = ap.parse_args(argv)
    base = load_config(args.config, [*args.overrides, "data.workers=0"])
    policies = [p for p in args.policies.split(",") if p] or [base.data.augment]
    cv2.setNumThreads(0)   # as in a DataLoader worker (engine.worker_init)
    rates: dict[str, float] = {}
    counts: dict[str, int] = {}
    for policy in policies:
        cfg = load_config(args.config, [*args.overrides, "data.workers=0",
                                        f"data.augment={policy}"])
        data = build_datasets(cfg, 1, 3)
        rates[policy], counts[policy] = items_per_s(SeededDataset(data.train, 0), args.seconds)
        print(f"{policy}: {rates[policy]:.1f} items/s ({counts[policy]} items)", flush=True)
    res = {"what": "training items/s of one DataLoader worker: cache read + augmentation + "
                   "tensors (OpenCV single-threaded)",
           "config": args.config, "overrides": args.overrides, "size": base.data.size,
           "items_per_s": {k: round(v, 1) for k, v in rates.items()}, "items_timed": counts,
           "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
           "opencv": cv2.__version__, "commit": source_commit(),
           "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(args.out, res)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
