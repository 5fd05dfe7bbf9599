"""Where HRMedSeg's bf16 training step spends its time on one GPU: step time, the top kernels
(count, ms, share of the step, GPU-busy fraction), FLOPs and bytes per aten op with achieved
bandwidth, the tensors saved for backward, and the floors these imply (FLOPs / measured matmul
rate, bytes / measured copy bandwidth); the same op floors for inference. One JSON file.

  python benchmarks/kernel_profile.py -o kernel_profile.json         # 1024², batch 16, bf16
  python benchmarks/kernel_profile.py --quick -o /tmp/kp.json         # tiny model, CPU
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_hrmedseg, log, make_loss, run_parts, script_device  # noqa: E402

from hrmedseg.profiling.kernels import (OpStats, aten_op_self_ms, flop_floor_ms,  # noqa: E402
                                        kernel_table, op_bandwidth_table, saved_tensor_stats)
from hrmedseg.profiling.speed import (autocast_or_none, device_rates, make_train_step,  # noqa: E402
                                      measure_call, random_blob_mask,
                                      result_header, sync)

TAG = "kernel_profile"


def profile_train_step(dev: torch.device, cfg: dict[str, Any], rates: dict[str, Any]
                       ) -> dict[str, Any]:
    s, b, amp = cfg["size"], cfg["batch"], torch.bfloat16
    model = build_hrmedseg(s, cfg["seed"], cfg["tiny"]).to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    loss_fn = make_loss()
    x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(cfg["seed"] + 10)).to(dev)
    target = random_blob_mask(b, s, s, dev, cfg["seed"] + 11)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    step = make_train_step(model, opt, x, target, amp, loss_fn)
    timing = measure_call(step, dev, b, cfg["warmup"], cfg["reps"])
    step_ms = timing["ms_median"]
    res: dict[str, Any] = {"params": n_params, "step_ms_median": step_ms,
                           "train_images_per_s": timing["images_per_s"],
                           "peak_train_mem_per_image_gb": timing["peak_mem_per_image_gb"],
                           "errors": {}}
    log(TAG, f"step {step_ms:.2f} ms = {timing['images_per_s']:.1f} img/s")

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(cfg["profile_steps"]):
            step()
        sync(dev)
    res["kernels"] = kernel_table(prof, dev, cfg["profile_steps"], step_ms, cfg["top"])
    op_ms = aten_op_self_ms(prof, dev, cfg["profile_steps"])
    del prof

    ops = OpStats()
    with FlopCounterMode(display=False) as fc, ops.mode:
        step()
    sync(dev)
    res["flops_step_flopcounter"] = int(fc.get_total_flops())
    res["ops_step"] = ops.summary()
    res["op_bandwidth"] = op_bandwidth_table(op_ms, ops.bytes_by_op, ops.count_by_op,
                                             ops.flops_by_op, rates.get("copy_bandwidth_GBps"),
                                             dev, cfg["top"])
    opt.zero_grad(set_to_none=True)

    def forward_loss() -> torch.Tensor:
        with autocast_or_none(dev, amp):
            out = model(x)
        return loss_fn(out, target)
    res["saved_tensors"] = saved_tensor_stats(model, forward_loss, x)

    bw = rates["copy_bandwidth_GBps"]
    # floor bytes: saved activations written once and read once, 36 B/param (param read, grad
    # write, Adam reads p/g/m/v and writes p/m/v), input and target read once
    floor_bytes = (2 * res["saved_tensors"]["unique_bytes"] + 36 * n_params
                   + x.numel() * x.element_size() + target.numel() * target.element_size())
    res["floors"] = {"bytes_floor_ms": floor_bytes / (bw * 1e9) * 1e3,
                     "unfused_op_bytes_ms": ops.bytes / (bw * 1e9) * 1e3,
                     "flop_floor_ms": flop_floor_ms(ops.flops_by_dtype, rates)}
    return res


def profile_inference(dev: torch.device, cfg: dict[str, Any], rates: dict[str, Any]
                      ) -> dict[str, Any]:
    s, b = cfg["size"], cfg["batch"]
    model = build_hrmedseg(s, cfg["seed"], cfg["tiny"]).to(dev).eval()
    x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(cfg["seed"] + 20)).to(dev)

    def infer() -> None:
        with torch.inference_mode(), autocast_or_none(dev, torch.bfloat16):
            model(x)
    timing = measure_call(infer, dev, b, cfg["warmup"], cfg["reps"])
    ops = OpStats()
    with torch.inference_mode(), autocast_or_none(dev, torch.bfloat16), ops.mode:
        model(x)
    bw = rates["copy_bandwidth_GBps"]
    return {"infer_images_per_s": timing["images_per_s"], "batch_ms_median": timing["ms_median"],
            "peak_infer_mem_per_image_gb": timing["peak_mem_per_image_gb"],
            "ops_forward": ops.summary(),
            "unfused_op_bytes_ms": ops.bytes / (bw * 1e9) * 1e3,
            "flop_floor_ms": flop_floor_ms(ops.flops_by_dtype, rates)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="result JSON file")
    ap.add_argument("--quick", action="store_true", help="tiny HRMedSeg at 64², batch 2, CPU")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--profile-steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=25, help="rows in the kernel and op tables")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    q = args.quick
    dev = script_device(args.device, q)
    cfg = {"size": args.size or (64 if q else 1024), "batch": args.batch or (2 if q else 16),
           "warmup": 1 if q else 3, "reps": 1 if q else 10, "tiny": q, "seed": args.seed,
           "profile_steps": 1 if q else args.profile_steps, "top": args.top}
    torch.backends.cudnn.benchmark = True
    result = {**result_header("benchmarks/kernel_profile.py", dev, argv), "quick": q,
              "config": cfg, "errors": {}}
    rates = device_rates(dev, *((32 << 20, 256, 256) if q else (1 << 30, 8192, 4096)),
                         reps=cfg["reps"])
    result["rates"] = rates
    run_parts(TAG, result, args.output,
              [("train_step", lambda: profile_train_step(dev, cfg, rates)),
               ("inference", lambda: profile_inference(dev, cfg, rates))], dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
