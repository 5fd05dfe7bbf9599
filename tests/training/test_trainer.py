import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from hrmedseg.cli.main import main
from hrmedseg.training.checkpoint import find_checkpoint, load_state

from _trainutils import make_dataset, tiny_args


def _engine(cfg, model, loss_fn, train_set):
    """The engine on the segmentation task with a model, loss and dataset given in Python."""
    from hrmedseg.training.engine import Engine
    from hrmedseg.training.tasks import SegmentTask
    return Engine(cfg, SegmentTask(cfg, model=model, loss_fn=loss_fn, train_set=train_set),
                  progress=False)


def test_train_writes_run_folder_and_evaluates(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_args(tiny_dataset, out, epochs=2)) == 0
    for f in ("config.yaml", "env.json", "metrics.csv", "curve.png", "summary.json",
              "checkpoints/last/model.safetensors", "checkpoints/best/config.json",
              "test/per_image.csv", "test/summary.json"):
        assert (out / f).is_file(), f
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,train_loss")
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0 and env["deterministic"] is True and env["global_batch"] == 4
    state = load_state(out / "checkpoints" / "last")  # loads with weights_only=True
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "test" in summary and 0.0 <= summary["test"]["model_resolution"]["dice"] <= 1.0


def test_loss_falls_on_learnable_data(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    main(tiny_args(tiny_dataset, out, epochs=20, extra=["optim.lr=3e-3", "train.eval_test=false"]))
    losses = [float(r.split(",")[2]) for r in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.7 * losses[0]


def _weights(run):
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def test_kill_mid_epoch_and_resume_gives_identical_weights(tmp_path):
    """A run killed with SIGKILL mid-epoch resumes at the exact batch and ends bit-identical."""
    tiny_dataset = make_dataset(tmp_path / "ds", n=48)
    extra = ["train.save_every_steps=1", "train.eval_test=false"]
    ref = tmp_path / "ref"
    assert main(tiny_args(tiny_dataset, ref, epochs=4, extra=extra)) == 0

    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hrmedseg", *tiny_args(tiny_dataset, run, epochs=4, extra=extra)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        ck = find_checkpoint(run / "checkpoints", "last")
        if ck is not None:
            try:
                st = load_state(ck)
            except Exception:
                st = None
            if st and st["global_step"] >= 3 and st["batch_in_epoch"] != 0:
                proc.send_signal(signal.SIGKILL)
                killed_at = st["global_step"]
                break
        time.sleep(0.05)
    proc.wait(timeout=30)
    if killed_at is None:
        pytest.skip("the run finished before it could be killed mid-epoch")
    st = load_state(find_checkpoint(run / "checkpoints", "last"))
    assert st["epoch"] < 4 and st["global_step"] < 4 * 9
    assert main(tiny_args(tiny_dataset, run, epochs=4, extra=extra)) == 0  # resumes
    a, b = _weights(ref), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(p.name.startswith("env_resume_step") for p in run.iterdir())


def test_bad_dataset_is_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(tiny_args(tmp_path / "empty", tmp_path / "run"))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a recognised dataset layout" in err[0]


class _SlowStartDataset(torch.utils.data.Dataset):
    """Tiny float items; the first one takes ``delay`` seconds (a DataLoader starting up)."""

    def __init__(self, n: int = 8, delay: float = 2.0) -> None:
        self.n, self.delay, self.first = n, delay, True

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if self.first:
            self.first = False
            time.sleep(self.delay)
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(3, 32, 32, generator=g), "mask": (torch.rand(32, 32, generator=g) > 0.5).long(),
                "stem": f"s{i}"}


def test_time_budget_and_time_schedule_start_at_the_first_batch(tmp_path):
    """A 1-second budget is 1 s of training, not eaten by a 2 s loader start-up, and the
    time-horizon lr starts its warm-up at the first step instead of having decayed."""
    from hrmedseg.training.config import load_config
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.run import build_model
    
    from _trainutils import TINY_OVERRIDES

    cfg = load_config("paper", ["data.size=32", "data.workers=0", "train.batch_size=2", "train.epochs=1000",
                                "train.precision=fp32", f"train.out_dir={tmp_path / 'run'}", "train.val_every=1000",
                                "schedule.name=cosine", "schedule.horizon=time", "schedule.warmup_epochs=0",
                                f"train.time_limit_min={1 / 60}", "train.device=cpu", TINY_OVERRIDES])
    net = build_model(cfg)
    trainer = _engine(cfg, net, build_loss("dice_ce", 1), _SlowStartDataset())
    lrs = []
    set_lr = trainer._set_lr
    trainer._set_lr = lambda: lrs.append(set_lr()) or lrs[-1]
    t0 = time.monotonic()
    result = trainer.fit(resume=False)
    trainer.close()
    assert result.stopped_early and result.global_step > 2
    assert time.monotonic() - t0 >= 2.9            # start-up + the whole 1 s budget
    assert lrs[0] == pytest.approx(cfg.optim.lr, rel=0.05)   # no decay before the first step


def test_compile_mode_reaches_torch_compile_and_bad_modes_are_config_errors(tmp_path, monkeypatch):
    """train.compile_mode is handed to torch.compile (captured, not compiled: no compiler run
    on the CPU suite); an unknown mode is refused with the key's name."""
    from hrmedseg.training.config import ConfigError, load_config
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.run import build_model
    
    from _trainutils import TINY_OVERRIDES

    seen = {}

    def fake_compile(model, **kw):
        seen.update(kw)
        return model
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = load_config("paper", ["data.size=32", "train.precision=fp32", "train.device=cpu",
                                "train.batch_size=2", "data.workers=0",
                                f"train.out_dir={tmp_path / 'run'}", "train.compile=true",
                                "train.compile_mode=reduce-overhead", TINY_OVERRIDES])
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    trainer = _engine(cfg, build_model(cfg), build_loss("dice_ce", 1), _SlowStartDataset())
    try:
        # CUDA-graph modes mark every training step as a new one (their output buffers are
        # reused between replays)
        batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
        trainer.train_step(batch)
        trainer.train_step(batch)
    finally:
        trainer.close()
    assert seen == {"mode": "reduce-overhead"}
    assert len(marks) == 2
    with pytest.raises(ConfigError, match="train.compile_mode"):
        load_config(None, ["train.compile_mode=fastest"])


@pytest.mark.parametrize("fraction,pattern", [("1.0", (True,) * 4), ("0.5", (False, True) * 2)])
def test_checkpointing_fraction_flows_from_the_config(tmp_path, fraction, pattern):
    """model.grad_checkpointing_fraction reaches the encoder (2 MBConvs + 2 DGLA blocks)."""
    from hrmedseg.training.config import load_config
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.run import build_model
    
    from _trainutils import TINY_OVERRIDES

    cfg = load_config("paper", ["data.size=32", "train.precision=fp32", "train.device=cpu",
                                "data.workers=0", "train.batch_size=2",
                                f"train.out_dir={tmp_path / 'run'}", "model.grad_checkpointing=true",
                                f"model.grad_checkpointing_fraction={fraction}", TINY_OVERRIDES])
    trainer = _engine(cfg, build_model(cfg), build_loss("dice_ce", 1), _SlowStartDataset())
    try:
        assert trainer.model.encoder.checkpointed == pattern
    finally:
        trainer.close()


def test_checkpointing_fraction_on_a_model_without_it_is_a_config_error(tmp_path):
    from hrmedseg.training.config import ConfigError, load_config
    from hrmedseg.training.losses import build_loss
    from hrmedseg.training.run import build_model
    
    cfg = load_config("qtseg", ["data.size=32", "train.precision=fp32", "train.device=cpu",
                                "data.workers=0", "train.batch_size=2",
                                f"train.out_dir={tmp_path / 'run'}", "model.pretrained=none", "model.grad_checkpointing=true",
                                "model.grad_checkpointing_fraction=0.5"])
    with pytest.raises(ConfigError, match="grad_checkpointing_fraction: qtseg recomputes all"):
        _engine(cfg, build_model(cfg), build_loss("dice_ce", 1), _SlowStartDataset())


class _LossGoesNaN(torch.nn.Module):
    """Dice + CE that returns NaN from its ``at``-th call on."""

    def __init__(self, at: int) -> None:
        super().__init__()
        from hrmedseg.training.losses import build_loss
        self.inner, self.calls, self.at = build_loss("dice_ce", 1), 0, at

    def forward(self, logits, target):
        self.calls += 1
        loss = self.inner(logits, target)
        return loss * float("nan") if self.calls >= self.at else loss


def test_non_finite_loss_stops_the_run_before_any_save(tmp_path):
    """Losses are read every LOSS_READ_EVERY steps (no GPU wait per step), and always before a
    save: a NaN stops the run naming the steps, and no checkpoint holds the broken weights."""
    from hrmedseg.training import engine as trainer_mod
    from hrmedseg.training.config import load_config
    from hrmedseg.training.run import build_model
    
    from _trainutils import TINY_OVERRIDES

    cfg = load_config("paper", ["data.size=32", "train.precision=fp32", "train.device=cpu",
                                "train.batch_size=2", "data.workers=0", "train.epochs=1",
                                "train.save_every_steps=2", "train.eval_test=false",
                                f"train.out_dir={tmp_path / 'run'}", TINY_OVERRIDES])
    assert trainer_mod.LOSS_READ_EVERY > 2   # here the saves force the reads
    trainer = _engine(cfg, build_model(cfg), _LossGoesNaN(at=3), _SlowStartDataset(n=12, delay=0.0))
    try:
        with pytest.raises(FloatingPointError, match="within steps 3-4"):
            trainer.fit(resume=False)
    finally:
        trainer.close()
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())
    assert load_state(tmp_path / "run" / "checkpoints" / "last")["global_step"] == 2
