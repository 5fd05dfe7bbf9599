"""`hrmedseg train` end to end against the bare training step: how much of the step's speed the
trainer keeps once data loading, augmentation, logging and checkpointing are in. One JSON file.

  python benchmarks/trainer_throughput.py --data DSB2018_DIR -o trainer.json -- \
      "data.size=[1024,1024]" train.epochs=3 model.grad_checkpointing=true

The arguments after ``--`` are `hrmedseg train` overrides; the run goes to ``--run-dir`` (a
temporary folder by default). The trainer's rate is ``train_images_per_s`` of each epoch in the
run's metrics.csv (training time only); the first epoch, which includes compiling and cache
building, is reported but not in the median. The bare step is the same model, size, batch and
precision on random data: forward, Dice + BCE, backward, AdamW, compiled as the trainer was
(the mode its env.json records: ``train.compile``/``train.compile_mode`` as resolved on the
device; on CUDA the default compiles HRMedSeg with CUDA graphs) or eager. Top-level fields: ``trainer_images_per_s``,
``bare_step_images_per_s``, ``trainer_over_bare_step``, ``peak_gb_per_image`` (the trainer's
largest per-epoch reserved peak over the batch, which counts CUDA graphs' memory pools;
``peak_allocated_gb_per_image`` the allocated peak; CUDA only), device, date, commit.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, make_loss  # noqa: E402

from hrmedseg.compiling import uses_cudagraphs  # noqa: E402
from hrmedseg.models import create_model  # noqa: E402
from hrmedseg.profiling.speed import (make_train_step, measure_call, pick_device,  # noqa: E402
                                      random_blob_mask, result_header, write_result)

TAG = "trainer_throughput"
AMP = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def run_trainer(data: str, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Runs `hrmedseg train` in a subprocess; its per-epoch rates and resolved config."""
    cmd = [sys.executable, "-m", "hrmedseg", "train", "--data", data, "--out", str(run_dir),
           "--no-resume", *overrides]
    log(TAG, "trainer: " + " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hrmedseg train failed ({proc.returncode}): "
                         + (proc.stderr.strip().splitlines() or ["no output"])[-1])
    with open(run_dir / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    rates = [float(r["train_images_per_s"]) for r in rows if r.get("train_images_per_s")]
    peaks = [float(r["peak_mem_gb"]) for r in rows if r.get("peak_mem_gb")]
    reserved = [float(r["peak_reserved_gb"]) for r in rows if r.get("peak_reserved_gb")]
    steady = rates[1:] or rates
    return {"command": "hrmedseg " + " ".join(cmd[3:]), "epochs": len(rates),
            "train_images_per_s_by_epoch": rates,
            "train_images_per_s_median_after_first": statistics.median(steady),
            "peak_mem_gb_by_epoch": peaks,
            "peak_reserved_gb_by_epoch": reserved,
            "config": yaml.safe_load((run_dir / "config.yaml").read_text()),
            **_trained_as(run_dir)}


def _trained_as(run_dir: Path) -> dict[str, Any]:
    """The torch.compile mode (None: eager) and checkpointing the run trained with, as its
    env.json records them; run folders from before the auto settings hold only the config's."""
    env = json.loads((run_dir / "env.json").read_text())
    if "compile" in env and "grad_checkpointing" in env:
        return {"compile": env["compile"], "grad_checkpointing": bool(env["grad_checkpointing"])}
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    t = cfg["train"]
    compiled = str(t.get("compile")).lower() == "true"
    return {"compile": (t.get("compile_mode") or "default") if compiled else None,
            "grad_checkpointing": str(cfg["model"].get("grad_checkpointing")).lower() == "true"}


def bare_step(cfg: dict[str, Any], mode: str | None, ckpt: bool, dev: torch.device,
              warmup: int, reps: int) -> dict[str, Any]:
    """The training step alone, on one random batch that stays on the device."""
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    h, w = d["size"]
    b = int(t["batch_size"])
    model = create_model(m["name"], num_classes=int(m["num_classes"]), img_size=h).to(dev).train()
    if ckpt:
        model.set_grad_checkpointing(True, fraction=float(m.get("grad_checkpointing_fraction") or 1.0))
    x = torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(0)).to(dev)
    target = random_blob_mask(b, h, w, dev, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    net = torch.compile(model, mode=mode) if mode else model
    step = make_train_step(net, opt, x, target, AMP[t["precision"]], make_loss(),
                           mark_cudagraph_step=uses_cudagraphs(mode))
    row = measure_call(step, dev, b, warmup, reps)
    return {"images_per_s": row["images_per_s"], "ms_median": row["ms_median"],
            "peak_mem_per_image_gb": row["peak_mem_per_image_gb"], "batch": b, "size": [h, w],
            "precision": t["precision"], "grad_checkpointing": ckpt,
            "compile": mode}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="dataset folder, as for hrmedseg train --data")
    ap.add_argument("-o", "--output", required=True, help="result JSON file")
    ap.add_argument("--run-dir", help="where the training run goes (default: a temporary folder)")
    ap.add_argument("--device", default="auto", help="device of the bare step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args(own)
    dev = pick_device(args.device)
    result = {**result_header("benchmarks/trainer_throughput.py", dev, argv),
              "overrides": overrides}
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.run_dir or os.path.join(tmp, "run"))
        trainer = run_trainer(args.data, run_dir, overrides)
    result["trainer"] = trainer
    result["bare_step"] = bare_step(trainer["config"], trainer["compile"],
                                    trainer["grad_checkpointing"], dev, args.warmup, args.reps)
    batch = int(trainer["config"]["train"]["batch_size"])
    result.update({
        "trainer_images_per_s": trainer["train_images_per_s_median_after_first"],
        "bare_step_images_per_s": result["bare_step"]["images_per_s"],
        "trainer_over_bare_step": (trainer["train_images_per_s_median_after_first"]
                                   / result["bare_step"]["images_per_s"]),
        # reserved: CUDA graphs' pools are outside the allocated count (see RATE_FIELDS)
        "peak_gb_per_image": (max(trainer["peak_reserved_gb_by_epoch"]) / batch
                              if trainer["peak_reserved_gb_by_epoch"] else None),
        "peak_allocated_gb_per_image": (max(trainer["peak_mem_gb_by_epoch"]) / batch
                                        if trainer["peak_mem_gb_by_epoch"] else None),
    })
    write_result(args.output, result)
    log(TAG, f"trainer {trainer['train_images_per_s_median_after_first']:.1f} img/s, bare step "
             f"{result['bare_step']['images_per_s']:.1f} img/s: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
