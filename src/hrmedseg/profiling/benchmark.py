"""Benchmark several models in one process: parameters, MACs, peak training memory, images/s.

:func:`run_benchmark` profiles each model with :func:`~hrmedseg.profiling.profile.profile_model`
(one training step = forward, loss, backward, Adam) in every asked precision, one model at a
time: the model is freed (``del``, ``gc.collect``, ``torch.cuda.empty_cache``) before the next.
A model that runs out of memory at the asked batch is retried at half the batch until it fits
(the row records the batch used); a model that cannot be built (a missing optional dependency,
a size it cannot take) becomes a ``skipped`` row with the reason. Nothing a single model does
stops the run.

:func:`write_benchmark` writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png``.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (the papers' #Mem). On CPU there is
no allocator statistic; there the memory column is an *estimate* by PyTorch's ``MemTracker``
(tensor bytes tracked per step) so that a CPU run still gives a comparable, labelled figure.
"""
from __future__ import annotations

import datetime as _dt
import json
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..errors import first_line

from .macs import count_macs
from .profile import DTYPES, environment, profile_model
from .speed import free_memory

__all__ = ["BenchmarkRow", "run_benchmark", "write_benchmark", "format_markdown", "plot_benchmark",
           "is_oom", "load_dice", "benchmark_meta"]

MEM_CUDA = "cuda max_memory_allocated"
MEM_CPU_ESTIMATE = "cpu estimate (torch MemTracker)"


