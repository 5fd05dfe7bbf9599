"""One ``--device`` rule in the library and in every verb."""
from __future__ import annotations

import pytest
import torch

from hrmedseg.cli.main import main
from hrmedseg.devices import DeviceError, parse_device

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")


def test_auto_is_cuda_if_available_else_cpu():
    assert parse_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_device(None) == parse_device("auto")
    assert parse_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda0", "tpu", ""])
def test_malformed_device_is_refused(bad):
    with pytest.raises(DeviceError, match="auto \\| cpu \\| cuda \\| cuda:N \\| mps"):
        parse_device(bad)


@needs_no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_cpu_machine_is_refused(spec):
    with pytest.raises(DeviceError, match="no CUDA device"):
        parse_device(spec)


def test_segmenter_uses_the_rule():
    from hrmedseg.inference.segmenter import Segmenter
    with pytest.raises(DeviceError):
        Segmenter("hrmedseg", device="gpu")


VERB_ARGV = {
    "predict": ["predict", "hrmedseg", "--samples", "-o", "{tmp}/p"],
    "evaluate": ["evaluate", "hrmedseg", "--data", "{samples}", "--split", "all", "-o", "{tmp}/e"],
    "profile": ["profile", "hrmedseg", "--size", "64", "--no-speed", "--no-macs"],
    "benchmark": ["benchmark", "--models", "hrmedseg", "--size", "64", "-o", "{tmp}/b"],
    "serve": ["serve", "hrmedseg"],
}


@pytest.mark.parametrize("verb", sorted(VERB_ARGV))
@pytest.mark.parametrize("device", ["gpu"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_every_verb_refuses_a_bad_device_in_one_line(verb, device, tmp_path, capsys):
    from hrmedseg.cli.predict import sample_dir
    argv = [a.format(tmp=tmp_path, samples=sample_dir()) for a in VERB_ARGV[verb]]
    assert main(argv + ["--device", device]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and device in err, err
    assert not any(tmp_path.iterdir())   # refused before anything was written


def test_profile_defaults_to_auto():
    from hrmedseg.cli.main import build_parser
    args = build_parser().parse_args(["profile", "hrmedseg"])
    assert args.device == "auto"
    args = build_parser().parse_args(["benchmark", "--models", "hrmedseg", "-o", "x"])
    assert args.device == "auto"
