"""``hrmedseg reproduce``: every row's recipe trains one step of the model it names, the report
is generated from result files alone, and a run cut by its time limit and continued finishes
with exactly the numbers of an uninterrupted one."""
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hrmedseg.cli.main import main
from hrmedseg.experiments import reproduce as rp
from hrmedseg.training.checkpoint import find_checkpoint, load_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reproductions"
S = 32
# Tiny decoders at 32² for the HRMedSeg family; width/depth stay the row's (Table 6 variants).
HRM_TINY = {"neck_dim": 32, "decoder_heads": 4, "decoder_mlp_dim": 32, "drop_path_rate": 0.0}
ENC_TINY = {"embed_dim": 24, "depth": 2, "num_heads": [6, 6, 6]}
ESP_TINY = dict(embed_dim=16, sppg_hidden=8, decoder_heads=2, decoder_mlp_dim=16, decoder_depth=1,
                encoder_args=dict(embed_dims=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                  num_heads=[1, 1, 1, 2], window_sizes=[2, 2, 2, 2]))
COMMON = ["data.workers=0", "train.precision=fp32", "train.batch_size=4", f"data.size={S}",
          "train.deterministic=true"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _dataset(root: Path, n: int, seed: int) -> Path:
    """Bright discs on noise; masks are the discs; a splits.json with train/val/test."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[:40, :40]
    for i in range(n):
        cy, cx, r = int(rng.integers(10, 30)), int(rng.integers(10, 30)), int(rng.integers(4, 9))
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = rng.integers(0, 60, (40, 40, 3)).astype(np.uint8)
        img[m] += 150
        Image.fromarray(img).save(root / "images" / f"c{i:03d}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"c{i:03d}.png")
    stems = [f"c{i:03d}" for i in range(n)]
    (root / "splits.json").write_text(json.dumps(
        {"train": stems[: n - 4], "val": stems[n - 4: n - 2], "test": stems[n - 2:]}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for i, name in enumerate(("dsb2018", "drive", "kvasir-seg")):
        _dataset(d / name, 10, i)
    return d


def _tiny_overrides(row: rp.Row) -> list[str]:
    if row.task == "esp":
        return COMMON + ["train.batch_size=2", "train.max_steps=1", "esp.teacher=", "esp.init=",
                         "data.augment=none", f"model.overrides={json.dumps(ESP_TINY)}"]
    spec = rp.build_spec(row, row.units()[0])
    model = dict(spec.config.model.overrides)
    if spec.config.model.name == "qtseg":
        model.update(img_size=[S, S])
    else:
        model.update(HRM_TINY)
        if row.table != "Table 6":
            model.update(ENC_TINY)
    # batch 2 of 6 training images: the step ends mid-epoch (no validation, no curve plot)
    return COMMON + ["train.batch_size=2", "train.max_steps=1", "model.pretrained=none",
                     f"model.overrides={json.dumps(model)}"]


@pytest.mark.parametrize("row_id", [p.stem for p in sorted(rp.reproductions_dir().glob("*.yaml"))])
def test_row_builds_its_model_and_trains_one_step(row_id, data, tmp_path):
    row = rp.load_row(row_id)
    assert row.paper_value is None or isinstance(row.paper_value, float)
    assert set(rp.PROTOCOL_FIELDS) <= set(row.paper_protocol) and row.deviations
    unit = row.units()[-1]      # the last arm/seed/fold: the one least likely to be the default
    spec = rp.build_spec(row, unit, data, _tiny_overrides(row), device="cpu")
    run = tmp_path / "run"
    out = rp.train_and_test(spec, run, row.dataset, None)
    assert not out.finished
    if row.task == "esp":
        state = load_state(run / "checkpoints" / "last")
        assert state["global_step"] == 1
        assert spec.config.task == "esp" and spec.config.esp.num_modalities == 6
        assert {d["name"]: (d["modality"], d["root"]) for d in spec.config.esp.datasets} == \
            {n: (i, str(data / n)) for n, i in (("drive", 2), ("kvasir-seg", 3), ("dsb2018", 5))}
        assert spec.config.train.seed == unit.seed
        return
    last = find_checkpoint(run / "checkpoints", "last")
    assert load_state(last)["global_step"] == 1
    built = json.loads((last / "config.json").read_text())
    assert built["architecture"] == row.model
    cfg = built["model_args"]
    pv = row.paper_values
    if row.table == "Table 6":            # the variant's width and depth, as the paper lists them
        assert (cfg["depth"], cfg["embed_dim"]) == (pv["depth"], pv["width"])
    if row.table == "Table 9":
        assert list(cfg["pool_sizes"]) == list(pv["pool_sizes"])
    if row.folds:
        assert (spec.config.data.kfold, spec.config.data.fold) == (row.folds, unit.fold)
    assert spec.config.train.seed == unit.seed


def _tiny_row_args():
    return COMMON + ["train.epochs=2", "model.pretrained=none",
                     f"model.overrides={json.dumps({**HRM_TINY, **ENC_TINY})}"]


def test_time_limited_run_resumes_to_the_uninterrupted_numbers(data, tmp_path, monkeypatch):
    kw = dict(device="cpu", seeds=[0, 1], overrides=_tiny_row_args())
    whole = rp.run_row("hrmedseg-t1-dsb2018", data, tmp_path / "whole", **kw)
    assert whole["result"] and whole["done"] == 2
    calls = 0
    status = {"result": None}
    while status["result"] is None:      # each call stops after the step that crosses 6 ms
        status = rp.run_row("hrmedseg-t1-dsb2018", data, tmp_path / "cut",
                            time_limit_min=1e-4, **kw)
        calls += 1
        assert calls < 30
    assert calls > 2                      # it was really cut, mid-seed
    a = json.loads(Path(whole["result"]).read_text())
    b = json.loads(Path(status["result"]).read_text())
    assert set(rp.RESULT_KEYS) <= set(a)
    assert a["ours"] == b["ours"] and a["metrics"] == b["metrics"]
    # per-seed values are the trainer's own test means (fractions → percent), mean/std over seeds
    ref = {}
    for label, rel in a["runs"].items():
        summ = json.loads((tmp_path / "whole" / rel / "summary.json").read_text())
        ref[label] = 100 * summ["test"]["model_resolution"]["dice"]
    assert a["ours"] == pytest.approx(ref, abs=1e-4)
    assert a["ours_mean"] == pytest.approx(statistics.fmean(ref.values()), abs=1e-4)
    assert a["ours_std"] == pytest.approx(statistics.stdev(ref.values()), abs=1e-4)
    assert a["protocol"]["epochs"] == 2 and a["paper_protocol"]["epochs"] == 200
    assert a["deviations"][-2] == "Ran seed0, seed1, not the row's seed0, seed1, seed2."
    assert a["deviations"][-1].startswith("Run with these changes to the row's configuration: "
                                          "data.workers=0, train.precision=fp32")
    # finished runs are read back, never retrained
    monkeypatch.setattr(rp, "train_and_test", lambda *a, **k: pytest.fail("retrained a finished run"))
    again = rp.run_row("hrmedseg-t1-dsb2018", data, tmp_path / "cut", **kw)
    assert json.loads(Path(again["result"]).read_text())["ours"] == b["ours"]


def test_shared_runs_between_rows(data, tmp_path, monkeypatch):
    """Table 9's full-δ row asks for the Table 1 training: same run folders, no new training."""
    t1, t9 = rp.load_row("hrmedseg-t1-dsb2018"), rp.load_row("hrmedseg-t9-pool-5-9-13-dsb2018")
    t9p = rp.load_row("hrmedseg-t9-pool-5-dsb2018")
    f = [rp.run_folder(tmp_path, r, r.units()[0], rp.build_spec(r, r.units()[0], data))
         for r in (t1, t9, t9p)]
    assert f[0] == f[1] != f[2]


def _report_lines(results: Path, link_from: Path) -> dict[str, str]:
    text = rp.format_report(rp.list_rows(), results, link_from)
    return {ln.split(" | ")[0][2:]: ln for ln in text.splitlines() if ln.startswith("| ") and
            not ln.startswith("| row ")}


def test_report_from_fixture_results(tmp_path):
    lines = _report_lines(FIXTURES, tmp_path)
    assert set(lines) == {r.id for r in rp.list_rows()}
    rel = Path(__import__("os").path.relpath(FIXTURES, tmp_path)).as_posix()
    hrm = lines["hrmedseg-t1-dsb2018"].split(" | ")
    assert hrm[1:7] == ["HRMedSeg, Table 1", "dsb2018", "dice", "92.10", "91.53 ± 0.25 (n=3)", "-0.57"]
    assert hrm[7] == ("differs: pretrained (encoder distilled from SAM-H on 1% of SA-1B vs shipped "
                      "default weight); paper does not state: split, normalisation")
    assert hrm[9] == f"[hrmedseg-t1-dsb2018.json]({rel}/hrmedseg-t1-dsb2018.json) |"
    qt = lines["qtseg-t1-dsb2018"].split(" | ")
    assert qt[5:8] == ["90.80 ± 0.60 (n=5)", "-0.76", "matches; paper does not state: pretrained"]
    t5 = lines["hrmedseg-t5-pretraining-dsb2018"].split(" | ")
    assert t5[2:7] == ["dsb2018 (paper: Dermoscopy (ISIC))", "dice_gain", "2.02", "1.10 ± 0.40 (n=3)", "-0.92"]
    todo = lines["herseg-t1-dsb2018"].split(" | ")
    assert todo[4:7] == ["—", "not run yet", "—"] and todo[7].startswith("will run: 200 epochs, adam")
    assert todo[9] == "— |"


def test_report_rejects_an_incomplete_result_file(tmp_path):
    bad = json.loads((FIXTURES / "qtseg-t1-dsb2018.json").read_text())
    del bad["commit"]
    (tmp_path / "qtseg-t1-dsb2018.json").write_text(json.dumps(bad))
    with pytest.raises(rp.ReproduceError, match=r"qtseg-t1-dsb2018.json: result file lacks 'commit'"):
        rp.format_report(rp.list_rows(), tmp_path, tmp_path)


def test_cli_list_report_and_bad_input(tmp_path, capsys, data):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    for row in rp.list_rows():
        line = next(ln for ln in out if ln.startswith(row.id + " "))
        assert row.paper in line and row.table in line and rp._fmt(row.paper_value) in line
    page = tmp_path / "docs" / "reproductions.md"
    assert main(["reproduce", "--report", "--results", str(FIXTURES), "-o", str(page)]) == 0
    assert page.read_text() == rp.format_report(rp.list_rows(), FIXTURES, page.parent)
    assert main(["reproduce", "no-such-row", "--data", str(data), "-o", str(tmp_path / "o")]) == 2
    assert "no reproduction row 'no-such-row'" in capsys.readouterr().err
    assert main(["reproduce", "hrmedseg-t1-dsb2018", "--data", str(tmp_path / "nowhere"),
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere/dsb2018: dataset folder not found" in err[0]
    assert not (tmp_path / "o").exists()


def test_esp_rows_resolve_teacher_against_the_weights_folder(tmp_path):
    row = rp.load_row("espmedsam-t1-dsb2018")
    spec = rp.build_spec(row, row.units()[0], None, weights_dir=tmp_path)
    esp = spec.config.esp
    assert esp.teacher == str(tmp_path / "mobile_sam.pt") == esp.init
    other = rp.load_row("espmedsam-t1-drive")
    assert rp.spec_digest(spec) == rp.spec_digest(rp.build_spec(other, other.units()[0], None,
                                                                weights_dir=tmp_path))


def test_pretraining_row_reports_the_gain_per_seed(data, tmp_path, monkeypatch):
    """Table 5 "P": per seed, Dice with the distilled encoder minus Dice from scratch; the
    trainer is replaced by known test scores per (pretrained, seed)."""
    dice = {("default", 0): 0.91, ("none", 0): 0.89, ("default", 1): 0.90, ("none", 1): 0.895}

    def fake(spec, run_dir, dataset, minutes):
        d = dice[(spec.config.model.pretrained, spec.config.train.seed)]
        return rp.RunOutcome(True, {dataset: {"model_resolution": {"dice": d}}}, 2.0, "cpu")

    monkeypatch.setattr(rp, "train_and_test", fake)
    st = rp.run_row("hrmedseg-t5-pretraining-dsb2018", data, tmp_path, seeds=[0, 1])
    res = json.loads(Path(st["result"]).read_text())
    assert res["ours"] == pytest.approx({"seed0": 2.0, "seed1": 0.5})
    assert res["ours_mean"] == pytest.approx(1.25) and res["ours_std"] == pytest.approx(1.5 / 2 ** 0.5, abs=1e-4)
    assert res["metrics"]["dice/scratch"]["per_run"] == pytest.approx({"seed0": 89.0, "seed1": 89.5})
    assert res["gpu_seconds"] == 8.0 and len(res["runs"]) == 4


def test_esp_rows_share_one_run_and_report_each_dataset(data, tmp_path, monkeypatch):
    """Both ESP-MedSAM rows read their dataset's test scores from the one multi-dataset run the
    trainer summarised; the second row reads the finished run back without training."""
    tiny = [o for o in _tiny_overrides(rp.load_row("espmedsam-t1-drive")) if "max_steps" not in o]
    kw = dict(device="cpu", seeds=[0], overrides=tiny + ["train.epochs=1", "esp.eval_hd=false"])
    drive = rp.run_row("espmedsam-t1-drive", data, tmp_path, **kw)
    res = json.loads(Path(drive["result"]).read_text())
    summ = json.loads((tmp_path / res["runs"]["seed0"] / "summary.json").read_text())
    assert summ["task"] == "esp" and summ["epochs_done"] == 1
    assert res["ours"] == pytest.approx(
        {"seed0": 100 * summ["test"]["drive"]["model_resolution"]["dice"]}, abs=1e-4)
    assert res["protocol"]["epochs"] == 1 and res["protocol"]["pretrained"] == "none"
    monkeypatch.setattr(rp, "train_and_test", lambda *a, **k: pytest.fail("retrained a finished run"))
    dsb = json.loads(Path(rp.run_row("espmedsam-t1-dsb2018", data, tmp_path, **kw)["result"]).read_text())
    assert dsb["runs"] == res["runs"]
    assert dsb["ours"] == pytest.approx(
        {"seed0": 100 * summ["test"]["dsb2018"]["model_resolution"]["dice"]}, abs=1e-4)


def test_esp_row_with_a_dataset_entry_lacking_its_folder_name_is_refused(tmp_path):
    text = (rp.reproductions_dir() / "espmedsam-t1-drive.yaml").read_text()
    assert "{name: drive, modality: 2}" in text
    bad = tmp_path / "espmedsam-t1-drive.yaml"
    bad.write_text(text.replace("{name: drive, modality: 2}", "{dataset: drive, modality: 2}"))
    with pytest.raises(rp.ReproduceError, match=r"espmedsam-t1-drive.yaml: overrides.esp.datasets "
                                                r"entry \{'dataset': 'drive', 'modality': 2\} must be"):
        rp.load_row_file(bad)
    assert rp.load_row_file(rp.reproductions_dir() / "espmedsam-t1-drive.yaml").datasets() == \
        ["drive", "kvasir-seg", "dsb2018"]
