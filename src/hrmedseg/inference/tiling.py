"""Sliding-window (tiled) inference for images far larger than the model input.

The image is cut into tiles of the model size on a regular grid with a configurable overlap
(nnU-Net's rule: ``n = ceil((S - T) / (T * (1 - overlap))) + 1`` evenly spaced tiles per
axis, the first at 0 and the last flush with the border). Tiles are segmented ``tile_batch``
at a time; their probabilities (sigmoid for one output channel, softmax otherwise) are
weighted by a Gaussian (σ = tile / 8, as nnU-Net) and added into an accumulator of the output
size. The Gaussian is separable and the tiles form a full grid, so the sum of weights at a
pixel is ``row_sum(y) * col_sum(x)``: no full-size weight map is kept, and the host holds only
the accumulator (K×H×W, float32 or float16) and the label map.

Memory: on the device one tile batch (plus the model's activations for it); on the host the
accumulator, the labels and one tile batch. The image itself can be a lazy
:class:`ImageSource` — :class:`TiffSource` reads only each tile's window of a (huge) TIFF,
through a memory map for uncompressed contiguous pages, zarr (``page.aszarr()``) when installed,
or by decoding just the strips/tiles that intersect the window; anything else falls back to
reading the page into memory.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["tile_starts", "gaussian_weights_1d", "gaussian_weights", "ImageSource", "ArraySource",
           "TiffSource", "open_source", "predict_tiled", "TiledResult"]


# --------------------------------------------------------------------------------- geometry
def tile_starts(size: int, tile: int, overlap: float = 0.25) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap``.

    ``size <= tile`` gives one tile at 0 (the image is padded up to the tile)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= tile:
        return [0]
    step = tile * (1.0 - overlap)
    n = int(math.ceil((size - tile) / step)) + 1
    if n == 1:
        return [0]
    actual = (size - tile) / (n - 1)
    return [int(round(i * actual)) for i in range(n)]


def gaussian_weights_1d(length: int, sigma_scale: float = 1.0 / 8, min_value: float = 1e-2
                        ) -> np.ndarray:
    """1-D Gaussian over ``length`` pixels centred on the tile, σ = length·sigma_scale, max 1,
    clamped below at ``min_value`` so border pixels (and float16 accumulators) never get 0."""
    sigma = max(length * sigma_scale, 1e-6)
    x = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.max()
    return np.maximum(g, min_value).astype(np.float32)


def gaussian_weights(tile: Sequence[int], sigma_scale: float = 1.0 / 8, min_value: float = 1e-2
                     ) -> np.ndarray:
    """2-D blending weights (outer product of the 1-D Gaussians), shape ``tile``."""
    return np.outer(gaussian_weights_1d(tile[0], sigma_scale, min_value),
                    gaussian_weights_1d(tile[1], sigma_scale, min_value))


def _weight_sum(size: int, tile: int, starts: list[int], g: np.ndarray) -> np.ndarray:
    s = np.zeros(size, dtype=np.float64)
    for a in starts:
        n = min(tile, size - a)
        s[a:a + n] += g[:n]
    return s.astype(np.float32)


# --------------------------------------------------------------------------------- sources
class ImageSource:
    """A 2-D image (optionally with channels) that can be read window by window."""

    shape: tuple[int, ...]   # (H, W) or (H, W, C), like read_image
    dtype: np.dtype

    @property
    def height(self) -> int:
        return int(self.shape[0])

    @property
    def width(self) -> int:
        return int(self.shape[1])

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def __array__(self, dtype=None, copy=None) -> np.ndarray:  # noqa: ANN001 - numpy protocol
        """The whole image (reads everything: only for overlays of small images)."""
        arr = self.read(0, self.height, 0, self.width)
        return arr if dtype is None else arr.astype(dtype)

    def close(self) -> None:
        pass


class ArraySource(ImageSource):
    """An in-memory (or memory-mapped) array."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim not in (2, 3):
            raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {array.shape}")
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.array[y0:y1, x0:x1])


