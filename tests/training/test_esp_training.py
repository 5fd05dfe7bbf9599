"""ESP-MedSAM multi-dataset training with MMDKD: single-modality batches, the two MMDKD terms
against a hand computation (values, weights, decoupled gradients), loss decrease, exact
resume, and the ``train-esp`` command end to end."""
import argparse
import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from _trainutils import MOBILE_SAM, make_dataset
from hrmedseg.models._hub import from_pretrained, load_safetensors
from hrmedseg.models._registry import create_model
from hrmedseg.training.checkpoint import load_state
from hrmedseg.training.config import apply_overrides, load_config
from hrmedseg.training.engine import Engine
from hrmedseg.training.run import train
from hrmedseg.training.tasks import ESPTask
from hrmedseg.training.tasks.esp import mmdkd_mse

S = 32   # input side: 2×2 embedding of width 16, one SPPG patch
TINY = dict(embed_dim=16, sppg_hidden=8, decoder_heads=2, decoder_mlp_dim=16, decoder_depth=1,
            encoder_args=dict(embed_dims=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                              num_heads=[1, 1, 1, 2], window_sizes=[2, 2, 2, 2]))


class TinyTeacher(nn.Module):
    """(B, 3, S, S) → (B, 16, S/16, S/16), random and frozen by the trainer."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 16, 16, stride=16)

    def forward(self, x):
        return torch.tanh(self.conv(x))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def data(tmp_path):
    a = make_dataset(tmp_path / "polyp", n=6, size=40, seed=0)      # 80/10/10 → 4 / 0 / 2
    b = make_dataset(tmp_path / "nuclei", n=6, size=40, seed=1)
    stems = sorted(p.stem for p in (b / "images").glob("*.png"))
    (b / "splits.json").write_text(json.dumps(
        {"train": stems[:3], "val": stems[3:5], "test": stems[5:]}))
    nat = tmp_path / "natural"
    make_dataset(nat, n=3, size=48, seed=2)
    return a, b, nat / "images"


def config(tmp_path, data, out="run", epochs=1, batch_size=2, lr=2e-3, size=S, augment="none",
           max_steps=0, model_overrides=TINY, **esp):
    """The esp_medsam recipe at a tiny size (CPU, fp32), as `hrmedseg train-esp` would set it."""
    a, b, _ = data
    cfg = load_config("esp_medsam")
    apply_overrides(cfg, {
        "model": {"overrides": model_overrides},
        "data": {"size": size, "augment": augment, "workers": 0},
        "optim": {"lr": lr},
        "train": {"out_dir": str(tmp_path / out), "epochs": epochs, "batch_size": batch_size,
                  "device": "cpu", "precision": "fp32", "max_steps": max_steps,
                  "eval_test": False},
        "esp": {"datasets": [{"root": str(a), "modality": 0}, {"root": str(b), "modality": 1}],
                "eval_hd": False, **esp}})
    return load_config(None, base=cfg)


def ESPTrainer(cfg, **kw):
    """The engine set up on the ESP task; returns the task (its engine is ``task.engine``)."""
    return Engine(cfg, ESPTask(cfg, **kw), progress=False).task


def train_esp(cfg, teacher=None, progress=False):
    return train(cfg, task=ESPTask(cfg, teacher=teacher), progress=progress)


def test_batches_hold_one_modality_and_cover_each_image_once(tmp_path, data):
    t = ESPTrainer(config(tmp_path, data), teacher=TinyTeacher())
    assert [len(p.train) for p in t.parts] == [4, 3]          # random split / splits.json
    assert [len(p.val) for p in t.parts] == [0, 2]
    plan = t.epoch_plan(0)
    assert len(plan) == t.batches_per_epoch() == 2 + 2
    for k, part in enumerate(t.parts):
        idx = sorted(i for kk, b in plan if kk == k for i in b)
        assert idx == list(range(len(part.train)))            # every image once
    assert t.epoch_plan(0) == plan                             # seeded
    assert {k for k, _ in plan} == {0, 1}
    # eq. 1 sums over modalities: a modality's term is scaled by B / B_n
    assert t.modality_scale == {0: 2.0, 1: 2.0}
    # what the loader yields: each batch from one dataset, routed by its modality id
    train_stems = [{s.stem for s in p.train} for p in t.parts]
    seen = []
    for batch in t.train_batches(0, 0):
        k = int(batch["dataset"])
        assert set(batch["stem"]) <= train_stems[k]
        seen.append(t.inputs(batch)[2])
    assert sorted(seen) == [0, 0, 1, 1]
    assert t.train_batches(0, 3).dataset.__len__() == 1             # resume mid-epoch skips 3


def test_mmdkd_terms_match_hand_computation(tmp_path, data):
    assert float(mmdkd_mse(torch.tensor([[1., 2.], [3., 4.]]), torch.zeros(2, 2))) == 7.5
    nat_t, med_t = TinyTeacher(1), TinyTeacher(2)
    cfg = config(tmp_path, data, w_seg=0.0, w_universal=0.7, w_modality=0.3,
                 natural_images=[str(data[2])])
    t = ESPTrainer(cfg, teacher=nat_t, medical_teacher=med_t)
    m = t.model.eval()
    batch = next(iter(t.train_batches(0, 0)))
    x, y, n, x_nat = t.inputs(batch)
    assert x_nat.shape == (2, 3, S, S)
    # the student path used for training is forward_with_aux plus its embedding
    logits, patches, emb = t.forward_student(x, n)
    ref_logits, ref_patches = m.forward_with_aux(x, n)
    assert torch.allclose(logits, ref_logits) and torch.allclose(patches, ref_patches)

    terms = t.step_losses(x, y, n, x_nat)
    with torch.no_grad():
        uni = ((m.image_embeddings(x_nat, None) - nat_t(x_nat)) ** 2).sum() / emb.numel()
        mod = ((m.image_embeddings(x, n) - med_t(x)) ** 2).sum() / emb.numel()
    assert torch.allclose(terms["universal"], uni, rtol=1e-5)
    assert torch.allclose(terms["modality"], mod, rtol=1e-5)
    s = t.modality_scale[n]
    assert float(terms["scale"]) == s == 2.0
    assert torch.allclose(terms["total"], 0.7 * uni + 0.3 * s * mod, rtol=1e-5)
    assert all(not p.requires_grad for p in nat_t.parameters())        # frozen teachers

    # decoupled gradients: universal → shared encoder only, modality → bag n only
    shared_p = m.image_encoder.patch_embed.seq[0].conv.weight
    bag_p = m.controller.bags[n].k_tokens[0]
    g_uni = torch.autograd.grad(0.7 * terms["universal"], shared_p, retain_graph=True)[0]
    g_mod = torch.autograd.grad(0.3 * s * terms["modality"], bag_p, retain_graph=True)[0]
    t.engine.opt.zero_grad(set_to_none=True)
    t.backward(terms, t.engine.scaler)
    assert torch.allclose(shared_p.grad, g_uni, atol=1e-7)
    assert torch.allclose(bag_p.grad, g_mod, atol=1e-7)
    assert bag_p.grad.abs().sum() > 0
    other = 1 - n
    assert all(p.grad is None for p in m.controller.bags[other].parameters())

    # coupled: the modality term reaches the shared encoder as well
    t.e.decoupled = False
    t.engine.opt.zero_grad(set_to_none=True)
    terms = t.step_losses(x, y, n, x_nat)
    g_both = torch.autograd.grad(terms["total"], shared_p, retain_graph=True)[0]
    t.backward(terms, t.engine.scaler)
    assert torch.allclose(shared_p.grad, g_both, atol=1e-7)
    assert not torch.allclose(g_both, g_uni)


def test_loss_decreases_on_a_fixed_batch(tmp_path, data):
    t = ESPTrainer(config(tmp_path, data, lr=3e-3), teacher=TinyTeacher())
    batch = next(iter(t.train_batches(0, 0)))
    t.model.train()
    losses = [{k: float(v) for k, v in t.engine.train_step(batch).items()} for _ in range(6)]
    total = [v["total"] for v in losses]
    assert total[-1] < 0.8 * total[0], total
    assert losses[-1]["modality"] < losses[0]["modality"]
    assert losses[-1]["universal"] < losses[0]["universal"]


def test_resume_after_interruption_equals_uninterrupted(tmp_path, data):
    kw = dict(epochs=2, batch_size=4, augment="paper", natural_images=[str(data[2])])
    full = train_esp(config(tmp_path, data, "full", **kw), teacher=TinyTeacher(), progress=False)
    assert full["global_step"] == 4 and not full["stopped_early"]
    cut = train_esp(config(tmp_path, data, "cut", max_steps=3, **kw), teacher=TinyTeacher(),
                    progress=False)
    assert cut["stopped_early"] and cut["global_step"] == 3 and "model" not in cut
    st = load_state(tmp_path / "cut" / "checkpoints" / "last")
    assert (st["epoch"], st["batch_in_epoch"]) == (1, 1)
    rest = train_esp(config(tmp_path, data, "cut", **kw), teacher=TinyTeacher(), progress=False)
    assert rest["resumed"] and rest["global_step"] == 4
    a = load_safetensors(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors")
    b = load_safetensors(tmp_path / "cut" / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # a different teacher is refused rather than mixed in
    with pytest.raises(ValueError, match="resume"):
        train_esp(config(tmp_path, data, "cut", **{**kw, "epochs": 3}), teacher=TinyTeacher(5))


def test_cli_end_to_end(tmp_path, data):
    from hrmedseg.cli import train_esp as verb

    a, b, _ = data
    torch.manual_seed(0)
    sam = create_model("mobile_sam", img_size=S, prompt_embed_dim=16, decoder_heads=2,
                       decoder_mlp_dim=16, iou_head_hidden_dim=8, mask_in_chans=4,
                       encoder_args=dict(TINY["encoder_args"], head_classes=0))
    sam.save_pretrained(tmp_path / "sam_teacher")
    med = create_model("esp_medsam", num_modalities=2, img_size=S, **TINY)
    med.save_pretrained(tmp_path / "med_teacher")
    parser = argparse.ArgumentParser()
    verb.add_parser(parser.add_subparsers(dest="verb"))
    enc = json.dumps(TINY["encoder_args"])
    args = parser.parse_args([
        "train-esp", "--data", f"polyp={a}:0", f"nuclei={b}:1", "-o", str(tmp_path / "cli"),
        "--teacher", str(tmp_path / "sam_teacher"), "--medical-teacher", str(tmp_path / "med_teacher"),
        "--epochs", "1", "--batch", "2", "--size", str(S), "--precision", "fp32", "--device", "cpu",
        "--workers", "0", "--augment", "none", "--no-hd", "--set", "embed_dim=16", "sppg_hidden=8",
        "decoder_heads=2", "decoder_mlp_dim=16", "decoder_depth=1", f"encoder_args={enc}"])
    assert verb.run(args) == 0
    run = tmp_path / "cli"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == 1 and summary["global_step"] == 4
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1
    for key in ("train_loss", "seg_loss", "universal_mse", "modality_mse", "val_dice",
                "val_dice/nuclei"):
        assert np.isfinite(float(rows[0][key])), key
    assert rows[0]["val_dice/polyp"] == ""                    # no val split there
    assert (run / "curve.png").stat().st_size > 0
    cfg = json.loads((run / "esp_config.json").read_text())["resolved"]
    assert json.loads((run / "env.json").read_text())["task"] == "esp"
    assert cfg["modality_target"] == "medical_teacher" and cfg["universal_input"] == "medical batch"
    model = from_pretrained(run / "model")
    meta = json.loads((run / "model" / "config.json").read_text())["metadata"]
    assert meta["modalities"] == {"polyp": 0, "nuclei": 1} and model.num_modalities == 2
    # prompt-free test evaluation, per modality, on each test split
    for name, mod, n in (("polyp", 0, 2), ("nuclei", 1, 1)):
        t = summary["test"][name]
        assert t["modality"] == mod and t["n_images"] == n
        assert 0.0 <= t["original_resolution"]["dice"] <= 1.0
        assert (run / "test" / name / "per_image.csv").is_file()
    # bad dataset specs are one-line user errors
    from hrmedseg.cli.main import UserError
    with pytest.raises(UserError):
        verb.parse_dataset(f"{a}")
    assert verb.parse_dataset(f"{a}:3") == {"root": str(a), "modality": 3}


@pytest.mark.slow
@pytest.mark.skipif(not MOBILE_SAM.is_file(), reason="mobile_sam.pt not available")
def test_mobile_sam_teacher_and_init(tmp_path, data):
    """MobileSAM as f_ViT-SAM and as the student's initialisation: the bare student encoder is
    the teacher, so the universal term starts at 0 (same tensor in, same weights); the
    controller's random k/v tokens make the modality term small but not 0. One real step runs."""
    cfg = config(tmp_path, data, model_overrides={}, size=64, teacher=str(MOBILE_SAM),
                 init=str(MOBILE_SAM), max_steps=1, epochs=1)
    t = ESPTrainer(cfg)
    assert len(t.model.pretrained_report.loaded) > 400
    batch = next(iter(t.train_batches(0, 0)))
    x, y, n, _ = t.inputs(batch)
    t.model.eval()                      # BatchNorm on running statistics, like the teacher
    with torch.no_grad():
        terms = t.step_losses(x, y, n)
    assert float(terms["universal"]) < 1e-8
    assert 0 < float(terms["modality"]) < 0.1 * float((t.teacher(x) ** 2).mean())
    s = t.engine.fit()
    assert s.global_step == 1 and s.stopped_early


