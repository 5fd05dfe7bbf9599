"""A run folder written by the trainer before the one training engine (tests/fixtures/segment_run)
still evaluates to the numbers it recorded and resumes for one more epoch."""
import csv
import json
import shutil
from pathlib import Path

import pytest
import torch

from hrmedseg.cli.main import main
from hrmedseg.training.checkpoint import load_state

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "segment_run"


@pytest.fixture
def old_run(tmp_path):
    shutil.copytree(FIXTURE / "run", tmp_path / "run")
    shutil.copytree(FIXTURE / "data", tmp_path / "data")
    return tmp_path / "run", tmp_path / "data"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_old_run_evaluates_its_own_test_split_to_the_recorded_numbers(old_run, tmp_path, capsys):
    """The old folder has no splits.json: `evaluate RUN --split test` redraws the run's split
    from its config.yaml and gives, image by image, what the old trainer recorded."""
    run, data = old_run
    assert not (run / "splits.json").exists() and not (data / "splits.json").exists()
    assert main(["evaluate", str(run), "--data", str(data), "--split", "test", "-o",
                 str(tmp_path / "ev"), "--device", "cpu", "--overlays", "0"]) == 0
    got = {r["stem"]: r for r in _rows(tmp_path / "ev" / "per_image.csv")}
    want = {r["stem"]: r for r in _rows(run / "test" / "per_image.csv")}
    assert got.keys() == want.keys() and len(want) == 2
    for stem, w in want.items():
        for key in ("dice", "iou", "dice@model", "iou@model", "pixel_accuracy"):
            assert float(got[stem][key]) == pytest.approx(float(w[key]), abs=1e-5), (stem, key)


def test_old_run_resumes_one_more_epoch_and_evaluates(old_run, tmp_path, capsys):
    run, data = old_run
    before = load_state(run / "checkpoints" / "last")
    assert (before["epoch"], before["global_step"]) == (2, 4)
    old_rows = _rows(run / "metrics.csv")
    rc = main(["train", "--config", str(run / "config.yaml"), f"data.root={data}",
               f"train.out_dir={run}", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=3"])
    assert rc == 0
    assert f"resuming from {run / 'checkpoints' / 'last'} (epoch 2" in capsys.readouterr().err
    after = load_state(run / "checkpoints" / "last")
    assert (after["epoch"], after["global_step"], after["batch_in_epoch"]) == (3, 6, 0)
    # the training time of the earlier run is carried on (the budget counts it)
    assert after["elapsed_s"] > before["elapsed_s"]
    rows = _rows(run / "metrics.csv")
    # the old run logged validation scores in percent; they are fractions now, like the new row
    for got, old in zip(rows[:2], old_rows):
        for key, value in old.items():
            if key.startswith(("val_dice", "val_iou")):
                assert float(got[key]) == pytest.approx(float(value) / 100, abs=1e-6), key
            else:
                assert got[key] == value, key
    assert 0 <= float(rows[2]["val_dice"]) <= 1
    assert after["best"] == pytest.approx(max(float(r["val_dice"]) for r in rows), abs=1e-6)
    assert rows[2]["epoch"] == "3" and rows[2]["step"] == "6"
    assert float(rows[2]["train_loss"]) > 0 and float(rows[2]["train_images_per_s"]) > 0
    assert json.loads((run / "env.json").read_text())["resumed"] is True
    # the resumed weights moved on from the old ones
    from safetensors.torch import load_file
    old = load_file(str(FIXTURE / "run" / "checkpoints" / "last" / "model.safetensors"))
    new = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == 3 and summary["resumed"] is True
    assert main(["evaluate", str(run), "--data", str(data), "--split", "test", "-o",
                 str(tmp_path / "ev"), "--device", "cpu", "--overlays", "0"]) == 0
    ev = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert ev["n_images"] == 2
    # the run's own test evaluation (best checkpoint, same split) gives the same Dice
    assert ev["model_resolution"]["dice"]["mean"] == pytest.approx(
        summary["test"]["model_resolution"]["dice"], abs=1e-6)
