"""Why HRMedSeg stays at the all-background solution early on Kvasir-SEG, step by step, on the CPU or a GPU.

A small-scale copy of the equal-time recipe of ``benchmarks/equal_time.py`` (AdamW, warm-up then
cosine over the run, ``dice_ce``, strong augmentation), built with the package's own pieces
(``build_model``, ``build_datasets``, ``build_loss``, the training ``Engine`` with the segmentation
task for optimiser, loader and input normalisation), but with a fixed number of optimiser steps
instead of a time budget and a hand-written step loop that logs, every step:

* the loss and, separately, its soft-Dice part and its BCE part (computed from the same logits);
* the summed gradient of each part w.r.t. the logits over foreground and over background pixels
  (which way each term pushes the logits);
* mean/std of the logits (overall, on foreground, on background, spatial std inside an image);
* the fraction of pixels predicted foreground (logit > 0) and the true foreground fraction;
* gradient norms per model part (encoder, neck, decoder, and decoder sub-modules).

Every ``--val-every`` steps the model is evaluated on the **val** split (never test) with the
trainer's metric (per-image Dice of ``logit > 0``, ``hrmedseg.metrics.tensor``), plus a
diagnostic "best global threshold" Dice (how well the logits rank pixels, whatever their offset).

Variants (``--variants``) each change one thing against ``default``; all use the same seed, data
order and step budget. Results are merged into ``kvasir_early_training.json`` in ``--out``, with
a Markdown table and a PNG of val Dice / predicted-foreground fraction vs step.

    python benchmarks/kvasir_early_training.py --data-root KVASIR_DIR --out OUT \
        --variants default,loss_dice_focal --steps 200
    python benchmarks/kvasir_early_training.py --data-root KVASIR_DIR --out OUT --device cuda \
        --size 512 --batch 16 --steps 220 --precision bf16 --workers 12 --variants default,pool_direct
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrmedseg.atomic import write_json_atomic
from hrmedseg.provenance import source_commit

# Each variant: overrides of the default setting (see ``default_spec``).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "scratch": {"pretrained": "none"},
    "loss_dice_focal": {"loss": "dice_focal"},
    "loss_dice": {"loss": "dice"},
    "loss_ce": {"loss": "ce"},
    "dice_bce_posw5": {"pos_weight": 5.0},          # BCE with pos_weight 5 (≈ bg/fg ratio) + Dice
    "dice_x3": {"loss_kwargs": {"lambda_dice": 3.0}},
    "no_warmup": {"warmup_steps": 0},
    "clip1": {"clip_grad_norm": 1.0},              # the engine's optim.clip_grad_norm=1.0
    "lr_5e-4": {"lr": 5e-4},
    "lr_3e-3": {"lr": 3e-3},
    "decoder_lr_x10": {"decoder_lr_mult": 10.0},
    "augment_paper": {"augment": "paper"},
    "augment_none": {"augment": "none"},
    "out_bias_0": {"out_bias": 0.0},                # learnable scalar logit bias, init 0
    "out_bias_prior": {"out_bias": math.log(0.15 / 0.85)},   # init at the fg prior
    "no_pool": {"model_overrides": {"pool_sizes": []}},
    # PyTorch's own k×k pooling backward (wrong on CUDA for channels-last: results/avgpool_nhwc_backward_h200/)
    "pool_direct": {"model_overrides": {"pool_impl": "direct"}},
    # the GPU recipe's scale, one factor at a time (fewer steps: slower on the CPU)
    "bf16": {"precision": "bf16", "steps": 100},
    "size384": {"size": 384, "steps": 100},
    "batch16": {"batch": 16, "steps": 100},
    "unet_small_q": {"model": "unet_small", "pretrained": "none", "steps": 100,   # 2 s/step on 1 core
                     "model_overrides": {"library_kwargs": {"features": [8, 16, 32, 64, 128, 8]}}},
}


def default_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {"model": "hrmedseg", "pretrained": "default", "loss": "dice_ce", "loss_kwargs": {},
            "pos_weight": None, "lr": args.lr, "decoder_lr_mult": 1.0,
            "warmup_steps": args.warmup_steps, "augment": args.augment, "out_bias": None,
            "clip_grad_norm": 0.0,
            "model_overrides": {}, "weight_decay": args.weight_decay, "size": args.size,
            "batch": args.batch, "precision": args.precision, "steps": args.steps}


class WithBias(nn.Module):
    """Model + one learnable scalar added to every logit (HRMedSeg's output has no bias)."""

    def __init__(self, model: nn.Module, init: float) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.bias = nn.Parameter(torch.tensor(float(init)))

    def unused_parameter_names(self) -> list[str]:
        return [f"model.{n}" for n in getattr(self.model, "unused_parameter_names", lambda: [])()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) + self.bias


class DicePosWeightBCE(nn.Module):
    """Package soft Dice (batch) + BCE with ``pos_weight`` (the package's CELoss has no binary weight)."""

    def __init__(self, pos_weight: float) -> None:
        super().__init__()
        from hrmedseg.training.losses import DiceLoss
        self.dice = DiceLoss()
        self.pw = float(pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target[:, 0] if target.ndim == 4 else target
        z = logits.float()[:, 0]
        bce = F.binary_cross_entropy_with_logits(z, (t > 0).float(),
                                                 pos_weight=torch.tensor(self.pw, device=z.device))
        return self.dice(logits, target) + bce


def part_of(name: str) -> list[str]:
    """Groups a parameter name belongs to (coarse part and, for the decoder, a sub-part)."""
    if name.startswith("model."):
        name = name[len("model."):]
    if name == "bias":
        return ["out_bias"]
    top = name.split(".")[0]
    if top not in ("encoder", "neck", "decoder"):
        return ["other"]
    out = [top]
    if top == "decoder":
        sub = name.split(".")[1]
        out.append("dec." + {"output_hypernetworks_mlps": "hypernet", "output_upscaling": "upscaler",
                             "mask_tokens": "tokens", "iou_token": "tokens"}.get(sub, sub))
    return out


@torch.no_grad()
def evaluate(model: nn.Module, engine: Any, val_set: Any, batch: int) -> dict[str, float]:
    from torch.utils.data import DataLoader

    from hrmedseg.metrics.tensor import logits_to_labels, per_image_dice_iou
    from hrmedseg.training.losses import CELoss, DiceLoss
    from hrmedseg.training.tasks.segment import _collate

    model.eval()
    dice_l, ce_l = DiceLoss(), CELoss()
    dices, ious, fracs, zs, gs = [], [], [], [], []
    s = {"dice_part": 0.0, "ce_part": 0.0}
    n = 0
    for b in DataLoader(val_set, batch_size=batch, shuffle=False, num_workers=0, collate_fn=_collate):
        x, y = engine.task._inputs(b)
        with engine.autocast():
            z = model(x)
        z = z.float()
        k = x.shape[0]
        d, i = per_image_dice_iou(logits_to_labels(z), y, 1)
        dices += d[:, 0].tolist()
        ious += i[:, 0].tolist()
        fracs += (z[:, 0] > 0).float().mean((1, 2)).tolist()
        s["dice_part"] += float(dice_l(z, y)) * k
        s["ce_part"] += float(ce_l(z, y)) * k
        zs.append(z[:, 0].flatten(1))
        gs.append((y > 0).flatten(1))
        n += k
    model.train()
    zz, gg = torch.cat(zs), torch.cat(gs)
    fg, bg = zz[gg], zz[~gg]
    pooled = math.sqrt(0.5 * (float(fg.var()) + float(bg.var()))) + 1e-12
    # Diagnostic: per-image Dice at one global threshold chosen on val among quantiles of the val
    # logits (how well the logits rank pixels whatever their offset); not a fair score.
    sub = zz.flatten()[torch.randperm(zz.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
    best, best_q = -1.0, None
    for q in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.98):
        t = float(torch.quantile(sub, q))
        p = zz > t
        inter, ps, ts = (p & gg).sum(1).float(), p.sum(1).float(), gg.sum(1).float()
        di = torch.where(ps + ts == 0, torch.ones_like(inter), 2 * inter / (ps + ts).clamp_min(1))
        if float(di.mean()) > best:
            best, best_q = float(di.mean()), q
    return {
        "val_dice": 100 * sum(dices) / n, "val_iou": 100 * sum(ious) / n,
        "val_pred_fg_frac": sum(fracs) / n,
        "val_dice_part": s["dice_part"] / n, "val_ce_part": s["ce_part"] / n,
        "val_logit_mean_fg": float(fg.mean()), "val_logit_mean_bg": float(bg.mean()),
        "val_logit_std": float(zz.std()),
        "val_logit_sep": (float(fg.mean()) - float(bg.mean())) / pooled,   # d' of fg vs bg logits
        "val_true_fg_frac": float(gg.float().mean()),
        "val_dice_best_thr": 100 * best, "val_best_thr_quantile": best_q,
    }


def run_variant(args: argparse.Namespace, name: str) -> dict[str, Any]:
    from hrmedseg.training.config import load_config
    from hrmedseg.training.data_setup import build_datasets
    from hrmedseg.training.losses import CELoss, DiceLoss, build_loss
    from hrmedseg.training.engine import Engine, lr_factor, seed_everything
    from hrmedseg.training.tasks.segment import SegmentTask, build_model

    spec = {**default_spec(args), **VARIANTS[name]}
    steps, bs, size = spec["steps"], spec["batch"], spec["size"]
    run_dir = Path(args.work) / "runs" / name
    warm_epochs = spec["warmup_steps"] * bs / args.train_images
    ov = [f"model.name={spec['model']}", f"model.pretrained={spec['pretrained']}",
          f"data.root={args.data_root}", f"data.size=[{size},{size}]", f"data.workers={args.workers}",
          f"data.augment={spec['augment']}", f"data.cache_dir={Path(args.work) / f'cache_{size}'}",
          "optim.name=adamw", f"optim.lr={spec['lr']}", f"optim.weight_decay={spec['weight_decay']}",
          "schedule.name=cosine", "schedule.horizon=time", f"schedule.warmup_epochs={warm_epochs}",
          f"loss.name={spec['loss']}", "train.epochs=100000", f"train.batch_size={bs}",
          f"train.precision={spec['precision']}", f"train.seed={args.seed}",
          "train.time_limit_min=1.0", f"train.out_dir={run_dir}", f"train.device={args.device}",
          # a one-minute budget: eager, as the recorded runs (the compile would take most of it)
          "train.compile=false", "model.grad_checkpointing=false"]
    cfg = load_config(None, ov)
    cfg.model.overrides = dict(spec["model_overrides"])
    cfg.loss.kwargs = dict(spec["loss_kwargs"])
    seed_everything(args.seed, False)
    net = build_model(cfg)
    if spec["out_bias"] is not None:
        net = WithBias(net, spec["out_bias"])
    data = build_datasets(cfg, int(net.config.num_classes), int(net.config.in_chans))
    if spec["pos_weight"] is not None:
        loss_fn: nn.Module = DicePosWeightBCE(spec["pos_weight"])
    else:
        loss_fn = build_loss(cfg.loss.name, int(net.config.num_classes), **cfg.loss.kwargs)
    engine = Engine(cfg, SegmentTask(cfg, model=net, loss_fn=loss_fn, train_set=data.train,
                                     preprocess=data.preprocess))
    model = engine.model
    # Parameter groups: decoder (and the extra bias) may get their own lr multiplier.
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    dec = [p for n, p in named if "decoder" in part_of(n) or part_of(n) == ["out_bias"]]
    rest = [p for n, p in named if not ("decoder" in part_of(n) or part_of(n) == ["out_bias"])]
    groups = [{"params": rest, "mult": 1.0}]
    if dec:
        groups.append({"params": dec, "mult": spec["decoder_lr_mult"]})
    engine.opt = torch.optim.AdamW(groups, lr=spec["lr"], weight_decay=spec["weight_decay"])
    parts = sorted({g for n, _ in named for g in part_of(n)})
    dice_c, ce_c = DiceLoss(), CELoss()
    per_epoch = engine.task.sampler.batches_per_epoch()
    log: list[dict[str, Any]] = []
    vals: list[dict[str, Any]] = []
    ev = evaluate(model, engine, data.val, bs)
    vals.append({"step": 0, **{k: round(v, 5) for k, v in ev.items()}})
    print(f"[{name}] step 0 val {vals[-1]}", flush=True)
    t0 = time.monotonic()
    step, epoch = 0, 0
    model.train()
    while step < steps:
        for batch in engine.task.train_batches(epoch, 0):
            if step >= steps:
                break
            f = lr_factor(cfg, step / per_epoch, step / steps)   # warm-up in epochs, cosine over steps
            for g in engine.opt.param_groups:
                g["lr"] = spec["lr"] * f * g["mult"]
            x, y = engine.task._inputs(batch)
            engine.opt.zero_grad(set_to_none=True)
            with engine.autocast():
                logits = model(x)
            logits = logits.float()
            loss = loss_fn(logits, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name}: loss {loss.item()} at step {step}")
            loss.backward()
            # -- measurements (no effect on training) --
            z = logits.detach().requires_grad_(True)
            dpart, cpart = dice_c(z, y), ce_c(z, y)
            gd, = torch.autograd.grad(dpart, z)
            gc_, = torch.autograd.grad(cpart, z)
            with torch.no_grad():
                zz, g = z[:, 0], (y > 0)
                rec: dict[str, Any] = {
                    "step": step + 1, "lr": spec["lr"] * f, "loss": float(loss),
                    "dice_part": float(dpart), "ce_part": float(cpart),
                    "logit_mean": float(zz.mean()), "logit_std": float(zz.std()),
                    "logit_spatial_std": float(zz.flatten(1).std(1).mean()),
                    "logit_mean_fg": float(zz[g].mean()) if g.any() else None,
                    "logit_mean_bg": float(zz[~g].mean()) if (~g).any() else None,
                    "pred_fg_frac": float((zz > 0).float().mean()),
                    "true_fg_frac": float(g.float().mean()),
                    # summed dLoss/dlogit over fg / bg pixels: <0 pushes logits up, >0 down
                    "dice_grad_fg": float(gd[:, 0][g].sum()), "dice_grad_bg": float(gd[:, 0][~g].sum()),
                    "ce_grad_fg": float(gc_[:, 0][g].sum()), "ce_grad_bg": float(gc_[:, 0][~g].sum()),
                }
                sq = {p: 0.0 for p in parts}
                for n, p in named:
                    if p.grad is not None:
                        v = float(p.grad.float().pow(2).sum())
                        for grp in part_of(n):
                            sq[grp] += v
                for p in parts:
                    rec[f"gn_{p}"] = math.sqrt(sq[p])
                if spec["out_bias"] is not None:
                    rec["out_bias"] = float(model.bias)
            if spec["clip_grad_norm"] > 0:   # after the measurements, as the engine's optim.clip_grad_norm
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec["clip_grad_norm"])
            engine.opt.step()
            step += 1
            log.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()})
            if step % args.print_every == 0 or step == 1:
                print(f"[{name}] step {step} loss {rec['loss']:.4f} dice {rec['dice_part']:.4f} "
                      f"ce {rec['ce_part']:.4f} z {rec['logit_mean']:.2f}±{rec['logit_std']:.2f} "
                      f"fg/bg {rec['logit_mean_fg']} {rec['logit_mean_bg']:.2f} pred_fg {rec['pred_fg_frac']:.3f} "
                      + " ".join(f"{p}={rec[f'gn_{p}']:.3g}" for p in parts)
                      + f" ({time.monotonic() - t0:.0f}s)", flush=True)
            if step % args.val_every == 0 or step == steps:
                ev = evaluate(model, engine, data.val, bs)
                vals.append({"step": step, **{k: round(v, 5) for k, v in ev.items()}})
                print(f"[{name}] step {step} val {vals[-1]}", flush=True)
        epoch += 1
    wall = time.monotonic() - t0
    engine.close()
    final = vals[-1]
    return {"variant": name, "spec": spec, "steps": steps, "epochs": round(steps * bs / len(data.train), 2),
            "train_images": len(data.train), "val_images": len(data.val),
            "params": sum(p.numel() for p in model.parameters()), "wall_s": round(wall, 1),
            "val_dice": final["val_dice"], "val_dice_best_thr": final["val_dice_best_thr"],
            "first_step_val_dice_gt_1": next((v["step"] for v in vals if v["val_dice"] > 1.0), None),
            "escape_step": esc({"log": log, "steps": steps}),
            "val": vals, "log": log}


