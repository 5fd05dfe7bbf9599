import json
from pathlib import Path

import torch
from torch import nn

import hrmedseg
from hrmedseg.cli.main import main
from hrmedseg.profiling import count_macs, profile_model


def test_mac_counters_on_known_layers():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 16, 5))
    mc = count_macs(m, torch.randn(1, 3, 4, 4))
    conv = 16 * 8 * 3 * 9
    lin = 8 * 16 * 5
    assert mc.ops_macs == conv + lin
    assert mc.module_macs == conv + lin


def test_thop_convention_for_transposed_conv():
    m = nn.ConvTranspose2d(4, 2, 2, stride=2, bias=False)
    mc = count_macs(m, torch.randn(1, 4, 3, 3))
    assert mc.ops_macs == 9 * 4 * 2 * 4          # true cost: every input pixel × kernel
    assert mc.module_macs == 72 * 4 * 4           # thop: per output element, in_ch × k²


def test_hrmedseg_macs_exact_and_as_the_docs_quote():
    """The exact counts at 1024² (paper: 9.39 G thop MACs) equal the committed compute counts,
    and docs/benchmarks.md quotes the thop count."""
    import json
    root = Path(__file__).resolve().parents[2]
    m = hrmedseg.create_model("hrmedseg")
    mc = count_macs(m, torch.randn(1, 3, 1024, 1024))
    assert mc.module_macs == 9_363_937_280
    assert mc.ops_macs == 8_200_527_872 and mc.ops_flops == 2 * mc.ops_macs
    rows = json.loads((root / "benchmarks/results/compute_counts.json").read_text())["results"]
    row = next(r for r in rows if r["model"] == "hrmedseg" and r["size"] == 1024 and not r["kwargs"])
    assert (row["macs_thop"], row["macs_all_ops"]) == (mc.module_macs, mc.ops_macs)
    docs = (root / "docs/benchmarks.md").read_text()
    assert f"HRMedSeg at 1024², {mc.module_macs / 1e9:.2f} G" in " ".join(docs.split())


def test_profile_cpu_small(tmp_path):
    r = profile_model("hrmedseg", size=64, batch=2, device="cpu", warmup=1, iters=1,
                      embed_dim=24, depth=2, num_heads=(6, 6, 6))
    assert r.params_total == sum(r.params_by_part.values())
    assert set(r.params_by_part) == {"encoder", "neck", "decoder"}
    assert r.train_images_per_s > 0 and r.infer_images_per_s > 0
    # the profile's counts are those of one image through the same model
    m = hrmedseg.create_model("hrmedseg", embed_dim=24, depth=2, num_heads=(6, 6, 6))
    assert r.params_total == sum(p.numel() for p in m.parameters())
    mc = count_macs(m, torch.randn(1, 3, 64, 64))
    assert (r.macs_thop, r.macs_all_ops) == (mc.module_macs, mc.ops_macs)


def test_profile_runs_a_model_routed_per_modality():
    """ESP-MedSAM takes (x, modality): the profile runs one modality's pass and counts it."""
    tiny = dict(embed_dim=32, sppg_hidden=8, decoder_heads=2, decoder_mlp_dim=32,
                encoder_args=dict(embed_dims=(16, 32, 40, 80), depths=(1, 1, 2, 1),
                                  num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 14, 7)))
    r = profile_model("esp_medsam", size=64, batch=1, device="cpu", warmup=0, iters=1, **tiny)
    m = hrmedseg.create_model("esp_medsam", img_size=64, **tiny)
    mc = count_macs(m.for_modality(0), torch.randn(1, 3, 64, 64))
    assert (r.macs_thop, r.macs_all_ops) == (mc.module_macs, mc.ops_macs)
    assert r.train_images_per_s > 0 and r.infer_images_per_s > 0


def test_profile_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    rc = main(["profile", "hrmedseg_lean", "--size", "64", "--batch", "1", "--device", "cpu",
               "--iters", "1", "--warmup", "0", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data[0]["model"] == "hrmedseg_lean" and data[0]["params_total"] == 3_239_760
    assert "| hrmedseg_lean |" in capsys.readouterr().out


def test_cli_unknown_model_is_one_line(capsys):
    rc = main(["profile", "nosuchmodel", "--device", "cpu", "--no-speed", "--no-macs"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "unknown model" in err


def test_profile_cli_checkpointing_flags(tmp_path, capsys):
    """--grad-checkpointing stays a plain flag (it may precede the model name);
    --checkpoint-fraction recomputes a share of the encoder and implies it."""
    out = tmp_path / "p.json"
    common = ["--size", "64", "--batch", "1", "--device", "cpu", "--no-speed", "--no-macs"]
    assert main(["profile", "--grad-checkpointing", "hrmedseg_lean", *common,
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())[0]
    assert r["grad_checkpointing"] is True and r["checkpoint_fraction"] == 1.0
    assert main(["profile", "hrmedseg_lean", "--checkpoint-fraction", "0.5", *common,
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())[0]
    assert r["grad_checkpointing"] is True and r["checkpoint_fraction"] == 0.5
    capsys.readouterr()
    assert main(["profile", "qtseg", "--checkpoint-fraction", "0.5", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "qtseg recomputes all of its blocks or none" in err
