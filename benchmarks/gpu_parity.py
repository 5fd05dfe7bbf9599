"""HRMedSeg's fast paths against the plain fp32 path on one device: outputs and all parameter
gradients, ||a-b|| / ||b||, fresh random inputs, TF32 off. Eager: bf16 autocast (the
yardstick), each speed switch, channels-last, gradient checkpointing, the SDPA backends, the
device against the CPU; the package's fast layers against explicit references (linear vs
O(N²) attention, RoPE vs complex multiplication, δ pooling vs window sums); compiled: fp32
compile vs eager and, per --compiled item, the compiled bf16 model against eager bf16 and fp32.
One JSON file.

  python benchmarks/gpu_parity.py -o parity.json                          # 1024², batch 2
  python benchmarks/gpu_parity.py --quick -o /tmp/parity.json             # tiny model, CPU, no compile

How a bf16 path is judged: its errors against fp32 must stay within BF16_MULTIPLIER times the
plain path's own bf16 errors, measured on the same inputs in the same run (the yardstick).
PyTorch's compile accuracy checks use the same rule (torch._dynamo.utils.same: 3x in bf16).
A fixed tolerance cannot do this: the plain path itself is about 2.7e-2 from fp32 on
gradients at 1024², so 2e-2 would fail the reference and tell fast paths apart from nothing.
fp32 paths are held to TOL_FP32.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (ALL_SWITCHES, build_hrmedseg, log, make_loss, parse_switches,  # noqa: E402
                     run_parts, script_device)

from hrmedseg.errors import first_line  # noqa: E402
from hrmedseg.layers import (DropPath, LayerNorm2d, MultiscalePooling,  # noqa: E402
                             RotaryEmbedding2d, elu_feature_map, linear_attention,
                             quadratic_attention_reference, rope_angles)
from hrmedseg.profiling.speed import (activation_memory_budget, autocast_or_none,  # noqa: E402
                                      cos_distance, free_memory, random_blob_mask,
                                      rel_error, result_header, set_checkpointing, strict_fp32,
                                      tf32_state,
                                      write_result)

TAG = "gpu_parity"
TOL_FP32 = 1e-4
TOL_BF16 = 2e-2
BF16_MULTIPLIER = 2.0
YARDSTICK = "bf16_autocast_vs_fp32"
COMPILED_DEFAULT = "all:default,all:reduce-overhead,all+ckpt:reduce-overhead"


def _perturb_affine(model: nn.Module, seed: int) -> None:
    """BN/LN weights near 1, biases near 0, randomised: MBConv's last BN starts at weight 0,
    which would leave every MBConv branch without gradient and out of the comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm, LayerNorm2d)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(torch.empty(m.weight.shape).uniform_(0.5, 1.5, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def _zero_drop_path(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, DropPath):
            m.p = 0.0


def parity_base(cfg: dict[str, Any], dev: torch.device
                ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model (train mode, stochastic depth 0, randomised norms), a fresh random input, an
    output cotangent and a training target, all on ``dev``."""
    s, b = cfg["size"], cfg["parity_batch"]
    model = build_hrmedseg(s, cfg["seed"], cfg["tiny"])
    _perturb_affine(model, cfg["seed"] + 1)
    _zero_drop_path(model)
    model.train().to(dev)
    g = torch.Generator().manual_seed(cfg["seed"] + 2)
    x = torch.randn(b, 3, s, s, generator=g).to(dev)
    w = torch.randn(b, 1, s, s, generator=g).to(dev)
    target = random_blob_mask(b, s, s, dev, cfg["seed"] + 3)
    return model, x, w, target


def run_variant(base: nn.Module, x: torch.Tensor, w: torch.Tensor, target: torch.Tensor, *,
                amp: torch.dtype | None = None, channels_last: bool = False,
                ckpt: bool | float = False,
                compiled: bool = False, sdpa_math: bool = False,
                fast_paths: dict[str, bool] | None = None, compile_mode: str = "default"
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Output and concatenated parameter gradients of a copy of ``base`` under the loss
    mean(out * w) (a fixed random cotangent: gradients differ only by the model), and
    diagnostics: the neck's embedding, the encoder/neck/decoder parts of those gradients, and
    the gradients under the training loss (Dice + BCE against ``target``, a second pass)."""
    model = copy.deepcopy(base)
    set_checkpointing(model, float(ckpt))
    if fast_paths:
        model.set_fast_paths(**fast_paths)
    inp = x
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        inp = x.contiguous(memory_format=torch.channels_last)
    diag: dict[str, torch.Tensor] = {}
    fn: Callable = torch.compile(model, mode=compile_mode) if compiled else model
    loss_fn = make_loss()

    def once(kind: str) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        model.zero_grad(set_to_none=True)
        ctx = contextlib.nullcontext()
        if sdpa_math:
            ctx = sdpa_kernel([SDPBackend.MATH])
        hook = None
        saved = contextlib.nullcontext()
        if kind == "cot" and not compiled:
            hook = model.neck.register_forward_hook(
                lambda m, i, o: diag.__setitem__("embedding", o.detach().float()))
            seen: set[int] = set()
            diag["_saved_forward_bytes"] = 0

            def pack(t: torch.Tensor) -> torch.Tensor:
                try:
                    st = t.untyped_storage()
                    if st.data_ptr() not in seen:
                        seen.add(st.data_ptr())
                        diag["_saved_forward_bytes"] += st.nbytes()
                except Exception:  # noqa: BLE001
                    pass
                return t
            # tensors saved for backward outside checkpointed regions (checkpointing's own
            # hooks take those inside): shows that checkpointing is really on
            saved = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        try:
            with ctx:
                if compiled:
                    # CUDA graphs (reduce-overhead) reuse their output buffers on the next
                    # replay: mark each call a new step, and copy what is kept (below).
                    torch.compiler.cudagraph_mark_step_begin()
                with saved, autocast_or_none(x.device, amp):
                    out = fn(inp)
                loss = (out.float() * w).mean() if kind == "cot" else loss_fn(out, target)
                loss.backward()
        finally:
            if hook is not None:
                hook.remove()
        parts: dict[str, list[torch.Tensor]] = defaultdict(list)
        for name, p in model.named_parameters():
            g = (p.grad if p.grad is not None else torch.zeros_like(p)).detach().float()
            parts[name.split(".")[0]].append(g.reshape(-1))
        return out.detach().float().clone(), parts

    out, parts = once("cot")
    grads = torch.cat([g for v in parts.values() for g in v])
    for k, v in parts.items():
        diag[f"grad_{k}"] = torch.cat(v)
    _, parts_t = once("train")
    diag["grad_train_loss"] = torch.cat([g for v in parts_t.values() for g in v])
    return out, grads, diag


def _check(name: str, a: tuple, b: tuple, tol: float, note: str = "", t0: float | None = None,
           yardstick: dict[str, Any] | None = None, is_yardstick: bool = False
           ) -> dict[str, Any]:
    """rel_error(a, b) of outputs and gradients against ``tol``; with ``yardstick`` (a bf16 row of
    the plain path vs fp32) against BF16_MULTIPLIER times its errors instead (``tol`` is then
    reported as ``within_fixed_tol``); ``is_yardstick``: this row is that reference, held to
    ``tol`` on outputs only."""
    out_rel, grad_rel = rel_error(a[0], b[0]), rel_error(a[1], b[1])
    row: dict[str, Any] = {"out_rel": out_rel, "grad_rel": grad_rel, "tol": tol,
                           "pass": bool(out_rel <= tol and grad_rel <= tol),
                           "grad_one_minus_cos": cos_distance(a[1], b[1])}
    if yardstick is not None:
        bound_out = BF16_MULTIPLIER * yardstick["out_rel"]
        bound_grad = BF16_MULTIPLIER * yardstick["grad_rel"]
        row.update(criterion=f"<= {BF16_MULTIPLIER:g} x the plain bf16 path's error",
                   bound_out=bound_out, bound_grad=bound_grad, within_fixed_tol=row["pass"],
                   **{"pass": bool(out_rel <= bound_out and grad_rel <= bound_grad)})
    elif is_yardstick:
        row.update(criterion="yardstick: outputs <= tol; gradients reported, they set the "
                             "bound for the bf16 fast paths",
                   within_fixed_tol=row["pass"], **{"pass": bool(out_rel <= tol)})
    if len(a) > 2 and len(b) > 2:  # where the difference arises
        row["diagnostics_rel"] = {k: rel_error(a[2][k], b[2][k]) for k in b[2]
                                  if k in a[2] and not k.startswith("_")}
        if "_saved_forward_bytes" in a[2] and "_saved_forward_bytes" in b[2]:
            row["saved_forward_bytes_a_b"] = [a[2]["_saved_forward_bytes"],
                                              b[2]["_saved_forward_bytes"]]
    if note:
        row["note"] = note
    if t0 is not None:
        row["seconds"] = round(time.time() - t0, 2)
    bound = (f"bound {row['bound_out']:.2e}/{row['bound_grad']:.2e}" if "bound_out" in row
             else f"tol {tol:g}" + (" (outputs; yardstick)" if is_yardstick else ""))
    log(TAG, f"parity {name}: out {out_rel:.2e} grad {grad_rel:.2e} {bound} "
        f"{'PASS' if row['pass'] else 'FAIL'}"
        + (" | " + ", ".join(f"{k} {v:.1e}" for k, v in row["diagnostics_rel"].items())
           if row.get("diagnostics_rel") else ""))
    return row


def part_parity(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"size": cfg["size"], "batch": cfg["parity_batch"], "checks": {},
                           "errors": {},
                           "method": "HRMedSeg in train mode (BN batch stats) with stochastic "
                                     "depth 0 and randomised BN/LN affine; x ~ N(0,1); loss = "
                                     "mean(out * w), w ~ N(0,1); rel = ||a-b||/||b|| of the "
                                     "output and of all parameter gradients concatenated (pass/"
                                     "fail on these two); TF32 off; each variant runs on a deep "
                                     "copy of one model. diagnostics_rel: the neck embedding, "
                                     "the gradient parts, and the gradients under the training "
                                     "loss (Dice + BCE vs a random blob mask, second pass); "
                                     "grad_one_minus_cos = 1 - cosine of the gradients"}
    checks = res["checks"]
    with strict_fp32():
        res["tf32"] = tf32_state()
        base, x, w, tgt = parity_base(cfg, dev)
        t0 = time.time()
        ref = run_variant(base, x, w, tgt)
        res["reference_seconds"] = round(time.time() - t0, 2)
        res["out_norm"] = float(ref[0].norm())
        res["grad_norm"] = float(ref[1].norm())
        res["params_with_zero_grad_fraction"] = float((ref[1] == 0).float().mean())
        variants = [
            (YARDSTICK, dict(amp=torch.bfloat16), TOL_BF16,
             "the plain path under bf16 autocast: the yardstick of the bf16 fast paths"),
            ("channels_last_vs_contiguous", dict(channels_last=True), TOL_FP32, ""),
            ("grad_checkpointing_vs_off", dict(ckpt=True), TOL_FP32, ""),
            ("sdpa_math_vs_default_fp32", dict(sdpa_math=True), TOL_FP32,
             "default = the SDPA kernel PyTorch picks (fused on CUDA); a = math backend"),
            ("all_fast_paths_vs_fp32", dict(amp=torch.bfloat16, channels_last=True, ckpt=True),
             TOL_BF16, "bf16 + channels_last + checkpointing together"),
            ("pool_channels_first_vs_off", dict(fast_paths={"pool_channels_first": True}),
             TOL_FP32, "δ on an NCHW copy (HRMedSegConfig.pool_channels_first)"),
            ("fast_norm_bf16_vs_fp32", dict(amp=torch.bfloat16, fast_paths={"fast_norm": True}),
             TOL_BF16, "bf16 autocast with LayerNorm in bf16 (HRMedSegConfig.fast_norm)"),
            ("fast_attention_bf16_vs_fp32", dict(amp=torch.bfloat16,
                                                 fast_paths={"fast_attention": True}),
             TOL_BF16, "bf16 autocast with DGLA's core in bf16 (HRMedSegConfig.fast_attention)"),
            ("all_switches_bf16_vs_fp32", dict(amp=torch.bfloat16, fast_paths=dict(ALL_SWITCHES)),
             TOL_BF16, "bf16 autocast with fast_norm, fast_attention, pool_channels_first"),
        ]
        for name, kw, tol, note in variants:
            t0 = time.time()
            try:
                cand = run_variant(base, x, w, tgt, **kw)
                bf16 = kw.get("amp") is torch.bfloat16
                checks[name] = _check(name, cand, ref, tol, note, t0,
                                      yardstick=checks.get(YARDSTICK) if bf16 else None,
                                      is_yardstick=name == YARDSTICK)
                del cand
            except Exception as exc:  # noqa: BLE001
                res["errors"][name] = traceback.format_exc(limit=6)
                log(TAG, f"parity {name}: ERROR {first_line(exc)}")
        # The GPU's own fp32 path against the CPU's: the fast-path checks above compare GPU runs
        # with each other, so a wrong CUDA kernel shared by both sides goes unseen (as PyTorch's
        # channels-last avg_pool2d backward did: results/avgpool_nhwc_backward_h200/).
        # (On the CPU, --quick, this compares the CPU with itself: it only exercises the code.)
        name = f"{dev.type}_vs_cpu_fp32"
        t0 = time.time()
        try:
            c_out, c_grads, c_diag = run_variant(copy.deepcopy(base).cpu(), x.cpu(), w.cpu(),
                                                 tgt.cpu())
            cand = (c_out.to(dev), c_grads.to(dev),
                    {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in c_diag.items()})
            checks[name] = _check(name, ref, cand, TOL_FP32,
                                  f"a = the {dev.type} fp32 reference, b = the same model "
                                  "and inputs on the CPU", t0)
            del cand, c_out, c_grads, c_diag
        except Exception as exc:  # noqa: BLE001
            res["errors"][name] = traceback.format_exc(limit=6)
            log(TAG, f"parity {name}: ERROR {first_line(exc)}")
        # SDPA math vs default in bf16 (both bf16; the fused kernel is the one training uses)
        t0 = time.time()
        try:
            bf_def = run_variant(base, x, w, tgt, amp=torch.bfloat16)
            bf_math = run_variant(base, x, w, tgt, amp=torch.bfloat16, sdpa_math=True)
            checks["sdpa_default_vs_math_bf16"] = _check(
                "sdpa_default_vs_math_bf16", bf_def, bf_math, TOL_BF16,
                "both bf16 autocast; b = math backend", t0)
            del bf_def, bf_math
        except Exception as exc:  # noqa: BLE001
            res["errors"]["sdpa_default_vs_math_bf16"] = traceback.format_exc(limit=6)
            log(TAG, f"parity sdpa bf16: ERROR {first_line(exc)}")
        del ref, base, x, w, tgt
        free_memory(dev)
        # explicit fast/reference implementations of the package's layers
        for name, fn in (("linear_attention_vs_quadratic_reference", _parity_linear_attention),
                         ("rope_vs_complex_reference", _parity_rope),
                         ("multiscale_pooling_vs_sum_count_reference", _parity_pooling)):
            t0 = time.time()
            try:
                row = fn(dev, cfg)
                row["seconds"] = round(time.time() - t0, 2)
                checks[name] = row
                log(TAG, f"parity {name}: " + ", ".join(f"{k} {v:.2e}" for k, v in row.items()
                                                   if k.endswith("_rel"))
                    + f" {'PASS' if row['pass'] else 'FAIL'}")
            except Exception as exc:  # noqa: BLE001
                res["errors"][name] = traceback.format_exc(limit=6)
                log(TAG, f"parity {name}: ERROR {first_line(exc)}")
    res["all_pass"] = bool(checks) and all(c.get("pass") for c in checks.values())
    return res


def _parity_linear_attention(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(cfg["seed"] + 3)
    b, heads, side = 2, 6, cfg["ref_grid"]
    c = 96
    n, d = side * side, c // heads
    rope = RotaryEmbedding2d(c)

    def heads_(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, n, heads, d).transpose(1, 2)

    qr, kr, vr = (torch.randn(b, n, c, generator=g).to(dev) for _ in range(3))
    cot = torch.randn(b, heads, n, d, generator=g).to(dev)
    outs = {}
    for key, fn in (("linear", linear_attention), ("quadratic", quadratic_attention_reference)):
        leaves = [t.clone().requires_grad_(True) for t in (qr, kr, vr)]
        q, k = elu_feature_map(leaves[0]), elu_feature_map(leaves[1])
        qrot, krot = rope(q, side, side), rope(k, side, side)
        o = fn(heads_(q), heads_(k), heads_(leaves[2]), heads_(qrot), heads_(krot))
        (o * cot).sum().backward()
        outs[key] = (o.detach(), torch.cat([t.grad.reshape(-1) for t in leaves]))
    out_rel = rel_error(outs["linear"][0], outs["quadratic"][0])
    grad_rel = rel_error(outs["linear"][1], outs["quadratic"][1])
    return {"out_rel": out_rel, "grad_rel": grad_rel, "tol": TOL_FP32,
            "pass": bool(out_rel <= TOL_FP32 and grad_rel <= TOL_FP32),
            "shape": [b, heads, n, d],
            "note": "fp32; phi = ELU+1 and 2-D RoPE as in DGLA; grads w.r.t. the pre-feature "
                    "q, k, v"}


def _parity_rope(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(cfg["seed"] + 4)
    h, w, c = cfg["ref_grid"], cfg["ref_grid"] + 3, 96
    x = torch.randn(2, h * w, c, generator=g, dtype=torch.float64).to(dev)
    fast = RotaryEmbedding2d(c)(x.float(), h, w).double()
    ang = rope_angles(h, w, c, device=dev)                       # (N, C/2) float64
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.polar(torch.ones_like(ang), ang)
    ref = torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    r = rel_error(fast, ref)
    return {"out_rel": r, "tol": TOL_FP32, "pass": bool(r <= TOL_FP32), "grid": [h, w],
            "note": "module in fp32 vs complex multiplication in float64 (non-square grid)"}


def _parity_pooling(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(cfg["seed"] + 5)
    x = torch.randn(2, 16, cfg["ref_grid"], cfg["ref_grid"] + 5, generator=g).to(dev)
    ks = (5, 9, 13)
    fast = MultiscalePooling(ks)(x)
    ones = torch.ones_like(x[:, :1])
    ref = x.double().clone()
    for k in ks:  # delta(h) = h + sum_k (avg_k(h) - h), avg over real pixels only
        s = F.avg_pool2d(x.double(), k, 1, k // 2, count_include_pad=True) * k * k
        cnt = F.avg_pool2d(ones.double(), k, 1, k // 2, count_include_pad=True) * k * k
        ref = ref + (s / cnt - x.double())
    r = rel_error(fast, ref)
    # The separable path (impl="separable") against the direct one: output and input gradient,
    # channels-last as in training.
    xd = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    xs = x.detach().clone().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    w = torch.randn(x.shape, generator=g).to(dev)
    od, os_ = MultiscalePooling(ks)(xd), MultiscalePooling(ks, impl="separable")(xs)
    (od * w).sum().backward()
    (os_ * w).sum().backward()
    r_sep, r_sep_grad = rel_error(os_.detach(), od.detach()), rel_error(xs.grad, xd.grad)
    ok = r <= TOL_FP32 and r_sep <= TOL_FP32 and r_sep_grad <= TOL_FP32
    return {"out_rel": r, "separable_out_rel": r_sep, "separable_grad_rel": r_sep_grad,
            "tol": TOL_FP32, "pass": bool(ok),
            "note": "fp32 module vs float64 window sum / window count; separable vs direct "
                    "(output and input gradient, channels-last)"}


def _compiled_bf16_parity(cfg: dict[str, Any], dev: torch.device, switches: str, mode: str
                          ) -> dict[str, Any]:
    """The compiled bf16 model (with these switches and mode) against the same model eager in
    bf16 (what compiling changes) and against the plain eager fp32 reference (what the whole
    fast path changes), by the parity part's method."""
    spec = parse_switches(switches)
    fast, ckpt = spec["switches"], spec["ckpt"]
    with strict_fp32():
        base, x, w, tgt = parity_base(cfg, dev)
        with torch.no_grad():
            base(x)  # RoPE table cache
        ref32 = run_variant(base, x, w, tgt)
        plain = run_variant(base, x, w, tgt, amp=torch.bfloat16)
        yard = _check("yardstick: eager bf16 plain vs eager fp32 plain", plain, ref32,
                      TOL_BF16, "the plain path under bf16 autocast", is_yardstick=True)
        del plain
        eager = run_variant(base, x, w, tgt, amp=torch.bfloat16, fast_paths=fast, ckpt=ckpt)
        t0 = time.time()
        with activation_memory_budget(spec["memory_budget"]):
            comp = run_variant(base, x, w, tgt, amp=torch.bfloat16, fast_paths=fast, ckpt=ckpt,
                               compiled=True, compile_mode=mode)
        out = {"compiled_vs_eager_bf16": _check(
                   f"compiled {switches}:{mode} vs eager bf16", comp, eager, TOL_BF16,
                   "same switches, both bf16 autocast", t0, yardstick=yard),
               "compiled_vs_fp32_reference": _check(
                   f"compiled {switches}:{mode} vs eager fp32 plain", comp, ref32, TOL_BF16,
                   "the whole fast path against the plain fp32 reference", yardstick=yard),
               "eager_bf16_vs_fp32_reference": _check(
                   f"eager bf16 {switches} vs eager fp32 plain", eager, ref32, TOL_BF16,
                   "for comparison: the same switches without compiling", yardstick=yard),
               "yardstick_plain_bf16_vs_fp32_reference": yard}
    return out


def compile_parity_fp32(cfg: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    """torch.compile(model) (default mode) against eager, both fp32 and plain."""
    with strict_fp32():
        base, x, w, tgt = parity_base(cfg, dev)
        ref = run_variant(base, x, w, tgt)
        t0 = time.time()
        cand = run_variant(base, x, w, tgt, compiled=True)
        return _check("compile_vs_eager_fp32", cand, ref, TOL_FP32,
                      "torch.compile(model), default mode, fp32; first call compiles", t0)


def part_compiled(dev: torch.device, cfg: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = {"errors": {}, "bf16": {}}
    jobs: list[tuple[str, Callable[[], Any]]] = [("fp32", lambda: compile_parity_fp32(cfg, dev))]
    for item in cfg["compiled"]:
        switches, mode = item.rsplit(":", 1)
        jobs.append((item, lambda s=switches, m=mode: _compiled_bf16_parity(cfg, dev, s, m)))
    for label, job in jobs:
        torch._dynamo.reset()
        try:
            if label == "fp32":
                res["fp32"] = job()
            else:
                res["bf16"][label] = job()
        except Exception as exc:  # noqa: BLE001
            res["errors"][label] = traceback.format_exc(limit=8)
            log(TAG, f"compiled {label}: ERROR {first_line(exc)}")
        free_memory(dev)
    return res


def parse_compiled(spec: str) -> list[str]:
    items = [t.strip() for t in spec.split(",") if t.strip()]
    for item in items:
        try:
            switches, _mode = item.rsplit(":", 1)
            parse_switches(switches)
        except ValueError:
            raise SystemExit(f"--compiled: bad item {item!r} (want switches:mode, switches "
                             "plain|all[+ckpt[F]][+mbB], a torch.compile mode)") from None
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", required=True, help="result JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="tiny HRMedSeg at 64² on the CPU; compiled checks only with --compiled")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size", type=int, help="input side (1024; quick 64)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--compiled", help=f"switches:mode items for the compiled bf16 checks "
                                       f"({COMPILED_DEFAULT}); 'none' skips compiling")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    q = args.quick
    dev = script_device(args.device, q)
    spec = args.compiled or ("none" if q else COMPILED_DEFAULT)
    cfg = {"size": args.size or (64 if q else 1024), "parity_batch": args.batch,
           "seed": args.seed, "tiny": q, "ref_grid": 16 if q else 32,
           "compiled": [] if spec == "none" else parse_compiled(spec)}
    result = {**result_header("benchmarks/gpu_parity.py", dev, argv), "quick": q, "config": cfg,
              "tolerances": {"fp32": TOL_FP32, "bf16": TOL_BF16,
                             "bf16_multiplier_of_yardstick": BF16_MULTIPLIER}, "errors": {}}
    parts = [("eager", lambda: part_parity(dev, cfg))]
    if spec != "none":
        parts.append(("compiled", lambda: part_compiled(dev, cfg)))
    run_parts(TAG, result, args.output, parts, dev)
    compiled = result.get("compiled") or {}
    rows = [compiled.get("fp32", {"pass": True})] + [
        row for checks in compiled.get("bf16", {}).values() for row in checks.values()]
    result["all_pass"] = bool((result.get("eager") or {}).get("all_pass")) and all(
        row.get("pass") for row in rows)
    write_result(args.output, result)
    log(TAG, f"all pass: {result['all_pass']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
