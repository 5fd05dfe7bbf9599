"""What a run folder tells a user: the split it drew (used by evaluate), no zero row after a
resume between an epoch's last batch and its validation, and data.workers chosen from the CPUs."""
import csv
import json

import pytest

from hrmedseg.cli.main import main
from hrmedseg.training.engine import Engine

from _trainutils import tiny_args


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_keeps_its_split_and_evaluate_uses_it(tiny_dataset, tmp_path, capsys):
    """No splits.json in the data: the run's RUN/splits.json holds the seeded 80/10/10 it drew,
    and `evaluate RUN --split test` evaluates exactly the run's test images."""
    out = tmp_path / "run"
    assert not (tiny_dataset / "splits.json").exists()
    assert main(tiny_args(tiny_dataset, out, epochs=1)) == 0
    sp = json.loads((out / "splits.json").read_text())
    stems = sorted(p.stem for p in (tiny_dataset / "images").glob("*.png"))
    assert sorted(sp["train"] + sp["val"] + sp["test"]) == stems and sp["test"]
    assert main(["evaluate", str(out), "--data", str(tiny_dataset), "--split", "test",
                 "-o", str(tmp_path / "ev"), "--device", "cpu", "--overlays", "0"]) == 0
    evaluated = [r["stem"] for r in csv.DictReader(open(tmp_path / "ev" / "per_image.csv"))]
    trained = [r["stem"] for r in csv.DictReader(open(out / "test" / "per_image.csv"))]
    assert sorted(evaluated) == sorted(trained) == sorted(sp["test"])
    # predict on the same run and folder with --split test: exactly those images, scored
    capsys.readouterr()
    assert main(["predict", str(out), str(tiny_dataset), "--split", "test",
                 "-o", str(tmp_path / "pr"), "--device", "cpu", "--no-overlay"]) == 0
    predicted = sorted(p.name[:-len("_mask.png")] for p in (tmp_path / "pr").glob("*_mask.png"))
    assert predicted == sorted(sp["test"])
    assert capsys.readouterr().out.count("Dice") == len(sp["test"])


def test_resume_between_last_batch_and_validation_writes_no_zero_row(tiny_dataset, tmp_path,
                                                                      monkeypatch, capsys):
    extra = ["train.save_every_steps=1", "train.eval_test=false"]
    ref = tmp_path / "ref"
    assert main(tiny_args(tiny_dataset, ref, epochs=1, extra=extra)) == 0
    run = tmp_path / "run"
    validate = Engine._validate

    def killed(self):
        raise KeyboardInterrupt   # the process dies after the last batch was saved
    monkeypatch.setattr(Engine, "_validate", killed)
    assert main(tiny_args(tiny_dataset, run, epochs=1, extra=extra)) != 0
    assert not (run / "metrics.csv").exists()
    monkeypatch.setattr(Engine, "_validate", validate)
    capsys.readouterr()
    assert main(tiny_args(tiny_dataset, run, epochs=1, extra=extra)) == 0
    assert "resuming from" in capsys.readouterr().err
    (got,), (want,) = _rows(run), _rows(ref)
    assert float(got["train_loss"]) > 0 and float(got["train_images_per_s"]) > 0
    for key in ("epoch", "step", "train_loss", "val_loss", "val_dice", "val_iou", "lr"):
        assert got[key] == want[key], key
    assert json.loads((run / "env.json").read_text())["resumed"] is True


@pytest.mark.parametrize("cpus,workers", [(1, 0), (2, 1), (4, 3), (32, 8)])
def test_auto_workers_follow_the_cpu_count(monkeypatch, cpus, workers):
    """data.workers defaults to "auto": min(8, CPUs - 1), so 2 cores get 1 worker (PyTorch
    warns above its suggested maximum, the core count)."""
    from hrmedseg.training.config import Config, load_config, resolve_workers
    monkeypatch.setattr("os.cpu_count", lambda: cpus)
    assert Config().data.workers == "auto"
    assert resolve_workers(load_config(None).data.workers) == workers
    assert resolve_workers(load_config(None, ["data.workers=3"]).data.workers) == 3
    from hrmedseg.training.config import ConfigError
    with pytest.raises(ConfigError, match="data.workers"):
        load_config(None, ["data.workers=many"])


def test_resume_with_another_batch_is_one_line(tiny_dataset, tmp_path, capsys):
    """A run folder cannot resume with another global batch: one line naming the checkpoint,
    exit 2 (it was a RuntimeError traceback), and the run's files are left as they were."""
    out = tmp_path / "run"
    assert main(tiny_args(tiny_dataset, out, epochs=1, extra=["train.eval_test=false"])) == 0
    before = (out / "metrics.csv").read_bytes()
    capsys.readouterr()
    rc = main(tiny_args(tiny_dataset, out, epochs=2, extra=["train.eval_test=false",
                                                             "train.batch_size=2"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("hrmedseg train: error: ") and "global batch 4" in err[0]
    assert str(out / "checkpoints" / "last") in err[0]
    assert (out / "metrics.csv").read_bytes() == before
