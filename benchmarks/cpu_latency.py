"""CPU latency of one 1024×1024 image end to end (preprocess + forward + postprocess) with the
shipped ``hrmedseg`` weights: PyTorch eager fp32 vs onnxruntime fp32 (and optionally torch bf16
autocast and int8 dynamic quantisation of the Linear layers), median of N runs after warm-up,
plus a per-part profile of the eager forward (encoder / neck / decoder pieces).

    python benchmarks/cpu_latency.py --threads 2 --runs 10 \
        --json benchmarks/results/cpu_latency_2cores.json

Other jobs may share the cores: the 1-minute load average before and after is recorded.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # a checkout without install
from hrmedseg.atomic import write_json_atomic  # noqa: E402
from hrmedseg.provenance import source_commit  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    return source_commit() or "unknown"


def load() -> float:
    return os.getloadavg()[0]


def sample_image(size: int) -> np.ndarray:
    from PIL import Image
    from hrmedseg.cli.predict import sample_dir
    f = sorted((sample_dir() / "images").glob("*.png"))[0]
    return np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR))


def time_it(fn, runs: int, warmup: int) -> list[float]:  # noqa: ANN001
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def profile_parts(model, x: torch.Tensor, runs: int) -> dict[str, float]:  # noqa: ANN001
    """Median seconds per part of the eager forward, timed with module hooks."""
    enc, dec = model.encoder, model.decoder
    parts = {"encoder.patch_embed": enc.patch_embed, "encoder.mbconv": enc.conv_layers,
             "encoder.dgla_blocks": enc.blocks, "neck": model.neck,
             "decoder.two_way_transformer": dec.transformer,
             "decoder.upscaler": dec.output_upscaling}
    times: dict[str, list[float]] = {k: [] for k in parts}
    starts: dict[str, float] = {}
    handles = []

    def pre(name):  # noqa: ANN001, ANN202
        return lambda *_: starts.__setitem__(name, time.perf_counter())

    def post(name):  # noqa: ANN001, ANN202
        return lambda *_: times[name].append(time.perf_counter() - starts[name])

    def seq_hooks(name, mod):  # noqa: ANN001, ANN202
        if isinstance(mod, torch.nn.ModuleList):
            first, last = mod[0], mod[-1]
            handles.append(first.register_forward_pre_hook(pre(name)))
            handles.append(last.register_forward_hook(post(name)))
        else:
            handles.append(mod.register_forward_pre_hook(pre(name)))
            handles.append(mod.register_forward_hook(post(name)))

    for k, m in parts.items():
        seq_hooks(k, m)
    total = []
    with torch.inference_mode():
        model(x)
        for _ in range(runs):
            t = time.perf_counter()
            model(x)
            total.append(time.perf_counter() - t)
    for h in handles:
        h.remove()
    res = {k: statistics.median(v[-runs:]) for k, v in times.items()}
    res["forward_total"] = statistics.median(total)
    res["decoder.rest (prompt enc, hypernets, einsum, bilinear x4 to 1024)"] = (
        res["forward_total"] - sum(v for k, v in res.items() if k != "forward_total"))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hrmedseg")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--variants", default="torch_fp32,onnxruntime_fp32",
                    help="comma list of torch_fp32, onnxruntime_fp32, torch_bf16, torch_int8_dynamic")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from hrmedseg.inference import Segmenter

    img = sample_image(args.size)
    load_before = load()
    results: dict[str, dict] = {}
    variants = args.variants.split(",")
    seg = Segmenter(args.model, device="cpu", size=args.size)
    if "torch_fp32" in variants:
        t = time_it(lambda: seg.predict(img), args.runs, args.warmup)
        results["torch_fp32"] = {"median_s": statistics.median(t), "runs_s": t}
        print(f"torch fp32       median {statistics.median(t):.3f} s", flush=True)
    if "torch_bf16" in variants:
        sb = Segmenter(args.model, device="cpu", size=args.size, precision="bf16")
        t = time_it(lambda: sb.predict(img), args.runs, args.warmup)
        ref = seg.predict(img)
        got = sb.predict(img)
        results["torch_bf16_autocast"] = {"median_s": statistics.median(t), "runs_s": t,
                                          "label_agreement_vs_fp32": float((ref.labels == got.labels).mean())}
        print(f"torch bf16       median {statistics.median(t):.3f} s", flush=True)
    if "torch_int8_dynamic" in variants:
        try:
            from torch.ao.quantization import quantize_dynamic
            import copy
            qm = quantize_dynamic(copy.deepcopy(seg.model), {torch.nn.Linear}, dtype=torch.qint8)
            sq = Segmenter(qm, device="cpu", size=args.size)
            sq.normalize = seg.normalize
            t = time_it(lambda: sq.predict(img), args.runs, args.warmup)
            ref = seg.predict(img)
            got = sq.predict(img)
            results["torch_int8_dynamic_linear"] = {
                "median_s": statistics.median(t), "runs_s": t,
                "label_agreement_vs_fp32": float((ref.labels == got.labels).mean())}
            print(f"torch int8 dyn   median {statistics.median(t):.3f} s", flush=True)
        except Exception as exc:  # noqa: BLE001
            results["torch_int8_dynamic_linear"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    if "onnxruntime_fp32" in variants:
        try:
            import onnxruntime as ort
            from hrmedseg.inference.export import OnnxSegmenter, export_onnx
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "m.onnx"
                t0 = time.perf_counter()
                export_onnx(seg.model, path, size=args.size, dynamic=False)
                export_s = time.perf_counter() - t0
                so = OnnxSegmenter(path, threads=args.threads, normalize=seg.normalize)
                t = time_it(lambda: so.predict(img), args.runs, args.warmup)
                ref = seg.predict(img)
                got = so.predict(img)
                x = seg.preprocess(img)[None]
                diff = float((so.logits(x) - seg.logits(x)).abs().max())
            results["onnxruntime_fp32"] = {
                "median_s": statistics.median(t), "runs_s": t, "export_s": export_s,
                "onnxruntime": ort.__version__, "static_shape": True,
                "max_abs_logit_diff_vs_torch": diff,
                "label_agreement_vs_fp32": float((ref.labels == got.labels).mean())}
            print(f"onnxruntime fp32 median {statistics.median(t):.3f} s", flush=True)
        except Exception as exc:  # noqa: BLE001
            results["onnxruntime_fp32"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    # where the time goes: preprocess / forward parts / postprocess (eager fp32)
    breakdown = {}
    if not args.no_profile:
        pre = time_it(lambda: seg.preprocess(img), args.runs, 1)
        x = seg.preprocess(img)[None]
        lg = seg.logits(x)
        post = time_it(lambda: seg._to_original(lg[0], img.shape[:2]), args.runs, 1)
        breakdown = {"preprocess": statistics.median(pre), "postprocess": statistics.median(post)}
        breakdown.update(profile_parts(seg.model, x, max(3, args.runs // 2)))
        for k, v in breakdown.items():
            print(f"  {k:<40s} {v * 1000:8.1f} ms")
    load_after = load()
    out = {
        "benchmark": "cpu_latency", "model": args.model, "weights": getattr(seg.model, "pretrained_weight", None),
        "image": f"{args.size}x{args.size} RGB uint8 (shipped DSB-2018 sample resized)",
        "end_to_end": "Segmenter.predict(array): preprocess + forward + postprocess (no file I/O)",
        "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
        "medians_s": {k: v.get("median_s") for k, v in results.items()},
        "results": results, "eager_fp32_breakdown_s": breakdown,
        "target_s": 0.5,
        "env": {"device": "cpu", "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
                "torch": torch.__version__, "python": platform.python_version(),
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "commit": commit(), "load_avg_1min_before": load_before,
                "load_avg_1min_after": load_after,
                "command": "python " + " ".join(sys.argv)},
    }
    if args.json:
        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
