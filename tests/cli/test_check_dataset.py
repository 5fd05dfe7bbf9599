"""check-dataset: errors first and one per file, warnings grouped by kind, 3-D nnU-Net accepted."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hrmedseg.cli.main import main


def _folder_dataset(root, n=8, jpeg_masks=True, bad_mask=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(root / "images" / f"c{i}.png")
        m = np.zeros((48, 48), np.uint8)
        m[10:30, 12:35] = 255
        if jpeg_masks:
            Image.fromarray(m).save(root / "masks" / f"c{i}.jpg", quality=60)   # lossy edges
        else:
            Image.fromarray(m).save(root / "masks" / f"c{i}.png")
    if bad_mask is not None:
        for p in (root / "masks").glob(f"{bad_mask}.*"):
            p.unlink()
        Image.fromarray((np.arange(48 * 48) % 5).reshape(48, 48).astype(np.uint8) * 40).save(
            root / "masks" / f"{bad_mask}.png")
    return root


def test_lossy_masks_make_one_line_errors_come_first(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "d", n=8, bad_mask="c3")
    assert main(["check-dataset", str(root), "--num-classes", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ERRORS (1)")
    assert "c3.png" in out[1] and "binary mask expected (values 0/1 or 0/255)" in out[1]
    lossy = [ln for ln in out if "lossy JPEG mask" in ln]
    assert len(lossy) == 2                       # the kind line + its first message
    assert lossy[0].strip().startswith("lossy JPEG mask: 7 files, e.g. c0.jpg, c1.jpg, c2.jpg")
    assert out[-1] == "8 pairs checked: 1 errors, 0 warnings, 7 notes"
    assert main(["check-dataset", str(root), "--num-classes", "1", "--all"]) == 1
    assert sum("lossy JPEG mask" in ln for ln in capsys.readouterr().out.splitlines()) == 7


def _nnunet_3d(root, n_cases=3, shape=(24, 20, 8), bad_affine=False, bad_label=False):
    nib = pytest.importorskip("nibabel")
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "liver": 1, "spleen": 2}, "channel_names": {"0": "CT"},
        "file_ending": ".nii.gz", "numTraining": n_cases}))
    rng = np.random.default_rng(0)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    for c in range(n_cases):
        img = rng.integers(-200, 300, size=shape).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[4:12, 4:10, 2:4] = 1
        lab[14:20, 10:16, 3:6] = 2
        laff = aff.copy()
        if bad_affine and c == 1:
            laff[0, 3] = 5.0
        if bad_label and c == 2:
            lab[0, 0, 0] = 7
        nib.save(nib.Nifti1Image(img, aff), root / "imagesTr" / f"case{c:02d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, laff), root / "labelsTr" / f"case{c:02d}.nii.gz")
    return root


def test_3d_nnunet_dataset_is_accepted(tmp_path, capsys):
    from hrmedseg.training.volume_data import VolumeSliceDataset
    root = _nnunet_3d(tmp_path / "v")
    assert len(VolumeSliceDataset(root, num_classes=3, size=32)) > 0   # what train data.volumes=true reads
    assert main(["check-dataset", str(root)]) == 0
    assert "3 pairs checked: 0 errors" in capsys.readouterr().out


def test_3d_nnunet_problems_are_named(tmp_path, capsys):
    root = _nnunet_3d(tmp_path / "v", bad_affine=True, bad_label=True)
    assert main(["check-dataset", str(root)]) == 1
    out = capsys.readouterr().out
    assert "case01.nii.gz: label affine differs" in out
    assert "case02.nii.gz: label values outside 0..2: 7 (1 px)" in out
