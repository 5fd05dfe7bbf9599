"""hrmedseg compare: two tiny models, one epoch each, on a generated dataset -> one table."""
import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
from _trainutils import make_dataset  # noqa: E402

from hrmedseg.cli.main import main  # noqa: E402
from hrmedseg.experiments import compare as compare_mod  # noqa: E402

TINY_HRMEDSEG = {"embed_dim": 24, "depth": 2, "num_heads": [6, 6, 6], "neck_dim": 32,
                 "decoder_heads": 4, "decoder_mlp_dim": 32}


def _write_spec(tmp_path, data):
    spec = {
        "recipe": "paper",
        "out_dir": str(tmp_path / "cmp"),
        "overrides": {"data": {"root": str(data), "size": [32, 32], "workers": 0},
                      "train": {"epochs": 1, "batch_size": 4, "precision": "fp32", "seed": 0,
                                "device": "cpu"}},
        "models": [
            {"name": "hrmedseg", "label": "hrmedseg_tiny",
             "overrides": {"model": {"overrides": TINY_HRMEDSEG}}},
            {"name": "unet_small", "overrides": ["optim.lr=1e-3",
                                                 "model.overrides={features: [8, 16, 32, 64, 128, 8]}"]},
        ],
    }
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_compare_two_tiny_models(tmp_path, capsys, monkeypatch):
    data = make_dataset(tmp_path / "ds", n=12)
    spec_path = _write_spec(tmp_path, data)
    assert main(["compare", "--config", str(spec_path)]) == 0
    out = tmp_path / "cmp"
    md = (out / "compare.md").read_text()
    assert "| Method | Params (M) | MACs (G) | #Mem (GB) | Train img/s | Dice (%) | IoU (%) | HD95 (px) |" in md
    assert "| hrmedseg_tiny |" in md and "| unet_small |" in md
    # the header says what the runs used, not only the recipe's name (paper = adam 1e-4)
    assert "recipe paper with its overrides (adam lr 0.0001" in md and "fp32, batch 4" in md
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert [r["label"] for r in rows] == ["hrmedseg_tiny", "unet_small"]
    js = json.loads((out / "compare.json").read_text())
    for r in js["rows"]:
        # the test metrics are the run's own test/summary.json at the model resolution
        test = json.loads((out / r["label"] / "test" / "summary.json").read_text())
        assert r["n_test"] == test["n_images"] == 2
        for k in ("dice", "iou", "hd95"):
            assert r[k] == {"mean": test["model_resolution"][k]["mean"],
                            "std": test["model_resolution"][k]["std"]}, (r["label"], k)
        assert r["params"] > 0 and r["macs_thop"] > 0
        assert r["peak_train_mem_per_image_gb"] is None and r["train_images_per_s"] is None  # CPU
        assert r["epochs_done"] == 1
    # per-model overrides reached the runs; each model has its own run folder
    unet_cfg = yaml.safe_load((out / "unet_small" / "config.yaml").read_text())
    assert unet_cfg["optim"]["lr"] == 1e-3 and unet_cfg["model"]["name"] == "unet_small"
    assert yaml.safe_load((out / "hrmedseg_tiny" / "config.yaml").read_text())["optim"]["lr"] == 1e-4
    assert js["rows"][1]["params"] < 1e6  # the narrow U-Net, not the default one
    # "—" for memory and speed on CPU
    line = next(x for x in md.splitlines() if x.startswith("| unet_small |"))
    assert line.split("|")[4].strip() == "—" and line.split("|")[5].strip() == "—"

    # a second call trains nothing: both runs are complete
    def no_train(cfg):
        raise AssertionError(f"{cfg.model.name} trained again")
    res = compare_mod.run_compare(compare_mod.load_compare(spec_path), train_fn=no_train,
                                  log=lambda s: None)
    assert [r["label"] for r in res["rows"]] == ["hrmedseg_tiny", "unet_small"]
    assert res["rows"][0]["dice"] == js["rows"][0]["dice"]


