"""Distillation: held-out MSE falls, the teacher cache is built once, resume continues, and the
student folder loads into `hrmedseg train` (encoder + neck only)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _trainutils import MOBILE_SAM
from hrmedseg.models._hub import load_safetensors
from hrmedseg.models._registry import create_model
from hrmedseg.training.checkpoint import load_state
from hrmedseg.training.config import load_config
from hrmedseg.training.run import train
from hrmedseg.training.tasks import DistillTask

TINY_TEACHER = dict(embed_dims=(8, 16, 16, 32), depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 2),
                    window_sizes=(2, 2, 2, 2), head_classes=0)
STUDENT = dict(embed_dim=24, depth=2, num_heads=[6, 6, 6], neck_dim=256, decoder_heads=4,
               decoder_mlp_dim=32, drop_path_rate=0.0)


def make_images(root, n=10, seed=0):
    """Smooth natural-ish images (discs on gradients) of varying sizes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        h, w = 56 + 4 * (i % 3), 64
        yy, xx = np.mgrid[:h, :w]
        img = np.stack([xx * 3, yy * 3, (xx + yy) * 2], -1).astype(np.float64)
        cy, cx, r = rng.integers(12, 44), rng.integers(12, 52), rng.integers(5, 12)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 255, 3)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"im{i:02d}.png")
    return root


def tiny_teacher(seed=0):
    torch.manual_seed(seed)
    return create_model("mobile_sam", img_size=64, encoder_args=TINY_TEACHER)


def cfg_for(tmp_path, out="run", epochs=4, max_steps=0, time_limit_min=0.0, augment="none",
            val_images=(), **distill):
    """The distill recipe at a tiny size (CPU, fp32), as `hrmedseg distill` would set it."""
    from hrmedseg.training.config import apply_overrides
    cfg = load_config("distill")
    apply_overrides(cfg, {
        "model": {"overrides": STUDENT}, "data": {"size": 64, "augment": augment, "workers": 0},
        "optim": {"lr": 1e-3},
        "train": {"out_dir": str(tmp_path / out), "epochs": epochs, "batch_size": 2,
                  "device": "cpu", "precision": "fp32", "max_steps": max_steps,
                  "time_limit_min": time_limit_min},
        "distill": {"images": [str(tmp_path / "imgs")], "val_fraction": 0.2,
                    "teacher_cache": str(tmp_path / "cache"), "val_images": list(val_images),
                    **distill}})
    return load_config(None, base=cfg)


def distill(cfg, teacher=None, progress=False):
    return train(cfg, task=DistillTask(cfg, teacher=teacher), progress=progress)


def read_csv(path):
    return list(csv.DictReader(open(path)))


@pytest.fixture
def images(tmp_path):
    return make_images(tmp_path / "imgs")


def test_distill_lowers_heldout_mse_and_caches_once(tmp_path, images):
    teacher = tiny_teacher()
    s = distill(cfg_for(tmp_path), teacher=teacher, progress=False)
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    val = [float(r["val_loss"]) for r in rows]
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    assert min(val[1:]) < 0.9 * val[0], val
    # every image embedded exactly once; all of them cached as float16
    assert s["teacher_calls"] == 10 and s["val_images"] == 2
    man = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert len(man["entries"]) == 10 and man["teacher_sha256"].startswith("weights:")
    arr = np.load(next((tmp_path / "cache").glob("*.npy")))
    assert arr.dtype == np.float16 and arr.shape == (256, 4, 4)
    assert (tmp_path / "run" / "curve.png").stat().st_size > 0
    cfgj = json.loads((tmp_path / "run" / "student" / "config.json").read_text())
    assert cfgj["metadata"]["distilled"] is True
    state = load_state(tmp_path / "run" / "checkpoints" / "last")  # weights_only=True inside
    assert state["epoch"] == 4
    # a second run with the same cache does not run the teacher at all
    s2 = distill(cfg_for(tmp_path, out="run2", epochs=0), teacher=teacher, progress=False)
    assert s2["teacher_calls"] == 0
    # a different teacher invalidates the cache: rebuilt
    s3 = distill(cfg_for(tmp_path, out="run3", epochs=0), teacher=tiny_teacher(seed=1), progress=False)
    assert s3["teacher_calls"] == 10


