"""A mask whose labels do not fit the model is refused before training: one line, exit 2, no run."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from _trainutils import make_dataset, tiny_args

from hrmedseg.cli.main import main
from hrmedseg.data.datasets import build_cache, discover_pairs, label_value_problem
from hrmedseg.data.io import ImageReadError


def test_label_value_problem_rules():
    assert label_value_problem(np.array([0, 1]), 1) is None          # 0/255 and 0/1 read as {0, 1}
    assert label_value_problem(np.array([0, 1, 2]), 3) is None
    msg = label_value_problem(np.arange(10), 1)
    assert "{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}" in msg and "values 0/1 or 0/255" in msg
    assert "3 classes" in label_value_problem(np.array([0, 3]), 3)
    assert label_value_problem(np.array([0, 1, 255]), 2, ignore_index=255) is None


def _spoil(ds, stem="case003"):
    bad = (np.arange(40 * 40) % 10).reshape(40, 40).astype(np.uint8)   # labels 0..9
    Image.fromarray(bad).save(ds / "masks" / f"{stem}.png")
    return ds / "masks" / f"{stem}.png"


def test_build_cache_refuses_labels_and_leaves_nothing(tmp_path):
    ds = _spoil(make_dataset(tmp_path / "ds", n=6)).parents[1]
    cache = tmp_path / "runs" / ".cache" / "c"
    with pytest.raises(ImageReadError, match=r"case003\.png: mask has label values \{0, 1, 2"):
        build_cache(discover_pairs(ds).samples, 32, cache, num_classes=1)
    assert not (tmp_path / "runs").exists()
    build_cache(discover_pairs(ds).samples, 32, cache)          # without a model: no check
    with pytest.raises(ImageReadError, match="case003"):        # the reused entry is checked too
        build_cache(discover_pairs(ds).samples, 32, cache, num_classes=1)
    build_cache(discover_pairs(ds).samples, 32, cache, num_classes=10)


def test_train_refuses_non_binary_mask_before_making_the_run(tmp_path, capsys):
    ds = make_dataset(tmp_path / "ds", n=6)
    bad = _spoil(ds)
    out = tmp_path / "runs" / "r"
    assert main(tiny_args(ds, out, epochs=1)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in err[0], err
    assert not out.exists() and not (tmp_path / "runs").exists()
