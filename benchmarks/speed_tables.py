"""Markdown rows shared by the session summaries of speed_gpu.py results
(benchmarks/session6/summarize_speed.py, benchmarks/session7/summarize_speed.py)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

COMPILED_HEADER = [
    "| run | call | step / batch (ms) | img/s | peak allocated GB/img | reserved over the run GB/img | compile (s) |",
    "|---|---|---|---|---|---|---|"]


def fmt(v: Any, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def compiled_run_row(label: str, row: dict[str, Any], call: int) -> str:
    """One compiled run (speed_gpu.py's compile part) as a COMPILED_HEADER row."""
    ms = row.get("step_ms_median", row.get("batch_ms_median"))
    rate = row.get("train_images_per_s", row.get("infer_images_per_s"))
    mem = row.get("peak_train_mem_per_image_gb", row.get("peak_infer_mem_per_image_gb"))
    memtxt = fmt(mem, ".3f") + (" (misses the graph pool)"
                                if row.get("mode") == "reduce-overhead" else "")
    return (f"| {label} | {call} | {ms:.2f} | {rate:.1f} | {memtxt} | "
            f"{fmt(row.get('peak_reserved_whole_run_per_image_gb'), '.3f')} | "
            f"{row['compile_seconds']:.0f} |")


def write_summary(summary: Callable[[Path], str], default: Path,
                  argv: list[str] | None = None) -> int:
    """A summarize script's main: SUMMARY.md written into the results folder given (or the
    script's default one)."""
    args = sys.argv[1:] if argv is None else argv
    d = Path(args[0]) if args else default
    out = d / "SUMMARY.md"
    out.write_text(summary(d))
    print(f"wrote {out}")
    return 0
