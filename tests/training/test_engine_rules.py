"""One engine, one rule for every task (segmentation, distillation, ESP-MedSAM): the time budget
counts earlier sessions of a run, images/s counts training time only, and a resumed run
continues the exact loss curve. The clock is a fake one that advances a fixed amount per
training step and per validation, so the counts are exact on a busy machine."""
import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from hrmedseg.training import engine as engine_mod
from hrmedseg.training.config import apply_overrides, load_config
from hrmedseg.training.engine import Engine
from hrmedseg.training.run import train
from hrmedseg.training.tasks import DistillTask, ESPTask, SegmentTask

from _trainutils import TINY_OVERRIDES, make_dataset

TASKS = ["segment", "distill", "esp"]


def _setup(name, tmp_path, out, **train_keys):
    """(config, task factory) of a tiny run of task ``name`` in ``tmp_path/out``."""
    if name == "segment":
        data = tmp_path / "ds"
        if not data.exists():
            make_dataset(data, n=12)
        cfg = load_config("paper", [f"data.root={data}", f"train.out_dir={tmp_path / out}",
                                    "data.size=32", "data.workers=0", "train.batch_size=2",
                                    "train.precision=fp32", "train.deterministic=true",
                                    "train.eval_test=false", "train.device=cpu", TINY_OVERRIDES])
        make = lambda c: SegmentTask(c)                                       # noqa: E731
    elif name == "distill":
        from test_distill import cfg_for, make_images, tiny_teacher
        if not (tmp_path / "imgs").exists():
            make_images(tmp_path / "imgs")
        cfg = cfg_for(tmp_path, out=out)
        make = lambda c: DistillTask(c, teacher=tiny_teacher())               # noqa: E731
    else:
        from test_esp_training import TinyTeacher, config
        roots = tmp_path / "polyp", tmp_path / "nuclei"
        for k, r in enumerate(roots):
            if not r.exists():
                make_dataset(r, n=6, size=40, seed=k)
        stems = sorted(p.stem for p in (roots[1] / "images").glob("*.png"))
        (roots[1] / "splits.json").write_text(json.dumps(
            {"train": stems[:3], "val": stems[3:5], "test": stems[5:]}))
        cfg = config(tmp_path, (*roots, None), out=out)
        make = lambda c: ESPTask(c, teacher=TinyTeacher())                    # noqa: E731
    apply_overrides(cfg, {"train": train_keys})
    return cfg, make


class FakeClock:
    """time.monotonic for the engine: moves only when a step or a validation runs."""

    def __init__(self, step_s=1.0, val_s=0.0):
        self.now, self.step_s, self.val_s = 1000.0, step_s, val_s

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(engine_mod, "time", c)
    step, validate = Engine.train_step, Engine._validate
    c.images = []

    def timed_step(self, batch):
        out = step(self, batch)
        c.now += c.step_s
        c.images.append(self.local_images)
        return out

    def timed_validate(self):
        out = validate(self)
        c.now += c.val_s
        return out
    monkeypatch.setattr(Engine, "train_step", timed_step)
    monkeypatch.setattr(Engine, "_validate", timed_validate)
    return c


def _run(name, tmp_path, out="run", **train_keys):
    cfg, make = _setup(name, tmp_path, out, **train_keys)
    return train(cfg, task=make(cfg), progress=False)


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("name", TASKS)
def test_time_budget_counts_earlier_sessions(name, tmp_path, clock):
    """3.5 s of budget = 4 one-second steps; raised to 6.5 s, the resumed run trains 3 more
    (not 7: the first session's 4 s count); a rerun with the budget spent trains none."""
    s1 = _run(name, tmp_path, epochs=100, val_every=1000, time_limit_min=3.5 / 60)
    assert s1["stop_reason"] == "time_limit" and s1["global_step"] == 4
    from hrmedseg.training.checkpoint import load_state
    assert load_state(tmp_path / "run" / "checkpoints" / "last")["elapsed_s"] == pytest.approx(4.0)
    s2 = _run(name, tmp_path, epochs=100, val_every=1000, time_limit_min=6.5 / 60)
    assert s2["resumed"] and s2["global_step"] == 7
    s3 = _run(name, tmp_path, epochs=100, val_every=1000, time_limit_min=6.5 / 60)
    assert s3["resumed"] and s3["global_step"] == 7


@pytest.mark.parametrize("name", TASKS)
def test_images_per_second_leave_validation_out(name, tmp_path, clock):
    """Each step takes 1 s and each validation 10 s: train_images_per_s is the epoch's images
    over its steps' seconds, and epoch_time_s holds the validation as well."""
    clock.val_s = 10.0
    _run(name, tmp_path, epochs=1, val_every=1)
    row = _rows(tmp_path / "run")[-1]
    steps, images = len(clock.images), sum(clock.images)
    assert row["epoch"] == "1" and steps >= 3
    assert float(row["train_images_per_s"]) == pytest.approx(round(images / steps, 2))
    assert float(row["epoch_time_s"]) == pytest.approx(steps + 10.0)


@pytest.mark.parametrize("name", TASKS)
def test_resume_continues_the_exact_loss_curve(name, tmp_path):
    """Stopped mid-epoch 2 and resumed: the same metrics.csv losses and validation values as an
    uninterrupted run (the interrupted epoch's loss includes the steps before the stop), and the
    same weights."""
    _run(name, tmp_path, out="full", epochs=2)
    full = _rows(tmp_path / "full")
    per_epoch = int(full[-1]["step"]) // 2
    cut = _run(name, tmp_path, out="cut", epochs=2, max_steps=per_epoch + 1)
    assert cut["stop_reason"] == "max_steps"
    rest = _run(name, tmp_path, out="cut", epochs=2, max_steps=0)
    assert rest["resumed"] and rest["global_step"] == 2 * per_epoch
    resumed = _rows(tmp_path / "cut")
    keys = [k for k in full[0] if "loss" in k or "mse" in k or k.startswith("val_") or k == "step"]
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in full]
    assert all(float(r["train_images_per_s"]) > 0 for r in resumed if r["epoch"] != "0")
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "last" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
