"""Default HRMedSeg (distilled encoder) vs a ResNet-34 U-Net at equal GPU time.

Every run uses the package's own training pipeline (the training ``Engine`` with the segmentation
task, ``hrmedseg train``'s data setup and losses) under one recipe, stopped by a wall-clock budget
(``train.time_limit_min``, cosine schedule over that budget: ``schedule.horizon=time``). Two
phases, one process:

1. **Learning-rate sweep** on Kvasir-SEG, train → val only (never test): each model at each lr
   of ``--lrs`` for ``--sweep-budget-s``; each model keeps its best lr by val Dice.
2. **Comparison** on every dataset of ``--datasets``: train → test, ``--budget-s`` each, seeds
   ``--seeds``: HRMedSeg with the shipped/distilled encoder, the U-Net from scratch, and HRMedSeg
   from scratch with the same recipe (pretrained-vs-scratch gain; Table 5 "P").

The final weights of each run are evaluated (no checkpoint selection on val, so the val split
plays no part in phase 2). Writes ``equal_time.json`` and ``equal_time.md`` to ``--out``.

Several GPUs: start one process per GPU with ``--lane I/N`` (``CUDA_VISIBLE_DEVICES=I``), all
with the same ``--out``; each takes every N-th run of each phase, writes it to
``OUT/runs/TAG.json``, and waits for the others' sweep results before phase 2; lane 0 writes
the report. A finished run's file is reused, so rerunning the command resumes.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import gc
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from hrmedseg.atomic import write_json_atomic
from hrmedseg.provenance import source_commit


def run_one(args: argparse.Namespace, dataset: str, model: str, pretrained: str, lr: float,
            seed: int, budget_s: float, eval_split: str, tag: str) -> dict[str, Any]:
    import torch

    from hrmedseg.evaluation.evaluate import evaluate_samples
    from hrmedseg.inference.segmenter import Segmenter
    from hrmedseg.training.config import load_config
    from hrmedseg.training.data_setup import build_datasets
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.engine import Engine, seed_everything
    from hrmedseg.training.tasks.segment import SegmentTask, build_model

    run_dir = Path(args.work) / "runs" / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    size = args.size
    ov = [f"model.name={model}", f"model.pretrained={pretrained}",
          f"data.root={Path(args.data_root) / dataset}", f"data.size=[{size},{size}]",
          f"data.workers={args.workers}", f"data.augment={args.augment}",
          f"data.cache_dir={Path(args.work) / 'cache' / f'{dataset}_{size}'}",
          "optim.name=adamw", f"optim.lr={lr}", f"optim.weight_decay={args.weight_decay}",
          "schedule.name=cosine", "schedule.horizon=time", f"schedule.warmup_epochs={args.warmup}",
          f"loss.name={args.loss}", "train.epochs=100000", f"train.batch_size={args.batch}",
          f"train.precision={args.precision}", f"train.seed={seed}",
          f"train.time_limit_min={budget_s / 60.0}", "train.val_every=100000",
          f"train.out_dir={run_dir}", f"train.device={args.device}",
          # Budgets of seconds: the default compile on CUDA (65-150 s) would eat them, so every
          # model trains eager as the recorded results did; --hr-set train.compile=true
          # model.grad_checkpointing=true compares HRMedSeg compiled.
          "train.compile=false", "model.grad_checkpointing=false"] + list(args.set)
    if model.startswith("hrmedseg"):
        ov += list(args.hr_set)
    cfg = load_config(None, ov)
    seed_everything(seed, False)
    net = build_model(cfg)
    data = build_datasets(cfg, int(net.config.num_classes), int(net.config.in_chans))
    loss = build_loss(cfg.loss.name, int(net.config.num_classes), **cfg.loss.kwargs)
    engine = Engine(cfg, SegmentTask(cfg, model=net, loss_fn=loss, train_set=data.train,
                                     preprocess=data.preprocess))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    result = engine.fit(resume=False)
    wall = time.monotonic() - t0
    peak_run = torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else float("nan")
    rows = list(csv.DictReader(open(run_dir / "metrics.csv"))) if (run_dir / "metrics.csv").is_file() else []
    peak = max((float(r["peak_mem_gb"]) for r in rows if r.get("peak_mem_gb")), default=float("nan"))
    # the median over whole epochs: the row of an epoch the budget cut short is not in it
    speeds = [float(r["train_images_per_s"]) for r in rows
              if r.get("train_images_per_s") and float(r["epoch"]).is_integer()]
    engine.close()
    samples = (data.val if eval_split == "val" else data.test).samples
    seg = Segmenter(engine.model, device=str(engine.device), size=cfg.data.size,
                    normalize=cfg.data.normalize, precision=cfg.train.precision,
                    batch_size=args.batch)
    res = evaluate_samples(seg, samples, out_dir=run_dir / f"eval_{eval_split}",
                           hd=eval_split == "test", overlays=4 if eval_split == "test" else 0,
                           progress=False)
    out = {"tag": tag, "dataset": dataset, "model": model, "pretrained": pretrained != "none",
           "lr": lr, "seed": seed, "budget_s": budget_s, "eval_split": eval_split,
           "fit_wall_s": round(wall, 2), "steps": result.global_step,
           "epochs": round(result.global_step * args.batch / max(1, len(data.train)), 2),
           "train_images": len(data.train), "eval_images": len(samples),
           "peak_train_mem_gb_per_image": round(peak / args.batch, 4) if peak == peak else None,
           "peak_run_mem_gb_per_image": round(peak_run / args.batch, 4) if peak_run == peak_run else None,
           "images_per_s_overall": round(result.global_step * args.batch / max(wall, 1e-9), 1),
           "train_images_per_s": round(statistics.median(speeds), 1) if speeds else None,
           "params": sum(p.numel() for p in engine.model.parameters())}
    for res_key in ("model_resolution", "original_resolution"):
        for m in ("dice", "iou", "hd95"):
            v = res[res_key].get(m, {}).get("mean") if isinstance(res[res_key].get(m), dict) else None
            if v is not None:   # dice/iou are fractions in the summary: report percent
                v = 100.0 * float(v) if m in ("dice", "iou") else float(v)
                out[f"{m}@{'model' if res_key == 'model_resolution' else 'orig'}"] = round(v, 3)
    print(f"[equal_time] {json.dumps(out)}", flush=True)
    if eval_split == "val":
        shutil.rmtree(run_dir, ignore_errors=True)
    else:   # keep the evaluation (overlays, per-image CSV), drop the checkpoints
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    del engine, net, seg, data
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def write_report(out_dir: Path, info: dict[str, Any]) -> None:
    write_json_atomic(out_dir / "equal_time.json", info)
    lines = [f"# Equal GPU time: HRMedSeg (default recipe) vs {info['baseline']}", "",
             f"Device {info['device']}, torch {info['torch']}, {info['date']}, commit {info['commit']}. "
             f"Input {info['size']}², batch {info['batch']}, {info['precision']}, budget "
             f"{info['budget_s']} s of training per run (sweep: {info['sweep_budget_s']} s), "
             f"recipe: AdamW wd {info['weight_decay']}, cosine over the time budget, warm-up "
             f"{info['warmup']} epoch, loss {info['loss']}, augmentation {info['augment']}"
             + (f", overrides {', '.join(info['recipe_overrides'])}" if info.get("recipe_overrides") else "")
             + (f", HRMedSeg only: {', '.join(info['hrmedseg_overrides'])}" if info.get("hrmedseg_overrides") else "")
             + ".", ""]
    if info["sweep"]:
        lines += [f"## Learning-rate sweep ({info['sweep_dataset']} train → val Dice, model resolution)", "",
                  "| model | " + " | ".join(f"lr {lr:g}" for lr in info["lrs"]) + " | chosen |",
                  "|---|" + "---|" * (len(info["lrs"]) + 1)]
    else:
        lines += [f"No learning-rate sweep: one lr given ({', '.join(f'{lr:g}' for lr in info['lrs'])})."]
    for name, rows in info["sweep"].items():
        by_lr = {r["lr"]: r.get("dice@model") for r in rows}
        cells = [f"{by_lr[lr]:.2f}" if by_lr.get(lr) is not None else "–" for lr in info["lrs"]]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {info['chosen_lr'].get(name)} |")
    lines += ["", "## Test split, final weights, mean ± std over seeds", "",
              "| dataset | model | seeds | Dice | IoU | HD95 (px) | Dice (orig. res.) | epochs in budget | "
              "train img/s (incl. data loading) | peak train GB/img |", "|---|---|---|---|---|---|---|---|---|---|"]
    for ds, groups in info["comparison"].items():
        for label, rows in groups.items():
            def col(k: str) -> list[float]:
                return [r[k] for r in rows if r.get(k) is not None]
            lines.append(f"| {ds} | {label} | {len(rows)} | {mean_std(col('dice@model'))} | "
                         f"{mean_std(col('iou@model'))} | {mean_std(col('hd95@model'))} | "
                         f"{mean_std(col('dice@orig'))} | {mean_std(col('epochs'))} | "
                         f"{mean_std(col('images_per_s_overall'))} | "
                         f"{mean_std(col('peak_run_mem_gb_per_image'))} |")
    (out_dir / "equal_time.md").write_text("\n".join(lines) + "\n")


def _tag(ds: str, model: str, pre: str, seed: int) -> str:
    return f"{ds}_{model}_{'pre' if pre != 'none' else 'scratch'}_s{seed}"


def _run_cached(args: argparse.Namespace, tag: str, *run_args: Any) -> dict[str, Any]:
    """One run, or its result from ``OUT/runs/TAG.json`` if a lane already wrote it (lanes
    share OUT; a rerun of the command skips finished runs)."""
    path = args.out / "runs" / f"{tag}.json"
    if path.is_file():
        return json.loads(path.read_text())
    r = run_one(args, *run_args, tag)
    write_json_atomic(path, r)  # other lanes poll for it
    return r


def _wait_for(args: argparse.Namespace, tags: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """The results of ``tags`` (other lanes' runs included), waiting until all exist."""
    t0 = time.monotonic()
    paths = [args.out / "runs" / f"{t}.json" for t in tags]
    while not all(p.is_file() for p in paths):
        if time.monotonic() - t0 > timeout_s:
            missing = [t for t, p in zip(tags, paths) if not p.is_file()]
            raise SystemExit(f"equal_time: runs {missing} did not finish within {timeout_s:.0f} s")
        time.sleep(2.0)
    return [json.loads(p.read_text()) for p in paths]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="folder holding one folder per dataset")
    ap.add_argument("--datasets", default="kvasir-seg,dsb2018")
    ap.add_argument("--sweep-dataset", default="kvasir-seg")
    ap.add_argument("--pretrained", required=True, help="distilled student folder or weight tag")
    ap.add_argument("--baseline", default="unet_resnet34")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", default="/dev/shm/hrmedseg_equal_time")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--augment", default="strong")
    ap.add_argument("--loss", default="dice_ce")
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="recipe override for every run of both models, after the options above "
                         "(e.g. loss.name=dice, optim.clip_grad_norm=1.0); repeatable")
    ap.add_argument("--hr-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override for the HRMedSeg runs only, e.g. model.grad_checkpointing=true")
    ap.add_argument("--runs", default="pretrained,baseline,scratch",
                    help="which of the three comparison groups to run (a rerun of one group "
                         "writes its own --out)")
    ap.add_argument("--lrs", default="5e-4,1e-3,2e-3")
    ap.add_argument("--budget-s", type=float, default=25.0)
    ap.add_argument("--sweep-budget-s", type=float, default=20.0)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--scratch-seeds", default="0", help="seeds of the HRMedSeg-from-scratch runs")
    ap.add_argument("--lane", default="0/1",
                    help="I/N: this process runs every N-th run starting at I (one process per "
                         "GPU, all writing to the same --out); lane 0 writes the final report")
    ap.add_argument("--wait-s", type=float, default=3600.0,
                    help="how long a lane waits for the other lanes' runs")
    args = ap.parse_args(argv)
    import torch

    lane, lanes = (int(v) for v in args.lane.split("/"))
    if not 0 <= lane < lanes:
        ap.error(f"--lane {args.lane}: need 0 <= I < N")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work = str(Path(args.work) / f"lane{lane}") if lanes > 1 else args.work
    lrs = [float(x) for x in args.lrs.split(",")]
    groups = {g.strip() for g in args.runs.split(",") if g.strip()}
    if not groups or not groups <= {"pretrained", "baseline", "scratch"}:
        ap.error(f"--runs {args.runs!r}: a subset of pretrained,baseline,scratch")
    hr_extra = f", {', '.join(args.hr_set)}" if args.hr_set else ""
    hr_label, base_label = f"hrmedseg (distilled encoder{hr_extra})", f"{args.baseline} (scratch)"
    scratch_label = f"hrmedseg (scratch, same recipe{hr_extra})"
    models = {}
    if groups & {"pretrained", "scratch"}:   # the scratch runs take the pretrained model's lr
        models[hr_label] = ("hrmedseg", args.pretrained)
    if "baseline" in groups:
        models[base_label] = (args.baseline, "none")
    dev = "cpu" if args.device == "cpu" or not torch.cuda.is_available() else "cuda"
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit() or "unknown", "size": args.size, "batch": args.batch, "precision": args.precision,
        "budget_s": args.budget_s, "sweep_budget_s": args.sweep_budget_s, "lrs": lrs,
        "weight_decay": args.weight_decay, "warmup": args.warmup, "loss": args.loss,
        "augment": args.augment, "recipe_overrides": list(args.set),
        "hrmedseg_overrides": list(args.hr_set), "baseline": args.baseline, "pretrained": args.pretrained,
        "sweep_dataset": args.sweep_dataset, "lanes": lanes, "sweep": {}, "chosen_lr": {},
        "comparison": {}, "runs": [], "command": " ".join(sys.argv)}

    # Phase 1: the lr sweep (train -> val), its runs dealt out over the lanes (none for one lr).
    sweep = [(label, model, pre, lr) for label, (model, pre) in models.items() for lr in lrs
             if len(lrs) > 1]
    sweep_tags = [f"sweep_{model}_{lr:g}" for _, model, _, lr in sweep]
    for i, ((label, model, pre, lr), tag) in enumerate(zip(sweep, sweep_tags)):
        if i % lanes == lane:
            _run_cached(args, tag, args.sweep_dataset, model, pre, lr, 0, args.sweep_budget_s, "val")
    results = _wait_for(args, sweep_tags, args.wait_s)
    for (label, _, _, _), r in zip(sweep, results):
        info["sweep"].setdefault(label, []).append(r)
        info["runs"].append(r)
    for label, rows in info["sweep"].items():
        # Ties (e.g. every lr still at Dice 0) go to the lr nearest the recipe's 1e-3.
        best = max(rows, key=lambda r: (r.get("dice@model", -1.0), -abs(r["lr"] - 1e-3)))
        info["chosen_lr"][label] = best["lr"]
    for label in models:
        info["chosen_lr"].setdefault(label, lrs[0])   # a single lr: no sweep
    if lane == 0:
        write_report(args.out, info)

    # Phase 2: equal-time runs on the test split, dealt out over the lanes.
    seeds = [int(s) for s in args.seeds.split(",")]
    scratch_seeds = [int(s) for s in args.scratch_seeds.split(",") if s.strip()]
    plan = [(hr_label, "hrmedseg", args.pretrained, info["chosen_lr"].get(hr_label), seeds),
            (base_label, args.baseline, "none", info["chosen_lr"].get(base_label), seeds),
            (scratch_label, "hrmedseg", "none", info["chosen_lr"].get(hr_label), scratch_seeds)]
    plan = [p for p, g in zip(plan, ("pretrained", "baseline", "scratch")) if g in groups]
    runs = [(ds, label, model, pre, lr, sds[i])
            for ds in args.datasets.split(",")
            for i in range(max(len(seeds), len(scratch_seeds)))
            for label, model, pre, lr, sds in plan if i < len(sds)]
    tags = [_tag(ds, model, pre, seed) for ds, _, model, pre, _, seed in runs]
    for i, ((ds, label, model, pre, lr, seed), tag) in enumerate(zip(runs, tags)):
        if i % lanes != lane:
            continue
        _run_cached(args, tag, ds, model, pre, lr, seed, args.budget_s, "test")
        src = Path(args.work) / "runs" / tag / "eval_test"
        if src.is_dir():
            shutil.copytree(src, args.out / "eval" / tag, dirs_exist_ok=True)
    if lane != 0:
        return 0
    for (ds, label, *_), r in zip(runs, _wait_for(args, tags, args.wait_s)):
        info["comparison"].setdefault(ds, {}).setdefault(label, []).append(r)
        info["runs"].append(r)
    write_report(args.out, info)
    print((args.out / "equal_time.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
