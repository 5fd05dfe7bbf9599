"""torch.compile(HRMedSeg) against eager on the CPU, outputs and parameter gradients, in fp32
and under bf16 autocast with the speed switches (the defaults), for a small HRMedSeg at 64².

The slow test tests/models/test_hrmedseg_compile.py asserts on :func:`measure`; this script
writes the numbers with their provenance:

  python benchmarks/compile_parity_cpu.py -o benchmarks/results/compile_parity_cpu.json
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import platform
import sys
from pathlib import Path

import torch

try:
    import hrmedseg
except ImportError:  # a checkout without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import hrmedseg
from hrmedseg.atomic import write_json_atomic
from hrmedseg.provenance import source_commit

TINY = dict(embed_dim=24, depth=2, num_heads=(6, 6, 6), neck_dim=32, decoder_heads=4,
            decoder_mlp_dim=32, img_size=64, drop_path_rate=0.0)


def _out_and_grads(model: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, amp: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(x)
    (out.float() * w).mean().backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    return out.detach().float(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def measure(amp: bool) -> dict[str, float]:
    """‖a−b‖/‖b‖ of outputs and gradients: compiled vs eager (same precision), and, in bf16,
    each against eager fp32 (the yardstick for bf16 rounding)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = hrmedseg.create_model("hrmedseg", **TINY).train()  # switches on (the defaults)
    x = torch.randn(2, 3, 64, 64)
    w = torch.randn(2, 1, 64, 64)
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        compiled(x)  # one eager call first, as the recorded runs did
    out_e, g_e = _out_and_grads(eager, x, w, amp)
    out_c, g_c = _out_and_grads(torch.compile(compiled), x, w, amp)
    res = {"compiled_vs_eager_out": _rel(out_c, out_e), "compiled_vs_eager_grad": _rel(g_c, g_e)}
    if amp:
        out_32, g_32 = _out_and_grads(copy.deepcopy(model), x, w, False)
        res.update(eager_vs_fp32_out=_rel(out_e, out_32), eager_vs_fp32_grad=_rel(g_e, g_32),
                   compiled_vs_fp32_grad=_rel(g_c, g_32))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    result = {"script": "benchmarks/compile_parity_cpu.py", "commit": source_commit(),
              "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "device": f"CPU {platform.machine()} ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "model": {"name": "hrmedseg", **TINY},
              "fp32": measure(False), "bf16": measure(True)}
    write_json_atomic(args.output, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
