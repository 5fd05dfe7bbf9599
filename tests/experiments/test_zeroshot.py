"""Zero-shot box-prompted SAM evaluation: shapes, one box per component, files written."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hrmedseg.data.datasets import discover_pairs
from hrmedseg.experiments.zeroshot import build_zeroshot_model, evaluate_zeroshot, zeroshot_predict
from hrmedseg.models._registry import create_model
from hrmedseg.models.sam_checkpoints import to_sam_state_dict

TINY_TINYVIT = dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                    window_sizes=(2, 2, 2, 2), head_classes=0)
STUDENT = dict(embed_dim=24, depth=2, num_heads=[6, 6, 6], neck_dim=256, decoder_heads=4,
               decoder_mlp_dim=32, drop_path_rate=0.0)


def make_data(root, n=3):
    """Images with two or three separate discs each (one component per disc)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 50 + 6 * i, 70
        yy, xx = np.mgrid[:h, :w]
        m = np.zeros((h, w), bool)
        centres = [(15, 15), (30, 50), (h - 8, 20)][: 2 + (i % 2)]
        for cy, cx in centres:
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= 36
        img = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
        img[m] += 150
        Image.fromarray(img).save(root / "images" / f"c{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"c{i}.png")
    return root


def tiny_sam():
    torch.manual_seed(0)
    return create_model("mobile_sam", img_size=64, encoder_args=TINY_TINYVIT).eval()


def test_zeroshot_predict_shapes_and_boxes(tmp_path):
    model = tiny_sam()
    idx = discover_pairs(make_data(tmp_path / "ds"))
    from hrmedseg.data.io import read_image, read_mask
    imgs = [read_image(s.image_path) for s in idx]
    gts = [read_mask(s.mask_path) for s in idx]
    out = zeroshot_predict(model, imgs, gts)
    assert [o["boxes"].shape[0] for o in out] == [2, 3, 2]
    for o, img in zip(out, imgs):
        assert tuple(o["logits"].shape) == img.shape[:2]
        s = model.preprocess_shape(*img.shape[:2])
        assert tuple(o["logits_model"].shape) == s
    # an empty ground truth gets no prompt and an all-background prediction
    empty = zeroshot_predict(model, imgs[:1], [np.zeros_like(gts[0])])[0]
    assert empty["boxes"].shape == (0, 4) and (empty["logits"] < 0).all()


def test_evaluate_zeroshot_writes_files(tmp_path):
    model = tiny_sam()
    idx = discover_pairs(make_data(tmp_path / "ds"))
    res = evaluate_zeroshot(model, list(idx), tmp_path / "out", device="cpu", batch_size=2,
                            overlays=2, progress=False)
    assert res["n_images"] == 3 and res["n_boxes"] == 7
    for k in ("dice", "iou", "hd95"):
        assert k in res["original_resolution"] and k in res["model_resolution"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "per_image.csv")))
    assert [r["n_boxes"] for r in rows] == ["2", "3", "2"] and "dice@model" in rows[0]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n_images"] == 3
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 2


def test_student_encoder_with_sam_checkpoint_and_cli(tmp_path):
    from hrmedseg.cli.main import main
    sam = tiny_sam()
    ckpt = tmp_path / "sam.pt"
    torch.save(to_sam_state_dict(sam), ckpt)
    torch.manual_seed(1)
    student = create_model("hrmedseg", img_size=64, **STUDENT)
    student.save_pretrained(tmp_path / "student", metadata={"distilled": True})
    model = build_zeroshot_model(str(tmp_path / "student"), str(ckpt))
    assert model.model_name == "hrmedseg_sam" and model.config.encoder == "hrmedseg"
    torch.testing.assert_close(model.mask_decoder.state_dict(), sam.mask_decoder.state_dict())
    torch.testing.assert_close(model.image_encoder.neck.state_dict(), student.neck.state_dict())
    data = make_data(tmp_path / "ds")
    rc = main(["zeroshot", "--encoder", str(tmp_path / "student"), "--sam", str(ckpt),
               "--data", str(data), "--split", "all", "-o", str(tmp_path / "zs"),
               "--device", "cpu", "--batch", "2", "--overlays", "1"])
    assert rc == 0
    s = json.loads((tmp_path / "zs" / "summary.json").read_text())
    assert s["n_images"] == 3 and s["encoder"] == str(tmp_path / "student")


KVASIR = Path("/work/shared/data/kvasir-seg")
MOBILE_SAM = Path("/work/shared/weights/mobile_sam.pt")


@pytest.mark.slow
@pytest.mark.skipif(not (KVASIR / "splits.json").is_file() or not MOBILE_SAM.is_file(),
                    reason="Kvasir-SEG or mobile_sam.pt not available")
def test_real_mobile_sam_on_kvasir(tmp_path):
    from hrmedseg.data.splits import load_splits
    idx = discover_pairs(KVASIR)
    samples = idx.subset(list(load_splits(KVASIR / "splits.json")["test"])[:3])
    model = build_zeroshot_model("teacher", str(MOBILE_SAM))
    res = evaluate_zeroshot(model, samples, tmp_path / "out", device="cpu", overlays=3,
                            progress=False)
    assert res["original_resolution"]["dice"]["mean"] > 0.8, res["original_resolution"]["dice"]
