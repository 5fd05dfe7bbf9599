"""Write results/speed_h200_s7/SUMMARY.md from the session-7 device calls' files.

Four calls on one idle H200 (benchmarks/README.md, session 7):
  1. speed_gpu_call1.json: compiled bf16 parity under CUDA graphs and default mode, compiled
     training with (partial) checkpointing under CUDA graphs, compile's memory budget.
  2. speed_gpu_call2.json: the same after the RoPE fix (aedcf81), which call 1's CUDA-graph
     parity error found.
  3. gpu_checks_call3/: the gpu-marked tests, and the trainer on the configuration that meets
     both targets, on DSB-2018 at 1024² (benchmarks/session7/gpu_checks.sh).
  4. gpu_checks_call4/: the same after the trainer stopped waiting for the GPU every step and
     started counting training time alone in train_images_per_s.

Usage: python benchmarks/session7/summarize_speed.py [results/speed_h200_s7]
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from speed_tables import (COMPILED_HEADER, compiled_run_row,  # noqa: E402
                          write_summary)

DEFAULT = HERE.parent / "results" / "speed_h200_s7"
S6 = HERE.parent / "results" / "speed_h200_s6"
TARGETS = {"train": 350.0, "infer": 1500.0, "mem": 0.20}
CALL_FILES = ("speed_gpu_call1.json", "speed_gpu_call2.json")
CHECK_DIRS = ("gpu_checks_call3", "gpu_checks_call4")
RUN = "train_cudagraphs_ckpt_1024"
MULT = 2.0  # speed_gpu.BF16_MULTIPLIER


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _device_txt(d: Path) -> dict[str, str]:
    lines = (d / "device.txt").read_text().splitlines()
    commit_date = next(line for line in lines if line.startswith("commit")).split()
    return {"gpu": lines[0].split(",")[0], "torch": lines[1], "commit": commit_date[1],
            "date": commit_date[3]}


def _parity_rows(entry: dict) -> list[str]:
    out = []
    for name, c in entry.items():
        bound = (f"{c['bound_out']:.2e} / {c['bound_grad']:.2e}" if "bound_out" in c
                 else f"out ≤ {c['tol']:g} (yardstick)")
        out.append(f"| {name} | {c['out_rel']:.2e} | {c['grad_rel']:.2e} | "
                   f"{c['grad_one_minus_cos']:.1e} | {bound} | {'yes' if c['pass'] else 'no'} | "
                   f"{'yes' if c.get('within_fixed_tol') else 'no'} |")
    return out


def summary(d: Path) -> str:
    c1, c2 = (_load(d / name) for name in CALL_FILES)
    checks = [(name, _device_txt(d / name)) for name in CHECK_DIRS]
    L = ["# HRMedSeg speed on an H200, session 7", "",
         f"Written by `benchmarks/session7/summarize_speed.py` from the files here. "
         f"{c2['device']['name']}, torch {c2['torch']}, 1024×1024, batch 16, bf16 autocast "
         "unless noted. Every call ran alone on one H200.", "",
         "| files | call | commit | date (UTC) |", "|---|---|---|---|"]
    for call, (name, r) in enumerate(zip(CALL_FILES, (c1, c2)), start=1):
        L.append(f"| `{name}` | {call} | {r['commit']} | {r['date_utc']} |")
    for call, (name, info) in enumerate(checks, start=3):
        L.append(f"| `{name}/` | {call} | {info['commit']} | {info['date']} |")
    L.append("")

    # -- compiled runs ---------------------------------------------------------------------
    L += ["## Compiled training (calls 1 and 2)", "",
          "`speed_gpu.py --parts rates,compile`: `torch.compile(model, mode)`, loss and Adam "
          "eager, compile time not in the step. all = the three speed switches (HRMedSeg's "
          "defaults); +ckpt = gradient checkpointing of every encoder layer, +ckpt0.5 of every "
          "other one (`set_grad_checkpointing(fraction=0.5)`); +mb0.5 = "
          "`torch._functorch.config.activation_memory_budget = 0.5` (the compiler picks what "
          "to recompute). Under CUDA graphs (reduce-overhead) `max_memory_allocated` misses "
          "the graph pool; the reserved peak bounds the memory from above (the steady-state "
          "reading after emptying the cache equalled the whole-run one in every run here).", "",
          *COMPILED_HEADER]
    for call, r in ((1, c1), (2, c2)):
        for label, row in r["compile"]["runs"].items():
            L.append(compiled_run_row(label, row, call))
    L += ["", "Call 1 ran before the RoPE fix (aedcf81): its CUDA-graph parity check failed "
          "(below) and its runs warmed RoPE's table cache eagerly before compiling, as session "
          "6's did. Call 2 runs the fixed code, where compiled graphs compute the tables "
          "themselves; `train:all:reduce-overhead` measured "
          f"{c2['compile']['runs']['train:all:reduce-overhead']['train_images_per_s']:.1f} "
          "img/s there against 637.2–650.8 in session 6, so the fix costs nothing measurable.",
          ""]

    # -- targets ---------------------------------------------------------------------------
    both = c2["compile"]["runs"]["train:all+ckpt:reduce-overhead"]
    both1 = c1["compile"]["runs"]["train:all+ckpt:reduce-overhead"]
    L += ["## Issue 7's speed and memory targets in one configuration", "",
          f"**Compiled with CUDA graphs, all switches, gradient checkpointing: "
          f"{both['train_images_per_s']:.1f} img/s training (target ≥ {TARGETS['train']:.0f}) "
          f"at ≤ {both['peak_reserved_whole_run_per_image_gb']:.3f} GB/img of reserved memory "
          f"(target ≤ {TARGETS['mem']:.2f})** (call 2). Call 1 measured the same configuration "
          f"at {both1['train_images_per_s']:.1f} img/s and ≤ "
          f"{both1['peak_reserved_whole_run_per_image_gb']:.3f} GB/img. The memory figure is "
          "the allocator's reserved peak over the whole run divided by the batch: an upper "
          "bound on what the step uses, since reserved memory includes the allocator's slack.",
          "", "Inference ≥ 1500 img/s was met in session 6 (2019.3 img/s, compiled with CUDA "
          "graphs, `results/speed_h200_s6/`).", "",
          "Half the encoder checkpointed is faster but above the memory target. The compiler's "
          "own memory budget (0.5, default mode) meets the memory target by its allocated peak "
          "but not by its reserved one, and trains below the speed target.", ""]

    # -- parity ----------------------------------------------------------------------------
    L += ["## bf16 parity of the compiled paths (calls 1 and 2)", "",
          "speed_gpu.py's parity method (batch 2, TF32 off, fixed random cotangent; rel = "
          "‖a−b‖/‖b‖ of outputs and of all parameter gradients). The bf16 rule, from this "
          f"session on: a bf16 fast path passes if its output and gradient errors are at most "
          f"{MULT:g}× the plain path's own bf16 errors against the fp32 reference (the "
          "yardstick row, same inputs, same run). PyTorch's compile accuracy checks use the "
          "same rule with 3× for bf16 (`torch._dynamo.utils.same`). The fixed 2e-2 of earlier "
          "sessions is still shown; the plain path itself misses it on gradients, which is why "
          "it could not tell fast paths from the reference.", ""]
    for call, r in ((1, c1), (2, c2)):
        for key, entry in r["compile"].get("parity_bf16", {}).items():
            L += [f"**compiled `{key}`** (call {call})", "",
                  "| check | out rel | grad rel | grad 1−cos | bound (out / grad) | pass | "
                  "within 2e-2 |", "|---|---|---|---|---|---|---|", *_parity_rows(entry), ""]
    err = c1["compile"]["errors"].get("parity_bf16:all:reduce-overhead", "")
    if err:
        L += ["Call 1's `parity_bf16:all:reduce-overhead` failed with \"" +
              err.strip().splitlines()[-1][:140] + "…\". Cause: the parity model was warmed "
              "in fp32, so under bf16 autocast RoPE's table cache missed inside the compiled "
              "graph; filling it there broke the graph (13 breaks on a 4-block model, "
              "recompiles of each layer) and cached tensors that the next CUDA-graph replay "
              "overwrote. The trainer and the Segmenter compile without a warm-up and would "
              "have hit the same. Fixed in aedcf81 (tables computed in the graph under "
              "compile; test: a fresh model traces as one graph); call 2 passes.", ""]

    # -- session 6's eager rows under the rule ----------------------------------------------
    s6 = _load(S6 / "speed_gpu_parity_beside_lane1.json")["parity"]["checks"]
    yard = s6["bf16_autocast_vs_fp32"]
    L += ["## Session 6's eager bf16 rows under this rule", "",
          f"From `results/speed_h200_s6/speed_gpu_parity_beside_lane1.json`: yardstick out "
          f"{yard['out_rel']:.2e}, gradients {yard['grad_rel']:.2e}; bounds "
          f"{MULT * yard['out_rel']:.2e} / {MULT * yard['grad_rel']:.2e}.", "",
          "| check | out rel | grad rel | pass under the rule |", "|---|---|---|---|"]
    for name in ("fast_norm_bf16_vs_fp32", "fast_attention_bf16_vs_fp32",
                 "all_switches_bf16_vs_fp32", "all_fast_paths_vs_fp32"):
        c = s6[name]
        ok = c["out_rel"] <= MULT * yard["out_rel"] and c["grad_rel"] <= MULT * yard["grad_rel"]
        L.append(f"| {name} | {c['out_rel']:.2e} | {c['grad_rel']:.2e} | "
                 f"{'yes' if ok else 'no'} |")
    L.append("")

    # -- the trainer -----------------------------------------------------------------------
    item = _load(HERE.parent / "results" / "loader_throughput_cpu_1024.json")["items_per_s"]
    L += ["## The trainer on this configuration (calls 3 and 4)", "",
          "`benchmarks/session7/gpu_checks.sh`: `hrmedseg train --config paper` on DSB-2018 "
          "(packed WebP, 531 training images) at 1024², batch 16, bf16, "
          "`train.compile=true train.compile_mode=reduce-overhead "
          "model.grad_checkpointing=true`, from scratch, 3 epochs, the recipe's \"paper\" "
          "augmentation on 14 DataLoader workers.", "",
          "| call | commit | epoch | train loss | val loss | val Dice | epoch s | train img/s |",
          "|---|---|---|---|---|---|---|---|"]
    for call, (name, info) in enumerate(checks, start=3):
        with open(d / name / RUN / "metrics.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                L.append(f"| {call} | {info['commit']} | {row['epoch']} | {row['train_loss']} | "
                         f"{row['val_loss']} | {row['val_dice']} | {row['epoch_time_s']} | "
                         f"{row['train_images_per_s']} |")
    L += ["", "No CUDA-graph error, the loss falls and validation Dice rises in both. Epoch 1 "
          "includes compiling. In call 3 `train_images_per_s` still divided by the epoch time "
          "including validation; from call 4 (commit 0c81237) it counts training time only, "
          "and the loop no longer waits for the GPU every step (losses are read every 10 "
          "steps).", "",
          f"The trainer's ~260 img/s is below the {both['train_images_per_s']:.0f} img/s of the "
          "bare step, and what bounds it was not measured on the device. An estimate from "
          "the development machine's CPU: one DataLoader worker produces "
          f"{item['paper']:.1f} training items/s at 1024² with the paper policy (cache read, "
          f"augmentation, tensors) and {item['strong']:.1f} with the strong one "
          "(`results/loader_throughput_cpu_1024.json`, `python benchmarks/loader_throughput.py "
          "--config paper data.root=DSB \"data.size=[1024,1024]\" --policies paper,strong`). "
          f"14 such workers would give about {14 * item['paper']:.0f} img/s, above the "
          "trainer's 260, so on this estimate the workers alone would not bound it. Not in "
          "the estimate: the main process's collation, pinning and host-to-device copy (50 MB "
          "of uint8 pixels per batch), and a device host whose cores may be slower. Not "
          "diagnosed.", ""]
    pt = [ln for ln in (d / CHECK_DIRS[-1] / "pytest_gpu.log").read_text().splitlines()
          if ln.startswith("PASSED") or ln.startswith("FAILED")]
    L += ["## gpu-marked tests on the GPU (calls 3 and 4)", "",
          "`pytest -m gpu tests/layers/test_pooling.py tests/data/test_fast_path.py` — "
          "they had only ever been skipped before:", "", *[f"- {ln}" for ln in pt]]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> int:
    return write_summary(summary, DEFAULT, argv)


if __name__ == "__main__":
    sys.exit(main())
