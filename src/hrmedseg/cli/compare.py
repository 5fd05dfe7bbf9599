"""``hrmedseg compare --config FILE [-o OUT] [section.key=value ...]``.

Trains every model of a comparison file with the same recipe, budget, split and seed (complete
runs are not trained again; interrupted ones resume), then writes one table of test Dice/IoU/HD95
with efficiency columns: OUT/compare.{md,csv,json}.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="train several models with one recipe; one comparison table")
    p.add_argument("--config", required=True,
                   help="comparison YAML (recipe, overrides, models); shipped: compare_dsb2018")
    p.add_argument("-o", "--out", type=Path, help="output folder (default: the file's out_dir)")
    p.add_argument("--device", help="training device for every model (auto, cpu, cuda)")
    p.add_argument("--print-config", action="store_true",
                   help="print each model's resolved training config and exit")
    p.add_argument("overrides", nargs="*", help="section.key=value applied to every model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..experiments.compare import build_configs, load_compare, run_compare
    from ..models._registry import is_model
    from ..errors import UserError

    spec = load_compare(args.config, args.overrides)
    unknown = [e.name for e in spec.models if not is_model(e.name)]
    if unknown:
        raise UserError(f"{spec.source}: unknown model(s) {', '.join(unknown)}")
    if args.print_config:
        for label, cfg in build_configs(spec, args.out).items():
            print(f"# {label}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    res = run_compare(spec, out_dir=args.out, device=args.device)
    print(res["markdown"])
    print("wrote " + ", ".join(str(p) for p in res["paths"].values()))
    return 0
