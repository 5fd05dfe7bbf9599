"""``hrmedseg predict MODEL INPUTS... -o OUT``: masks and overlays for files or folders.

Volumes (a 3-D ``.nii``/``.nii.gz``, ``.mha``/``.nrrd`` with SimpleITK, or a folder holding one
DICOM series) are segmented slice by slice along ``--axis`` after the ``--window`` intensity preset
and written as ``{stem}_labels.nii.gz`` with the input's geometry, plus an overlay PNG of the slice
with the most foreground. Videos (``.mp4``, ``.avi``, ...) give ``{stem}_mask.mp4`` and
``{stem}_overlay.mp4`` at the input frame rate, and with ``--frames-png`` per-frame label PNGs.
Under torchrun (``WORLD_SIZE`` > 1) rank ``r`` handles inputs ``r::WORLD_SIZE`` (no process group).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..compiling import COMPILE_MODES


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_batch_size, add_device_argument, add_verb
    p = add_verb(sub, "predict", help="segment image files or folders, writing mask and overlay PNGs")
    p.add_argument("model", help="run folder, saved model folder, or name[:pretrained-tag]")
    p.add_argument("inputs", nargs="*", help="image files and/or folders")
    p.add_argument("--samples", action="store_true",
                   help="use the CC0 DSB-2018 sample images shipped in the package (with their masks as --gt)")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    p.add_argument("--split", help="with one dataset folder (images/ + masks/) as input: only the "
                                   "images of this split (DATA/splits.json, else the split the run "
                                   "folder MODEL drew), scored against their masks")
    p.add_argument("--splits", help="with --split: the splits JSON (default DATA/splits.json)")
    add_device_argument(p)
    p.add_argument("--size", type=int, nargs="+", help="model input size (default: as trained)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass")
    p.add_argument("--mode", default="resize", choices=["resize", "tile"],
                   help="resize: whole image at the model size (default); tile: sliding window at "
                        "full resolution with Gaussian blending (large images, TIFFs read lazily)")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (tile mode)")
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per forward (tile mode)")
    p.add_argument("--compile", default="auto", choices=("auto", "off", *COMPILE_MODES),
                   help="torch.compile the model; auto (default): CUDA graphs on a GPU for models "
                        "with a compile parity record, eager elsewhere; reduce-overhead: CUDA "
                        "graphs, the fastest on a GPU for many images of one size; the first "
                        "batch compiles, kernels are cached for the next run")
    add_batch_size(p, 4, help="images (or volume slices, video frames) per forward")
    p.add_argument("--gt", type=Path, help="a ground-truth mask (single input) or a folder of masks "
                                           "with matching stems: print Dice/IoU against it")
    p.add_argument("--no-overlay", action="store_true", help="write masks only, no overlay PNGs")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files instead of stopping")
    p.add_argument("--axis", type=int, default=2, choices=[0, 1, 2],
                   help="volumes: voxel axis to slice along (2 = axial for usual CT/MR)")
    p.add_argument("--window", default="percentile",
                   help="volumes: intensity preset abdomen|lung|bone|brain|soft_tissue (CT, HU), "
                        "percentile|minmax, or LOW:HIGH")
    p.add_argument("--frames-png", action="store_true", help="videos: also write per-frame label PNGs")
    p.add_argument("--fps", type=float, default=25.0, help="frame folders given as videos: frame rate")
    p.set_defaults(func=run)


def _kind(p: Path) -> str:
    """"image", "volume" or "video" for one input file or series folder."""
    from ..data.video import is_video_file
    from ..data.volumes import is_volume_path
    if is_video_file(p):
        return "video"
    if is_volume_path(p):
        return "volume"
    return "image"


def _collect(inputs: list[str]) -> list[Path]:
    return [p for p, _ in _collect_kinds(inputs)]


def _collect_kinds(inputs: list[str]) -> list[tuple[Path, str]]:
    from ..data.io import is_image_file
    from ..data.volumes import is_dicom_series_dir
    files: list[tuple[Path, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            if is_dicom_series_dir(p):
                files.append((p, "volume"))
                continue
            for f in sorted(p.rglob("*")):
                if f.is_file() and is_image_file(f):  # videos only when named explicitly
                    files.append((f, _kind(f)))
        elif p.is_file():
            files.append((p, _kind(p)))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return files


def _split_inputs(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """``--split``: the images of that split of the one dataset folder given; their masks are the
    ground truth."""
    from ..errors import UserError
    from ._common import samples_for_split
    if len(args.inputs) != 1 or not Path(args.inputs[0]).is_dir():
        raise UserError("--split needs exactly one dataset folder (images/ + masks/) as input")
    _, samples = samples_for_split(args.inputs[0], args.split, args.splits, model=args.model)
    if args.gt is None:
        masks = {Path(s.mask_path).parent for s in samples}
        args.gt = masks.pop() if len(masks) == 1 else None
    return [(Path(s.image_path), "image") for s in samples]


def shard(items: list, env: dict | None = None) -> list:
    """Under torchrun (``WORLD_SIZE`` > 1) the items of this rank, ``items[RANK::WORLD_SIZE]``."""
    import os
    e = os.environ if env is None else env
    world = int(e.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return items
    rank = int(e.get("RANK", e.get("LOCAL_RANK", "0")) or 0)
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return items[rank::world]


# Overlays of larger images would need the whole image in memory as RGB; their masks are still written.
OVERLAY_MAX_PIXELS = 60_000_000


def sample_dir() -> Path:
    """The shipped sample images (DSB-2018 test split, CC0)."""
    from importlib import resources
    return Path(str(resources.files("hrmedseg") / "samples" / "dsb2018"))


def _gt_for(gt: Path | None, image: Path, single: bool) -> Path | None:
    if gt is None:
        return None
    if gt.is_file() and single:
        return gt
    if gt.is_dir():
        for cand in sorted(gt.glob(image.stem + ".*")) + sorted(gt.glob(image.stem + "_mask.*")):
            return cand
    return None


def run(args: argparse.Namespace) -> int:
    from ..data.io import ImageReadError, read_image, read_mask, write_image_png, write_mask_png
    from ..metrics.segmentation import dice, iou
    from ..inference.segmenter import Segmenter
    from ..inference.visualize import prediction_overlay
    from ..progress import progress
    from ._common import device_arg
    from ..errors import UserError

    if args.samples:
        root = sample_dir()
        args.inputs = list(args.inputs) + [str(root / "images")]
        args.gt = args.gt or root / "masks"
    if not args.inputs:
        raise FileNotFoundError("no inputs: give image files/folders, or --samples")
    args.device = device_arg(args.device)
    if args.split:
        all_kinds = _split_inputs(args)
    else:
        all_kinds = _collect_kinds(args.inputs)
    single = sum(k == "image" for _, k in all_kinds) == 1
    kinds = shard(all_kinds)
    files = [f for f, k in kinds if k == "image"]
    others = [(f, k) for f, k in kinds if k != "image"]
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    seg = Segmenter(args.model, device=args.device, size=size, precision=args.precision,
                    batch_size=args.batch_size, mode=args.mode, overlap=args.overlap,
                    tile_batch=args.tile_batch,
                    compile=None if args.compile == "off" else args.compile)
    args.out.mkdir(parents=True, exist_ok=True)
    n_ok, n_bad = 0, 0
    for f, kind in others:
        try:
            if kind == "volume":
                _predict_volume_file(seg, f, args)
            else:
                _predict_video_file(seg, f, args)
        except ImageReadError as exc:
            if not args.skip_bad:
                raise UserError(_skip_bad_hint(exc)) from None
            print(f"skipped: {exc}")
            n_bad += 1
    if not files:
        if others:
            print(f"wrote {len(others) - n_bad} outputs to {args.out}" + (f" ({n_bad} skipped)" if n_bad else ""))
        return 0
    bar = progress(files, unit="img", desc="predict", disable=len(files) < 2)
    for f in bar:
        try:
            if args.mode == "tile":
                pred = seg.predict_file(f)  # TIFFs are read window by window
                img = pred.image
            else:
                img = read_image(f)
                pred = seg.predict_arrays([img], [str(f)])[0]
        except ImageReadError as exc:
            if not args.skip_bad:
                raise UserError(_skip_bad_hint(exc)) from None
            bar.write(f"skipped: {exc}")
            n_bad += 1
            continue
        scale = 255 if seg.num_classes <= 2 else 1
        write_mask_png(args.out / f"{f.stem}_mask.png", (pred.labels * scale).astype("uint8")
                       if scale != 1 else pred.labels)
        gt_path = _gt_for(args.gt, f, single)
        gt = read_mask(gt_path) if gt_path else None
        if not args.no_overlay and pred.labels.size <= OVERLAY_MAX_PIXELS:
            write_image_png(args.out / f"{f.stem}_overlay.png",
                            prediction_overlay(np.asarray(img), pred.labels, gt))
        msg = f"{f.name}: {pred.labels.shape[1]}x{pred.labels.shape[0]}, foreground {100 * (pred.labels > 0).mean():.1f}%"
        if gt is not None:
            msg += f", Dice {100 * dice(pred.labels > 0, gt > 0):.2f}, IoU {100 * iou(pred.labels > 0, gt > 0):.2f} vs {gt_path.name}"
        (bar.write if len(files) > 1 else print)(msg)
        n_ok += 1
    print(f"wrote {n_ok} masks{'' if args.no_overlay else ' and overlays'} to {args.out}"
          + (f" ({n_bad} skipped)" if n_bad else ""))
    return 0


def _skip_bad_hint(exc: Exception) -> str:
    """The read error's line, plus how to go on past such files."""
    return f"{str(exc).strip().splitlines()[0]} (pass --skip-bad to skip unreadable files)"