def test_train_esp_flags_are_keys_of_train_task_esp(tmp_path, data, capsys):
    """`hrmedseg train-esp FLAGS` is `hrmedseg train --task esp KEYS`: the same config, and the
    general verb trains it."""
    from hrmedseg.cli import train_esp as verb
    from hrmedseg.cli.main import build_parser, main
    a, b, _ = data
    args = build_parser().parse_args([
        "train-esp", "--data", f"polyp={a}:0", f"nuclei={b}:1", "-o", str(tmp_path / "cli"),
        "--epochs", "1", "--batch", "2", "--size", str(S), "--precision", "fp32", "--device", "cpu",
        "--workers", "0", "--augment", "none", "--lr-gamma", "0.9", "--w-modality", "0.5",
        "--coupled", "--no-test", "--grad-checkpointing", "--compile", "false"])
    flags = verb.to_config(args)
    keys = ["--task", "esp", f"esp.datasets=[{{root: {a}, modality: 0, name: polyp}}, "
            f"{{root: {b}, modality: 1, name: nuclei}}]", f"train.out_dir={tmp_path / 'cli'}",
            "train.epochs=1", "train.batch_size=2", f"data.size={S}", "train.precision=fp32",
            "train.device=cpu", "data.workers=0", "data.augment=none", "schedule.gamma=0.9",
            "esp.w_modality=0.5", "esp.decoupled=false", "train.eval_test=false",
            "model.grad_checkpointing=true", "train.compile=false",
            f"model.overrides={json.dumps(TINY)}"]
    from hrmedseg.training.config import load_config
    general = load_config("esp_medsam", [k for k in keys[2:]])
    flags.model.overrides = dict(TINY)
    assert flags.to_dict() == general.to_dict()
    assert main(["train", *keys]) == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["task"] == "esp" and summary["epochs_done"] == 1 and summary["global_step"] == 4