class TiffSource(ImageSource):
    """First page of a TIFF, read window by window without loading the page.

    ``backend`` tells how: "memmap" (uncompressed contiguous), "zarr" (tifffile's zarr store),
    "chunks" (decode only the strips/tiles intersecting a window; an LRU cache of decoded
    chunks of at most ``cache_bytes`` serves overlapping windows) or "memory" (fallback: the
    page was read whole, e.g. for planar-separate or palette pages).
    """

    def __init__(self, path: str | os.PathLike, cache_bytes: int = 64 << 20,
                 prefer: str | None = None) -> None:
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        if len(self._tif.pages) == 0:
            from ..data.io import ImageReadError
            self._tif.close()
            raise ImageReadError(self.path, "TIFF has no pages")
        page = self._tif.pages[0]
        self._page = page
        self.dtype = np.dtype(page.dtype)
        spp = int(page.samplesperpixel)
        simple = (page.axes in ("YX", "YXS") and int(getattr(page, "photometric", 1)) != 3
                  and (spp == 1 or int(page.planarconfig) == 1) and not page.is_subsampled
                  and self.dtype != np.bool_ and int(page.bitspersample) % 8 == 0)
        self.shape = tuple(int(v) for v in page.shape)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._cached = 0
        self.chunks_decoded = 0
        self.backend = "memory"
        self._array: np.ndarray | None = None
        if simple and prefer in (None, "memmap") and page.is_memmappable:
            self._array = tifffile.memmap(self.path, page=0, mode="r")
            self.backend = "memmap"
        elif simple and prefer in (None, "zarr") and _has_zarr():
            import zarr
            self._array = zarr.open(page.aszarr(), mode="r")
            self.backend = "zarr"
        elif simple and prefer in (None, "chunks") and len(page.dataoffsets) > 0:
            self.backend = "chunks"
            if page.is_tiled:
                self._chunk = (int(page.tilelength), int(page.tilewidth))
            else:
                rps = int(getattr(page, "rowsperstrip", 0) or self.shape[0])
                self._chunk = (min(rps, self.shape[0]), self.shape[1])
            self._across = -(-self.shape[1] // self._chunk[1])
            self._decode = page.decode
            self._jpegtables = getattr(page, "jpegtables", None)
        else:
            from ..data.io import read_image
            self._array = read_image(self.path)
            self.shape = tuple(self._array.shape)
            self.dtype = self._array.dtype

    def _segment(self, index: int) -> np.ndarray:
        hit = self._cache.get(index)
        if hit is not None:
            self._cache.move_to_end(index)
            return hit
        page = self._page
        fh = self._tif.filehandle
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
        if count > 0:
            fh.seek(offset)
            data = fh.read(count)
        else:
            data = None
        seg, _, shape = self._decode(data, index, jpegtables=self._jpegtables)
        self.chunks_decoded += 1
        if seg is None:
            seg = np.zeros(shape, dtype=self.dtype)
        seg = np.asarray(seg).reshape(seg.shape[-3:] if seg.ndim >= 3 else seg.shape)
        # normalised shape (..., length, width, samples) -> (length, width, samples)
        seg = seg.reshape(seg.shape[-3], seg.shape[-2], seg.shape[-1])
        self._cache[index] = seg
        self._cached += seg.nbytes
        while self._cached > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return seg

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._array is not None:
            return np.asarray(self._array[y0:y1, x0:x1])
        ch, cw = self._chunk
        samples = self.shape[2] if len(self.shape) == 3 else 1
        out = np.empty((y1 - y0, x1 - x0, samples), dtype=self.dtype)
        for r in range(y0 // ch, (y1 - 1) // ch + 1):
            for c in range(x0 // cw, (x1 - 1) // cw + 1):
                seg = self._segment(r * self._across + c)
                sy0, sx0 = r * ch, c * cw
                a0, a1 = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                b0, b1 = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = seg[a0 - sy0:a1 - sy0, b0 - sx0:b1 - sx0]
        return out if len(self.shape) == 3 else out[..., 0]

    def close(self) -> None:
        self._cache.clear()
        self._array = None
        self._tif.close()

    def __enter__(self) -> "TiffSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _has_zarr() -> bool:
    try:
        import zarr  # noqa: F401
    except ImportError:
        return False
    return True


def open_source(image: np.ndarray | ImageSource | str | os.PathLike, lazy: bool = True
                ) -> ImageSource:
    """An :class:`ImageSource` for an array, a source, or a file (TIFF lazily when ``lazy``)."""
    if isinstance(image, ImageSource):
        return image
    if isinstance(image, np.ndarray):
        return ArraySource(image)
    p = Path(image)
    if lazy and p.suffix.lower() in (".tif", ".tiff"):
        try:
            return TiffSource(p)
        except Exception as exc:  # noqa: BLE001 - unreadable: let read_image give its one line
            from ..data.io import ImageReadError
            if isinstance(exc, ImageReadError):
                raise
    from ..data.io import read_image
    return ArraySource(read_image(p))


# --------------------------------------------------------------------------------- prediction
class TiledResult:
    """Output of :func:`predict_tiled`: probabilities (K, H, W) and labels (H, W)."""

    def __init__(self, probabilities: np.ndarray, labels: np.ndarray, num_tiles: int) -> None:
        self.probabilities = probabilities
        self.labels = labels
        self.num_tiles = num_tiles


def _windows(h: int, w: int, tile: tuple[int, int], overlap: float) -> tuple[list[int], list[int]]:
    return tile_starts(h, tile[0], overlap), tile_starts(w, tile[1], overlap)


def _global_minmax(source: ImageSource, in_chans: int, block: int = 1024) -> tuple[float, float]:
    from ..data.io import to_model_channels
    lo, hi = np.inf, -np.inf
    for y in range(0, source.height, block):
        for x in range(0, source.width, block):
            t = to_model_channels(source.read(y, min(y + block, source.height),
                                              x, min(x + block, source.width)), in_chans)
            lo, hi = min(lo, float(t.min())), max(hi, float(t.max()))
    return lo, hi


# From this many tiles on (a 6000² image at 1024² with overlap 0.25 has 64) a prediction takes
# long enough on a CPU that a silent terminal looks hung.
PROGRESS_MIN_TILES = 32


def predict_tiled(logits_fn: Callable[[torch.Tensor], torch.Tensor],
                  image: np.ndarray | ImageSource | str | os.PathLike,
                  tile: int | Sequence[int], *, in_chans: int = 3, num_classes: int = 1,
                  activation: str | None = None, normalize: str = "imagenet",
                  overlap: float = 0.25, tile_batch: int = 4, sigma_scale: float = 1.0 / 8,
                  accum_dtype: str | np.dtype = "float32",
                  progress: Callable[[int, int], None] | None = None,
                  show_progress: bool | None = None, desc: str = "tiles") -> TiledResult:
    """Sliding-window segmentation of ``image`` (see the module docstring).

    Args:
        logits_fn: maps a float32 batch (B, in_chans, th, tw) to logits (B, K, th, tw)
            (e.g. ``Segmenter.logits``); it decides the device and precision.
        image: an array (H, W[, C]), an :class:`ImageSource`, or a path (TIFF read lazily).
        tile: the model input size (th, tw).
        activation: "sigmoid" or "softmax"; default sigmoid for K=1, softmax otherwise.
        normalize: "imagenet", "minmax" (global min/max over the whole image, not per tile)
            or "none".
        accum_dtype: "float32" or "float16" accumulator (halves the host memory).
        progress: called with (tiles done, tiles total) after each batch.
        show_progress: report tile progress on stderr (a bar on a terminal, periodic lines
            otherwise, see :mod:`hrmedseg.progress`); None = only for big images, from
            ``PROGRESS_MIN_TILES`` tiles on.
        desc: label of that progress report (e.g. the file name).
    """
    from ..progress import progress as progress_bar
    from ..data.io import normalize as normalize_image, to_model_channels

    th, tw = (tile, tile) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    src = open_source(image)
    h, w = src.height, src.width
    act = activation or ("sigmoid" if num_classes == 1 else "softmax")
    adt = np.dtype(accum_dtype)
    if adt not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise ValueError(f"accum_dtype must be float32 or float16, got {adt}")
    rows, cols = _windows(h, w, (th, tw), overlap)
    gy = gaussian_weights_1d(th, sigma_scale)
    gx = gaussian_weights_1d(tw, sigma_scale)
    wy, wx = _weight_sum(h, th, rows, gy), _weight_sum(w, tw, cols, gx)
    weight_t = torch.from_numpy(np.outer(gy, gx))              # (th, tw), float32
    acc = np.zeros((num_classes, h, w), dtype=adt)
    if normalize == "minmax":
        lo, hi = _global_minmax(src, in_chans)
        scale = 1.0 / (hi - lo) if hi - lo > 1e-12 else 0.0

    def prep(y: int, x: int) -> np.ndarray:
        win = src.read(y, min(y + th, h), x, min(x + tw, w))
        t = to_model_channels(win, in_chans)
        if normalize == "minmax":
            t = (t - np.float32(lo)) * np.float32(scale)
        else:
            t = normalize_image(t, normalize)
        if t.shape[0] != th or t.shape[1] != tw:   # image smaller than the tile: zero padding
            t = np.pad(t, ((0, th - t.shape[0]), (0, tw - t.shape[1]), (0, 0)))
        return t

    positions = [(y, x) for y in rows for x in cols]
    total = len(positions)
    show = total >= PROGRESS_MIN_TILES if show_progress is None else show_progress
    bar = progress_bar(total=total, desc=desc, unit="tile", disable=not show, leave=False)
    for i in range(0, total, tile_batch):
        chunk = positions[i:i + tile_batch]
        batch = torch.from_numpy(np.stack([prep(y, x) for y, x in chunk])).permute(0, 3, 1, 2)
        logits = logits_fn(batch.contiguous())
        probs = torch.sigmoid(logits) if act == "sigmoid" else logits.softmax(dim=1)
        probs = (probs.float() * weight_t.to(probs.device)).cpu().numpy()
        for (y, x), p in zip(chunk, probs):
            ny, nx = min(th, h - y), min(tw, w - x)
            acc[:, y:y + ny, x:x + nx] += p[:, :ny, :nx].astype(adt, copy=False)
        del batch, logits, probs
        bar.update(len(chunk))
        if progress is not None:
            progress(min(i + tile_batch, total), total)
    bar.close()

    # normalise by the separable weight sum and derive labels, a band of rows at a time
    labels = np.empty((h, w), dtype=np.uint8 if num_classes < 256 else np.int32)
    band = max(1, (2 << 20) // max(1, w * num_classes * 4))
    for y in range(0, h, band):
        sl = slice(y, min(y + band, h))
        norm = (1.0 / np.outer(wy[sl], wx)).astype(np.float32)
        acc[:, sl] *= norm[None].astype(adt, copy=False)
        if num_classes == 1:
            labels[sl] = acc[0, sl] > 0.5
        else:
            labels[sl] = acc[:, sl].argmax(0)
    if not isinstance(image, ImageSource) and src is not image:
        src.close()
    return TiledResult(acc, labels, total)


def iter_windows(h: int, w: int, tile: Sequence[int], overlap: float = 0.25
                 ) -> Iterator[tuple[int, int]]:
    """(y, x) of every tile, row-major (for callers that want the grid)."""
    rows, cols = _windows(h, w, (int(tile[0]), int(tile[1])), overlap)
    for y in rows:
        for x in cols:
            yield y, x
