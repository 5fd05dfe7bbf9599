"""The compile policy: which settings compile what where, what counts as a compile failure,
and the persistent compile cache."""
from __future__ import annotations

import os

import pytest
import torch

from hrmedseg.compiling import (compile_error_line, default_compile_cache_dir, is_compile_error,
                                load_compile_artifacts, normalize_switch,
                                resolve_compile, save_compile_artifacts, use_compile_cache)


@pytest.mark.parametrize("setting,mode,device,verified,expected", [
    ("auto", "auto", "cuda", True, "reduce-overhead"),     # the default on a GPU
    ("auto", "default", "cuda", True, "default"),
    ("auto", "auto", "cuda", False, None),                  # no parity record: eager
    ("auto", "auto", "cpu", True, None),                    # never on the CPU by default
    ("true", "auto", "cpu", False, "default"),              # asked for: compiled anyway
    ("true", "auto", "cuda", False, "reduce-overhead"),
    ("true", "max-autotune", "cpu", True, "max-autotune"),
    ("false", "auto", "cuda", True, None),
])
def test_resolve_compile_table(setting, mode, device, verified, expected):
    chosen, why = resolve_compile(setting, mode, device, verified)
    assert chosen == expected
    assert why and "\n" not in why


@pytest.mark.parametrize("setting,expected", [("auto", None), ("true", "reduce-overhead")])
def test_ddp_is_compiled_only_when_asked(setting, expected):
    chosen, why = resolve_compile(setting, "auto", "cuda", True, distributed=True)
    assert chosen == expected
    assert why and "\n" not in why


@pytest.mark.parametrize("value,expected", [
    (True, "true"), (False, "false"), ("True", "true"), ("on", "true"), ("1", "true"),
    ("no", "false"), ("off", "false"), ("AUTO", "auto"), (" auto ", "auto"),
])
def test_compile_settings_accept_the_usual_spellings(value, expected):
    assert normalize_switch(value) == expected


def test_an_unknown_compile_setting_is_refused():
    with pytest.raises(ValueError, match="auto, true or false"):
        normalize_switch("fast")


def test_compile_errors_are_told_from_model_errors():
    from torch._dynamo.exc import TorchRuntimeError
    from torch._inductor.exc import InductorError
    assert is_compile_error(TorchRuntimeError("traced op failed"))
    assert is_compile_error(InductorError(RuntimeError("lowering"), ""))
    assert not is_compile_error(RuntimeError("size mismatch"))
    assert not is_compile_error(torch.OutOfMemoryError("CUDA out of memory"))
    line = compile_error_line(TorchRuntimeError("first line\nsecond line"))
    assert line == "TorchRuntimeError: first line"


def test_compile_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("HRMEDSEG_CACHE_DIR", str(tmp_path / "hc"))
    assert default_compile_cache_dir() == tmp_path / "hc" / "torch-compile"
    monkeypatch.delenv("HRMEDSEG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache_dir() == tmp_path / "xdg" / "hrmedseg" / "torch-compile"
    folder = use_compile_cache()
    assert folder.is_dir() and os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(folder)
    # a folder the user chose for Inductor wins over the package's default ...
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache() == tmp_path / "mine"
    # ... but not over one given explicitly (train.compile_cache)
    assert use_compile_cache(tmp_path / "given") == tmp_path / "given"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "given")


def test_a_missing_or_foreign_artifact_file_is_ignored(tmp_path):
    assert load_compile_artifacts(tmp_path / "none.bin") is False
    (tmp_path / "junk.bin").write_bytes(b"not a cache")
    assert load_compile_artifacts(tmp_path / "junk.bin") is False


@pytest.mark.slow
def test_compiled_artifacts_round_trip_through_a_file(tmp_path, monkeypatch):
    """A real CPU compile (about 30 s on 2 cores): its artefacts are written and read back."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "cache"))
    torch._dynamo.reset()
    net = torch.compile(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))
    net(torch.randn(2, 4)).sum().backward()
    assert save_compile_artifacts(tmp_path / "art.bin")
    assert (tmp_path / "art.bin").stat().st_size > 0
    assert load_compile_artifacts(tmp_path / "art.bin")
