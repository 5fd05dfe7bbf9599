"""Augmentation throughput: the batched tensor augmentation on each device, and the per-item CPU path.

    python benchmarks/augment_throughput.py -o benchmarks/results/augment_throughput_tensor_cpu.json
    python benchmarks/augment_throughput.py -o benchmarks/results/augment_throughput_tensor_h200.json --modes batch

``batch`` mode: :class:`hrmedseg.data.augment.BatchAugment` on a uint8 batch (default 16 at 1024²)
already on the device, parameters drawn per item on the CPU (what the trainer does per step), for
the "paper" and "strong" policies; on the CPU with all torch threads, and on CUDA when available.
``item`` mode: ``train_transform(size, policy)`` on one image in one thread, i.e. the images/s of one
DataLoader worker (default size 512², as the former albumentations figure in
results/augment_throughput_cpu.json). One JSON with device, date and commit.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hrmedseg.atomic import write_json_atomic
from hrmedseg.data.augment import BatchAugment, item_seed
from hrmedseg.data.transforms import train_transform
from hrmedseg.profiling.speed import sync
from hrmedseg.provenance import source_commit

POLICIES = ("paper", "strong")


def natural_batch(b: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth uint8 RGB images (B, 3, size, size) and a disc mask each (B, size, size)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, max(2, size // 16), max(2, size // 16), generator=gen)
    img = F.interpolate(small, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 4) ** 2).to(torch.uint8)
    return (img * 255).round().to(torch.uint8), disc.expand(b, size, size).contiguous()


def batch_rate(policy: str, device: torch.device, batch: int, size: int, seconds: float) -> float:
    """Images/s of BatchAugment.apply (+ the per-item parameter draw) on ``device``."""
    aug = BatchAugment(size, policy)
    img, mask = natural_batch(batch, size)
    img, mask = img.to(device), mask.to(device)
    step = 0

    def one() -> None:
        nonlocal step
        params = aug.draw_items([item_seed(0, 0, step * batch + i) for i in range(batch)])
        aug.apply(img, mask, params)
        step += 1

    for _ in range(3):
        one()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        one()
        n += 1
    sync(device)
    return n * batch / (time.perf_counter() - t0)


def item_rate(policy: str, size: int, seconds: float) -> float:
    """Images/s of the per-item pipeline in one thread (one DataLoader worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = train_transform(size, policy)
        img, mask = natural_batch(1, size)
        img_np, mask_np = img[0].permute(1, 2, 0).numpy().copy(), mask[0].numpy()
        for s in range(3):
            t.set_random_seed(s)
            t(image=img_np, mask=mask_np, keep_uint8=True)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 3:
            t.set_random_seed(n)
            t(image=img_np, mask=mask_np, keep_uint8=True)
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--modes", nargs="+", choices=("batch", "item"), default=["batch", "item"])
    ap.add_argument("--size", type=int, default=1024, help="batch mode image size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--item-size", type=int, default=512, help="item mode image size")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="batch mode devices (default: cpu, and cuda when available)")
    ap.add_argument("--seconds", type=float, default=8.0, help="timing per policy and device")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for batch mode (default: torch's; use 1 on a shared, loaded machine, "
                         "where OpenMP threads waiting for each other cost more than they give)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = source_commit()  # of the code measured, before anything can change the checkout
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    out: dict = {"what": "augmentation images/s, uint8 RGB + mask", "torch": torch.__version__,
                 "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
                 "python": platform.python_version()}
    if "batch" in args.modes:
        rows = {}
        for name in devices:
            device = torch.device(name)
            label = (torch.cuda.get_device_name(device) if device.type == "cuda"
                     else f"cpu ({torch.get_num_threads()} threads)")
            rows[name] = {"device": label, **{p: round(batch_rate(p, device, args.batch, args.size, args.seconds), 1)
                                              for p in POLICIES}}
        out["batch"] = {"size": args.size, "batch": args.batch, "images_per_s": rows}
    if "item" in args.modes:
        out["item"] = {"size": args.item_size, "what": "one worker, one thread",
                       "images_per_s": {p: round(item_rate(p, args.item_size, args.seconds), 1) for p in POLICIES}}
    out["commit"] = commit
    out["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_json_atomic(args.out, out)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
