"""Write results/speed_h200_s6/SUMMARY.md from the session-6 speed_gpu.py JSON files.

Three device calls (benchmarks/README.md, session 6):
  1. speed_gpu_parity_beside_lane1.json, speed_gpu_512_beside_lane0.json: two GPUs, each lane
     beside the other's data loading and compile workers. Parity values are exact computations
     and do not depend on load; the timings do (HRMedSeg's eager step is launch-bound), so
     only the parity of this call is quoted.
  2. speed_gpu.json: one idle H200; eager profile, inference, switch variants, compiled runs.
  3. speed_gpu_compile_ckpt_cudagraphs.json: one idle H200; compiled runs with checkpointing
     and CUDA graphs.

Usage: python benchmarks/session6/summarize_speed.py [results/speed_h200_s6]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from speed_tables import COMPILED_HEADER, compiled_run_row, write_summary  # noqa: E402
DEFAULT = HERE.parent / "results" / "speed_h200_s6"
TARGETS = {"train": 350.0, "infer": 1500.0, "mem": 0.20}
# speed_gpu.py's JSON of device calls 1, 2, 3
CALL_FILES = ("speed_gpu_parity_beside_lane1.json", "speed_gpu.json",
              "speed_gpu_compile_ckpt_cudagraphs.json")


def _load(d: Path, name: str) -> dict:
    return json.loads((d / name).read_text())


def _f(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def summary(d: Path) -> str:
    c1, c2, c3 = (_load(d, name) for name in CALL_FILES)
    L: list[str] = ["# HRMedSeg speed on an H200, session 6", ""]
    L.append(f"Written by `benchmarks/session6/summarize_speed.py` from the JSON files here. "
             f"{c2['device']['name']}, torch {c2['torch']}, 1024×1024, batch 16.")
    L.append("")
    L.append("| file | call | commit | date (UTC) |")
    L.append("|---|---|---|---|")
    for call, (name, r) in enumerate(zip(CALL_FILES, (c1, c2, c3)), start=1):
        L.append(f"| `{name}` | {call} | {r['commit']} | {r['date_utc']} |")
    L.append("")
    L.append("Call 1 ran beside a second lane on the other GPU (data loading, inductor compile "
             "workers); its timings moved by up to 50 % and are not quoted, its parity values "
             "(exact computations) are. Calls 2 and 3 ran alone on one H200.")
    L.append("")

    # -- eager -----------------------------------------------------------------------------
    p, inf, var = c2["profile"], c2["infer"], c2["variants"]["rows"]
    L += ["## Eager (call 2)", "",
          "bf16 autocast, training step = forward, Dice + BCE, backward, Adam; peak = "
          "`max_memory_allocated` over one step / batch. \"default\" is the plain path (all "
          "switches off), which was HRMedSeg's default when these ran.", "",
          "| variant | step (ms) | train img/s | peak GB/img | infer img/s |",
          "|---|---|---|---|---|"]
    for name, row in var.items():
        L.append(f"| {name} | {row['step_ms_median']:.2f} | {row['train_images_per_s']:.1f} | "
                 f"{_f(row.get('peak_train_mem_per_image_gb'), '.3f')} | "
                 f"{row['infer_images_per_s']:.1f} |")
    L.append("")
    L.append(f"The profiled plain step: {p['step_ms_median']:.2f} ms = "
             f"{p['train_images_per_s']:.1f} img/s, {p['peak_train_mem_per_image_gb']:.3f} GB/img, "
             f"{p['kernels']['kernels_per_step']:.0f} kernels per step, GPU busy "
             f"{100 * p['kernels']['gpu_busy_fraction_of_step']:.0f} % of it; plain inference "
             f"{inf['infer_images_per_s']:.1f} img/s.")
    L.append("")

    # -- compiled --------------------------------------------------------------------------
    L += ["## Compiled (calls 2 and 3)", "",
          "`torch.compile(model, mode)`; loss and Adam eager; compile time (first call) not in "
          "the step. switches: plain = all off, all = fast_norm + fast_attention + "
          "pool_channels_first; +ckpt = gradient checkpointing. Under CUDA graphs "
          "(reduce-overhead) the replays allocate nothing, so `max_memory_allocated` misses "
          "their pool: the reserved peak over the whole run (compile, warm-up, recording, "
          "replays) is the bound to quote there.", "",
          *COMPILED_HEADER]
    for call, r in ((2, c2), (3, c3)):
        for label, row in (r.get("compile") or {}).get("runs", {}).items():
            L.append(compiled_run_row(label, row, call))
    errs = {**(c3.get("compile") or {}).get("errors", {})}
    if errs:
        L.append("")
        L.append("Not measured (errors in call 3): " + ", ".join(f"`{k}`" for k in errs)
                 + " — the parity harness kept the first output of a CUDA-graph model across "
                   "its second call, which CUDA graphs overwrite; fixed since (each call is a "
                   "new step, outputs are copied), not rerun. "
                 + ("Call 3 also ran out of its budget before `train:all+ckpt:reduce-overhead` "
                    "and `parity_bf16:all:default`." if "timed_out_after_s" in c3["compile"]
                    else ""))
    L.append("")

    # -- targets ---------------------------------------------------------------------------
    runs = {**c2["compile"]["runs"], **c3["compile"]["runs"]}
    L += ["## Issue 7's targets", "",
          "| target | best measured | configuration |", "|---|---|---|"]
    tr, tg = runs["train:all:default"], runs["train:all:reduce-overhead"]
    ig, ck = runs["infer:all:reduce-overhead"], runs["train:all+ckpt:default"]
    ev, f32 = var["all_switches+grad_checkpointing"], runs.get("train_fp32:plain:default")
    rows = [  # (target, best measured, configuration)
        (f"training ≥ {TARGETS['train']:.0f} img/s",
         f"**{tr['train_images_per_s']:.1f}** ({tr['peak_train_mem_per_image_gb']:.3f} GB/img)",
         "compiled, all switches, default mode"),
        ("", f"{tg['train_images_per_s']:.1f} (≤ {tg['peak_reserved_whole_run_per_image_gb']:.3f} "
             "GB/img reserved)", "compiled, all switches, CUDA graphs"),
        (f"inference ≥ {TARGETS['infer']:.0f} img/s", f"**{ig['infer_images_per_s']:.1f}**",
         "compiled, all switches, CUDA graphs"),
        (f"peak training memory ≤ {TARGETS['mem']:.2f} GB/img",
         f"**{ck['peak_train_mem_per_image_gb']:.3f}** ({ck['train_images_per_s']:.1f} img/s)",
         "compiled, all switches, checkpointing"),
        ("", f"{ev['peak_train_mem_per_image_gb']:.3f} ({ev['train_images_per_s']:.1f} img/s)",
         "eager, all switches, checkpointing"),
    ]
    if f32:
        rows.append(("fp32 no worse than the authors (0.51 GB/img, 44 img/s, H100)",
                     f"{f32['peak_train_mem_per_image_gb']:.3f} GB/img, "
                     f"{f32['train_images_per_s']:.1f} img/s", "compiled, plain, fp32"))
    L += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    L.append("")
    L.append("No single configuration meets the speed and the memory target together: "
             "checkpointing, which meets the memory target, recomputes the encoder and costs "
             "speed.")
    L.append("")

    # -- parity ----------------------------------------------------------------------------
    L += ["## Parity (call 1; exact computations, unaffected by load)", "",
          "Fresh random inputs, batch 2, TF32 off; rel = ‖a−b‖/‖b‖ of the output and of all "
          "parameter gradients; 1−cos of the gradients.", "",
          "| check | out rel | grad rel | grad 1−cos | tol | pass |", "|---|---|---|---|---|---|"]
    checks = dict(c1["parity"]["checks"])
    if "parity" in (c1.get("compile") or {}):
        checks["compile_vs_eager_fp32"] = c1["compile"]["parity"]
    for name, c in checks.items():
        cos = c.get("grad_one_minus_cos")
        L.append(f"| {name} | {c['out_rel']:.2e} | {_f(c.get('grad_rel'), '.2e')} | "
                 f"{_f(cos, '.1e')} | {c['tol']:g} | {'yes' if c['pass'] else 'no'} |")
    ctx = c1["parity"].get("context_bf16_vs_fp32") or {}
    if "grad_rel" in ctx:
        L.append("")
        L.append(f"Same method on smp's ResNet-34 U-Net (randomly initialised, batch-norm in "
                 f"training mode): bf16 vs fp32 output {ctx['out_rel']:.2e}, gradients "
                 f"{ctx['grad_rel']:.2e} (1−cos {ctx['grad_one_minus_cos']:.2f}). Not used as "
                 "a yardstick: why it is this large is not established (a randomly initialised "
                 "deep batch-norm network can amplify small perturbations).")
    L.append("")

    # -- what bounds the eager step --------------------------------------------------------
    ob = p["op_bandwidth"]
    L += ["## What bounds the plain eager step (call 2)", "",
          f"Self device time per aten op against the bytes its calls read and write "
          f"(copy bandwidth {ob['copy_bandwidth_GBps']:.0f} GB/s). An op's time includes "
          "kernels it launches through other ops, so `copy_` (called by 820 `_to_copy` casts "
          "whose bytes are counted under `_to_copy`) and Adam's `add_` show near-zero GB/s; "
          "rows above 100 % count broadcast inputs at their expanded size.", "",
          "| op | calls | ms | GB moved | GB/s | of copy bandwidth |", "|---|---|---|---|---|---|"]
    for row in ob["rows"][:14]:
        L.append(f"| {row['op']} | {row['calls']} | {row['ms']:.2f} | {row['bytes'] / 1e9:.2f} | "
                 f"{row['achieved_GBps']:.0f} | {100 * row['fraction_of_copy_bw']:.1f} % |")
    fl = p["floors"]
    L.append("")
    L.append(f"Floors for this step: FLOPs at the measured matmul rate {fl['flop_floor_ms']:.2f} ms; "
             f"saved activations written and read once {fl['bytes_floor_ms']:.2f} ms; every op "
             f"reading and writing once (eager without fusion) {fl['unfused_op_bytes_ms']:.2f} ms; "
             f"measured {p['step_ms_median']:.2f} ms. The pooling (float32, channels-last), "
             "LayerNorm backward and the reductions run at 7–8 % of copy bandwidth: the kernels' "
             "access patterns bound them, not the bytes. With the switches the pooling runs on "
             "bf16 NCHW and the norms in bf16, and compiled the whole step takes "
             f"{runs['train:all:default']['step_ms_median']:.2f} ms (table above); the compiled "
             "step was not profiled per kernel.")
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    return write_summary(summary, DEFAULT, argv)


if __name__ == "__main__":
    sys.exit(main())
