"""Run loggers: every metrics.csv row also reaches a logger object a user hands the engine and,
with train.loggers=[csv, tensorboard], TensorBoard's event files (read back with TensorBoard's
own reader); a resumed run adds to the same TensorBoard folder without duplicate points; bad
logger names and a missing tensorboard package fail before anything is made."""
import csv
import sys

import pytest

from hrmedseg._optional import MissingExtraError
from hrmedseg.cli.main import main
from hrmedseg.training.config import ConfigError, load_config
from hrmedseg.training.run import train

from _trainutils import TINY_OVERRIDES, make_dataset, tiny_args


def _cfg(tmp_path, out="run", *extra):
    data = tmp_path / "ds"
    if not data.exists():
        make_dataset(data, n=10)
    return load_config("paper", [f"data.root={data}", f"train.out_dir={tmp_path / out}",
                                 "data.size=32", "data.workers=0", "train.batch_size=4",
                                 "train.epochs=2", "train.precision=fp32", "train.device=cpu",
                                 "train.deterministic=true", "train.eval_test=false",
                                 TINY_OVERRIDES, *extra])


def _csv(run):
    with open(run / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


class Recorder:
    def __init__(self):
        self.rows, self.closed = [], 0

    def log_row(self, row, step):
        self.rows.append((dict(row), step))

    def close(self):
        self.closed += 1


def test_a_logger_object_receives_exactly_the_rows_of_metrics_csv(tmp_path):
    rec = Recorder()
    # val_every=2: the first epoch's row has empty validation cells
    cfg = _cfg(tmp_path, "run", "train.val_every=2")
    train(cfg, loggers=[rec], progress=False)
    fields, rows = _csv(tmp_path / "run")
    assert len(rows) == 2 and rec.closed == 1
    assert rows[0]["val_dice"] == "" and rows[1]["val_dice"] != ""
    assert [list(r) for r, _ in rec.rows] == [fields] * 2
    assert [{k: str(v) for k, v in r.items()} for r, _ in rec.rows] == rows
    assert [s for _, s in rec.rows] == [int(r["step"]) for r in rows]


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _column(rows, tag):
    return [(int(r["step"]), float(r[tag])) for r in rows if r[tag] != ""]


def test_tensorboard_scalars_equal_metrics_csv_and_a_resume_adds_no_duplicates(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    run = tmp_path / "run"
    train(_cfg(tmp_path, "run", "train.loggers=[csv, tensorboard]", "train.epochs=1"),
          progress=False)
    _, rows = _csv(run)
    resumed_at = int(rows[-1]["step"])
    # a killed session's point after the checkpoint the rerun resumes from
    stale = SummaryWriter(str(run / "tensorboard"))
    stale.add_scalar("train_loss", 99.0, global_step=resumed_at + 1)
    stale.close()
    result = train(_cfg(tmp_path, "run", "train.loggers=[csv, tensorboard]"), progress=False)
    assert result["resumed"] and result["epochs_done"] == 2
    _, rows = _csv(run)
    assert len(rows) == 2
    for tag in ("val_dice", "train_loss", "lr"):
        got, want = _scalars(run / "tensorboard", tag), _column(rows, tag)
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag


@pytest.mark.parametrize("value,words", [("[csv, wandb]", "unknown logger 'wandb'"),
                                         ("[tensorboard]", "must include csv")])
def test_bad_logger_names_are_config_errors(tmp_path, value, words):
    with pytest.raises(ConfigError, match="train.loggers") as err:
        load_config(None, [f"train.loggers={value}"])
    assert words in str(err.value)


def test_missing_tensorboard_names_the_extra_before_the_run_folder_exists(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "run", "train.loggers=[csv, tensorboard]")
    monkeypatch.setitem(sys.modules, "tensorboard", None)     # as if not installed
    with pytest.raises(MissingExtraError) as err:
        train(cfg, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "'tensorboard'" in msg and 'hrmedseg[train]' in msg
    assert "TensorBoard logging" in msg
    assert not (tmp_path / "run").exists()


def test_cli_without_tensorboard_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    data = make_dataset(tmp_path / "ds", n=10)
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    out = tmp_path / "run"
    assert main(tiny_args(data, out, extra=["train.loggers=[csv, tensorboard]"])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "hrmedseg[train]"' in err, err
    assert not out.exists()


def test_a_csv_written_with_older_columns_is_rewritten_once_so_new_rows_line_up(tmp_path):
    """A run resumed after the package gained a column (peak_reserved_gb): the old rows stay,
    under the new header, and the appended row's cells are under their own column names."""
    import csv as _csv

    from hrmedseg.training.loggers import CSVLogger
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train_loss,old_only\n1,10,0.5,x\n2,20,0.4,y\n")
    fields = ["epoch", "step", "train_loss", "peak_reserved_gb"]
    logger = CSVLogger(path, fields)
    logger.log_row({"epoch": 3, "step": 30, "train_loss": 0.3, "peak_reserved_gb": 1.5}, 30)
    with open(path, newline="") as fh:
        rows = list(_csv.DictReader(fh))
    assert list(rows[0]) == [*fields, "old_only"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["old_only"] == "x" and rows[0]["peak_reserved_gb"] == ""
    assert rows[2]["peak_reserved_gb"] == "1.5" and rows[2]["old_only"] == ""
    before = path.read_bytes()
    CSVLogger(path, fields)          # same columns now: the file is left as it is
    assert path.read_bytes() == before
