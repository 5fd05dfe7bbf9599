"""benchmarks/measurements.py on a fake table of tiny commands (CPU, no training)."""
import csv
import json
import shutil
import statistics
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))
import measurements  # noqa: E402

FIXTURE_RUN = Path(__file__).resolve().parents[1] / "fixtures" / "segment_run" / "run"
WRITE = "{python} -c \"import json,sys; json.dump({{'value': 1}}, open(sys.argv[1], 'w'))\" {result}"


@pytest.fixture
def repo(tmp_path, monkeypatch):
    monkeypatch.setattr(measurements, "ROOT", tmp_path)
    return tmp_path


def _table(path: Path, entries: list[dict]) -> list[measurements.Entry]:
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    return measurements.load_table(path)


def _entry(eid: str, minutes: float = 0.05, command: str = WRITE) -> dict:
    return {"id": eid, "kind": "command", "serves": "test", "minutes": minutes,
            "result": f"benchmarks/results/{eid}.json", "require": ["value"], "command": command}


def _ctx(repo: Path) -> measurements.Context:
    return measurements.Context(data=str(repo / "data"), weights=str(repo / "weights"), work=repo / "work")


def test_runs_pending_skips_done_and_status_follows_result_files(repo, tmp_path):
    entries = _table(tmp_path / "t.yaml", [_entry("a"), _entry("b")])
    (repo / "benchmarks/results").mkdir(parents=True)
    (repo / "benchmarks/results/a.json").write_text(json.dumps({"value": 7}))
    assert [measurements.result_state(e) for e in entries] == ["done", "missing"]
    lines = []
    report = measurements.run(entries, _ctx(repo), 1.0, repo / "out", log=lines.append)
    assert report == {"done": ["b"], "failed": [], "left": []}
    assert "a: done, skipped" in lines
    assert json.loads((repo / "benchmarks/results/a.json").read_text()) == {"value": 7}  # not rerun
    assert json.loads((repo / "benchmarks/results/b.json").read_text()) == {"value": 1}
    assert [measurements.result_state(e) for e in entries] == ["done", "done"]
    with tarfile.open(repo / "out/results.tar") as tar:
        assert sorted(tar.getnames()) == ["benchmarks/results/a.json", "benchmarks/results/b.json"]
    listing = measurements.format_list(entries)
    assert listing.splitlines()[1].split()[:3] == ["a", "command", "done"]


def test_a_result_without_a_required_key_is_incomplete(repo, tmp_path):
    entries = _table(tmp_path / "t.yaml", [_entry("a")])
    (repo / "benchmarks/results").mkdir(parents=True)
    (repo / "benchmarks/results/a.json").write_text(json.dumps({"other": 1}))
    assert measurements.result_state(entries[0]) == "incomplete"
    (repo / "benchmarks/results/a.json").write_text("{not json")
    assert measurements.result_state(entries[0]) == "unreadable"


def test_budget_stops_before_an_entry_that_does_not_fit(repo, tmp_path):
    entries = _table(tmp_path / "t.yaml", [_entry("a"), _entry("big", minutes=5.0), _entry("c")])
    lines = []
    report = measurements.run(entries, _ctx(repo), 1.0, None, log=lines.append)
    assert report == {"done": ["a"], "failed": [], "left": ["big", "c"]}
    assert not (repo / "benchmarks/results/big.json").exists()
    assert not (repo / "benchmarks/results/c.json").exists()
    assert any(line.startswith("big: needs ~5 min") and "not started" in line for line in lines)
    # --fill goes on with the later entries that fit
    report = measurements.run(entries, _ctx(repo), 1.0, None, fill=True, log=lines.append)
    assert report == {"done": ["c"], "failed": [], "left": ["big"]}


def test_a_failing_command_is_one_line_and_the_next_entry_runs(repo, tmp_path):
    fail = "{python} -c \"import sys; print('boom'); sys.exit(3)\""
    entries = _table(tmp_path / "t.yaml", [_entry("bad", command=fail), _entry("good")])
    lines = []
    report = measurements.run(entries, _ctx(repo), 1.0, repo / "out", log=lines.append)
    assert report == {"done": ["good"], "failed": ["bad"], "left": []}
    failed = [line for line in lines if "FAILED" in line]
    assert failed == [failed[0]] and failed[0].startswith("bad: FAILED (exit 3)")
    assert "    boom" in lines     # the command's own output is kept in the log


def test_a_step_running_past_the_budget_is_stopped(repo, tmp_path):
    sleep = "{python} -c \"import time; time.sleep(60)\""
    entries = _table(tmp_path / "t.yaml", [_entry("slow", minutes=0.01, command=sleep), _entry("c")])
    lines = []
    report = measurements.run(entries, _ctx(repo), 0.03, None, log=lines.append)
    assert report["left"] == ["slow", "c"] and not report["done"]
    assert any("stopped at the budget" in line for line in lines)


