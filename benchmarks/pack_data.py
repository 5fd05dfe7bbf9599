"""Pack datasets into a compact copy that the package's loaders read unchanged, small enough to
travel to a lent GPU machine with the working tree.

  python benchmarks/pack_data.py --src ../shared/data --dst .gpu/data \\
      --datasets dsb2018,kvasir-seg,drive --max-side kvasir-seg=1024 \\
      --weights ../shared/weights/mobile_sam.pt --budget-mib 34

Every dataset folder keeps its layout and file stems (``images/``, ``masks/``, DRIVE's
``training/`` and ``test/``, ...), ``splits.json`` and other non-image files are copied byte for
byte. Images (uint8) become WebP (``--quality``, or ``--lossless``); an RGBA image whose alpha is
opaque everywhere is stored as RGB (the model input drops alpha anyway). Label files (masks, DRIVE
field-of-view masks, instance masks) stay lossless: PNGs are copied as they are, others (JPEG,
GIF, TIFF masks) are read with :func:`hrmedseg.data.io.read_mask` -- which thresholds lossy
masks at 128 -- and written as PNG labels, so the packed mask reads back to the same labels.
``--max-side`` downscales whatever is larger (images by area averaging, labels by nearest
neighbour). After packing, every dataset is checked: the same samples, stems and official splits
are discovered, every label file reads back equal to the original's labels (resized the same
way), every image has the expected shape; the mean PSNR of the images is reported.
``--weights`` copies files into ``DST/../weights/`` (where ``hrmedseg reproduce`` looks for
``mobile_sam.pt``). The packed total (data and weights) must stay within ``--budget-mib``: over
it, the copy is removed and one line says so (exit 2). ``DST/pack.json`` records what was done.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import platform
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hrmedseg.atomic import atomic_write_bytes, write_json_atomic
from hrmedseg.provenance import source_commit
from hrmedseg.data.datasets import discover_pairs
from hrmedseg.data.io import ImageReadError, is_image_file, read_image, read_mask, split_ext, write_mask_png

DEFAULT_QUALITY = 92
MANIFEST = "pack.json"


class PackError(Exception):
    """A problem with the arguments or the data, reported as one line."""


@dataclass(frozen=True)
class Job:
    """One file to pack: ``kind`` is image (lossy allowed), label (lossless) or copy (bytes)."""

    src: Path
    dst_dir: Path
    kind: str
    max_side: int | None
    quality: int
    lossless: bool


def scaled_hw(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """(h, w) scaled so the longer side is at most ``max_side`` (unchanged when it already is)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def resize_labels(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of integer labels (values never mix)."""
    if labels.shape[:2] == hw:
        return labels
    h, w = labels.shape[:2]
    rows = np.minimum(((np.arange(hw[0]) + 0.5) * h / hw[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(hw[1]) + 0.5) * w / hw[1]).astype(np.int64), w - 1)
    return np.ascontiguousarray(labels[rows][:, cols])


def resize_image(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area-averaging downscale of a uint8 image (Pillow's BOX filter)."""
    if img.shape[:2] == hw:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.Resampling.BOX))


def _image_for_webp(img: np.ndarray) -> np.ndarray:
    if img.ndim == 3 and img.shape[2] == 4 and bool((img[:, :, 3] == 255).all()):
        return np.ascontiguousarray(img[:, :, :3])  # opaque alpha carries nothing
    if img.ndim == 3 and img.shape[2] == 2:
        return np.ascontiguousarray(img[:, :, 0])
    return img


