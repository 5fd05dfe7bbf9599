import json

import pytest

from hrmedseg.cli.main import main


def test_models_lists_registered_names(capsys):
    assert main(["models", "hrmedseg_l*"]) == 0
    out = capsys.readouterr().out
    assert "hrmedseg_l4_c96" in out and "Table 6" in out


def test_predict_shipped_samples_with_shipped_weight(tmp_path, capsys):
    assert main(["predict", "hrmedseg", "--samples", "-o", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    dices = [float(line.split("Dice ")[1].split(",")[0]) for line in out.splitlines() if "Dice" in line]
    assert len(dices) == 4 and min(dices) > 85.0  # the shipped DSB-2018 weight works
    assert len(list(tmp_path.glob("*_mask.png"))) == 4 and len(list(tmp_path.glob("*_overlay.png"))) == 4


def test_evaluate_and_check_dataset(tmp_path, capsys):
    from hrmedseg.cli.predict import sample_dir
    root = sample_dir()
    assert main(["check-dataset", str(root)]) == 0
    assert "4 pairs checked: 0 errors" in capsys.readouterr().out
    out = tmp_path / "ev"
    assert main(["evaluate", "hrmedseg", "--data", str(root), "--split", "all", "-o", str(out),
                 "--device", "cpu", "--overlays", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_images"] == 4 and summary["model_resolution"]["dice"]["mean"] > 0.85
    assert (out / "per_image.csv").read_text().count("\n") == 5
    assert len(list((out / "overlays").glob("*.png"))) == 1


@pytest.mark.parametrize("argv,needle", [
    (["predict", "hrmedseg", "/nonexistent.png", "-o", "OUT"], "no such file"),
    (["check-dataset", "/tmp"], "not a recognised dataset layout"),
    (["train", "--config", "paper", "optim.lr=abc"], "optim.lr: expected a number"),
    (["predict", "nosuchmodel", "SAMPLE", "-o", "OUT"], "neither a model folder nor a registered"),
])
def test_user_errors_are_one_line(argv, needle, tmp_path, capsys):
    from hrmedseg.cli.predict import sample_dir
    sample = str(next((sample_dir() / "images").glob("*.png")))
    argv = [a.replace("OUT", str(tmp_path / "o")).replace("SAMPLE", sample) for a in argv]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_corrupt_input_named_in_error(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    rc = main(["predict", "hrmedseg", str(bad), "-o", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "broken.png" in err[0]


def test_train_without_config_uses_the_default_recipe(capsys):
    """`hrmedseg train` with no --config is the default recipe, not the paper's."""
    import yaml

    assert main(["train", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["pretrained"] == "default"
    assert (cfg["optim"]["name"], cfg["optim"]["lr"]) == ("adamw", 5e-4)
    assert cfg["schedule"]["name"] == "cosine" and cfg["data"]["augment"] == "strong"
    assert main(["train", "--config", "paper", "--print-config"]) == 0
    paper = yaml.safe_load(capsys.readouterr().out)
    assert (paper["optim"]["name"], paper["optim"]["lr"], paper["model"]["pretrained"]) == ("adam", 1e-4, "none")
