"""Segmenting a video (or a frame folder) frame by frame and writing the result as videos.

:func:`predict_video` segments frames ``batch_size`` at a time and writes, at the input's frame
rate, a mask video (labels as grey 0/255 for binary models, class colours otherwise), an overlay
video and optional per-frame label PNGs (exact labels; videos are lossy). Reading and writing the
frames is :mod:`hrmedseg.data.video`; bad files raise :class:`hrmedseg.data.io.ImageReadError`.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..data.io import ImageReadError, class_palette, write_mask_png
from ..data.video import PathLike, VideoWriter, iter_frames_with_rate
from .visualize import prediction_overlay

__all__ = ["predict_video", "mask_rgb"]


def mask_rgb(labels: np.ndarray, binary: bool) -> np.ndarray:
    """Label map as an RGB frame: grey 0/255 for binary models, the class palette otherwise."""
    if binary:
        g = (labels > 0).astype(np.uint8) * np.uint8(255)
        return np.repeat(g[:, :, None], 3, axis=2)
    pal = class_palette(max(int(labels.max()) + 1, 2))
    return pal[labels.astype(np.int64)]


def predict_video(segmenter: Any, path: PathLike, out_dir: PathLike, *, batch_size: int = 8,
                  fps: float = 25.0, overlay: bool = True, frames_png: bool = False,
                  stem: str | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Segment every frame; write ``{stem}_mask.mp4``, ``{stem}_overlay.mp4`` (``.mkv`` for odd sizes)
    and with ``frames_png`` ``{stem}_frames/{stem}_{i:06d}.png`` label PNGs. Returns what was written.

    ``fps`` is the rate of a frame folder; a video file keeps its own rate."""
    p = Path(path)
    out = Path(out_dir)
    stem = stem or p.stem
    rate: Fraction | None = None
    binary = int(getattr(segmenter, "num_classes", 1)) <= 2
    writers: dict[str, VideoWriter] = {}
    frames_dir = out / f"{stem}_frames"
    n = 0
    fg = 0.0
    size = None

    def flush(batch: list[np.ndarray]) -> None:
        nonlocal n, fg
        preds = segmenter.predict_arrays(batch)
        for img, pr in zip(batch, preds):
            lab = pr.labels
            if "mask" not in writers:
                h, w = lab.shape
                writers["mask"] = VideoWriter(out / f"{stem}_mask.mp4", w, h, rate)
                if overlay:
                    writers["overlay"] = VideoWriter(out / f"{stem}_overlay.mp4", w, h, rate)
            writers["mask"].write(mask_rgb(lab, binary))
            if overlay:
                writers["overlay"].write(prediction_overlay(img, lab))
            if frames_png:
                frames_dir.mkdir(parents=True, exist_ok=True)
                write_mask_png(frames_dir / f"{stem}_{n:06d}.png", lab)
            fg += float((lab > 0).mean())
            n += 1
            if progress is not None:
                progress(n)

    try:
        batch: list[np.ndarray] = []
        for fr, rate in iter_frames_with_rate(p, fps):
            if size is None:
                size = fr.shape[:2]
            elif fr.shape[:2] != size:
                raise ImageReadError(p, f"frame {n + len(batch)} is {fr.shape[1]}x{fr.shape[0]}, "
                                        f"earlier frames {size[1]}x{size[0]}")
            batch.append(fr)
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
    finally:
        for w in writers.values():
            w.close()
    if n == 0:
        raise ImageReadError(p, "video has no decodable frames")
    return {"frames": n, "rate": rate, "width": int(size[1]), "height": int(size[0]),
            "mask": writers["mask"].path, "overlay": writers["overlay"].path if overlay else None,
            "frames_dir": frames_dir if frames_png else None, "foreground": fg / n}
