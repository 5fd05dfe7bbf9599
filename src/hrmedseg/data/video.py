"""Videos (MP4/AVI/MOV/MKV via PyAV) and frame folders: reading, frame-wise prediction, writing.

* :func:`open_video` gives a :class:`VideoInfo` (frame count, size, rate as a ``Fraction``) and
  :func:`iter_frames` RGB uint8 frames; a frame folder (images named in frame order, natural sort)
  is a video too, at ``fps`` frames per second.
* :func:`predict_video` segments frames ``batch_size`` at a time and writes, at the input's frame
  rate, a mask video (labels as grey 0/255 for binary models, class colours otherwise), an overlay
  video and optional per-frame label PNGs (exact labels; videos are lossy).
* :func:`sequence_of` maps frame stems (``seq01_0005``, ``seq01_frame0005``, ``seq01/0005``) to
  their sequence, for ``random_split(..., group_of=sequence_of)``.

Bad files raise :class:`hrmedseg.data.io.ImageReadError` (one line naming the file). Needs PyAV
(``pip install av``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .io import ImageReadError, is_image_file, read_image

PathLike = str | os.PathLike

__all__ = ["VIDEO_EXTENSIONS", "VideoInfo", "is_video_file", "open_video", "iter_frames", "VideoWriter",
           "predict_video", "sequence_of", "frame_files"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"})
_SEQ = re.compile(r"^(?P<seq>.+?)[_\-. ](?:frame|frm|f|img|image)?[_\-]?\d+$", re.IGNORECASE)


def sequence_of(stem: str) -> str:
    """The sequence a frame belongs to: folder part of ``seq/0001``, else the stem without its trailing
    frame number (``seq01_0001``, ``seq01-frame0001``, ``seq01_f12`` -> ``seq01``); else the stem."""
    s = str(stem).replace("\\", "/")
    if "/" in s:
        return s.rsplit("/", 1)[0]
    m = _SEQ.match(s)
    return m["seq"] if m else s


def is_video_file(path: PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir()


def _av(path: PathLike):  # noqa: ANN202
    from .._optional import MissingExtraError, require
    try:
        return require("av", feature="reading/writing videos")
    except MissingExtraError as exc:
        raise ImageReadError(path, str(exc)) from None


def _natural_key(p: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


def frame_files(folder: PathLike) -> list[Path]:
    """Image files of a frame folder in natural order (frame2 before frame10)."""
    return sorted((f for f in Path(folder).iterdir() if f.is_file() and is_image_file(f)), key=_natural_key)


@dataclass
class VideoInfo:
    path: str
    frames: int
    width: int
    height: int
    rate: Fraction
    codec: str = ""

    @property
    def fps(self) -> float:
        return float(self.rate)


def _err(path: PathLike, exc: BaseException, what: str = "unreadable video") -> ImageReadError:
    return ImageReadError(path, f"{what} ({' '.join(str(exc).split())[:200] or type(exc).__name__})")


def open_video(path: PathLike, fps: float = 25.0) -> VideoInfo:
    """Frame count, size and rate (frames are decoded and counted: container counts can be wrong)."""
    p = Path(path)
    if p.is_dir():
        files = frame_files(p)
        if not files:
            raise ImageReadError(p, "no image frames in folder")
        h, w = read_image(files[0]).shape[:2]
        return VideoInfo(str(p), len(files), int(w), int(h), Fraction(fps).limit_denominator(1001), "frames")
    n, size, rate, codec = 0, None, None, ""
    for n_, frame, info in _decode(p):
        n = n_ + 1
        size, rate, codec = (frame.shape[1], frame.shape[0]), info[0], info[1]
    if n == 0 or size is None:
        raise ImageReadError(p, "video has no decodable frames")
    return VideoInfo(str(p), n, int(size[0]), int(size[1]), rate, codec)


def _decode(p: Path) -> Iterator[tuple[int, np.ndarray, tuple[Fraction, str]]]:
    av = _av(p)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    if p.stat().st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        container = av.open(str(p))
    except Exception as exc:  # noqa: BLE001
        raise _err(p, exc) from None
    try:
        if not container.streams.video:
            raise ImageReadError(p, "no video stream in file")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(25)
        info = (Fraction(rate), stream.codec_context.name)
        i = 0
        try:
            for frame in container.decode(stream):
                yield i, frame.to_ndarray(format="rgb24"), info
                i += 1
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _err(p, exc, f"corrupt video after {i} frames" if i else "unreadable video") from None
    finally:
        container.close()


def iter_frames(path: PathLike) -> Iterator[np.ndarray]:
    """RGB uint8 ``(H, W, 3)`` frames of a video file, or the images of a frame folder."""
    p = Path(path)
    if p.is_dir():
        for f in frame_files(p):
            yield read_image(f)
        return
    for _, frame, _ in _decode(p):
        yield frame


class VideoWriter:
    """Write RGB uint8 frames at ``rate``: H.264 (yuv420p) MP4 for even sizes, else lossless FFV1 MKV
    (the path's suffix is changed to ``.mkv``; see :attr:`path`). ``lossless=True`` forces FFV1."""

    def __init__(self, path: PathLike, width: int, height: int, rate: Fraction | float,
                 lossless: bool = False) -> None:
        av = _av(path)
        p = Path(path)
        odd = width % 2 or height % 2
        self.lossless = bool(lossless or odd)
        if self.lossless and p.suffix.lower() != ".mkv":
            p = p.with_suffix(".mkv")
        self.path = p
        p.parent.mkdir(parents=True, exist_ok=True)
        rate = Fraction(rate).limit_denominator(100000) if not isinstance(rate, Fraction) else rate
        self._c = av.open(str(p), mode="w")
        if self.lossless:
            self._s = self._c.add_stream("ffv1", rate=rate)
            self._s.pix_fmt = "bgr0"
        else:
            try:
                self._s = self._c.add_stream("libx264", rate=rate)
                self._s.options = {"crf": "18", "preset": "veryfast"}
            except Exception:  # noqa: BLE001 - a PyAV/FFmpeg build without x264
                self._s = self._c.add_stream("mpeg4", rate=rate)
                self._s.bit_rate = 8_000_000
            self._s.pix_fmt = "yuv420p"
        self._s.width, self._s.height = int(width), int(height)
        self._av = av

    def write(self, rgb: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        for pkt in self._s.encode(frame):
            self._c.mux(pkt)

    def close(self) -> None:
        for pkt in self._s.encode():
            self._c.mux(pkt)
        self._c.close()

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _mask_rgb(labels: np.ndarray, binary: bool) -> np.ndarray:
    from .io import class_palette
    if binary:
        g = (labels > 0).astype(np.uint8) * np.uint8(255)
        return np.repeat(g[:, :, None], 3, axis=2)
    pal = class_palette(max(int(labels.max()) + 1, 2))
    return pal[labels.astype(np.int64)]


def predict_video(segmenter: Any, path: PathLike, out_dir: PathLike, *, batch_size: int = 8,
                  fps: float = 25.0, overlay: bool = True, frames_png: bool = False,
                  stem: str | None = None, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Segment every frame; write ``{stem}_mask.mp4``, ``{stem}_overlay.mp4`` (``.mkv`` for odd sizes)
    and with ``frames_png`` ``{stem}_frames/{stem}_{i:06d}.png`` label PNGs. Returns what was written."""
    from ..inference.visualize import prediction_overlay
    from .io import write_mask_png

    p = Path(path)
    out = Path(out_dir)
    stem = stem or p.stem
    info_rate: Fraction | None = None
    if p.is_dir():
        info_rate = Fraction(fps).limit_denominator(1001)
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
                writers["mask"] = VideoWriter(out / f"{stem}_mask.mp4", w, h, info_rate)
                if overlay:
                    writers["overlay"] = VideoWriter(out / f"{stem}_overlay.mp4", w, h, info_rate)
            writers["mask"].write(_mask_rgb(lab, binary))
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
        if p.is_dir():
            source: Iterator[np.ndarray] = iter_frames(p)
        else:
            def gen() -> Iterator[np.ndarray]:
                nonlocal info_rate
                for _, fr, info in _decode(p):
                    info_rate = info[0]
                    yield fr
            source = gen()
        for fr in source:
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
    return {"frames": n, "rate": info_rate, "width": int(size[1]), "height": int(size[0]),
            "mask": writers["mask"].path, "overlay": writers["overlay"].path if overlay else None,
            "frames_dir": frames_dir if frames_png else None, "foreground": fg / n}