def pack_file(job: Job) -> tuple[str, int]:
    """Write one packed file; returns (its path, its size in bytes)."""
    stem, ext = split_ext(job.src)
    job.dst_dir.mkdir(parents=True, exist_ok=True)
    if job.kind == "copy":
        out = job.dst_dir / job.src.name
        shutil.copyfile(job.src, out)
    elif job.kind == "label":
        if ext == ".png" and not job.max_side:
            out = job.dst_dir / job.src.name
            shutil.copyfile(job.src, out)   # already lossless: the very same bytes
        else:
            labels = read_mask(job.src)
            labels = resize_labels(labels, scaled_hw(*labels.shape[:2], job.max_side))
            out = write_mask_png(job.dst_dir / f"{stem}.png", labels)
    else:
        img = read_image(job.src)
        if img.dtype != np.uint8:
            # WebP holds 8 bits; other depths travel as they are.
            out = job.dst_dir / job.src.name
            shutil.copyfile(job.src, out)
        else:
            img = _image_for_webp(img)
            img = resize_image(img, scaled_hw(*img.shape[:2], job.max_side))
            import io
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="WEBP", quality=job.quality, lossless=job.lossless,
                                      method=4)
            out = atomic_write_bytes(job.dst_dir / f"{stem}.webp", buf.getvalue())
    return str(out), out.stat().st_size


def plan_dataset(src: Path, dst: Path, max_side: int | None, quality: int, lossless: bool,
                 instances: bool) -> list[Job]:
    """Jobs for every file under ``src``: the discovered samples' images are images, every other
    image file is a label file (masks, field-of-view masks, instance masks, second observers)."""
    try:
        index = discover_pairs(src)
    except (OSError, ValueError) as exc:
        raise PackError(f"{src}: {str(exc).splitlines()[0]}") from None
    if not index.samples:
        raise PackError(f"{src}: no image/mask pairs found")
    images = {s.image_path.resolve() for s in index.samples}
    for s in index.samples:
        images.update(p.resolve() for p in s.extra_channels)
    jobs, names = [], {}
    for p in sorted(src.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(src).parts):
            continue
        rel_dir = p.parent.relative_to(src)
        if not instances and "instances" in rel_dir.parts:
            continue
        if not is_image_file(p):
            kind = "copy"
        else:
            kind = "image" if p.resolve() in images else "label"
        key = (rel_dir, split_ext(p)[0] if kind != "copy" else p.name)
        if key in names:
            raise PackError(f"{p}: same stem as {names[key]} in one folder; the packed names would clash")
        names[key] = p
        jobs.append(Job(p, dst / rel_dir, kind, max_side if kind != "copy" else None, quality, lossless))
    return jobs


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def verify_dataset(src: Path, dst: Path, max_side: int | None, instances: bool) -> dict[str, Any]:
    """The packed dataset reads back as the original: same samples, stems and official splits,
    every label file equal to the original's labels (resized the same way), image shapes as
    expected. Returns {"samples", "labels_checked", "mean_psnr_db"}; PackError on a mismatch."""
    a, b = discover_pairs(src), discover_pairs(dst)
    if a.stems != b.stems:
        raise PackError(f"{dst}: packed stems differ from {src} "
                        f"({len(b.stems)} vs {len(a.stems)} samples)")
    if a.official_splits != b.official_splits:
        raise PackError(f"{dst}: official splits differ from {src}")
    if (src / "splits.json").is_file() and \
            (src / "splits.json").read_bytes() != (dst / "splits.json").read_bytes():
        raise PackError(f"{dst / 'splits.json'}: differs from {src / 'splits.json'}")
    psnrs, checked = [], 0
    pairs = [(sa.mask_path, sb.mask_path) for sa, sb in zip(a.samples, b.samples)]
    pairs += [(sa.fov_mask_path, sb.fov_mask_path) for sa, sb in zip(a.samples, b.samples)
              if sa.fov_mask_path is not None]
    if instances and (src / "instances").is_dir():
        for p in sorted((src / "instances").iterdir()):
            if is_image_file(p):
                pairs.append((p, dst / "instances" / f"{split_ext(p)[0]}.png"))
    for pa, pb in pairs:
        if pb is None:
            raise PackError(f"{dst}: no packed counterpart of {pa}")
        want = read_mask(pa)
        want = resize_labels(want, scaled_hw(*want.shape[:2], max_side))
        got = read_mask(pb)
        if want.shape != got.shape or not np.array_equal(want, got):
            raise PackError(f"{pb}: labels differ from {pa} after the reader's thresholding")
        checked += 1
    for sa, sb in zip(a.samples, b.samples):
        ia, ib = read_image(sa.image_path), read_image(sb.image_path)
        hw = scaled_hw(*ia.shape[:2], max_side)
        if ib.shape[:2] != hw:
            raise PackError(f"{sb.image_path}: shape {ib.shape[:2]}, expected {hw}")
        if ia.dtype == np.uint8:
            ia = resize_image(_image_for_webp(ia), hw)
            if ia.ndim == 2 and ib.ndim == 3:
                ib = ib[:, :, 0]    # WebP stores grey as RGB with equal channels
            psnrs.append(_psnr(ia, ib[..., : ia.shape[2]] if ia.ndim == 3 else ib))
    finite = [p for p in psnrs if math.isfinite(p)]
    return {"samples": len(b.samples), "labels_checked": checked,
            "mean_psnr_db": round(float(np.mean(finite)), 2) if finite else None}


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parse_per_dataset(values: list[str], names: list[str], flag: str, low: int, high: int,
                      default: int | None) -> dict[str, int | None]:
    """``N`` (every dataset) and/or ``NAME=N`` items -> {dataset: value}; ``default`` elsewhere."""
    out: dict[str, int | None] = dict.fromkeys(names, default)
    for v in values:
        name, _, num = v.rpartition("=")
        try:
            value = int(num)
        except ValueError:
            raise PackError(f"{flag} {v!r}: expected N or NAME=N") from None
        if not low <= value <= high:
            raise PackError(f"{flag} {v!r}: must be in {low}..{high}")
        if name and name not in out:
            raise PackError(f"{flag} {v!r}: {name} is not among the packed datasets")
        for k in ([name] if name else names):
            out[k] = value
    return out


