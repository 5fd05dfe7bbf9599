"""Turn the GPU distillation's student folder into the package's shipped pretrained encoder.

``python benchmarks/session3/ship_encoder.py RESULTS/distill``: keeps only ``encoder.*`` and
``neck.*`` of ``RESULTS/distill/student/model.safetensors`` (fp32), writes it to
``src/hrmedseg/weights/hrmedseg_distilled_mobilesam.safetensors`` and describes it in
``weights.json`` (sha256, teacher, images, held-out MSE) as the default weight of ``hrmedseg``,
``hrmedseg_lean`` and ``herseg`` (same encoder and neck); the DSB-2018 weight stays by tag.
"""
from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
WDIR = ROOT / "src" / "hrmedseg" / "weights"
FILE = "hrmedseg_distilled_mobilesam.safetensors"
MOBILE_SAM_SHA = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"


def main(res: Path) -> None:
    state = load_file(str(res / "student" / "model.safetensors"))
    keep = {k: v.float().contiguous() for k, v in state.items() if k.startswith(("encoder.", "neck."))}
    save_file(keep, str(WDIR / FILE), metadata={"format": "pt"})
    sha = hashlib.sha256((WDIR / FILE).read_bytes()).hexdigest()
    cfg = json.loads((res / "distill_config.json").read_text())
    summary = json.loads((res / "summary.json").read_text())
    rows = list(csv.DictReader(open(res / "metrics.csv")))
    first = float(rows[0]["val_loss"])
    best = float(summary["best_val_mse"])
    steps = int(summary["global_step"])
    index = json.loads((WDIR / "weights.json").read_text())
    for e in index.values():
        e["default"] = False
    desc = {
        "file": FILE, "sha256": sha, "applies_to": "encoder,neck", "num_classes": None,
        "source": (f"hrmedseg distill --augment strong at {cfg['size']}x{cfg['size']}, batch "
                   f"{cfg['batch_size']}, Adam {cfg['lr']}, {cfg['precision']}, NVIDIA H100, "
                   f"{steps} steps ({summary['epochs_done']} full epochs) in a "
                   f"{cfg['time_limit_min']}-minute budget (benchmarks/session3/pipeline.sh); "
                   f"the student with the lowest held-out MSE"),
        "teacher": (f"MobileSAM vit_t image encoder (mobile_sam.pt, sha256 {MOBILE_SAM_SHA}), "
                    f"cast to fp16 for transfer, run under bf16 autocast; 256x64x64 embedding"),
        "dataset": (f"{cfg['train_images']} training-split images of Kvasir-SEG (800), DSB-2018 (531) "
                    f"and DRIVE (20) from ../shared/data, random scale/crop/flip/colour views, "
                    f"teacher run on every view; held out: the {cfg['val_images']} val-split "
                    f"images of Kvasir-SEG and DSB-2018 (test splits never seen). SA-1B was not "
                    f"available."),
        "license": "weights: Apache-2.0 (teacher Apache-2.0); images: Kvasir-SEG research/education, DSB-2018 CC0, DRIVE research",
        "metrics": {"heldout_embedding_mse": round(best, 5), "heldout_mse_before": round(first, 5),
                    "heldout_images": cfg["val_images"],
                    "results": "benchmarks/results/distill_mobilesam/"},
        "preprocess": {"size": [cfg["size"], cfg["size"]], "normalize": "imagenet",
                       "note": "SAM preprocessing during distillation: longest side resized, zero padding"},
        "notes": "encoder (LGViT) and neck only; the decoder is trained on your data",
    }
    new = {f"hrmedseg-distilled-mobilesam": {"model": "hrmedseg", "default": True, **desc}}
    for variant in ("hrmedseg_lean", "herseg"):
        new[f"{variant}-distilled-mobilesam"] = {"model": variant, "default": True, **desc}
    index = {**new, **index}
    (WDIR / "weights.json").write_text(json.dumps(index, indent=2) + "\n")
    print(json.dumps({"file": str(WDIR / FILE), "sha256": sha, "tensors": len(keep),
                      "heldout_mse": best, "before": first}, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
