"""``hrmedseg train-esp --data NAME=DIR:ID [...] [--teacher mobile_sam.pt] -o RUN``.

ESP-MedSAM trained on several datasets, one modality each (the integer ID routes the dataset's
batches through controller bag ID, query ID and hypernetwork ID; a batch never mixes
datasets), with the MMDKD distillation of eq. 1 against frozen teachers: the bare light encoder
learns ``--teacher`` (SAM's natural-image encoder, e.g. MobileSAM's mobile_sam.pt) on
``--natural-images`` (else on the medical batch), the controller-driven encoder learns
``--medical-teacher`` (a fine-tuned medical SAM; default: the teacher) on each modality's
images. Without ``--teacher`` and ``--medical-teacher`` only the segmentation loss is used.
Each dataset's test split is then evaluated prompt-free, per modality. Rerunning the same
command continues from RUN/checkpoints/last. The same as ``hrmedseg train --task esp`` (recipe
``esp_medsam``) with these flags as its keys; see :mod:`hrmedseg.training.tasks.esp`.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..training.config import Config


def parse_dataset(spec: str) -> dict:
    """``NAME=DIR:ID`` or ``DIR:ID`` → dict(root, modality[, name])."""
    from ..errors import UserError

    name = ""
    head, sep, rest = spec.partition("=")
    if sep and head and "/" not in head and "\\" not in head:
        name, spec = head, rest
    root, colon, mid = spec.rpartition(":")
    if not colon or not root:
        raise UserError(f"--data {spec!r}: expected NAME=DIR:ID or DIR:ID (ID = modality, 0-based)")
    try:
        modality = int(mid)
    except ValueError:
        raise UserError(f"--data {spec!r}: modality id {mid!r} is not an integer") from None
    out = {"root": root, "modality": modality}
    if name:
        out["name"] = name
    return out


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..compiling import COMPILE_SETTINGS
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(
        sub, "train-esp", help="train ESP-MedSAM on several datasets (one modality each) with MMDKD",
        description="Train ESP-MedSAM across datasets of different modalities with the MMDKD "
                    "distillation (eq. 1) and evaluate each test split without prompts. "
                    "Rerun the same command to continue an interrupted run.")
    p.add_argument("--data", nargs="+", required=True, metavar="NAME=DIR:ID",
                   help="datasets: images/+masks/ folder and its modality id, e.g. "
                        "kvasir=data/kvasir:0 dsb=data/dsb2018:1")
    p.add_argument("-o", "--out", required=True, help="run folder (rerun to continue)")
    p.add_argument("--teacher", help="natural-image SAM encoder f_ViT-SAM: MobileSAM checkpoint "
                                     "(mobile_sam.pt) or model folder; omit to skip MMDKD")
    p.add_argument("--medical-teacher", help="fine-tuned medical SAM f_ViT-Med (model folder or "
                                             "checkpoint); default: --teacher")
    p.add_argument("--natural-images", nargs="*", default=[], metavar="DIR",
                   help="natural images x_nat for the universal term (default: the medical batch)")
    p.add_argument("--model", default="esp_medsam", help="model name or model folder")
    p.add_argument("--num-modalities", type=int, default=0,
                   help="number of modalities (0 = largest ID + 1)")
    p.add_argument("--init", help="MobileSAM checkpoint to initialise the encoder and decoder")
    p.add_argument("--epochs", type=int, default=200, help="passes over every dataset")
    add_batch_size(p, 4, help="images per step (one dataset per batch)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (Adam)")
    p.add_argument("--lr-gamma", type=float, default=0.98, help="exponential decay per epoch")
    p.add_argument("--size", type=int, default=1024, help="square input side, multiple of 32")
    p.add_argument("--augment", default="paper", choices=["none", "paper", "strong"],
                   help="training augmentation: none, the paper's, or strong")
    add_device_argument(p)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="autocast precision of the forward pass")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many steps (resumable; 0 = off)")
    p.add_argument("--time-limit-min", type=float, default=0.0,
                   help="stop after this many minutes (resumable; the test split is evaluated; "
                        "0 = off)")
    p.add_argument("--workers", default="auto",
                   help="image-reading processes (auto: from the CPU count)")
    p.add_argument("--w-seg", type=float, default=1.0, help="segmentation loss weight")
    p.add_argument("--w-universal", type=float, default=1.0, help="MMDKD universal term weight")
    p.add_argument("--w-modality", type=float, default=1.0, help="MMDKD modality term weight")
    p.add_argument("--modality-reduction", default="sum", choices=["sum", "mean"],
                   help="sum: eq. 1's sum over modalities; mean: each batch at weight 1")
    p.add_argument("--coupled", action="store_true",
                   help="let the modality term train the shared encoder too (default: bag only)")
    p.add_argument("--focal-weight", type=float, default=20.0, help="λ of λ·focal + Dice")
    p.add_argument("--sppg-weight", type=float, default=1.0, help="w_sppg: weight of the SPPG patch BCE")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute the encoder's blocks in backward: less memory, exact")
    p.add_argument("--compile", default="auto", choices=COMPILE_SETTINGS,
                   help="torch.compile the student's pass (auto: only models with a compile "
                        "parity record, on CUDA)")
    p.add_argument("--no-test", action="store_true", help="skip the final test evaluation")
    p.add_argument("--no-hd", action="store_true", help="skip Hausdorff distances in the test")
    p.add_argument("--no-resume", action="store_true", help="start over even if RUN has a checkpoint")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="model config overrides, e.g. drop_path_rate=0.1")
    p.set_defaults(func=run)


def to_config(args: argparse.Namespace) -> "Config":
    """The flags as keys of the one training config (recipe ``esp_medsam``)."""
    from .train import task_config

    return task_config("esp_medsam", args, args.model, {
        "schedule": {"gamma": args.lr_gamma},
        "model": {"grad_checkpointing": "true" if args.grad_checkpointing else "auto"},
        "train": {"eval_test": not args.no_test, "compile": args.compile},
        "esp": {"datasets": [parse_dataset(d) for d in args.data], "teacher": args.teacher or "",
                "medical_teacher": args.medical_teacher or "", "natural_images": args.natural_images,
                "num_modalities": args.num_modalities, "init": args.init or "",
                "w_seg": args.w_seg, "w_universal": args.w_universal, "w_modality": args.w_modality,
                "modality_reduction": args.modality_reduction, "decoupled": not args.coupled,
                "focal_weight": args.focal_weight, "sppg_weight": args.sppg_weight,
                "eval_hd": not args.no_hd},
    })


def run(args: argparse.Namespace) -> int:
    from .train import run_task

    return run_task(args, to_config, resume=not args.no_resume)
