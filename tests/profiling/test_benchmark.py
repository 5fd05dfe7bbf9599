"""hrmedseg benchmark on CPU with tiny models: JSON/Markdown/PNG, skipped rows, OOM fallback."""
import json

import torch

from hrmedseg.cli.main import main
from hrmedseg.profiling import benchmark as bm

TINY = {"hrmedseg_lean": {"embed_dim": 24, "depth": 2, "num_heads": [6, 6, 6], "neck_dim": 32,
                          "decoder_heads": 4, "decoder_mlp_dim": 32},
        "unet_small": {"features": [8, 16, 32, 64, 128, 8]}}


def test_benchmark_cli_writes_three_files(tmp_path, capsys, monkeypatch):
    # a model that cannot be built (as smp missing would) is a skipped row, not a failure
    from hrmedseg.models import baselines

    def no_smp(name):
        raise baselines.MissingDependencyError(f"{name} needs segmentation-models-pytorch: pip install x")
    monkeypatch.setattr(baselines, "_import_smp", no_smp)
    dice = tmp_path / "dice.json"
    dice.write_text(json.dumps({"hrmedseg_lean": 88.0, "unet_small": 85.5}))
    out = tmp_path / "bench"
    rc = main(["benchmark", "--models", "hrmedseg_lean,unet_small,unet_resnet34", "--size", "32",
               "--batch", "2", "--device", "cpu", "--dtypes", "fp32", "--warmup", "0", "--iters", "1",
               "-o", str(out), "--dice", str(dice), "--model-kwargs", json.dumps(TINY)])
    assert rc == 0
    data = json.loads((out / "benchmark.json").read_text())
    for key in ("device", "date", "commit", "command"):
        assert key in data
    assert data["device"] == "cpu" and "benchmark" in data["command"] and data["dice"]["unet_small"] == 85.5
    rows = {r["model"]: r for r in data["results"]}
    assert list(rows) == ["hrmedseg_lean", "unet_small", "unet_resnet34"]
    for name in ("hrmedseg_lean", "unet_small"):
        r = rows[name]
        assert r["status"] == "ok" and r["batch_used"] == 2 and r["params_total"] > 0
        assert r["macs_thop"] > 0 and r["macs_all_ops"] > 0
        assert r["train_images_per_s"] > 0 and r["infer_images_per_s"] > 0
        if r["peak_train_mem_per_image_gb"] is not None:   # CPU estimate (MemTracker)
            assert r["memory_source"] == bm.MEM_CPU_ESTIMATE
            # at least weights + grads + Adam state (4 x fp32 params) per step, over the batch
            assert r["peak_train_mem_bytes"] >= 4 * 4 * r["params_total"]
    assert rows["unet_small"]["params_total"] < 1e6
    sk = rows["unet_resnet34"]
    assert sk["status"] == "skipped" and "segmentation-models-pytorch" in sk["reason"]
    md = (out / "benchmark.md").read_text()
    assert "| model | dtype | batch |" in md and "| unet_small | fp32 | 2 |" in md
    assert "skipped: MissingDependencyError" in md
    png = (out / "benchmark.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "| hrmedseg_lean |" in capsys.readouterr().out


def test_oom_falls_back_to_half_batch(monkeypatch):
    calls = []
    real = bm.profile_model

    def flaky(name, **kw):
        calls.append(kw["batch"])
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(name, **kw)
    monkeypatch.setattr(bm, "profile_model", flaky)
    rows = bm.run_benchmark(["unet_small"], size=32, batch=4, device="cpu", dtypes=["fp32"],
                            warmup=0, iters=1, macs=False, cpu_memory=False,
                            model_kwargs=TINY, log=lambda s: None)
    assert calls == [4, 2]
    (r,) = rows
    assert r.status == "ok" and r.batch_asked == 4 and r.batch_used == 2 and r.oom_retries == 1
    assert "out of memory at batch 4" in r.reason and r.train_images_per_s > 0
    md = bm.format_markdown(rows)
    assert "| 2 (asked 4) |" in md


def test_oom_at_every_batch_and_other_errors_do_not_stop_the_run(monkeypatch):
    real = bm.profile_model

    def fake(name, **kw):
        if name == "unet_small":
            raise RuntimeError("CUDA error: out of memory")
        if kw["dtype"] == "bf16":
            raise ValueError("no bf16 here")
        return real(name, **kw)
    monkeypatch.setattr(bm, "profile_model", fake)
    rows = bm.run_benchmark(["unet_small", "hrmedseg_lean"], size=32, batch=4, device="cpu",
                            dtypes=["fp32", "bf16"], warmup=0, iters=1, macs=False,
                            cpu_memory=False, model_kwargs=TINY, log=lambda s: None)
    st = {(r.model, r.dtype): r for r in rows}
    assert st[("unet_small", "fp32")].status == "oom" and st[("unet_small", "fp32")].oom_retries == 2
    assert "down to batch 1" in st[("unet_small", "fp32")].reason
    assert st[("hrmedseg_lean", "fp32")].status == "ok"
    assert st[("hrmedseg_lean", "bf16")].status == "error" and "no bf16" in st[("hrmedseg_lean", "bf16")].reason


def test_is_oom():
    assert bm.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert bm.is_oom(RuntimeError("CUDA out of memory. Tried to allocate"))
    assert not bm.is_oom(ValueError("out of memory"))  # only runtime errors
    # seen on the H100 for MONAI's U-Net at 1024² x 16: a smaller batch cures it too
    assert bm.is_oom(RuntimeError("input tensor must fit into 32-bit index math"))
    assert not bm.is_oom(RuntimeError("shape mismatch"))


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["benchmark", "--models", "unet,nosuch", "--device", "cpu", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nosuch" in err
    assert main(["benchmark", "--models", "unet", "--device", "cpu", "--dtypes", "fp8",
                 "-o", str(tmp_path)]) == 2
    assert "--dtypes" in capsys.readouterr().err
