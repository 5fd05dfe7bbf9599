"""Segmenter's compile setting: auto stays eager on the CPU, a failed compile falls back to the
eager model with one line and the same predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hrmedseg.inference.segmenter import Segmenter
from test_tiling import TILE as SIZE, tiny  # noqa: F401  (the tiny HRMedSeg fixture)


def _image():
    return np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)


def test_auto_is_eager_on_the_cpu(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(kw) or m)
    seg = Segmenter(tiny, device="cpu", compile="auto")
    assert seg.compile is None and "cpu" in seg.compile_reason and calls == []
    # asked for explicitly, the model is compiled whatever the device
    assert seg.set_compile("default") == "default" and calls == [{"mode": "default"}]


def test_a_failed_compile_predicts_eager_after_one_line(tiny, monkeypatch, capsys):
    from torch._dynamo.exc import TorchRuntimeError

    def failing(*args, **kwargs):
        raise TorchRuntimeError("no lowering for aten.bar")
    monkeypatch.setattr(torch, "compile", lambda m, **kw: failing)
    reference = Segmenter(tiny, device="cpu").predict(_image())
    seg = Segmenter(tiny, device="cpu", compile="default")
    first = seg.predict(_image())
    second = seg.predict(_image())
    err = capsys.readouterr().err
    assert err.count("torch.compile failed (TorchRuntimeError: no lowering for aten.bar)") == 1
    assert seg.compile is None
    np.testing.assert_array_equal(first.labels, reference.labels)
    np.testing.assert_allclose(second.probabilities, reference.probabilities, atol=1e-6)


def test_a_model_error_under_compile_is_raised_as_it_is(tiny, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("expected input with 3 channels")
    monkeypatch.setattr(torch, "compile", lambda m, **kw: failing)
    seg = Segmenter(tiny, device="cpu", compile="default")
    with pytest.raises(RuntimeError, match="3 channels"):
        seg.predict(_image())
