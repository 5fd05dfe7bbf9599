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


@pytest.mark.parametrize("w", list_pretrained(), ids=lambda w: w.tag)
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
