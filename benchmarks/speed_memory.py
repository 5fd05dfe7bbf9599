"""HRMedSeg training-step and inference speed and peak memory on one GPU: eager with each speed
switch, gradient checkpointing and channels-last; compiled (torch.compile, and CUDA graphs
with mode=reduce-overhead); and tiled inference of a large image. One JSON result file.

  python benchmarks/speed_memory.py -o speed_memory.json                 # 1024², batch 16, bf16
  python benchmarks/speed_memory.py --compiled "train:all+ckpt:reduce-overhead" -o cg.json
  python benchmarks/speed_memory.py --quick -o /tmp/speed_quick.json      # tiny model, CPU

A training step is forward (bf16 autocast), Dice + BCE, backward and Adam; memory is
``max_memory_allocated`` over one step / batch, and for CUDA graphs the reserved peak (an upper
bound; the graph pool escapes the allocated count). Parts (``--parts``), each in its own
try/except, the JSON rewritten after each:

  rates     device copy bandwidth and bf16/fp32 matmul rates
  eager     one row per configuration in EAGER_ROWS: train img/s, GB/img, inference img/s
  compiled  what --compiled lists: ``kind:switches:mode`` (kind train|infer|train_fp32|
            infer_fp32; switches plain|all with +ckpt, +ckptF, +mbB; a torch.compile mode)
  tiled     hrmedseg.inference.Segmenter(mode="tile") on a synthetic 8000x8000 image
"""
from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (ALL_SWITCHES, build_hrmedseg, log, make_loss, parse_switches,  # noqa: E402
                     run_parts, script_device)

from hrmedseg.errors import first_line  # noqa: E402
from hrmedseg.inference.segmenter import Segmenter  # noqa: E402
from hrmedseg.inference.tiling import tile_starts  # noqa: E402
from hrmedseg.profiling.speed import (activation_memory_budget, autocast_or_none,  # noqa: E402
                                      device_rates, free_memory, make_train_step, measure_call,
                                      random_blob_mask, result_header,
                                      set_checkpointing, sync, synthetic_image, write_result)

TAG = "speed_memory"
EAGER_ROWS: dict[str, dict[str, Any]] = {
    "plain": {},
    "fast_norm": {"model": {"fast_norm": True}},
    "fast_attention": {"model": {"fast_attention": True}},
    "pool_channels_first": {"model": {"pool_channels_first": True}},
    "pool_direct": {"model": {"pool_impl": "direct"}},
    "all_switches": {"model": dict(ALL_SWITCHES)},
    "channels_last": {"channels_last": True},
    "grad_checkpointing": {"ckpt": 1.0},
    "all_switches+grad_checkpointing": {"model": dict(ALL_SWITCHES), "ckpt": 1.0},
    "all_switches+grad_checkpointing_half": {"model": dict(ALL_SWITCHES), "ckpt": 0.5},
}
COMPILED_DEFAULT = ("train:all:default,train:all:reduce-overhead,train:all+ckpt:reduce-overhead,"
                    "infer:all:reduce-overhead")
KINDS = ("train", "infer", "train_fp32", "infer_fp32")


def parse_compiled(spec: str) -> list[tuple[str, str, str]]:
    """``kind:switches:mode`` items, comma-separated, in the order they run."""
    runs = []
    for item in (t.strip() for t in spec.split(",") if t.strip()):
        parts = item.split(":")
        try:
            if len(parts) != 3 or parts[0] not in KINDS:
                raise ValueError
            parse_switches(parts[1])
        except ValueError:
            raise SystemExit(f"--compiled: bad item {item!r} (want kind:switches:mode, kind "
                             f"{'|'.join(KINDS)}, switches plain|all[+ckpt[F]][+mbB])") from None
        runs.append((parts[0], parts[1], parts[2]))
    return runs