def test_shipped_example_loads_and_resolves(tmp_path):
    spec = compare_mod.load_compare("compare_dsb2018")
    assert [m.name for m in spec.models] == ["hrmedseg", "unet", "swin_unetr"]
    cfgs = compare_mod.build_configs(spec, tmp_path)
    epochs = {c.train.epochs for c in cfgs.values()}
    seeds = {c.train.seed for c in cfgs.values()}
    assert len(epochs) == 1 and len(seeds) == 1
    assert cfgs["unet"].optim.lr == 1e-3 and cfgs["hrmedseg"].optim.lr == 1e-4
    assert cfgs["swin_unetr"].train.out_dir == str(tmp_path / "swin_unetr")


def test_bad_compare_file_is_one_line(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("models: [{name: unet, lr: 3}]\n")
    assert main(["compare", "--config", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown key" in err


def test_compare_refuses_unbuildable_models_before_training(tmp_path, capsys, monkeypatch):
    """A model that cannot be built (missing optional library, bad size) is reported in one
    line before any model trains."""
    data = make_dataset(tmp_path / "ds", n=12)
    spec_path = _write_spec(tmp_path, data)
    from hrmedseg.training import run as run_mod
    real = run_mod.build_model

    def build(cfg):
        if cfg.model.name == "unet_small":
            raise RuntimeError("unet_small needs somelib: pip install 'hrmedseg[baselines]'")
        return real(cfg)

    monkeypatch.setattr(run_mod, "build_model", build)
    assert main(["compare", "--config", str(spec_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unet_small" in err[0] and "somelib" in err[0]
    assert not (tmp_path / "cmp" / "hrmedseg_tiny").exists()     # nothing trained


def test_compare_keeps_the_others_when_one_training_fails(tmp_path):
    data = make_dataset(tmp_path / "ds", n=12)
    spec = compare_mod.load_compare(_write_spec(tmp_path, data))
    from hrmedseg.training.run import train

    def train_fn(cfg):
        if cfg.model.name == "unet_small":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return train(cfg)

    res = compare_mod.run_compare(spec, train_fn=train_fn)
    labels = [r["label"] for r in res["rows"]]
    assert labels[0] == "hrmedseg_tiny" and labels[1].startswith("unet_small (failed: RuntimeError")
    assert "| hrmedseg_tiny |" in res["markdown"] and "illegal memory access" in res["markdown"]


@pytest.mark.parametrize("resolution", ["model_resolution", "original_resolution"])
def test_compare_rows_equal_each_runs_test_summary(tmp_path, resolution):
    """Each row's Dice/IoU/HD95 (mean and std) and image count are those of its run's
    test/summary.json at the configured resolution (the two resolutions hold different numbers)."""
    spec = {"recipe": "paper", "out_dir": str(tmp_path / "cmp"), "resolution": resolution,
            "profile": {"enabled": False},
            "overrides": {"data": {"root": str(tmp_path / "nodata"), "size": [32, 32]},
                          "train": {"epochs": 1, "device": "cpu"}},
            "models": [{"name": "hrmedseg", "label": "a"}, {"name": "unet_small", "label": "b"}]}
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(spec))
    written = {}

    def fake_train(cfg):
        run = Path(cfg.train.out_dir)
        seed = len(written) + 1
        test = {"n_images": 5 + seed,
                **{res: {k: {"mean": round(0.1 * seed + 0.01 * j + 0.3 * (res == "original_resolution"), 6),
                             "std": round(0.001 * seed + 0.002 * j + 0.05 * (res == "original_resolution"), 6)}
                         for j, k in enumerate(("dice", "iou", "hd95"))}
                   for res in ("model_resolution", "original_resolution")}}
        (run / "test").mkdir(parents=True)
        (run / "test" / "summary.json").write_text(json.dumps(test))
        (run / "summary.json").write_text(json.dumps({"epochs_done": 1}))
        written[run.name] = test
        return {"epochs_done": 1}

    res = compare_mod.run_compare(compare_mod.load_compare(path), train_fn=fake_train, log=lambda s: None)
    assert [r["label"] for r in res["rows"]] == ["a", "b"] and set(written) == {"a", "b"}
    for r in res["rows"]:
        test = written[r["label"]]
        assert r["n_test"] == test["n_images"]
        for k in ("dice", "iou", "hd95"):
            assert r[k] == test[resolution][k], (r["label"], k)
    js = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert js["resolution"] == resolution
    assert [r["dice"] for r in js["rows"]] == [written["a"][resolution]["dice"], written["b"][resolution]["dice"]]