def mib(n: int) -> float:
    return n / 2 ** 20


def half_checkpoint_bytes(src: Path) -> bytes:
    """A ``.pt`` state dict with its float32 tensors stored as float16: half the bytes, for a
    working tree with a size limit; ``hrmedseg reproduce`` says so in the row's deviations."""
    import torch
    state = torch.load(src, map_location="cpu", weights_only=True)
    inner = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(inner, dict):
        raise PackError(f"{src}: not a state dict checkpoint; --half-weights needs one")
    half = {k: (v.half() if isinstance(v, torch.Tensor) and v.dtype == torch.float32 else v)
            for k, v in inner.items()}
    buf = io.BytesIO()
    torch.save(half, buf)
    return buf.getvalue()


def pack(src: Path, dst: Path, datasets: list[str], *, quality: dict[str, int] | None = None,
         lossless: bool = False, max_side: dict[str, int | None] | None = None,
         instances: bool = True, weights: list[Path] = (), budget_mib: float | None = None,
         half_weights: bool = False, verify: bool = True, jobs: int = 1, force: bool = False,
         log=print) -> dict[str, Any]:  # noqa: ANN001 - any print-like callable
    """Pack ``datasets`` of ``src`` into ``dst`` (see the module text); returns the manifest."""
    max_side = max_side or {}
    quality = {n: (quality or {}).get(n) or DEFAULT_QUALITY for n in datasets}
    for name in datasets:
        if not (src / name).is_dir():
            raise PackError(f"{src / name}: dataset folder not found")
    for w in weights:
        if not Path(w).is_file():
            raise PackError(f"{w}: weights file not found")
    # float16 copies are made (and their sources checked) before any dataset is packed
    halves = {Path(w).name: half_checkpoint_bytes(Path(w)) for w in weights} if half_weights else {}
    weight_sizes = {Path(w).name: len(halves[Path(w).name]) if half_weights else Path(w).stat().st_size
                    for w in weights}
    if dst.exists() and not force:
        raise PackError(f"{dst}: exists; pass --force to replace it")
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plans = {name: plan_dataset(src / name, partial / name, max_side.get(name), quality[name], lossless,
                                instances) for name in datasets}
    manifest: dict[str, Any] = {"script": "benchmarks/pack_data.py", "commit": source_commit() or "unknown",
                                "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "device": f"CPU {platform.machine()}",
                                "source": str(src), "lossless": lossless, "instances": instances, "datasets": {},
                                "weights": {}}
    try:
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            for name, plan in plans.items():
                sizes = list(pool.map(pack_file, plan, chunksize=8))
                manifest["datasets"][name] = {
                    "files": len(sizes), "source_mib": round(mib(folder_bytes(src / name)), 2),
                    "mib": round(mib(sum(s for _, s in sizes)), 2), "max_side": max_side.get(name),
                    "quality": None if lossless else quality[name]}
                log(f"{name}: {len(sizes)} files, {manifest['datasets'][name]['source_mib']:.1f} MiB"
                    f" -> {manifest['datasets'][name]['mib']:.1f} MiB")
        if verify:
            for name in datasets:
                report = verify_dataset(src / name, partial / name, max_side.get(name), instances)
                manifest["datasets"][name]["check"] = report
                log(f"{name}: {report['samples']} samples, {report['labels_checked']} label files equal"
                    f" to the original's, image PSNR {report['mean_psnr_db']} dB")
        weights_bytes = sum(weight_sizes.values())
        total = folder_bytes(partial) + weights_bytes
        manifest["weights"] = {name: round(mib(n), 2) for name, n in weight_sizes.items()}
        manifest["weights_dtype"] = "float16" if half_weights else "as given"
        manifest["total_mib"] = round(mib(total), 2)
        if budget_mib is not None and mib(total) > budget_mib:
            raise PackError(f"{dst}: packed size {mib(total):.1f} MiB exceeds --budget-mib "
                            f"{budget_mib:g}; nothing written")
        write_json_atomic(partial / MANIFEST, manifest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(partial, dst)
    if weights:
        wdir = dst.parent / "weights"
        wdir.mkdir(parents=True, exist_ok=True)
        for w in weights:
            if half_weights:
                atomic_write_bytes(wdir / Path(w).name, halves[Path(w).name])
            else:
                shutil.copyfile(w, wdir / Path(w).name)
    parts = [f"{k} {v['mib']:.1f}" for k, v in manifest["datasets"].items()]
    parts += [f"weights {mib(weights_bytes):.1f}"] if weights else []
    log(f"total {manifest['total_mib']:.1f} MiB ({', '.join(parts)} MiB) in {dst}")
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default="../shared/data", help="folder holding the dataset folders")
    ap.add_argument("--dst", default=".gpu/data", help="packed copy (replaced with --force)")
    ap.add_argument("--datasets", default="dsb2018,kvasir-seg,drive",
                    help="comma-separated dataset folder names")
    ap.add_argument("--quality", action="append", default=[], metavar="[NAME=]Q",
                    help=f"WebP quality of images, 1..100 (all datasets, or NAME only); repeatable; "
                         f"default {DEFAULT_QUALITY}")
    ap.add_argument("--lossless", action="store_true", help="lossless WebP images")
    ap.add_argument("--max-side", action="append", default=[], metavar="[NAME=]N",
                    help="downscale so the longer side is at most N (all datasets, or NAME only); "
                         "repeatable; default: keep sizes")
    ap.add_argument("--no-instances", action="store_true",
                    help="leave instances/ folders (instance-id masks) out")
    ap.add_argument("--weights", nargs="*", default=[], help="files to copy into DST/../weights/")
    ap.add_argument("--half-weights", action="store_true",
                    help="store the weights' float32 tensors as float16 (half the size)")
    ap.add_argument("--budget-mib", type=float, default=None,
                    help="refuse when data and weights together exceed this many MiB")
    ap.add_argument("--no-verify", action="store_true", help="skip the read-back check")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--force", action="store_true", help="replace an existing DST")
    args = ap.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    try:
        pack(Path(args.src), Path(args.dst), names,
             quality=parse_per_dataset(args.quality, names, "--quality", 1, 100, DEFAULT_QUALITY),
             lossless=args.lossless, instances=not args.no_instances,
             max_side=parse_per_dataset(args.max_side, names, "--max-side", 16, 1 << 20, None),
             weights=[Path(w) for w in args.weights], budget_mib=args.budget_mib,
             half_weights=args.half_weights,
             verify=not args.no_verify, jobs=args.jobs, force=args.force)
    except (PackError, ImageReadError) as exc:
        print(f"pack_data: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
