"""Shipped pretrained weights: offline, checksummed, applied only where they say, and giving
the results recorded for them when run here."""
import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import hrmedseg
from hrmedseg.models._pretrained import list_pretrained, resolve_weight, sha256_of


@pytest.mark.parametrize("w", list_pretrained(shipped=True), ids=lambda w: w.tag)
def test_every_shipped_file_matches_its_sha256(w):
    assert w.path().is_file(), f"{w.tag}: {w.path()} missing from the package"
    assert sha256_of(w.path()) == w.sha256


def test_hrmedseg_default_is_the_distilled_encoder_and_changes_only_encoder_and_neck():
    w = resolve_weight("hrmedseg", True)
    assert w.applies_to == "encoder,neck" and "MobileSAM" in w.teacher
    assert w.metrics["heldout_embedding_mse"] < w.metrics["heldout_mse_before"] / 100
    torch.manual_seed(0)
    plain = hrmedseg.create_model("hrmedseg", num_classes=2)
    torch.manual_seed(0)
    pre = hrmedseg.create_model("hrmedseg", num_classes=2, pretrained=True)
    assert pre.pretrained_weight == w.tag
    a, b = plain.state_dict(), pre.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    inside = {k for k in a if k.startswith(("encoder.", "neck."))}
    assert changed and changed <= inside                      # nothing outside encoder/neck
    assert len(changed) > 0.9 * len([k for k in inside if a[k].is_floating_point()])


@pytest.mark.parametrize("name", ["hrmedseg_lean", "herseg"])
def test_variants_sharing_the_encoder_take_the_distilled_weight(name):
    m = hrmedseg.create_model(name, pretrained=True)
    assert "distilled" in m.pretrained_weight


def test_inference_by_name_uses_the_whole_model_weight():
    assert resolve_weight("hrmedseg", "full").applies_to == "full"
    with pytest.raises(Exception, match="whole-model"):
        resolve_weight("herseg", "full")


ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "src" / "hrmedseg" / "samples" / "dsb2018"
SAMPLE_NAMES = sorted(p.name for p in (SAMPLES / "images").glob("*.png"))


@dataclass
class _Sample:
    stem: str
    image_path: Path
    mask_path: Path


@pytest.fixture(scope="module")
def dsb_segmenter():
    from hrmedseg.inference import Segmenter
    return Segmenter("hrmedseg", device="cpu")          # the whole-model weight, at 1024²


def test_dsb2018_weight_metrics_are_its_results_files():
    w = resolve_weight("hrmedseg", "full")
    test = json.loads((ROOT / w.metrics["results"] / "summary.json").read_text())["test"]
    assert w.metrics["dice"] == round(100 * test["model_resolution"]["dice"], 1)
    assert w.metrics["iou"] == round(100 * test["model_resolution"]["iou"], 1)
    assert w.metrics["hd95_px"] == round(test["model_resolution"]["hd95"], 1)
    assert w.metrics["dice_original_resolution"] == round(100 * test["original_resolution"]["dice"], 2)
    assert w.metrics["iou_original_resolution"] == round(100 * test["original_resolution"]["iou"], 2)


@pytest.mark.parametrize("name", [n if i == 0 else pytest.param(n, marks=pytest.mark.slow)
                                  for i, n in enumerate(SAMPLE_NAMES)])
def test_dsb2018_weight_reproduces_its_recorded_per_image_dice(dsb_segmenter, name):
    """The shipped DSB-2018 weight, run here (fp32, CPU) on a shipped test-split sample, gives
    the Dice and IoU that its training run recorded for that image (bf16 on an H100) at both
    resolutions."""
    from hrmedseg.evaluation.evaluate import evaluate_rows
    assert len(SAMPLE_NAMES) == 4
    w = resolve_weight("hrmedseg", "full")
    with (ROOT / w.metrics["results"] / "test" / "per_image.csv").open() as f:
        recorded = {r["stem"][:12]: r for r in csv.DictReader(f)}
    want = recorded[Path(name).stem.rsplit("_", 1)[-1]]
    sample = _Sample(Path(name).stem, SAMPLES / "images" / name, SAMPLES / "masks" / name)
    rows, rows_model, _ = evaluate_rows(dsb_segmenter, [(0, sample)], hd=False, progress=False)
    (_, got), (_, got_model) = rows[0], rows_model[0]
    for k in ("dice", "iou"):
        assert got[k] == pytest.approx(float(want[k]), abs=2e-3), k
        assert got_model[k] == pytest.approx(float(want[f"{k}@model"]), abs=2e-3), k


SHARED = ROOT.parent / "shared" if (ROOT.parent / "shared").is_dir() else Path("/work/shared")
MOBILE_SAM = SHARED / "weights" / "mobile_sam.pt"


def _heldout_images(n: int) -> list[Path]:
    """The distillation's held-out images (its val split, listed in its config), from the
    original dataset files: Kvasir-SEG and DSB-2018 alternately."""
    cfg = json.loads((ROOT / "benchmarks" / "results" / "distill_mobilesam" / "distill_config.json").read_text())
    stems = [Path(s).stem.split("__") for s in cfg["val_stems"]]
    kv = [SHARED / "data" / "kvasir-seg" / "images" / f"{s}.jpg" for d, s in stems if d == "kvasir-seg"]
    dsb = [SHARED / "data" / "dsb2018" / "images" / f"{s}.png" for d, s in stems if d == "dsb2018"]
    assert len(kv) + len(dsb) == len(stems) == 166
    return [p for pair in zip(kv, dsb) for p in pair][:n]


@pytest.mark.parametrize("n, factor", [(1, 3.0), pytest.param(6, 1.5, marks=pytest.mark.slow)])
def test_distilled_encoder_embedding_mse_against_mobilesam(n, factor):
    """The shipped distilled encoder's embedding MSE against the real MobileSAM encoder on
    held-out images, measured here (fp32, CPU), is near the recorded held-out MSE (a mean over
    166 images; single images spread over about 0.4x-1.5x of it),"""
    from hrmedseg.training.tasks.distill import load_rgb255
    images = _heldout_images(n)
    if not MOBILE_SAM.is_file() or not all(p.is_file() for p in images):
        pytest.skip("MobileSAM checkpoint or the Kvasir-SEG / DSB-2018 images not available")
    w = resolve_weight("hrmedseg", True)
    summary = json.loads((ROOT / w.metrics["results"] / "summary.json").read_text())
    recorded = w.metrics["heldout_embedding_mse"]
    assert recorded == round(summary["best_val_mse"], 5)
    teacher = hrmedseg.create_model("mobile_sam", pretrained=str(MOBILE_SAM)).eval()
    student = hrmedseg.create_model("hrmedseg", pretrained=True).eval()
    errors = []
    with torch.no_grad():
        for p in images:
            x = teacher.preprocess(load_rgb255(p)[None])[0]        # SAM's resize + pad + normalise
            y = teacher.image_embeddings(x)
            errors.append(torch.mean((student.forward_embedding(x) - y) ** 2).item())
    mse = sum(errors) / len(errors)
    assert recorded / factor < mse < recorded * factor, (errors, recorded)
