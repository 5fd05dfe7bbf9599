"""`hrmedseg evaluate` on 3-D cases: per-case metrics in mm and a Table-2 style report."""
import json
import sys
from pathlib import Path

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
    assert summary["summary"]["dice"]["mean"] > 0.9  # bands -50/60/200 HU are separable
