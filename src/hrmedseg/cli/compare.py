"""``hrmedseg compare --config FILE [-o OUT] [section.key=value ...]``.

Trains every model of a comparison file with the same recipe, budget, split and seed (complete
runs are not trained again; interrupted ones resume), then writes one table of test Dice/IoU/HD95
with efficiency columns: OUT/compare.{md,csv,json}.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_device_argument, add_verb
    p = add_verb(sub, "compare", help="train several models with one recipe; one comparison table")
    p.add_argument("--config", required=True,
                   help="comparison YAML (recipe, overrides, models); shipped: compare_dsb2018")
    p.add_argument("-o", "--out", type=Path, help="output folder (default: the file's out_dir)")
    add_device_argument(p, default=None,
                        note="for every model (default: each model's train.device)")
    p.add_argument("--print-config", action="store_true",
                   help="print each model's resolved training config and exit")
    p.add_argument("overrides", nargs="*", help="section.key=value applied to every model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..errors import UserError
    from ..experiments.compare import build_configs, load_compare, run_compare
    from ..models._registry import is_model
    from ._common import device_arg

    spec = load_compare(args.config, args.overrides)
    unknown = [e.name for e in spec.models if not is_model(e.name)]
    if unknown:
        raise UserError(f"{spec.source}: unknown model(s) {', '.join(unknown)}")
    if args.print_config:
        for label, cfg in build_configs(spec, args.out).items():
            print(f"# {label}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    # Checked before any run folder exists; the runs resolve "auto" themselves.
    if args.device is not None:
        device_arg(args.device)
    else:
        for label, cfg in build_configs(spec, args.out).items():
            device_arg(cfg.train.device, f"model {label}: train.device")
    res = run_compare(spec, out_dir=args.out, device=args.device)
    print(res["markdown"])
    print("wrote " + ", ".join(str(p) for p in res["paths"].values()))
    return 0
