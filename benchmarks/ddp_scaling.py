"""HRMedSeg training throughput at 1024² on 1 GPU and on N GPUs (torchrun, DDP over NCCL).

    torchrun --nproc_per_node=1 benchmarks/ddp_scaling.py --out DIR   # writes DIR/ddp_scaling_w1.json
    torchrun --nproc_per_node=2 benchmarks/ddp_scaling.py --out DIR   # writes DIR/ddp_scaling_w2.json
    python benchmarks/ddp_scaling.py --report DIR                     # DIR/ddp_scaling.md (+ .json)

Every process runs the package's own training step (``Engine.train_step`` of the segmentation
task: the DDP wrapper the task builds, bf16 autocast, the default dice_ce loss, AdamW) on a
GPU-resident batch of ``--batch`` images per GPU, so the number measures compute and gradient
all-reduce, not data loading (the data pipeline is measured by the real-data runs). Weak
scaling: the global batch grows with the number of GPUs, as `hrmedseg train` users scale out.
Rank 0 writes the result: global images/s, step time, and every rank's peak memory.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hrmedseg.atomic import write_json_atomic
from hrmedseg.provenance import source_commit


class _Sized:
    """The segmentation task only needs the training set's length (for its sampler) here."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        raise IndexError("synthetic benchmark: batches are fed directly")


def measure(args: argparse.Namespace) -> dict[str, Any] | None:
    import torch
    import torch.distributed as dist

    from hrmedseg.training.config import load_config
    from hrmedseg.training.distributed import init_distributed
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.engine import Engine
    from hrmedseg.training.tasks.segment import SegmentTask, build_model

    info = init_distributed(args.device)
    world = info.world_size
    cfg = load_config(None, [f"model.name={args.model}", "model.pretrained=none",
                             f"data.size=[{args.size},{args.size}]", "data.workers=0",
                             f"train.batch_size={args.batch * world}",
                             f"train.precision={args.precision}", f"train.device={args.device}",
                             f"train.channels_last={args.channels_last}",
                             f"train.out_dir={args.out / f'_run_w{world}'}"])
    net = build_model(cfg)
    loss = build_loss(cfg.loss.name, int(net.config.num_classes), **cfg.loss.kwargs)
    task = SegmentTask(cfg, model=net, loss_fn=loss, train_set=_Sized(args.batch * world * 4))
    engine = Engine(cfg, task, dist_info=info)
    g = torch.Generator(device=info.device).manual_seed(1234 + info.rank)
    c = int(net.config.in_chans)
    batch = {"image": torch.randn(args.batch, c, args.size, args.size, device=info.device, generator=g),
             "mask": (torch.rand(args.batch, args.size, args.size, device=info.device, generator=g) > 0.7).long()}
    for _ in range(args.warmup):
        engine.train_step(batch)
    torch.cuda.synchronize(info.device) if info.device.type == "cuda" else None
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    if info.enabled:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        engine.train_step(batch)
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    if info.enabled:
        dist.barrier()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(info.device) / 1e9 if info.device.type == "cuda" else float("nan")
    stats = torch.tensor([wall, peak], dtype=torch.float64, device=info.device)
    if info.enabled:
        gathered = [torch.zeros_like(stats) for _ in range(world)]
        dist.all_gather(gathered, stats)
    else:
        gathered = [stats]
    out = None
    if info.is_main:
        walls = [float(t[0]) for t in gathered]
        peaks = [float(t[1]) for t in gathered]
        step_s = max(walls) / args.iters
        names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}) \
            if info.device.type == "cuda" else ["cpu"]
        out = {"model": args.model, "size": args.size, "per_gpu_batch": args.batch,
               "world_size": world, "global_batch": args.batch * world, "precision": args.precision,
               "channels_last": args.channels_last, "warmup": args.warmup, "iters": args.iters,
               "step_s": round(step_s, 5),
               "train_images_per_s": round(args.batch * world / step_s, 1),
               "peak_mem_gb_per_gpu": [round(p, 3) for p in peaks],
               "peak_mem_gb_per_image": round(max(peaks) / args.batch, 4),
               "ddp": info.enabled, "backend": dist.get_backend() if info.enabled else None,
               "device": names, "torch": torch.__version__, "commit": source_commit() or "unknown",
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "nccl_nvls_enable": os.environ.get("NCCL_NVLS_ENABLE"),
               "command": "torchrun --nproc_per_node=%d %s" % (world, " ".join(sys.argv))}
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / f"ddp_scaling_w{world}.json", out)
        print(json.dumps(out), flush=True)
    engine.close()
    return out


