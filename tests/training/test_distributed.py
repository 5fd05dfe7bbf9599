"""DDP on CPU (gloo, 2 processes): same weights as one process with the same global batch."""
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from hrmedseg.cli.main import main

from _trainutils import MOBILE_SAM, make_dataset, tiny_args

EXTRA = ["train.eval_test=false", "train.device=cpu", "loss.kwargs={reduction: image}",
         "model.overrides={embed_dim: 24, depth: 2, num_heads: [6, 6, 6], neck_dim: 32, "
         "decoder_heads: 4, decoder_mlp_dim: 32, drop_path_rate: 0.0, num_mbconv: 0}"]
# num_mbconv: 0 removes HRMedSeg's BatchNorm layers: on CPU they cannot be synchronised
# (SyncBatchNorm needs CUDA), so per-process statistics would differ from one process.


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not found")
def test_ddp_two_processes_match_single_process(tmp_path):
    data = make_dataset(tmp_path / "ds", n=24)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(tiny_args(data, single, epochs=2, extra=EXTRA)) == 0
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "hrmedseg",
           *tiny_args(data, ddp, epochs=2, extra=EXTRA)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(single / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(ddp / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, worst
    import json
    env_json = json.loads((ddp / "env.json").read_text())
    assert env_json["world_size"] == 2 and env_json["global_batch"] == 4 and env_json["per_process_batch"] == 2
    # only rank 0 wrote the run files: one metrics row per epoch
    assert len((ddp / "metrics.csv").read_text().strip().splitlines()) == 3


@pytest.mark.slow
@pytest.mark.skipif(not MOBILE_SAM.is_file(), reason="mobile_sam.pt not available")
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not found")
def test_distill_ddp_two_processes_match_single_process(tmp_path):
    """Distillation under torchrun (gloo): each rank embeds its half of the global batch and the
    engine averages the gradients; the student ends as one process would train it."""
    from PIL import Image
    import numpy as np
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    # SGD: the gradients themselves are compared (Adam would magnify float noise in ~0 grads);
    # no BatchNorm (num_mbconv 0) and no drop path: per-rank statistics and draws would differ;
    # 5 training images in batches of 2: the last global batch leaves rank 1 empty.
    args = ["train", "--task", "distill", f"distill.teacher={MOBILE_SAM}",
            f"distill.images=[{tmp_path / 'imgs'}]", "distill.val_fraction=0.2", "train.epochs=2",
            "train.batch_size=2", "data.size=64", "train.device=cpu", "train.precision=fp32",
            "data.workers=0", "optim.name=sgd", "optim.momentum=0", "optim.lr=0.05",
            "model.overrides={embed_dim: 24, depth: 2, num_heads: [6, 6, 6], decoder_heads: 4, "
            "decoder_mlp_dim: 32, num_mbconv: 0, drop_path_rate: 0.0}"]
    assert main([*args, f"train.out_dir={tmp_path / 'single'}"]) == 0
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "hrmedseg", *args,
                          f"train.out_dir={tmp_path / 'ddp'}"], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a = load_file(str(tmp_path / "single" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "checkpoints" / "last" / "model.safetensors"))
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, worst
    import csv
    rows = [list(csv.DictReader(open(tmp_path / d / "metrics.csv"))) for d in ("single", "ddp")]
    for r1, r2 in zip(*rows):
        for key in ("train_loss", "val_loss"):
            if r1[key]:
                assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-4), key
