"""train.compile in the engine: auto stays eager on the CPU, a failed compile falls back to
eager with one line and the step is redone, other errors are not swallowed."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _trainutils import TINY_OVERRIDES, make_dataset
from test_trainer import _SlowStartDataset, _engine


# no drop path: the failed attempt draws no random numbers the redone step would miss
DETERMINISTIC_TINY = TINY_OVERRIDES.replace("drop_path_rate: 0.1", "drop_path_rate: 0.0")


def _cfg(tmp_path, *extra):
    from hrmedseg.training.config import load_config
    return load_config("paper", ["data.size=32", "train.precision=fp32", "train.device=cpu",
                                 "train.batch_size=2", "data.workers=0",
                                 f"train.out_dir={tmp_path / 'run'}", DETERMINISTIC_TINY, *extra])


def _trainer(cfg):
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.run import build_model
    return _engine(cfg, build_model(cfg), build_loss("dice_ce", 1), _SlowStartDataset())


BATCH = {"image": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
         "mask": torch.randint(0, 2, (2, 32, 32), generator=torch.Generator().manual_seed(1))}


def test_auto_is_eager_on_the_cpu(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: calls.append(kw) or m)
    trainer = _trainer(_cfg(tmp_path))
    try:
        assert trainer.cfg.train.compile == "auto"
        assert trainer.task.compile_mode is None and "cpu" in trainer.task.compile_reason
    finally:
        trainer.close()
    assert calls == []


class _FailingCompiled(nn.Module):
    """What a compile that breaks looks like to the engine: the compile error is raised at the
    first forward ("forward") or, as AOTAutograd compiles backward lazily, the first backward."""

    def __init__(self, inner: nn.Module, when: str, error: Exception) -> None:
        super().__init__()
        self.inner, self.when, self.error = inner, when, error

    def forward(self, x):
        if self.when == "forward":
            raise self.error
        out = self.inner(x)
        error = self.error

        class _Boom(torch.autograd.Function):
            @staticmethod
            def forward(ctx, t):
                return t.clone()

            @staticmethod
            def backward(ctx, g):
                raise error
        return _Boom.apply(out)


@pytest.mark.parametrize("when", ["forward", "backward"])
def test_a_failed_compile_falls_back_to_eager_and_redoes_the_step(tmp_path, monkeypatch, capsys, when):
    from torch._dynamo.exc import TorchRuntimeError
    monkeypatch.setattr(torch, "compile", lambda m, **kw: _FailingCompiled(
        m, when, TorchRuntimeError("lowering aten.foo failed")))
    cfg = _cfg(tmp_path, "train.compile=true")
    trainer = _trainer(cfg)
    eager = _trainer(_cfg(tmp_path / "eager", "train.compile=false"))
    try:
        assert trainer.task.compile_mode == "default"
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        terms = trainer.train_step(BATCH)
        reference = eager.train_step(BATCH)
    finally:
        trainer.close()
        eager.close()
    err = capsys.readouterr().err
    assert "torch.compile failed (TorchRuntimeError: lowering aten.foo failed)" in err
    assert err.count("torch.compile failed") == 1
    assert trainer.task.compile_mode is None and not isinstance(trainer.task.net, _FailingCompiled)
    assert trainer.net is trainer.task.net
    # the redone step is an ordinary eager step: the same loss and the same update as one
    assert terms["total"].item() == pytest.approx(reference["total"].item(), rel=1e-6)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(after[k], v)


def test_an_error_of_the_model_is_not_taken_for_a_compile_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda m, **kw: _FailingCompiled(
        m, "forward", RuntimeError("mat1 and mat2 shapes cannot be multiplied")))
    trainer = _trainer(_cfg(tmp_path, "train.compile=true"))
    try:
        with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
            trainer.train_step(BATCH)
        assert trainer.task.compile_mode == "default"
    finally:
        trainer.close()


def test_the_compile_decision_is_in_env_json_and_summary(tmp_path):
    from hrmedseg.training.run import train
    data = make_dataset(tmp_path / "data", n=6, size=32)
    cfg = _cfg(tmp_path, "train.epochs=1", "train.eval_test=false", f"data.root={data}")
    result = train(cfg, resume=False, progress=False)
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert env["compile"] is None and env["compile_reason"].startswith("auto")
    assert env["grad_checkpointing"] is False
    assert result["compile"] is None
    assert not (tmp_path / "run" / "compile_cache.bin").exists()


def test_compile_setting_is_a_config_error_when_unknown():
    from hrmedseg.training.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="train.compile: expected auto, true or false"):
        load_config(None, ["train.compile=sometimes"])
    assert load_config(None, ["train.compile=yes"]).train.compile == "true"
    assert load_config(None, []).train.compile_mode == "auto"


@pytest.mark.parametrize("setting,device,verified,compile_setting,expected", [
    ("auto", "cuda", True, "auto", True),      # CUDA graphs: checkpointed (lean and fast)
    ("auto", "cuda", False, "auto", False),    # no parity record: eager, not checkpointed
    ("auto", "cpu", True, "auto", False),
    ("auto", "cuda", True, "false", False),    # eager on a GPU: checkpointing would cost speed
    ("true", "cpu", False, "auto", True),
    ("false", "cuda", True, "auto", False),
])
def test_grad_checkpointing_auto_follows_cuda_graphs(tmp_path, setting, device, verified,
                                                     compile_setting, expected):
    from hrmedseg.models import create_model
    from hrmedseg.training.tasks.base import Task
    cfg = _cfg(tmp_path, f"model.grad_checkpointing={setting}", f"train.compile={compile_setting}")
    model = create_model("hrmedseg", pretrained=False, embed_dim=24, depth=2, num_heads=[6, 6, 6],
                         neck_dim=32, decoder_heads=4, decoder_mlp_dim=32, img_size=32)
    model.compile_verified = verified     # as the model's class would say
    task = Task()
    task.model = model
    task.apply_grad_checkpointing(cfg, torch.device(device))
    assert task.grad_checkpointing is expected
    assert model.grad_checkpointing is expected


@pytest.mark.slow
def test_a_compiled_run_trains_and_keeps_its_artefacts_for_a_resume(tmp_path, monkeypatch):
    """A real CPU compile (about 90 s on 2 cores): the run trains compiled, writes
    compile_cache.bin after its first epoch, and a resume with an empty kernel cache loads it."""
    from hrmedseg import compiling
    from hrmedseg.training.run import train
    data = make_dataset(tmp_path / "data", n=8, size=32)
    base = ["train.eval_test=false", f"data.root={data}", "train.compile=true",
            f"train.compile_cache={tmp_path / 'kernels'}"]
    result = train(_cfg(tmp_path, "train.epochs=1", *base), resume=False, progress=False)
    assert result["compile"] == "default" and result["epochs_done"] == 1
    assert (tmp_path / "run" / "compile_cache.bin").stat().st_size > 0
    loaded = []
    real = compiling.load_compile_artifacts
    monkeypatch.setattr("hrmedseg.training.tasks.base.load_compile_artifacts",
                        lambda p: loaded.append(real(p)) or loaded[-1])
    base[-1] = f"train.compile_cache={tmp_path / 'empty'}"
    result = train(_cfg(tmp_path, "train.epochs=2", *base), resume=True, progress=False)
    assert result["resumed"] and result["epochs_done"] == 2 and loaded == [True]