def _predict_volume_file(seg, f: Path, args: argparse.Namespace) -> None:  # noqa: ANN001
    from ..data.io import write_image_png
    from ..data.volumes import read_volume, volume_stem, write_label_volume
    from ..inference.volume import predict_volume, volume_overlay

    vol = read_volume(f)
    try:
        labels = predict_volume(seg, vol, axis=args.axis, window=args.window, batch_size=args.batch_size)
    except ValueError as exc:
        from ..data.io import ImageReadError
        raise ImageReadError(f, str(exc)) from None
    stem = volume_stem(f)
    out = write_label_volume(args.out / f"{stem}_labels.nii.gz", labels, like=vol)
    if not args.no_overlay:
        write_image_png(args.out / f"{stem}_overlay.png",
                        volume_overlay(vol, labels, axis=args.axis, window=args.window))
    sp = "x".join(f"{v:.3g}" for v in vol.spacing)
    print(f"{f.name}: volume {'x'.join(map(str, vol.shape))} ({sp} mm, {''.join(vol.orientation)}), "
          f"axis {args.axis}, window {args.window}, foreground {100 * (labels > 0).mean():.1f}% -> {out.name}")


def _predict_video_file(seg, f: Path, args: argparse.Namespace) -> None:  # noqa: ANN001
    from ..inference.video import predict_video

    r = predict_video(seg, f, args.out, batch_size=args.batch_size, fps=args.fps,
                      overlay=not args.no_overlay, frames_png=args.frames_png)
    print(f"{f.name}: video {r['frames']} frames {r['width']}x{r['height']} at {float(r['rate']):.3g} fps, "
          f"foreground {100 * r['foreground']:.1f}% -> {r['mask'].name}")
