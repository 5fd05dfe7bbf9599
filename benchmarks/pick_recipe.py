"""Pick the default recipe's early-training remedy from GPU runs of kvasir_early_training.py.

Each GPU of the session-5 pipeline runs some variants of ``kvasir_early_training.py`` (HRMedSeg
from the distilled encoder on Kvasir-SEG, train split → **val** split, never test) into its own
folder. This script merges those folders into one result (JSON, Markdown, PNG) and picks, among the
variants that are plain recipe settings, the one the equal-time comparison then uses for both
models (``equal_time.py --set``). The rule, fixed before the runs: score = mean val Dice of the
last two evaluations; the default recipe stays unless another variant scores at least
``--margin`` (2.0) Dice points higher.

    python benchmarks/pick_recipe.py OUT LANE_DIR [LANE_DIR ...]   # prints one --set per line
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# Variant → the trainer overrides that give the same setting in a normal run.
RECIPE_OVERRIDES: dict[str, list[str]] = {
    "default": [],
    "loss_dice": ["loss.name=dice"],
    "loss_dice_focal": ["loss.name=dice_focal"],
    "dice_x3": ["loss.kwargs.lambda_dice=3.0"],
    "clip1": ["optim.clip_grad_norm=1.0"],
    "no_warmup": ["schedule.warmup_epochs=0"],
}


def score(run: dict[str, Any]) -> float:
    vals = [v["val_dice"] for v in run["val"]][-2:]
    return sum(vals) / len(vals)


def pick(runs: list[dict[str, Any]], margin: float) -> tuple[str, dict[str, float]]:
    scores = {r["variant"]: round(score(r), 3) for r in runs if r["variant"] in RECIPE_OVERRIDES}
    if "default" not in scores:
        raise SystemExit("pick_recipe: no 'default' run to compare against")
    best = max(scores, key=lambda v: scores[v])
    return (best if scores[best] >= scores["default"] + margin else "default"), scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("lanes", type=Path, nargs="+")
    ap.add_argument("--margin", type=float, default=2.0)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from kvasir_early_training import write_outputs

    infos = [json.loads((d / "kvasir_early_training.json").read_text()) for d in args.lanes
             if (d / "kvasir_early_training.json").is_file()]
    if not infos:
        raise SystemExit(f"pick_recipe: no kvasir_early_training.json in {args.lanes}")
    merged = dict(infos[0])
    merged["runs"] = [r for i in infos for r in i["runs"]]
    merged["commands"] = [c for i in infos for c in i.get("commands", [])]
    chosen, scores = pick(merged["runs"], args.margin)
    merged["recipe_pick"] = {"rule": f"mean val Dice of the last two evaluations; default unless "
                                     f"another recipe variant is >= {args.margin} points higher",
                             "scores": scores, "chosen": chosen,
                             "overrides": RECIPE_OVERRIDES[chosen]}
    write_outputs(args.out, merged)
    with open(args.out / "kvasir_early_training.md", "a") as f:
        f.write(f"\nRecipe pick ({merged['recipe_pick']['rule']}): scores {json.dumps(scores)} → "
                f"**{chosen}** (overrides: {', '.join(RECIPE_OVERRIDES[chosen]) or 'none'}).\n")
    for o in RECIPE_OVERRIDES[chosen]:
        print(o)
    return 0


if __name__ == "__main__":
    sys.exit(main())
