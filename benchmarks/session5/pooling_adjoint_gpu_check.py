"""Where does the separable pooling's adjoint backward differ between CPU and CUDA?

speed_gpu.py's parity (session 5, H200) found the adjoint's input gradient 18 % off the direct
path's on CUDA while the CPU agrees to 5e-8. Each piece is computed on both devices, in fp32, for
contiguous and channels-last inputs, and compared (max |cuda - cpu| / max |cpu|).
"""
import json
import sys

import torch
import torch.nn.functional as F

from hrmedseg.layers import MultiscalePooling
from hrmedseg.layers.pooling import _SeparableMultiscalePoolingFn, _separable_avg, _window_counts

torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 16, 32, 37, generator=g)
w = torch.randn(x.shape, generator=g)
out = {}


def rel(a, b):
    return float((a.cpu() - b.cpu()).abs().max() / b.abs().max().clamp_min(1e-30))


for fmt in ("contiguous", "channels_last"):
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    for k in (5, 9, 13):
        for cip in (False, True):
            a = F.avg_pool2d(x.cuda().contiguous(memory_format=mf), (1, k), 1, (0, k // 2), count_include_pad=cip)
            b = F.avg_pool2d(x.contiguous(memory_format=mf), (1, k), 1, (0, k // 2), count_include_pad=cip)
            out[f"{fmt} (1,{k}) cip={cip}"] = rel(a, b)
            a = F.avg_pool2d(x.cuda().contiguous(memory_format=mf), (k, 1), 1, (k // 2, 0), count_include_pad=cip)
            b = F.avg_pool2d(x.contiguous(memory_format=mf), (k, 1), 1, (k // 2, 0), count_include_pad=cip)
            out[f"{fmt} ({k},1) cip={cip}"] = rel(a, b)
            a = _separable_avg(x.cuda().contiguous(memory_format=mf), k, cip)
            b = _separable_avg(x.contiguous(memory_format=mf), k, cip)
            out[f"{fmt} separable k={k} cip={cip}"] = rel(a, b)
        out[f"{fmt} counts k={k}"] = rel(_window_counts(37, k, x.cuda()), _window_counts(37, k, x))
    for dev in ("cpu", "cuda"):
        xs = x.detach().clone().to(dev).contiguous(memory_format=mf).requires_grad_(True)
        xd = x.detach().clone().to(dev).contiguous(memory_format=mf).requires_grad_(True)
        (MultiscalePooling((5, 9, 13), impl="separable")(xs) * w.to(dev)).sum().backward()
        (MultiscalePooling((5, 9, 13))(xd) * w.to(dev)).sum().backward()
        out[f"{fmt} {dev} adjoint vs direct grad"] = rel(xs.grad, xd.grad)
        gg = w.to(dev).contiguous(memory_format=mf)
        out[f"{fmt} {dev} backward(g) vs cpu backward"] = rel(
            _SeparableMultiscalePoolingFn.backward(type("C", (), {"kernel_sizes": (5, 9, 13)})(), gg)[0],
            _SeparableMultiscalePoolingFn.backward(type("C", (), {"kernel_sizes": (5, 9, 13)})(), w)[0])
# Which side is off on CUDA channels-last: each path's input gradient against the CPU's.
for impl in ("direct", "separable"):
    for dev in ("cpu", "cuda"):
        xx = x.detach().clone().to(dev).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        (MultiscalePooling((5, 9, 13), impl=impl)(xx) * w.to(dev)).sum().backward()
        out[f"channels_last {impl} grad {dev}"] = xx.grad.cpu()
for impl in ("direct", "separable"):
    out[f"channels_last {impl} grad, cuda vs cpu"] = rel(out.pop(f"channels_last {impl} grad cuda"),
                                                          out.pop(f"channels_last {impl} grad cpu"))
print(json.dumps(out))
json.dump(out, open(sys.argv[1] if len(sys.argv) > 1 else "/dev/null", "w"), indent=1)