@dataclass
class BenchmarkRow:
    model: str
    dtype: str
    status: str                                # ok | skipped | oom | error
    reason: str = ""
    batch_asked: int = 0
    batch_used: int | None = None
    oom_retries: int = 0
    params_total: int | None = None
    macs_thop: int | None = None
    macs_all_ops: int | None = None
    peak_train_mem_per_image_gb: float | None = None
    peak_train_mem_bytes: int | None = None
    memory_source: str | None = None
    train_images_per_s: float | None = None
    infer_images_per_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA's out-of-memory error (and allocator messages of the same meaning), and for
    kernels refusing a tensor of more than 2**31 elements ("must fit into 32-bit index math":
    MONAI's U-Net at 1024² and batch 16 on the H100) — both are cured by a smaller batch."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "32-bit index math" in text)


def _free(device: torch.device) -> None:
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _cpu_peak_memory(model: torch.nn.Module, size: tuple[int, int], batch: int, dtype: str,
                     num_classes: int, in_chans: int) -> int | None:
    """Peak tensor bytes of one training step on CPU (Adam state included: MemTracker counts the
    state allocated by the tracked step's ``opt.step``)."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception:  # private tool; absent in some builds
        return None
    from .profile import train_step_fn
    try:
        model.train()
        x = torch.randn(batch, in_chans, *size)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        step = train_step_fn(model, opt, x, DTYPES[dtype] if dtype != "fp32" else None, num_classes)
        tracker = MemTracker()
        tracker.track_external(model, opt, x)
        with tracker:
            step()
        snap = tracker.get_tracker_snapshot("peak")
        total = sum(int(v.get("Total", 0)) for v in snap.values())
        del opt, step, x, tracker
        model.zero_grad(set_to_none=True)
        return total or None
    except Exception:
        return None


def run_benchmark(models: Sequence[str], size: int | tuple[int, int] = 1024, batch: int = 16,
                  device: str = "cuda", dtypes: Sequence[str] = ("fp32", "bf16"), warmup: int = 3,
                  iters: int = 10, macs: bool = True, min_batch: int = 1,
                  model_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
                  num_classes: int = 1, cpu_memory: bool = True,
                  log: Callable[[str], None] | None = None) -> list[BenchmarkRow]:
    """Profile ``models`` one after another; one row per (model, dtype).

    ``model_kwargs`` maps a model name to extra ``create_model`` keywords (e.g. a smaller
    ``embed_dim`` for tests). Rows of models that cannot be built have status ``skipped``; a
    precision that does not fit even at ``min_batch`` has status ``oom``; any other failure of
    one measurement has status ``error`` with the reason, and the run goes on.
    """
    from ..models._registry import create_model

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    for d in dtypes:
        if d not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {d!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available here")
    model_kwargs = model_kwargs or {}
    rows: list[BenchmarkRow] = []
    for name in models:
        kwargs = dict(model_kwargs.get(name, {}))
        kwargs.setdefault("num_classes", num_classes)
        # -- build (on CPU): a model that cannot be built is skipped -----------------------
        try:
            model = create_model(name, img_size=size, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any build failure is reported, not raised
            reason = first_line(exc)
            log(f"[benchmark] {name}: skipped ({reason})")
            rows.extend(BenchmarkRow(name, d, "skipped", reason, batch_asked=batch) for d in dtypes)
            _free(dev)
            continue
        nc = int(getattr(getattr(model, "config", None), "num_classes", 1))
        ic = int(getattr(getattr(model, "config", None), "in_chans", 3))
        params = sum(p.numel() for p in model.parameters())
        mac_thop = mac_all = None
        if macs:
            try:
                model = model.to(dev)
                mc = count_macs(model, torch.randn(1, ic, *size, device=dev))
                mac_thop, mac_all = int(mc.module_macs), int(mc.ops_macs)
            except Exception as exc:  # noqa: BLE001
                oom = is_oom(exc)
                log(f"[benchmark] {name}: MAC count failed ({first_line(exc)})")
                del exc
                if oom:
                    model = model.to("cpu")
                    _free(dev)
        for dtype in dtypes:
            row = BenchmarkRow(name, dtype, "ok", batch_asked=batch, params_total=params,
                               macs_thop=mac_thop, macs_all_ops=mac_all)
            b = batch
            while True:
                failure: str | None = None
                oom = False
                try:
                    model.zero_grad(set_to_none=True)
                    res = profile_model(name, size=size, batch=b, device=str(dev), dtype=dtype,
                                        warmup=warmup, iters=iters, macs=False, model=model)
                except Exception as exc:  # noqa: BLE001
                    oom = is_oom(exc)
                    failure = first_line(exc)
                    del exc  # drop the traceback (it holds the step's tensors) before freeing
                    res = None
                if failure is None:
                    break
                model.zero_grad(set_to_none=True)
                _free(dev)
                if oom and b // 2 >= max(1, min_batch):
                    log(f"[benchmark] {name} {dtype}: too large at batch {b} ({failure}); retrying at {b // 2}")
                    b //= 2
                    row.oom_retries += 1
                    continue
                row.status = "oom" if oom else "error"
                row.reason = (f"out of memory down to batch {b}" if oom else failure)
                break
            if res is not None:
                row.batch_used = b
                row.train_images_per_s = res.train_images_per_s
                row.infer_images_per_s = res.infer_images_per_s
                if res.peak_train_mem_bytes is not None:
                    row.peak_train_mem_bytes = res.peak_train_mem_bytes
                    row.peak_train_mem_per_image_gb = res.peak_train_mem_per_image_gb
                    row.memory_source = MEM_CUDA
                elif dev.type == "cpu" and cpu_memory:
                    peak = _cpu_peak_memory(model, size, b, dtype, nc, ic)
                    if peak is not None:
                        row.peak_train_mem_bytes = peak
                        row.peak_train_mem_per_image_gb = peak / b / 1e9
                        row.memory_source = MEM_CPU_ESTIMATE
                if row.oom_retries:
                    row.reason = f"out of memory at batch {batch}; measured at batch {b}"
            res = None
            model.zero_grad(set_to_none=True)
            _free(dev)
            log(f"[benchmark] {name} {dtype}: {row.status} batch {row.batch_used} "
                f"mem/img {row.peak_train_mem_per_image_gb} GB, train {row.train_images_per_s} img/s")
            rows.append(row)
        # -- isolate the next model ------------------------------------------------------
        del model
        _free(dev)
    return rows


# -------------------------------------------------------------------------------------------
# Output: JSON, Markdown, PNG
# -------------------------------------------------------------------------------------------

def _f(v: float | None, fmt: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v / scale, fmt)


def format_markdown(rows: Sequence[BenchmarkRow], meta: Mapping[str, Any] | None = None) -> str:
    lines = []
    if meta:
        lines.append(f"Benchmark on {meta.get('device_name', meta.get('device'))}, input "
                     f"{meta.get('size', ['?', '?'])[0]}x{meta.get('size', ['?', '?'])[1]}, "
                     f"asked batch {meta.get('batch')}; {meta.get('date')}, commit {meta.get('commit')}.")
        lines.append("")
        lines.append(f"`{meta.get('command', '')}`")
        lines.append("")
    lines.append("| model | dtype | batch | params (M) | MACs thop (G) | MACs all ops (G) | "
                 "peak train mem / img (GB) | train img/s | infer img/s | notes |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        batch = "—" if r.batch_used is None else (
            str(r.batch_used) if r.batch_used == r.batch_asked else f"{r.batch_used} (asked {r.batch_asked})")
        mem = _f(r.peak_train_mem_per_image_gb, ".3f")
        if r.memory_source == MEM_CPU_ESTIMATE:
            mem += " (est.)"
        notes = r.status if r.status != "ok" else ""
        if r.reason:
            notes = f"{notes}: {r.reason}" if notes else r.reason
        lines.append(
            f"| {r.model} | {r.dtype} | {batch} | {_f(r.params_total, '.3f', 1e6)} | "
            f"{_f(r.macs_thop, '.2f', 1e9)} | {_f(r.macs_all_ops, '.2f', 1e9)} | {mem} | "
            f"{_f(r.train_images_per_s, '.1f')} | {_f(r.infer_images_per_s, '.1f')} | "
            f"{notes.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def plot_benchmark(rows: Sequence[BenchmarkRow], path: Path, dice: Mapping[str, float] | None = None,
                   title: str = "") -> None:
    """Peak memory / image (log) vs training images/s; and vs Dice when ``dice`` is given."""
    from .._optional import require
    matplotlib = require("matplotlib", extra="train", feature="the benchmark plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if r.status == "ok" and r.peak_train_mem_per_image_gb
                and r.train_images_per_s]
    dtypes = sorted({r.dtype for r in rows})
    markers = dict(zip(dtypes, "osD^v<>"))
    models = list(dict.fromkeys(r.model for r in rows))
    colors = {m: plt.cm.tab10(i % 10) for i, m in enumerate(models)}
    ncols = 2 if dice else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.5 * ncols, 5), squeeze=False)
    ax = axes[0][0]
    for r in measured:
        ax.scatter(r.train_images_per_s, r.peak_train_mem_per_image_gb, marker=markers[r.dtype],
                   color=colors[r.model], s=50, edgecolor="black", linewidth=0.5, zorder=3)
        label = f"{r.model} ({r.dtype}" + (f", b{r.batch_used}" if r.batch_used != r.batch_asked else "") + ")"
        ax.annotate(label, (r.train_images_per_s, r.peak_train_mem_per_image_gb),
                    textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_yscale("log")
    ax.margins(x=0.2)
    ax.set_xlabel("training images / s")
    est = any(r.memory_source == MEM_CPU_ESTIMATE for r in measured)
    ax.set_ylabel("peak training memory / image (GB, log)" + (" — CPU estimate" if est else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("memory vs training speed")
    for d in dtypes:
        ax.scatter([], [], marker=markers[d], color="grey", label=d)
    if dtypes:
        ax.legend(loc="best", fontsize=8, title="precision")
    skipped = sorted({r.model for r in rows if r.status != "ok"})
    if skipped:
        ax.text(0.01, 0.01, "not measured: " + ", ".join(skipped), transform=ax.transAxes,
                fontsize=7, color="dimgray", va="bottom")
    if not measured:
        ax.text(0.5, 0.5, "no model measured", transform=ax.transAxes, ha="center")
    _pad_log_axis(ax, [r.peak_train_mem_per_image_gb for r in measured])
    if dice:
        ax2 = axes[0][1]
        for m in models:
            if m not in dice:
                continue
            cands = [r for r in measured if r.model == m]
            r = next((c for c in cands if c.dtype == "fp32"), cands[0] if cands else None)
            if r is None:
                continue
            d = float(dice[m])
            ax2.scatter(d, r.peak_train_mem_per_image_gb, color=colors[m], s=50, edgecolor="black",
                        linewidth=0.5, marker=markers[r.dtype], zorder=3)
            ax2.annotate(f"{m} ({r.dtype})", (d, r.peak_train_mem_per_image_gb),
                         textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax2.set_yscale("log")
        ax2.margins(x=0.2)
        ax2.set_xlabel("Dice (%)" if max(dice.values(), default=0) > 1.5 else "Dice")
        ax2.set_ylabel("peak training memory / image (GB, log)")
        ax2.grid(True, which="both", alpha=0.3)
        ax2.set_title("memory vs Dice")
        _pad_log_axis(ax2, [r.peak_train_mem_per_image_gb for r in measured])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pad_log_axis(ax: Any, values: list[float | None]) -> None:
    vals = [v for v in values if v]
    if vals:
        lo, hi = min(vals), max(vals)
        ax.set_ylim(lo / 1.6, hi * 1.6)


def benchmark_meta(device: str, size: tuple[int, int], batch: int, dtypes: Sequence[str],
                   command: str | None = None) -> dict[str, Any]:
    dev = torch.device(device)
    env = environment(dev)
    if dev.type == "cuda":
        name = env.get("gpu")
    else:
        name = f"CPU {env.get('host_cpu')} ({env.get('cpu_threads')} threads)"
    return {
        "device": str(dev), "device_name": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": env.get("commit"),
        "command": command if command is not None else shlex.join(["hrmedseg", *sys.argv[1:]]),
        "size": list(size), "batch": batch, "dtypes": list(dtypes), "env": env,
        "notes": ["one training step = forward, loss, backward, Adam",
                  f"peak memory: {MEM_CUDA} over one step / batch on CUDA; on CPU {MEM_CPU_ESTIMATE}",
                  "MACs of one forward at batch 1: thop = papers' convention, all ops = torch "
                  "FlopCounterMode"],
    }


def write_benchmark(rows: Sequence[BenchmarkRow], out_dir: str | Path, meta: Mapping[str, Any],
                    dice: Mapping[str, float] | None = None) -> dict[str, Path]:
    """Write ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` into ``out_dir``."""
    from ..atomic import atomic_write_bytes, write_json_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "benchmark.json", "md": out / "benchmark.md", "png": out / "benchmark.png"}
    payload = {**meta, "dice": dict(dice) if dice else None, "results": [r.to_dict() for r in rows]}
    write_json_atomic(paths["json"], payload)
    atomic_write_bytes(paths["md"], format_markdown(rows, meta).encode())
    title = f"{meta.get('device_name')} · {meta['size'][0]}x{meta['size'][1]} · commit {meta.get('commit')}"
    plot_benchmark(rows, paths["png"], dice=dice, title=title)
    return paths


def load_dice(path: str | Path) -> dict[str, float]:
    """A JSON object ``{model: dice}`` (fractions or percent)."""
    p = Path(path)
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) for v in data.values()):
        raise ValueError(f"{p}: expected a JSON object mapping model name to a Dice number")
    return {str(k): float(v) for k, v in data.items()}
