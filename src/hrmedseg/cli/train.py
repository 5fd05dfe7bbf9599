"""``hrmedseg train [--task segment|distill|esp] --config FILE [section.key=value ...]``."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..training.config import Config


TASK_RECIPES = {"segment": "default", "distill": "distill", "esp": "esp_medsam"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_verb
    p = add_verb(sub, "train", help="train a model from a YAML config (resumes automatically)",
                 description="Train from a config file or a shipped recipe (paper, herseg, qtseg); "
                             "override any field as section.key=value (the device is "
                             "train.device=auto|cpu|cuda). Under torchrun it trains with DDP on "
                             "every process.")
    p.add_argument("--task", choices=list(TASK_RECIPES),
                   help="what to train: segment (default), distill (a student's embedding learns "
                        "a teacher's; distill.* keys) or esp (ESP-MedSAM with MMDKD; esp.* keys)")
    p.add_argument("--config",
                   help="YAML file or shipped recipe name: default (the distilled encoder, AdamW, "
                        "cosine; the default for --task segment), paper, herseg, qtseg, distill "
                        "(default for --task distill), esp_medsam (default for --task esp)")
    p.add_argument("overrides", nargs="*", help="e.g. data.root=DIR train.epochs=40 optim.lr=1e-3")
    p.add_argument("--data", help="shortcut for data.root=DIR")
    p.add_argument("--out", help="shortcut for train.out_dir=DIR")
    p.add_argument("--model", help="shortcut for model.name=NAME")
    p.add_argument("--pretrained", help="shortcut for model.pretrained=(none|default|TAG|DIR)")
    p.add_argument("--no-resume", action="store_true", help="start over even if the run folder has a checkpoint")
    p.add_argument("--resume", action="store_true", help="(default) continue from checkpoints/last if present")
    p.add_argument("--deterministic", action="store_true", help="shortcut for train.deterministic=true")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..training.config import load_config
    from ..training.run import train
    from ._common import device_arg

    ov = list(args.overrides)
    if args.task:
        ov.insert(0, f"task={args.task}")
    config = args.config or TASK_RECIPES[args.task or "segment"]
    for flag, key in (("data", "data.root"), ("out", "train.out_dir"), ("model", "model.name"),
                      ("pretrained", "model.pretrained")):
        if getattr(args, flag):
            ov.append(f"{key}={getattr(args, flag)}")
    if args.deterministic:
        ov.append("train.deterministic=true")
    cfg = load_config(config, ov)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    # Checked here, before any run folder exists; the run resolves "auto" itself (under torchrun
    # to this process's GPU), so the config keeps the spelling it was given.
    device_arg(cfg.train.device, "train.device")
    summary = train(cfg, resume=not args.no_resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def task_config(recipe: str, args: argparse.Namespace, model: str,
                sections: dict[str, Any]) -> "Config":
    """A task verb's flags as keys of ``recipe``: the flags every task verb has (--set, --size,
    --augment, --workers, --lr, --out, --epochs, --batch-size, --device, --precision, --seed,
    --max-steps, --time-limit-min), then the verb's own ``sections``."""
    from ..training.config import apply_overrides, load_config, validate
    from ._common import parse_set

    cfg = load_config(recipe)
    apply_overrides(cfg, {
        "model": {"name": model, "overrides": parse_set(args.set)},
        "data": {"size": [args.size, args.size], "augment": args.augment, "workers": args.workers},
        "optim": {"lr": args.lr},
        "train": {"out_dir": args.out, "epochs": args.epochs, "batch_size": args.batch_size,
                  "device": args.device, "precision": args.precision, "seed": args.seed,
                  "max_steps": args.max_steps, "time_limit_min": args.time_limit_min},
    })
    apply_overrides(cfg, sections)
    validate(cfg)
    return cfg


def run_task(args: argparse.Namespace, to_config: Callable[[argparse.Namespace], "Config"],
             resume: bool = True) -> int:
    """Train a task verb's config; a bad flag, file or setup is one line (exit 2: its errors are
    HrmedsegErrors, caught by the CLI)."""
    from ..training.run import train
    from ._common import device_arg

    # Checked before any run folder exists; the run resolves "auto" itself.
    device_arg(args.device)
    summary = train(to_config(args), resume=resume)
    print(json.dumps(summary, indent=2, default=str))
    return 0
