"""DDP on CPU (gloo, 2 processes): same weights as one process with the same global batch."""
import os
import shutil
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from hrmedseg.cli.main import main

from _trainutils import make_dataset, tiny_args

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