def mean_over(log: list[dict[str, Any]], key: str, a: int, b: int) -> float | None:
    xs = [r[key] for r in log if a < r["step"] <= b and r.get(key) is not None]
    return sum(xs) / len(xs) if xs else None


def esc(r: dict[str, Any]) -> str:
    """Leaving all-background: after the first step with < 0.5% of train pixels predicted fg
    (the collapse), the first step whose 10-step mean (from the collapse on) exceeds 2%."""
    log = r["log"]
    c = next((i for i, x in enumerate(log) if x["pred_fg_frac"] < 0.005), None)
    if c is None:
        return "no collapse"
    for i in range(c, len(log)):
        w = log[max(c, i - 9):i + 1]
        if sum(x["pred_fg_frac"] for x in w) / len(w) > 0.02:
            return str(log[i]["step"])
    return f"never (≤{r['steps']})"


def write_outputs(out: Path, info: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "kvasir_early_training.json", info, indent=1)
    runs = info["runs"]
    st = info["settings"]
    cpu = info["device"] == "cpu"
    where = "CPU" if cpu else (info.get("gpu") or info["device"])
    lines = [f"# HRMedSeg early training on Kvasir-SEG ({where}{', small scale' if cpu else ''})", "",
             f"{info['date']}, torch {info['torch']}, commit {info['commit']}, device {info['device']} "
             f"({st['threads']} thread{'s' if st['threads'] != 1 else ''}, {st.get('workers', 0)} loader workers). Default setting: input {st['size']}², batch {st['batch']}, {st['steps']} AdamW "
             f"steps, lr {st['lr']} (wd {st['weight_decay']}), warm-up {st['warmup_steps']} steps then "
             f"cosine over the steps, {st['precision']}, loss dice_ce, augmentation {st['augment']}, "
             f"seed {st['seed']}; val split ({runs[0]['val_images'] if runs else '?'} images), "
             f"Dice of logit > 0 per image (trainer metric). Each variant changes one thing (column 'change'); "
             f"'best-thr Dice' is a diagnostic only (threshold picked on val among logit quantiles).", "",
             "| variant | change | steps | escape step | val Dice @100 | val Dice @end | best-thr Dice @end (quantile) | val Dice by step | "
             "pred fg frac (train, last 20) | logit d' fg vs bg (val) | Dice / CE part (train, last 20) | "
             "grad norm enc / neck / dec (first 20 steps) | s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        v = r["val"][-1]
        by = ", ".join(f"{x['step']}:{x['val_dice']:.1f}" for x in r["val"])
        n = r["steps"]
        pf = mean_over(r["log"], "pred_fg_frac", n - 20, n)
        dp, cp = mean_over(r["log"], "dice_part", n - 20, n), mean_over(r["log"], "ce_part", n - 20, n)
        gns = [mean_over(r["log"], f"gn_{p}", 0, 20) for p in ("encoder", "neck", "decoder")]
        gtxt = " / ".join("–" if g is None else f"{g:.3g}" for g in gns)
        change = json.dumps(VARIANTS.get(r["variant"], {})) if VARIANTS.get(r["variant"]) else "–"
        v100 = next((x["val_dice"] for x in r["val"] if x["step"] == 100), None)
        v100t = "–" if v100 is None else f"{v100:.2f}"
        lines.append(f"| {r['variant']} | `{change}` | {n} | {esc(r)} | {v100t} | {v['val_dice']:.2f} | {v['val_dice_best_thr']:.2f} "
                     f"({v['val_best_thr_quantile']:g}) | {by} | {pf:.3f} | "
                     f"{v['val_logit_sep']:.2f} | {dp:.3f} / {cp:.3f} | "
                     f"{gtxt} | {r['wall_s']:.0f} |")
    (out / "kvasir_early_training.md").write_text("\n".join(lines) + "\n")
    try:
        plot(out / "kvasir_early_training.png", runs,
             f"{where}, {st['size']}², batch {st['batch']}, {st['precision']}")
    except Exception as exc:  # the plot must not lose the numbers
        print(f"plot failed: {exc}", file=sys.stderr)


def plot(path: Path, runs: list[dict[str, Any]], setting: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(17, 5))
    for r in runs:
        style = "--" if r["spec"]["model"] != "hrmedseg" else ("-" if r["variant"] != "default" else "-")
        lw = 2.8 if r["variant"] == "default" else 1.4
        xs = [v["step"] for v in r["val"]]
        line, = ax[0].plot(xs, [v["val_dice"] for v in r["val"]], style, marker="o", ms=3, lw=lw,
                           label=r["variant"])
        steps = [x["step"] for x in r["log"]]
        k = 10

        def smooth(vals: list[float]) -> list[float]:
            return [sum(vals[max(0, i - k + 1):i + 1]) / len(vals[max(0, i - k + 1):i + 1])
                    for i in range(len(vals))]
        ax[1].plot(steps, smooth([x["pred_fg_frac"] for x in r["log"]]), style, lw=lw, color=line.get_color())
        ax[2].plot(steps, smooth([x["dice_part"] for x in r["log"]]), style, lw=lw, color=line.get_color())
    ax[0].set(xlabel="optimizer step", ylabel="val Dice (%) of logit > 0", title="val Dice vs step")
    ax[1].set(xlabel="optimizer step", ylabel="fraction of train pixels predicted fg (10-step mean)",
              title="predicted foreground fraction (true ≈ 0.15)")
    ax[1].axhline(0.15, color="gray", lw=0.8, ls=":")
    ax[2].set(xlabel="optimizer step", ylabel="soft-Dice loss part (train, 10-step mean)",
              title="Dice part of the loss")
    ax[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"HRMedSeg early training on Kvasir-SEG, {setting} (same seed/data order)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="a Kvasir-SEG folder (images/, masks/, splits.json)")
    ap.add_argument("--out", type=Path, required=True, help="folder for kvasir_early_training.json/.md/.png")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    ap.add_argument("--work", default="/tmp/kvasir_early_training")
    ap.add_argument("--variants", default="default")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup-steps", type=int, default=25,
                    help="GPU recipe: 0.5 epoch = 25 of ~220 steps")
    ap.add_argument("--augment", default="strong")
    ap.add_argument("--precision", default="fp32", help="fp32 on the CPU (bf16 autocast is 2x slower there)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--print-every", type=int, default=10)
    ap.add_argument("--train-images", type=int, default=800, help="for the warm-up in epochs")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    jpath = args.out / "kvasir_early_training.json"
    info: dict[str, Any] = json.loads(jpath.read_text()) if jpath.is_file() else {"runs": []}
    settings = {k: getattr(args, k) for k in ("size", "batch", "steps", "lr", "weight_decay",
                                              "warmup_steps", "augment", "precision", "seed",
                                              "threads", "val_every", "data_root", "workers")}
    free = ("data_root", "workers")   # may differ between runs merged into one file
    if info.get("settings") and {k: v for k, v in info["settings"].items() if k not in free} != \
            {k: v for k, v in settings.items() if k not in free}:
        raise SystemExit(f"{jpath} was made with other settings {info['settings']}; use another --out")
    info.update({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "torch": torch.__version__, "commit": source_commit() or "unknown", "device": args.device,
                 "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
                 "settings": settings, "variants_defined": VARIANTS})
    info.setdefault("commands", []).append(" ".join(sys.argv))
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        r = run_variant(args, name)
        info["runs"] = [x for x in info["runs"] if x["variant"] != name] + [r]
        write_outputs(args.out, info)
        print(f"[{name}] done: val Dice {r['val_dice']:.2f} (best-thr {r['val_dice_best_thr']:.2f}) "
              f"in {r['wall_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
