"""Merge per-run result folders of the session-3 pipeline into one table.

``python tables.py zeroshot DIR``: DIR/<dataset>_<teacher|student>/summary.json (written by
``hrmedseg zeroshot``) → DIR/zeroshot.json + DIR/zeroshot.md (MobileSAM's own encoder vs the
distilled HRMedSeg encoder, both with MobileSAM's prompt encoder and mask decoder).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def zeroshot(root: Path) -> None:
    rows = []
    for d in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        ds, enc = d.name.rsplit("_", 1)
        s = json.loads((d / "summary.json").read_text())
        row = {"dataset": ds, "encoder": {"teacher": "MobileSAM TinyViT (teacher)",
                                          "student": "HRMedSeg LGViT (distilled)"}.get(enc, enc)}
        for res in ("original_resolution", "model_resolution"):
            for m in ("dice", "iou", "hd95"):
                v = s.get(res, {}).get(m)
                if isinstance(v, dict):   # dice/iou are fractions in summary.json: show %
                    scale = 100.0 if m in ("dice", "iou") else 1.0
                    row[f"{m}@{res.split('_')[0]}"] = round(scale * float(v["mean"]), 2)
        row["images"] = s.get("n_images") or s.get("original_resolution", {}).get("n_images")
        row["boxes"] = s.get("n_boxes")
        rows.append(row)
    (root / "zeroshot.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| dataset | image encoder | Dice | IoU | HD95 (px) | boxes |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['encoder']} | {r.get('dice@original', '–')} | "
                     f"{r.get('iou@original', '–')} | {r.get('hd95@original', '–')} | {r.get('boxes', '–')} |")
    (root / "zeroshot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    {"zeroshot": zeroshot}[sys.argv[1]](Path(sys.argv[2]))
