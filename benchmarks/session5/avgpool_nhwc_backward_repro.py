"""Minimal reproducer: PyTorch's CUDA avg_pool2d backward for channels-last inputs vs the CPU.

The two checks of results/avgpool_nhwc_backward_h200/inline_checks.md (typed there as
``python3 -c``) as one script, so a later session can see whether another torch build or card
still has the bug. Needs CUDA. Prints one line per case and writes JSON to argv[1] if given.
Metric: max |cuda − cpu| / max |cpu| of the input gradient (it depends only on the incoming
gradient, the same on both devices). Found on torch 2.11.0+cu130, NVIDIA H200: ~1.0 for every
channels-last case, 0.0 for NCHW.
"""
import json
import sys

import torch
import torch.nn.functional as F


def grad(x: torch.Tensor, w: torch.Tensor, dev: str, fmt: torch.memory_format, k: int,
         cip: bool) -> torch.Tensor:
    xx = x.to(dev).contiguous(memory_format=fmt).requires_grad_(True)
    g, = torch.autograd.grad(F.avg_pool2d(xx, k, 1, k // 2, count_include_pad=cip), xx, w.to(dev))
    return g.cpu()


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def main() -> int:
    if not torch.cuda.is_available():
        print("needs CUDA")
        return 2
    cl, cf = torch.channels_last, torch.contiguous_format
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "cases": []}
    for hw in [(32, 32), (32, 37), (64, 64)]:
        x = torch.randn(2, 16, *hw, generator=torch.Generator().manual_seed(0))
        w = torch.randn(2, 16, *hw, generator=torch.Generator().manual_seed(1))
        for k in (5, 13):
            for cip in (False, True):
                ref = grad(x, w, "cpu", cf, k, cip)
                case = {"hw": list(hw), "k": k, "count_include_pad": cip,
                        "cuda_nchw_vs_cpu": rel(grad(x, w, "cuda", cf, k, cip), ref),
                        "cuda_nhwc_vs_cpu": rel(grad(x, w, "cuda", cl, k, cip), ref),
                        "cpu_nhwc_vs_cpu": rel(grad(x, w, "cpu", cl, k, cip), ref)}
                out["cases"].append(case)
                print(json.dumps(case))
    out["cuda_nhwc_backward_wrong"] = any(c["cuda_nhwc_vs_cpu"] > 1e-4 for c in out["cases"])
    print(f"{out['torch']} on {out['gpu']}: channels-last CUDA backward wrong: "
          f"{out['cuda_nhwc_backward_wrong']}")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
