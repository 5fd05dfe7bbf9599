"""Parameters and compute of the paper models on the CPU, in the conventions the papers use.

Writes benchmarks/results/compute_counts.json. MACs of one forward at batch 1:
macs_thop = module hooks as thop (papers' #FLOPs for HRMedSeg/ESP-MedSAM), macs_all_ops = PyTorch
FlopCounterMode, activations = fvcore's activation count (QTSeg's convention adds it to MACs).
Usage: python benchmarks/count_compute.py
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path

import torch

import hrmedseg
from hrmedseg.atomic import atomic_write_bytes
from hrmedseg.profiling.activations import count_activations
from hrmedseg.profiling.macs import count_macs

CASES = [  # name, kwargs, input size, paper params (M), paper compute (G) and its convention
    ("hrmedseg", {}, 1024, 3.53, 9.39, "thop MACs"),
    ("herseg", {"num_classes": 2}, 1024, 3.67, 9.39, "thop MACs"),
    ("qtseg", {"num_classes": 2}, 512, 9.21, 2.60, "fvcore MACs + activations"),
    ("esp_medsam", {}, 1024, 28.46, 55.86, "thop MACs"),
]


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name, kw, size, p_params, p_compute, conv in CASES:
        m = hrmedseg.create_model(name, **kw).eval()
        x = torch.randn(1, 3, size, size)
        mc = count_macs(m, x) if name != "esp_medsam" else None
        if name == "esp_medsam":  # forward needs a modality id
            class Wrap(torch.nn.Module):
                def __init__(self, inner):
                    super().__init__()
                    self.inner = inner

                def forward(self, t):
                    return self.inner(t, 0)
            mc = count_macs(Wrap(m), x)
            acts = count_activations(Wrap(m), x)
        else:
            acts = count_activations(m, x)
        row = {"model": name, "kwargs": kw, "size": size,
               "params": sum(p.numel() for p in m.parameters()),
               "macs_thop": mc.module_macs, "macs_all_ops": mc.ops_macs, "activations": acts,
               "macs_all_ops_plus_activations": mc.ops_macs + acts,
               "paper_params_M": p_params, "paper_compute_G": p_compute, "paper_convention": conv}
        rows.append(row)
        print(json.dumps(row))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    out = {"device": f"cpu ({platform.machine()}, 2 threads)", "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": commit, "command": "python benchmarks/count_compute.py", "results": rows}
    path = Path(__file__).parent / "results" / "compute_counts.json"
    atomic_write_bytes(path, (json.dumps(out, indent=2) + "\n").encode())
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
