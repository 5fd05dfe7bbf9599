"""The training verbs refuse a device this machine cannot use in one line, before any folder."""
from __future__ import annotations

import pytest
import torch

from hrmedseg.cli.main import build_parser, main

BAD = ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"])

# Each verb with everything it needs to start; "{device}" marks where the device goes.
VERB_ARGV = {
    "train": ["train", "--data", "{tmp}/data", "--out", "{tmp}/run", "train.device={device}"],
    "distill": ["distill", "--teacher", "{tmp}/mobile_sam.pt", "--images", "{tmp}/images",
                "-o", "{tmp}/run", "--device", "{device}"],
    "train-esp": ["train-esp", "--data", "a={tmp}/data:0", "-o", "{tmp}/run", "--device", "{device}"],
    "zeroshot": ["zeroshot", "--encoder", "teacher", "--sam", "{tmp}/mobile_sam.pt",
                 "--data", "{tmp}/data", "--split", "all", "-o", "{tmp}/out", "--device", "{device}"],
    "compare": ["compare", "--config", "compare_dsb2018", "-o", "{tmp}/out", "--device", "{device}"],
    "reproduce": ["reproduce", "hrmedseg-t1-dsb2018", "--data", "{tmp}/data", "-o", "{tmp}/out",
                  "--device", "{device}"],
}


@pytest.mark.parametrize("verb", sorted(VERB_ARGV))
@pytest.mark.parametrize("device", BAD)
def test_bad_device_is_one_line_before_any_folder(verb, device, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, device=device) for a in VERB_ARGV[verb]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"hrmedseg {verb}: error:" in err and device in err, err
    assert not any(tmp_path.iterdir())   # refused before anything was written


@pytest.mark.parametrize("device", BAD)
def test_train_names_the_config_key(device, tmp_path, capsys):
    """train has no --device: the message names the key the user set."""
    assert main([a.format(tmp=tmp_path, device=device) for a in VERB_ARGV["train"]]) == 2
    err = capsys.readouterr().err
    assert "train.device" in err and "--device" not in err, err


def test_compare_checks_the_file_device_without_flag(tmp_path, capsys):
    assert main(["compare", "--config", "compare_dsb2018", "-o", str(tmp_path / "out"),
                 "train.device=gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.device" in err and "gpu" in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("verb", ["distill", "train-esp", "zeroshot", "reproduce"])
def test_device_defaults_to_auto(verb):
    argv = [a.format(tmp="t", device="auto") for a in VERB_ARGV[verb]][:-2]
    assert build_parser().parse_args(argv).device == "auto"
    assert build_parser().parse_args(["compare", "--config", "c"]).device is None