def test_distill_resume_matches_uninterrupted(tmp_path, images):
    teacher = tiny_teacher()
    full = distill(cfg_for(tmp_path, out="full", epochs=2), teacher=teacher, progress=False)
    # "killed" after 3 steps (mid-epoch 2; 4 steps per epoch), then rerun to the end
    part = distill(cfg_for(tmp_path, out="cut", epochs=2, max_steps=3), teacher=teacher, progress=False)
    assert part["stopped_early"] and part["global_step"] == 3
    assert load_state(tmp_path / "cut" / "checkpoints" / "last")["batch_in_epoch"] == 3
    rest = distill(cfg_for(tmp_path, out="cut", epochs=2), teacher=teacher, progress=False)
    assert rest["resumed"] and rest["global_step"] == full["global_step"] == 8
    a = load_safetensors(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors")
    b = load_safetensors(tmp_path / "cut" / "checkpoints" / "last" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_distill_strong_augment_runs_teacher_on_the_fly(tmp_path, images):
    teacher = tiny_teacher()
    s = distill(cfg_for(tmp_path, epochs=1, augment="strong"), teacher=teacher)
    # held-out images cached once (2), each training view embedded on the fly (8)
    assert s["teacher_calls"] == 2 + 8 and s["epochs_done"] == 1
    assert len(json.loads((tmp_path / "cache" / "manifest.json").read_text())["entries"]) == 2


def test_student_folder_loads_into_train(tmp_path, images):
    from hrmedseg.training.config import ConfigError, load_config
    from hrmedseg.training.run import build_model

    distill(cfg_for(tmp_path, epochs=1), teacher=tiny_teacher(), progress=False)
    folder = tmp_path / "run" / "student"
    distilled = load_safetensors(folder / "model.safetensors")
    ov = "{" + ", ".join(f"{k}: {v}" for k, v in STUDENT.items()) + "}"
    cfg = load_config("paper", [f"model.pretrained={folder}", "model.num_classes=3",
                                "data.size=64", f"model.overrides={ov}"])
    torch.manual_seed(123)
    model = build_model(cfg)
    torch.manual_seed(123)
    fresh = create_model("hrmedseg", num_classes=3, img_size=(64, 64), **STUDENT)
    assert model.config.num_classes == 3
    fresh_sd = fresh.state_dict()
    for k, v in model.state_dict().items():
        if k.startswith(("encoder.", "neck.")):
            torch.testing.assert_close(v, distilled[k])
        else:
            torch.testing.assert_close(v, fresh_sd[k])
    assert any(not torch.equal(model.state_dict()[k], fresh_sd[k]) for k in fresh_sd
               if k.startswith("encoder."))
    # a different architecture: one-line error
    bad = load_config("paper", [f"model.pretrained={folder}", "data.size=64",
                                "model.overrides={embed_dim: 48, depth: 2, num_heads: [6, 6, 6]}"])
    with pytest.raises(ConfigError, match="does not fit"):
        build_model(bad)


def test_distill_cli(tmp_path, images, monkeypatch):
    from hrmedseg.cli.main import main
    teacher = tiny_teacher()
    ckpt = tmp_path / "teacher.pt"
    from hrmedseg.models.sam_checkpoints import to_sam_state_dict
    torch.save(to_sam_state_dict(teacher), ckpt)
    # the CLI builds the default vit_t from a checkpoint; here the tiny layout is substituted
    import hrmedseg.training.tasks.distill as dmod
    real = dmod.build_teacher
    monkeypatch.setattr(dmod, "build_teacher",
                        lambda t, size: real(tiny_teacher(), size) if isinstance(t, str) else real(t, size))
    rc = main(["distill", "--teacher", str(ckpt), "--images", str(images), "-o", str(tmp_path / "clirun"),
               "--epochs", "1", "--batch", "2", "--size", "64", "--device", "cpu", "--precision", "fp32",
               "--workers", "0", "--set", "embed_dim=24", "depth=2", "num_heads=[6,6,6]",
               "decoder_heads=4", "decoder_mlp_dim=32"])
    assert rc == 0
    man = json.loads((tmp_path / "clirun" / "teacher_cache" / "manifest.json").read_text())
    from hrmedseg.models._pretrained import sha256_of
    assert man["teacher_sha256"] == sha256_of(ckpt)
    assert (tmp_path / "clirun" / "student" / "model.safetensors").is_file()


def test_explicit_heldout_images_and_time_budget(tmp_path, images):
    """--val-images replaces the fraction split (never trained on); a time budget stops the run
    mid-epoch, scores the partial epoch, and a rerun with the budget spent does not train."""
    val = make_images(tmp_path / "heldout", n=3, seed=1)
    teacher = tiny_teacher()
    cfg = cfg_for(tmp_path, val_images=[str(val)], epochs=50, time_limit_min=0.02, augment="strong")
    task = DistillTask(cfg, teacher=teacher)
    s = train(cfg, task=task, progress=False)
    assert len(task.val_paths) == 3 and len(task.train_paths) == 10
    assert not {p.resolve() for p in task.val_paths} & {p.resolve() for p in task.train_paths}
    assert s["stopped_early"] and s["epochs_done"] < 50
    state = load_state(tmp_path / "run" / "checkpoints" / "last")
    assert state["elapsed_s"] >= 0.02 * 60
    assert (tmp_path / "run" / "student" / "model.safetensors").is_file()
    rows = read_csv(tmp_path / "run" / "metrics.csv")
    assert rows[-1]["val_loss"] != ""
    step = state["global_step"]
    s2 = distill(cfg, teacher=teacher)
    assert s2["resumed"] and s2["global_step"] == step


def test_train_step_and_validation_are_the_mse_of_the_embeddings(tmp_path, images):
    """One training step's loss and one validation equal F.mse_loss of the student's and the
    teacher's embeddings computed here on the same batch (an L1 or a sum would not)."""
    import copy

    import torch.nn.functional as F

    from hrmedseg.training.engine import Engine
    from hrmedseg.training.tasks.distill import load_rgb255

    teacher = tiny_teacher()
    cfg = cfg_for(tmp_path, epochs=1)
    task = DistillTask(cfg, teacher=teacher)
    eng = Engine(cfg, task, progress=False)
    task.prepare(resumed=False)                       # the teacher cache (float16)
    batch = next(iter(task.train_batches(0, 0)))
    idx, imgs = batch
    x = torch.cat([teacher.preprocess(im[None])[0] for im in imgs])
    ref_student = copy.deepcopy(task.model).train()   # the weights before the step
    with torch.no_grad():
        want = F.mse_loss(ref_student.forward_embedding(x), teacher.image_embeddings(x))
    task.model.train()
    got = eng.train_step(batch)["total"]
    assert float(got) == pytest.approx(float(want), rel=1e-3)
    assert float(got) != pytest.approx(float(F.l1_loss(ref_student.forward_embedding(x).detach(),
                                                         teacher.image_embeddings(x))), rel=1e-2)
    # validation after that step: the mean over held-out images, teacher embeddings fresh
    after = copy.deepcopy(task.model).eval()
    xv = torch.cat([teacher.preprocess(load_rgb255(p)[None])[0] for p in task.val_paths])
    with torch.no_grad():
        want_val = F.mse_loss(after.forward_embedding(xv), teacher.image_embeddings(xv))
    assert eng._validate()["val_loss"] == pytest.approx(float(want_val), rel=1e-3)


@pytest.mark.skipif(not MOBILE_SAM.is_file(), reason="mobile_sam.pt not available")
def test_distill_cli_with_the_real_mobile_sam(tmp_path):
    """`hrmedseg distill` with MobileSAM's released checkpoint at 64²: the cache is keyed by
    the file's sha256, and the starting held-out MSE (epoch 0) is the MSE between a fresh
    student and MobileSAM's embedding computed here."""
    import torch.nn.functional as F

    from hrmedseg.cli.main import main
    from hrmedseg.models._pretrained import sha256_of
    from hrmedseg.training.tasks.distill import load_rgb255

    imgs = make_images(tmp_path / "imgs", n=4)
    student = dict(embed_dim=24, depth=2, num_heads=[6, 6, 6], decoder_heads=4, decoder_mlp_dim=32)
    run = tmp_path / "run"
    rc = main(["distill", "--teacher", str(MOBILE_SAM), "--images", str(imgs), "-o", str(run),
               "--epochs", "1", "--batch", "2", "--size", "64", "--device", "cpu",
               "--precision", "fp32", "--workers", "0", "--val-fraction", "0.25",
               "--set", *[f"{k}={json.dumps(v)}" for k, v in student.items()]])
    assert rc == 0
    man = json.loads((run / "teacher_cache" / "manifest.json").read_text())
    assert man["teacher_sha256"] == sha256_of(MOBILE_SAM) and len(man["entries"]) == 4
    rows = read_csv(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    # the same seed, the same build order as the run: teacher, then student
    torch.manual_seed(0)
    teacher = create_model("mobile_sam", pretrained=str(MOBILE_SAM), img_size=64).eval()
    fresh = create_model("hrmedseg", pretrained=False, num_classes=1, img_size=64, **student).eval()
    val = json.loads((run / "distill_config.json").read_text())["val_stems"]
    assert len(val) == 1
    x = torch.cat([teacher.preprocess(load_rgb255(Path(p))[None])[0] for p in val])
    with torch.no_grad():
        want = F.mse_loss(fresh.forward_embedding(x), teacher.image_embeddings(x))
    assert float(rows[0]["val_loss"]) == pytest.approx(float(want), rel=1e-3)
    assert (run / "student" / "model.safetensors").is_file()


def test_train_compile_wraps_the_students_embedding_pass(tmp_path, images, monkeypatch):
    """train.compile=true compiles the student's embedding pass (stubbed: no compiler run on
    the CPU suite) and the step goes through it; auto leaves a CPU run eager."""
    from hrmedseg.training.config import apply_overrides
    from hrmedseg.training.engine import Engine

    compiled = []
    monkeypatch.setattr(torch, "compile",
                        lambda m, **kw: compiled.append((type(m).__name__, m.name, kw)) or m)
    cfg = cfg_for(tmp_path, epochs=1)
    apply_overrides(cfg, {"train": {"compile": "true"}})
    task = DistillTask(load_config(None, base=cfg), teacher=tiny_teacher())
    eng = Engine(task.cfg, task, progress=False)
    assert compiled == [("ModelMethod", "forward_embedding", {"mode": "default"})]
    calls = []
    real = task.model.forward_embedding
    monkeypatch.setattr(task.model, "forward_embedding", lambda x: calls.append(x.shape) or real(x))
    task.prepare(resumed=False)
    eng.train_step(next(iter(task.train_batches(0, 0))))
    assert len(calls) == 1
    eager = DistillTask(cfg_for(tmp_path, out="run2", epochs=1), teacher=tiny_teacher())
    Engine(eager.cfg, eager, progress=False)
    assert eager.compile_mode is None and len(compiled) == 1
