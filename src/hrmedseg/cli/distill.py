"""``hrmedseg distill --student hrmedseg --teacher mobile_sam.pt --images DIR [DIR...] -o RUN``.

MSE between the student's neck output and MobileSAM's (TinyViT) image embedding at SIZE²; both
networks see SAM's preprocessing (longest side → SIZE, SAM mean/std = ImageNet normalisation,
zero padding). Without augmentation the teacher's embeddings are computed once and cached
(float16 .npy per image, manifest with the teacher's sha256); ``--augment strong`` runs the
teacher on each random view. Rerunning the same command continues from RUN/checkpoints/last.
``RUN/student`` is a model folder; ``hrmedseg train model.pretrained=RUN/student`` loads its
encoder and neck. The same as ``hrmedseg train --task distill`` (recipe ``distill``) with these
flags as its keys.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..training.config import Config


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(sub, "distill", help="distil MobileSAM's image embedding into an HRMedSeg encoder",
                 description="Distil MobileSAM's image embedding into a student encoder (MSE on "
                             "the neck output). Rerun the same command to continue from "
                             "RUN/checkpoints/last; RUN/student is a model folder.")
    p.add_argument("--student", default="hrmedseg", help="student model name or model folder")
    p.add_argument("--teacher", required=True, help="MobileSAM checkpoint (mobile_sam.pt)")
    p.add_argument("--images", nargs="+", required=True, help="image folders (searched recursively)")
    p.add_argument("-o", "--out", required=True, help="run folder (rerun to continue)")
    p.add_argument("--epochs", type=int, default=20, help="passes over the training images")
    add_batch_size(p, 4, help="images per step")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (Adam, constant)")
    p.add_argument("--size", type=int, default=1024, help="square input side")
    add_device_argument(p)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="autocast precision of the student's forward pass")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of --images held out for validation")
    p.add_argument("--val-images", nargs="*", default=[],
                   help="held-out image folders (instead of a --val-fraction of --images)")
    p.add_argument("--time-limit-min", type=float, default=0.0,
                   help="stop after this many minutes of training, resumes included (0 = off)")
    p.add_argument("--augment", default="none", choices=["none", "strong"],
                   help="none: the teacher's embeddings are cached once; strong: random views, "
                        "the teacher runs on each")
    p.add_argument("--teacher-cache", help="embedding cache folder (default RUN/teacher_cache)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--max-steps", type=int, default=0,
                   help="stop after this many steps (resumable; 0 = off)")
    p.add_argument("--workers", default="auto",
                   help="image-reading processes (auto: from the CPU count)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="student model overrides, e.g. embed_dim=48 depth=8")
    p.set_defaults(func=run)


def to_config(args: argparse.Namespace) -> "Config":
    """The flags as keys of the one training config (recipe ``distill``)."""
    from .train import task_config

    return task_config("distill", args, args.student, {
        "distill": {"images": args.images, "val_images": args.val_images,
                    "val_fraction": args.val_fraction, "teacher": args.teacher,
                    "teacher_cache": args.teacher_cache or ""},
    })


def run(args: argparse.Namespace) -> int:
    from .train import run_task

    return run_task(args, to_config)