def _inputs(cfg: dict[str, Any], dev: torch.device, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = cfg["size"]
    x = torch.randn(batch, 3, s, s, generator=torch.Generator().manual_seed(cfg["seed"] + 10))
    return x.to(dev), random_blob_mask(batch, s, s, dev, cfg["seed"] + 11)


def part_eager(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    b = cfg["batch"]
    res: dict[str, Any] = {"rows": {}, "errors": {}}
    x0, target = _inputs(cfg, dev, b)
    for name, spec in EAGER_ROWS.items():
        try:
            model = build_hrmedseg(cfg["size"], cfg["seed"], cfg["tiny"],
                                   **spec.get("model", {})).to(dev).train()
            set_checkpointing(model, float(spec.get("ckpt", 0.0)))
            x = x0
            if spec.get("channels_last"):
                model = model.to(memory_format=torch.channels_last)
                x = x0.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            step = make_train_step(model, opt, x, target, torch.bfloat16, make_loss())
            train = measure_call(step, dev, b, cfg["warmup"], cfg["reps"])
            del opt, step
            model.eval()

            def infer() -> None:
                with torch.inference_mode(), autocast_or_none(dev, torch.bfloat16):
                    model(x)
            inf = measure_call(infer, dev, b, cfg["warmup"], cfg["reps"])
            res["rows"][name] = {"train_images_per_s": train["images_per_s"],
                                 "step_ms_median": train["ms_median"],
                                 "peak_train_mem_per_image_gb": train["peak_mem_per_image_gb"],
                                 "infer_images_per_s": inf["images_per_s"],
                                 "infer_batch_ms_median": inf["ms_median"]}
            log(TAG, f"eager {name}: {train['images_per_s']:.1f} train img/s, "
                     f"{inf['images_per_s']:.1f} infer img/s")
            del model
        except Exception as exc:  # noqa: BLE001 - one row never loses the others
            res["errors"][name] = traceback.format_exc(limit=6)
            log(TAG, f"eager {name}: ERROR {first_line(exc)}")
        free_memory(dev)
    return res


def compiled_run(cfg: dict[str, Any], dev: torch.device, kind: str, switches: str, mode: str
                 ) -> dict[str, Any]:
    """One compiled configuration: first-call (compile) seconds, median step or batch time,
    images/s and memory per image."""
    spec = parse_switches(switches)
    amp = None if kind.endswith("_fp32") else torch.bfloat16
    train = kind.startswith("train")
    b = cfg["batch"]
    model = build_hrmedseg(cfg["size"], cfg["seed"], cfg["tiny"], **spec["switches"]).to(dev)
    model.train(train)
    set_checkpointing(model, spec["ckpt"])
    cmodel = torch.compile(model, mode=mode)
    x, target = _inputs(cfg, dev, b)
    if train:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        fn = make_train_step(cmodel, opt, x, target, amp, make_loss())
    else:
        def fn() -> None:
            with torch.inference_mode(), autocast_or_none(dev, amp):
                cmodel(x)
    with activation_memory_budget(spec["memory_budget"]):
        row = measure_call(fn, dev, b, cfg["warmup"], cfg["reps"], first_call_seconds=True)
    row.update(kind=kind, switches=spec["switches"], mode=mode, checkpoint_fraction=spec["ckpt"],
               activation_memory_budget=spec["memory_budget"],
               dtype="bf16 autocast" if amp else "fp32")
    return row


def part_compiled(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"runs": {}, "errors": {}}
    for kind, switches, mode in cfg["compiled"]:
        label = f"{kind}:{switches}:{mode}"
        torch._dynamo.reset()
        try:
            row = compiled_run(cfg, dev, kind, switches, mode)
            res["runs"][label] = row
            log(TAG, f"compiled {label}: {row['images_per_s']:.1f} img/s "
                     f"(compile {row['first_call_seconds']} s)")
        except Exception as exc:  # noqa: BLE001
            res["errors"][label] = traceback.format_exc(limit=8)
            log(TAG, f"compiled {label}: ERROR {first_line(exc)}")
        free_memory(dev)
    return res


def part_tiled(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    """Wall time, model time and peak GPU memory of tiled prediction of one large image."""
    h, w = cfg["tiled_hw"]
    tile, tb = cfg["tile"], cfg["tile_batch"]
    precision = "bf16" if dev.type == "cuda" else "fp32"  # CPU bf16 depthwise convs are slow
    img = synthetic_image(h, w, cfg["seed"] + 30)
    model = build_hrmedseg(tile, cfg["seed"], cfg["tiny"])
    seg = Segmenter(model, device=str(dev), size=tile, precision=precision, mode="tile",
                    overlap=0.25, tile_batch=tb)
    n_tiles = len(tile_starts(h, tile, 0.25)) * len(tile_starts(w, tile, 0.25))
    for nb in sorted({min(tb, n_tiles)} | ({n_tiles % tb} if n_tiles % tb else set())):
        seg.logits(torch.randn(nb, 3, tile, tile))  # warm up the batch shapes of the run
    sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    pred = seg.predict(img)
    wall = time.perf_counter() - t0
    res = {"image_hw": [h, w], "tile": tile, "tile_batch": tb, "tiles": n_tiles,
           "precision": precision, "wall_s": wall, "megapixels_per_s": h * w / 1e6 / wall,
           "peak_gpu_mem_gb": (torch.cuda.max_memory_allocated(dev) / 1e9
                               if dev.type == "cuda" else None),
           "labels_shape": list(pred.labels.shape),
           "probabilities_finite": bool(np.isfinite(pred.probabilities).all())}
    log(TAG, f"tiled {h}x{w}: {n_tiles} tiles in {wall:.2f} s")
    return res


PARTS = {"rates": lambda dev, cfg: device_rates(dev, *cfg["rates_sizes"], reps=cfg["reps"]),
         "eager": part_eager, "compiled": part_compiled, "tiled": part_tiled}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="result JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny HRMedSeg at 64², batch 2, one timed repetition, on the CPU "
                         "unless --device says otherwise; compiled runs only if --compiled is given")
    ap.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    ap.add_argument("--parts", default="rates,eager,compiled,tiled")
    ap.add_argument("--size", type=int, help="input side (1024; quick 64)")
    ap.add_argument("--batch", type=int, help="batch (16; quick 2)")
    ap.add_argument("--warmup", type=int, help="untimed calls first (3; quick 1)")
    ap.add_argument("--reps", type=int, help="timed calls, median reported (10; quick 1)")
    ap.add_argument("--compiled", help=f"compiled runs ({COMPILED_DEFAULT})")
    ap.add_argument("--tiled-hw", type=int, nargs=2, metavar=("H", "W"),
                    help="tiled image (8000 8000; quick 300 280)")
    ap.add_argument("--tile", type=int, help="tile side (1024; quick 64)")
    ap.add_argument("--tile-batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    q = args.quick
    dev = script_device(args.device, q)

    def pick(v: Any, full: Any, quick: Any) -> Any:
        return v if v is not None else (quick if q else full)
    parts = [p for p in args.parts.split(",") if p]
    if q and args.compiled is None and "compiled" in parts:
        parts.remove("compiled")  # inductor takes minutes on the CPU
    cfg = {"size": pick(args.size, 1024, 64), "batch": pick(args.batch, 16, 2),
           "warmup": pick(args.warmup, 3, 1), "reps": pick(args.reps, 10, 1), "tiny": q,
           "seed": args.seed, "compiled": parse_compiled(args.compiled or COMPILED_DEFAULT),
           "tiled_hw": list(pick(args.tiled_hw, (8000, 8000), (300, 280))),
           "tile": pick(args.tile, 1024, 64), "tile_batch": args.tile_batch,
           "rates_sizes": (32 << 20, 256, 256) if q else (1 << 30, 8192, 4096)}
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"--parts: unknown {bad} (known: {', '.join(PARTS)})")
    torch.backends.cudnn.benchmark = True
    result = {**result_header("benchmarks/speed_memory.py", dev, argv), "quick": q,
              "model": "hrmedseg (tiny, --quick)" if q else "hrmedseg",
              "config": {**cfg, "compiled": [":".join(r) for r in cfg["compiled"]]},
              "parts": parts, "errors": {}, "status": "running"}
    write_result(args.output, result)
    run_parts(TAG, result, args.output, [(p, lambda p=p: PARTS[p](dev, cfg)) for p in parts], dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
