"""`hrmedseg evaluate` on 3-D cases: per-case metrics in mm and a Table-2 style report."""
import json
import sys
from pathlib import Path

import pytest
import torch

from hrmedseg.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from test_volume_training import _make_cases  # noqa: E402


class _Threshold(torch.nn.Module):
    """A parameter-free 3-class 'model': label by intensity band (checks the plumbing exactly)."""

    def __init__(self):
        super().__init__()
        from hrmedseg.models.hrmedseg import HRMedSegConfig
        self.config = HRMedSegConfig(num_classes=3, img_size=(32, 32))

    def forward(self, x):
        g = x.mean(1, keepdim=True)
        return torch.cat([-(g - 0.125).abs(), -(g - 0.4).abs(), -(g - 0.75).abs()], 1) * 50


def test_evaluate_volumes_writes_table2(tmp_path, monkeypatch):
    root = _make_cases(tmp_path / "vol", n=2)
    import hrmedseg.inference.segmenter as segmod
    real = segmod._resolve_model
    monkeypatch.setattr(segmod, "_resolve_model",
                        lambda src, dev: (_Threshold(), {"normalize": "none"}) if src == "thresh" else real(src, dev))
    out = tmp_path / "ev"
    assert main(["evaluate", "thresh", "--data", str(root), "--split", "all", "-o", str(out),
                 "--device", "cpu", "--window=-100:300"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_cases"] == 2 and "dice/liver" in summary["per_case"]["case00"]
    table = (out / "table2.md").read_text()
    assert "| case | liver | kidney | Dice | HD95 (mm) |" in table and "| mean |" in table
    assert (out / "predictions" / "case00.nii.gz").is_file()
    # independent: window -100..300 HU to [0, 1], label = nearest band centre, Dice per organ
    import nibabel as nib
    import numpy as np
    dices = []
    for case in ("case00", "case01"):
        hu = np.asarray(nib.load(root / "imagesTr" / f"{case}_0000.nii.gz").dataobj).astype(np.float64)
        gt = np.asarray(nib.load(root / "labelsTr" / f"{case}.nii.gz").dataobj)
        g = np.clip((hu + 100) / 400, 0, 1)
        pred = np.argmin(np.stack([abs(g - 0.125), abs(g - 0.4), abs(g - 0.75)]), 0)
        saved = np.asarray(nib.load(out / "predictions" / f"{case}.nii.gz").dataobj)
        np.testing.assert_array_equal(saved, pred)
        for c, name in ((1, "liver"), (2, "kidney")):
            d = 2 * ((pred == c) & (gt == c)).sum() / ((pred == c).sum() + (gt == c).sum())
            assert summary["per_case"][case][f"dice/{name}"] == pytest.approx(d, abs=1e-12)
            dices.append(d)
        assert summary["per_case"][case]["dice"] == pytest.approx(np.mean(dices[-2:]), abs=1e-12)
    assert summary["summary"]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-12)
    assert min(dices) < 1.0          # the noise makes a few voxels cross a band: not trivially 1
