"""Parameters and compute of the paper models on the CPU, in the conventions the papers use.

MACs of one forward at batch 1:
macs_thop = module hooks as thop (papers' #FLOPs for HRMedSeg/ESP-MedSAM), macs_all_ops = PyTorch
FlopCounterMode, activations = fvcore's activation count (QTSeg's convention adds it to MACs).

  python benchmarks/count_compute.py -o compute_counts.json
  python benchmarks/count_compute.py --models hrmedseg --size 64 -o /tmp/counts.json   # quick
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

import hrmedseg
from hrmedseg.atomic import write_json_atomic
from hrmedseg.profiling.activations import count_activations
from hrmedseg.profiling.macs import count_macs
from hrmedseg.provenance import source_commit

CASES = [  # name, kwargs, input size, paper params (M), paper compute (G) and its convention
    ("hrmedseg", {}, 1024, 3.53, 9.39, "thop MACs"),
    ("herseg", {"num_classes": 2}, 1024, 3.67, 9.39, "thop MACs"),
    ("qtseg", {"num_classes": 2}, 512, 9.21, 2.60, "fvcore MACs + activations"),
    ("esp_medsam", {}, 1024, 28.46, 55.86, "thop MACs"),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True, help="result JSON file")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(c[0] for c in CASES))
    ap.add_argument("--size", type=int, help="input side for every model (default: the paper's)")
    args = ap.parse_args(argv)
    wanted = set(args.models.split(",")) if args.models else {c[0] for c in CASES}
    torch.set_num_threads(2)
    rows = []
    for name, kw, size, p_params, p_compute, conv in CASES:
        if name not in wanted:
            continue
        size = args.size or size
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
    out = {"device": f"cpu ({platform.machine()}, 2 threads)", "torch": torch.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": source_commit(), "command": "python benchmarks/count_compute.py "
           + " ".join(argv if argv is not None else sys.argv[1:]), "results": rows}
    write_json_atomic(args.output, out)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
