"""Training from 3-D cases (nnU-Net raw layout) sampled as 2-D slices, split by case."""
import json

import nibabel as nib
import numpy as np

from hrmedseg.cli.main import main

from _trainutils import TINY_OVERRIDES


def _make_cases(root, n=6, shape=(32, 32, 5)):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    affine = np.diag([0.8, 0.8, 3.0, 1.0])
    for i in range(n):
        lab = np.zeros(shape, np.uint8)
        lab[8:20, 6:18, 1:4] = 1
        lab[20:28, 20:28, 2:5] = 2
        img = (rng.normal(0, 20, shape) + np.where(lab == 1, 60, np.where(lab == 2, 200, -50))).astype(np.int16)
        nib.save(nib.Nifti1Image(img, affine), root / "imagesTr" / f"case{i:02d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / f"case{i:02d}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "kidney": 2},
        "numTraining": n, "file_ending": ".nii.gz"}))
    return root


def test_train_on_volume_slices(tmp_path):
    root = _make_cases(tmp_path / "vol")
    out = tmp_path / "run"
    rc = main(["train", "--config", "synapse", f"data.root={root}", f"train.out_dir={out}",
               "data.size=32", "data.workers=0", "train.epochs=1", "train.batch_size=4",
               "train.precision=fp32", "model.num_classes=3", TINY_OVERRIDES])
    assert rc == 0
    env = json.loads((out / "env.json").read_text())
    assert env["train_samples"] > 0 and env["train_samples"] % 5 == 0  # whole cases of 5 slices
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()
