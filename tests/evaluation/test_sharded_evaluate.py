"""`hrmedseg evaluate` under torchrun (2 CPU processes, gloo): every image exactly once, and
the same summary as one process."""
import csv
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from hrmedseg.cli.main import main

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "src", "hrmedseg", "samples", "dsb2018")


def _torchrun():
    return shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        # batches of different composition may change the last float bits of probabilities (MAE)
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    else:
        assert a == b, (path, a, b)


@pytest.mark.skipif(not os.path.exists(_torchrun()), reason="torchrun not found")
def test_sharded_evaluate_matches_single_process(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    common = ["evaluate", "hrmedseg", "--data", SAMPLES, "--split", "all", "--device", "cpu",
              "--size", "256"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([_torchrun(), "--standalone", "--nproc_per_node=2", "-m", "hrmedseg",
                          *common, "-o", str(sharded)], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "4 images over 2 processes" in res.stdout
    assert main([*common, "-o", str(single)]) == 0

    stems = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(SAMPLES, "images")))
    rows_sharded = list(csv.DictReader((sharded / "per_image.csv").open()))
    rows_single = list(csv.DictReader((single / "per_image.csv").open()))
    assert sorted(r["stem"] for r in rows_sharded) == stems          # each stem exactly once
    assert [r["stem"] for r in rows_sharded] == [r["stem"] for r in rows_single]  # same order
    for a, b in zip(rows_single, rows_sharded):
        for k in ("dice", "iou", "hd95", "dice@model", "iou@model", "hd95@model"):
            assert a[k] == b[k], (a["stem"], k)
    s1 = json.loads((single / "summary.json").read_text())
    s2 = json.loads((sharded / "summary.json").read_text())
    assert s2["n_images"] == 4
    _close(s1, s2)
    assert sorted(os.listdir(sharded / "overlays")) == sorted(os.listdir(single / "overlays"))
