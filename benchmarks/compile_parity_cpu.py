"""torch.compile against eager on the CPU, outputs and parameter gradients.

* HRMedSeg (small, 64²): fp32 and bf16 autocast with the speed switches (the defaults),
  relative errors (:func:`measure`; asserted by the slow tests/models/test_hrmedseg_compile.py).
* Every model family (HRMedSeg, HER-Seg, QTSeg, ESP-MedSAM, a MONAI U-Net baseline), tiny
  configs at 64², fp32: max |compiled − eager| of the output and of the parameter gradients,
  and the graph breaks dynamo reports for the training forward (:func:`measure_family`).

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
from typing import Any

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
# One tiny configuration per family; ESP-MedSAM runs with modality 0 (its forward takes one).
FAMILIES: dict[str, tuple[str, dict]] = {
    "hrmedseg": ("hrmedseg", TINY),
    "herseg": ("herseg", TINY),
    "qtseg": ("qtseg", {"img_size": 64}),
    "esp-medsam": ("esp_medsam_single", dict(
        img_size=64, embed_dim=32, sppg_hidden=8, decoder_heads=2, decoder_mlp_dim=32,
        encoder_args=dict(embed_dims=(16, 32, 40, 80), depths=(1, 1, 2, 1),
                          num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 14, 7)))),
    "baseline": ("unet_small", {"features": (8, 16, 16, 32, 32, 8)}),
}
# fp32 compiled vs eager differ by reassociation only.
FP32_TOL = 1e-4


class _WithModality(torch.nn.Module):
    """``model(x)`` for a model whose forward also takes a modality id (ESP-MedSAM)."""

    def __init__(self, model: torch.nn.Module, modality: int = 0) -> None:
        super().__init__()
        self.model, self.modality = model, modality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.modality)


def build_family(family: str) -> torch.nn.Module:
    name, kwargs = FAMILIES[family]
    torch.manual_seed(0)
    model = hrmedseg.create_model(name, **kwargs).train()
    return _WithModality(model) if family == "esp-medsam" else model


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


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def graph_breaks(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Dynamo's count of graphs and graph breaks for the training forward (traced only)."""
    torch._dynamo.reset()
    ex = torch._dynamo.explain(copy.deepcopy(model))(x)
    return {"graphs": ex.graph_count, "graph_breaks": ex.graph_break_count,
            "break_reasons": sorted({str(r.reason).splitlines()[0][:200] for r in ex.break_reasons})}


def measure_family(family: str) -> dict[str, Any]:
    """fp32 compiled vs eager for one family's tiny model: max |Δ| of output and gradients."""
    model = build_family(family)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    res: dict[str, Any] = graph_breaks(model, x)
    torch._dynamo.reset()
    w = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    eager, compiled = copy.deepcopy(model), copy.deepcopy(model)
    out_e, g_e = _out_and_grads(eager, x, w, False)
    try:
        out_c, g_c = _out_and_grads(torch.compile(compiled), x, w, False)
    except Exception as exc:  # a compiler failure is this family's result, not the run's end
        res.update(compile_error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}",
                   parity_passed=False)
        return res
    res.update(out_max_abs_diff=_max_abs(out_c, out_e), grad_max_abs_diff=_max_abs(g_c, g_e),
               out_max_abs=float(out_e.abs().max()), grad_max_abs=float(g_e.abs().max()),
               params=sum(p.numel() for p in model.parameters()))
    # Numerical parity; a graph break is reported beside it (it costs speed, not results).
    res["parity_passed"] = (res["out_max_abs_diff"] < FP32_TOL
                            and res["grad_max_abs_diff"] < FP32_TOL)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES),
                    help="model families of the fp32 per-family check (default: all)")
    args = ap.parse_args(argv)
    result = {"script": "benchmarks/compile_parity_cpu.py", "commit": source_commit(),
              "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "device": f"CPU {platform.machine()} ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "model": {"name": "hrmedseg", **TINY},
              "fp32": measure(False), "bf16": measure(True),
              "families_fp32_tolerance": FP32_TOL,
              "families": {f: {"model": FAMILIES[f][0], **measure_family(f)}
                           for f in args.families}}
    write_json_atomic(args.output, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
