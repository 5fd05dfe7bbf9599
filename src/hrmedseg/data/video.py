"""Videos (MP4/AVI/MOV/MKV via PyAV) and frame folders: reading and writing frames.

* :func:`open_video` gives a :class:`VideoInfo` (frame count, size, rate as a ``Fraction``),
  :func:`iter_frames` RGB uint8 frames and :func:`iter_frames_with_rate` the frames with the
  stream's rate; a frame folder (images named in frame order, natural sort) is a video too, at
  ``fps`` frames per second. :class:`VideoWriter` writes RGB frames.
* Segmenting a video frame by frame is :func:`hrmedseg.inference.video.predict_video`.
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
from typing import Any, Iterator

import numpy as np

from .io import ImageReadError, is_image_file, read_image

PathLike = str | os.PathLike

__all__ = ["VIDEO_EXTENSIONS", "VideoInfo", "is_video_file", "open_video", "iter_frames", "VideoWriter",
           "iter_frames_with_rate", "sequence_of", "frame_files"]

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


def iter_frames_with_rate(path: PathLike, fps: float = 25.0) -> Iterator[tuple[np.ndarray, Fraction]]:
    """``(frame, rate)`` pairs: RGB uint8 ``(H, W, 3)`` frames of a video file with the stream's frame
    rate, or the images of a frame folder with ``fps``."""
    p = Path(path)
    if p.is_dir():
        rate = Fraction(fps).limit_denominator(1001)
        for f in frame_files(p):
            yield read_image(f), rate
        return
    for _, frame, info in _decode(p):
        yield frame, info[0]


def iter_frames(path: PathLike) -> Iterator[np.ndarray]:
    """RGB uint8 ``(H, W, 3)`` frames of a video file, or the images of a frame folder."""
    for frame, _ in iter_frames_with_rate(path):
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