def test_train_compile_wraps_the_student_pass_and_checkpointing_reaches_the_model(
        tmp_path, data, monkeypatch):
    """train.compile=true compiles the student's pass (stubbed: no compiler run on the CPU
    suite), the step goes through it, and model.grad_checkpointing reaches ESP-MedSAM."""
    compiled = []

    def fake_compile(module, **kw):
        compiled.append((type(module).__name__, module.name, kw))
        return module
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = config(tmp_path, data)
    apply_overrides(cfg, {"train": {"compile": "true"}, "model": {"grad_checkpointing": True}})
    t = ESPTrainer(load_config(None, base=cfg), teacher=TinyTeacher())
    assert compiled == [("ModelMethod", "forward_parts", {"mode": "default"})]
    assert t.compile_mode == "default"
    assert t.grad_checkpointing and t.model.grad_checkpointing
    calls = []
    real = t.model.forward_parts
    monkeypatch.setattr(t.model, "forward_parts", lambda *a: calls.append(a[1]) or real(*a))
    t.engine.train_step(next(iter(t.train_batches(0, 0))))
    assert len(calls) == 1
    # auto (the default) leaves ESP-MedSAM eager: it has no compile parity record
    t2 = ESPTrainer(config(tmp_path, data, out="run2"), teacher=TinyTeacher())
    assert t2.compile_mode is None and len(compiled) == 1


def test_channels_last_reaches_the_model_and_the_batches(tmp_path, data):
    cfg = config(tmp_path, data)
    apply_overrides(cfg, {"train": {"channels_last": True}})
    t = ESPTrainer(load_config(None, base=cfg), teacher=TinyTeacher())
    conv = t.model.image_encoder.patch_embed.seq[0].conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = next(iter(t.train_batches(0, 0)))
    x = t.inputs(batch)[0]
    assert x.is_contiguous(memory_format=torch.channels_last)
    terms = t.engine.train_step(batch)
    assert torch.isfinite(terms["total"])
