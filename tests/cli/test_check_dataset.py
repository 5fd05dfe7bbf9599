"""check-dataset: errors first and one per file, warnings grouped by kind (3-D nnU-Net datasets:
tests/data/test_volumes.py)."""
from __future__ import annotations

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