def test_dry_run_prints_commands_and_runs_nothing(repo, tmp_path):
    entries = _table(tmp_path / "t.yaml", [_entry("a")])
    lines = []
    measurements.run(entries, _ctx(repo), 1.0, None, dry_run=True, log=lines.append)
    assert lines[0].startswith("a: would run") and str(repo / "benchmarks/results/a.json") in lines[0]
    assert not (repo / "benchmarks/results/a.json").exists()


def test_table_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "t.yaml").write_text(yaml.safe_dump([_entry("a"), _entry("a")]))
    assert measurements.main(["--table", str(tmp_path / "t.yaml"), "--list"]) == 2
    assert "appears twice" in capsys.readouterr().err
    (tmp_path / "t.yaml").write_text(yaml.safe_dump([{**_entry("a"), "kind": "other"}]))
    assert measurements.main(["--table", str(tmp_path / "t.yaml"), "--list"]) == 2
    (tmp_path / "t.yaml").write_text(yaml.safe_dump([_entry("a")]))
    assert measurements.main(["--table", str(tmp_path / "t.yaml"), "run", "zzz", "--minutes", "1"]) == 2
    assert "unknown id zzz" in capsys.readouterr().err


def test_the_shipped_table_loads_and_covers_every_reproduce_row():
    from hrmedseg.experiments.reproduce import list_rows
    entries = measurements.load_table()
    rows = [e.id for e in entries if e.kind == "reproduce"]
    assert sorted(rows) == sorted(r.id for r in list_rows())
    assert rows[0] == "hrmedseg-t1-dsb2018"
    assert all(e.minutes > 0 for e in entries)


def test_train_result_from_a_run_folder(repo, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE_RUN, run)
    entry = measurements.Entry("t", "train", "test", 1.0, "benchmarks/results/t.json", train=["x"])
    res = measurements.train_result(entry, run, ["hrmedseg", "train"])
    with open(run / "metrics.csv") as fh:
        rates = [float(r["train_images_per_s"]) for r in csv.DictReader(fh) if r["train_images_per_s"]]
    assert res["trainer_images_per_s"] == statistics.median(rates[1:])
    assert res["best_val_dice"] == json.loads((run / "summary.json").read_text())["best_val_dice"]
    assert res["peak_gb_per_image"] is None    # a CPU run has no peak memory column values
    assert measurements._train_finished(run)


def test_state_carries_finished_runs_only_and_never_replaces_files(repo, tmp_path):
    work = repo / "work"
    done = work / "reproduce/runs/hrmedseg-seed0-abc"
    (done / "checkpoints/last").mkdir(parents=True)
    (done / "checkpoints/last/model.safetensors").write_bytes(b"w" * 100)
    (done / "reproduce.json").write_text(json.dumps({"row": "r", "test": {}}))
    (done / "metrics.csv").write_text("epoch\n1\n")
    (work / "reproduce/runs/hrmedseg-seed1-abc").mkdir(parents=True)
    (work / "reproduce/runs/hrmedseg-seed1-abc/metrics.csv").write_text("epoch\n1\n")
    measurements.write_out([], _ctx(repo), repo / "out")
    with tarfile.open(repo / "out/state.tar") as tar:
        assert sorted(tar.getnames()) == ["reproduce/runs/hrmedseg-seed0-abc/metrics.csv",
                                          "reproduce/runs/hrmedseg-seed0-abc/reproduce.json"]
    fresh = tmp_path / "fresh"
    (fresh / "reproduce/runs/hrmedseg-seed0-abc").mkdir(parents=True)
    (fresh / "reproduce/runs/hrmedseg-seed0-abc/metrics.csv").write_text("newer\n")
    assert measurements.unpack_state(repo / "out/state.tar", fresh, log=lambda *_: None) == 1
    assert (fresh / "reproduce/runs/hrmedseg-seed0-abc/metrics.csv").read_text() == "newer\n"
    assert json.loads((fresh / "reproduce/runs/hrmedseg-seed0-abc/reproduce.json").read_text())["row"] == "r"


def test_state_keeps_named_folders_of_a_finished_train_run_whatever_their_size(repo, monkeypatch):
    work = repo / "work"
    run = work / "train" / "distill"
    shutil.copytree(FIXTURE_RUN, run)                        # a finished run folder
    (run / "student").mkdir()
    (run / "student" / "model.safetensors").write_bytes(b"s" * 300)
    (run / "big.bin").write_bytes(b"b" * 300)
    monkeypatch.setattr(measurements, "SMALL_FILE", 200)     # both files count as large
    entry = measurements.Entry("distill", "train", "test", 1.0, "benchmarks/results/d.json",
                               train=["x"], keep=["student"])
    measurements.write_out([entry], _ctx(repo), repo / "out")
    with tarfile.open(repo / "out/state.tar") as tar:
        names = tar.getnames()
    assert "train/distill/student/model.safetensors" in names
    assert "train/distill/big.bin" not in names
    assert not any("checkpoints" in n for n in names)