def _real_runs(folder: Path) -> list[dict[str, Any]]:
    """Real-data runs placed beside the results: real/w<N>_s<seed>/{summary.json, run.json}."""
    rows = []
    for d in sorted(folder.glob("w*_s*")):
        summ, meta = d / "summary.json", d / "run.json"
        if not (summ.is_file() and meta.is_file()):
            continue
        s, m = json.loads(summ.read_text()), json.loads(meta.read_text())
        t = s.get("test", {}).get("model_resolution", {})
        rows.append({"world_size": m["world_size"], "seed": m["seed"], "wall_s": m["wall_s"],
                     "overrides": m["overrides"], "epochs": s["epochs_done"],
                     "best_val_dice": s.get("best_val_dice") or float("nan"),
                     "dice": 100 * t.get("dice", float("nan")), "iou": 100 * t.get("iou", float("nan")),
                     "hd95": t.get("hd95", float("nan"))})
    return sorted(rows, key=lambda r: (r["world_size"], r["seed"]))


def report(folder: Path) -> str:
    runs = sorted((json.loads(p.read_text()) for p in folder.glob("ddp_scaling_w*.json")),
                  key=lambda r: r["world_size"])
    if not runs:
        raise SystemExit(f"{folder}: no ddp_scaling_w*.json results")
    base = runs[0]
    lines = [f"# HRMedSeg DDP scaling, {base['size']}², {base['precision']}, "
             f"{base['per_gpu_batch']} images per GPU", "",
             f"Device {', '.join(base['device'])}, torch {base['torch']}, {base['date']}, "
             f"commit {base['commit']}. Synthetic GPU-resident batches through `Engine.train_step` "
             f"(DDP/NCCL for >1 GPU), {base['iters']} timed steps after {base['warmup']} warm-up.", "",
             "| GPUs | global batch | step (ms) | train img/s | speed-up | scaling efficiency | "
             "peak GB per GPU | peak GB/img |", "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        sp = r["train_images_per_s"] / base["train_images_per_s"] * base["world_size"]
        eff = sp / r["world_size"]
        lines.append(f"| {r['world_size']} | {r['global_batch']} | {1000 * r['step_s']:.1f} | "
                     f"{r['train_images_per_s']:.1f} | {sp:.2f}× | {100 * eff:.0f}% | "
                     f"{', '.join(f'{p:.2f}' for p in r['peak_mem_gb_per_gpu'])} | "
                     f"{r['peak_mem_gb_per_image']:.3f} |")
    real = _real_runs(folder / "real")
    if real:
        lines += ["", "## Real data: DSB-2018 test split, 1 GPU vs several (same recipe, global batch, "
                  "epochs)", "",
                  "Each run: `hrmedseg train` (default recipe, shipped distilled encoder) with the "
                  "overrides below, alone or under `torchrun --nproc_per_node=N`; the best-val "
                  "checkpoint is evaluated on the test split by rank 0.", "",
                  "| GPUs | seed | epochs | wall (s, incl. start and test) | best val Dice | "
                  "test Dice | test IoU | test HD95 (px) |", "|---|---|---|---|---|---|---|---|"]
        for r in real:
            lines.append(f"| {r['world_size']} | {r['seed']} | {r['epochs']} | {r['wall_s']:.0f} | "
                         f"{r['best_val_dice']:.2f} | {r['dice']:.2f} | {r['iou']:.2f} | {r['hd95']:.2f} |")
        import statistics as st
        for w in sorted({r["world_size"] for r in real}):
            d = [r["dice"] for r in real if r["world_size"] == w]
            sd = f" ± {st.stdev(d):.2f}" if len(d) > 1 else ""
            lines.append(f"\n{w} GPU(s): test Dice {st.mean(d):.2f}{sd} over {len(d)} seed(s).")
        lines += ["", "Overrides: `" + real[0]["overrides"] + "`"]
    text = "\n".join(lines) + "\n"
    (folder / "ddp_scaling.md").write_text(text)
    write_json_atomic(folder / "ddp_scaling.json", runs)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, help="folder for ddp_scaling_w<N>.json")
    ap.add_argument("--report", type=Path, help="combine the ddp_scaling_w*.json of this folder")
    ap.add_argument("--model", default="hrmedseg")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16, help="images per GPU")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--channels-last", default="false")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args(argv)
    if args.report:
        print(report(args.report))
        return 0
    if args.out is None:
        ap.error("--out is required unless --report is given")
    measure(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
