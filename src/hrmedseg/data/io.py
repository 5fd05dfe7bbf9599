"""Image and mask I/O with one array convention for the whole package.

Why this module exists: medical data arrive as PNG/JPEG/BMP/GIF, 8/16-bit and multi-page TIFF, DICOM
and NIfTI, with masks stored as 0/255, 0/1, palette indices or lossy JPEG. Everything downstream
(datasets, caches, metrics) relies on a single convention, fixed here:

* ``read_image`` returns ``(H, W)`` or ``(H, W, C)`` with the stored dtype kept (uint8, uint16,
  float32, ...). Single-channel images are always 2-D.
* ``read_mask`` returns ``(H, W)`` unsigned integer labels; binary masks come back as {0, 1}.
* ``to_model_channels`` is the one place that maps pixels to model input (float32 HWC).
* Every read failure is an :class:`ImageReadError` with a one-line message naming the file, so a
  bad file among thousands is found from the log line alone.

Heavy readers (tifffile, pydicom, nibabel, OpenCV, SciPy) are imported lazily to keep
``import hrmedseg.data`` cheap.
"""
from __future__ import annotations

import io as _io
import os

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_write_bytes
from ..errors import HrmedsegError
from ..models._base import IMAGENET_MEAN, IMAGENET_STD  # one definition for models and data

__all__ = [
    "opencv_fork_safe", "IMAGE_EXTENSIONS", "LOSSY_EXTENSIONS", "MAX_PIXELS", "IMAGENET_MEAN", "IMAGENET_STD",
    "ImageReadError", "split_ext", "is_image_file", "is_lossy", "read_image", "read_mask",
    "mask_to_labels", "to_model_channels", "NormMode", "imagenet_stats", "normalize", "write_mask_png", "write_image_png",
    "overlay", "class_palette",
]

PathLike = str | os.PathLike

_PILLOW_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"})
_TIFF_EXTS = frozenset({".tif", ".tiff"})
_DICOM_EXTS = frozenset({".dcm", ".dicom"})
_NIFTI_EXTS = frozenset({".nii", ".nii.gz"})
_COMPOUND_EXTS = (".nii.gz", ".ome.tiff", ".ome.tif")

#: File extensions (lower case, with dot) that :func:`read_image` understands.
IMAGE_EXTENSIONS: frozenset[str] = _PILLOW_EXTS | _TIFF_EXTS | _DICOM_EXTS | _NIFTI_EXTS
#: Lossy formats: masks stored this way are thresholded instead of read as labels.
LOSSY_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".webp"})
#: Pixel limit used instead of Pillow's global decompression-bomb limit (about 89 Mpx), which
#: whole-slide and fundus images exceed. Applied only while this module decodes a file.
MAX_PIXELS: int = 1 << 31


NormMode = Literal["imagenet", "minmax", "none"]


class ImageReadError(HrmedsegError, ValueError):
    """A file could not be read as an image or mask; ``str()`` is one line: ``<path>: <problem>``."""

    def __init__(self, path: PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = " ".join(str(problem).split()) or "unreadable file"
        super().__init__(f"{' '.join(self.path.splitlines())}: {self.problem}")


# --------------------------------------------------------------------------- names and extensions
def opencv_fork_safe() -> None:
    """Turn OpenCV's own thread pool off in this process before DataLoader workers are forked.

    A forked child inherits the pool's locks in whatever state the parent's pool threads left
    them; its first OpenCV call (``cv2.setNumThreads`` in the worker initialiser, or a resize)
    can then wait forever. Seen on the lent H100 (16 cores, 10-12 workers): ``hrmedseg train``
    hung before its first batch after the pre-resize cache had been built with threads. The
    workers parallelise across images, so OpenCV's per-call threads are not missed.
    """
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(0)
    try:
        cv2.ocl.setUseOpenCL(False)
    except AttributeError:
        pass


def split_ext(path: PathLike) -> tuple[str, str]:
    """Split a file name into (stem, lower-case extension), keeping ``.nii.gz``/``.ome.tif`` whole."""
    name = Path(path).name
    low = name.lower()
    for ext in _COMPOUND_EXTS:
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], (".tif" if ext.startswith(".ome.tif") else ext)
    stem, ext = os.path.splitext(name)
    return stem, ext.lower()


def is_image_file(path: PathLike) -> bool:
    """True for a non-hidden file name with a supported extension (no content sniffing)."""
    name = Path(path).name
    return not name.startswith(".") and split_ext(name)[1] in IMAGE_EXTENSIONS


def is_lossy(path: PathLike) -> bool:
    """True when the file format is lossy (JPEG), so stored mask values are approximate."""
    return split_ext(path)[1] in LOSSY_EXTENSIONS


# --------------------------------------------------------------------------- Pillow pixel limit
_limit_lock = threading.Lock()
_limit_users = 0
_limit_saved: int | None = None


@contextmanager
def _pillow_pixel_limit(max_pixels: int = MAX_PIXELS) -> Iterator[None]:
    """Raise Pillow's bomb limit only while we decode, then restore whatever the user had set.

    Reference counted so parallel readers in threads do not restore it under each other.
    """
    global _limit_users, _limit_saved
    with _limit_lock:
        if _limit_users == 0:
            _limit_saved = Image.MAX_IMAGE_PIXELS
            if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
                Image.MAX_IMAGE_PIXELS = max_pixels
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _limit_saved


# --------------------------------------------------------------------------- decoders
def _native(arr: np.ndarray) -> np.ndarray:
    """Native byte order, C-contiguous: later numpy/OpenCV/torch code assumes both."""
    if arr.dtype.byteorder not in ("=", "|"):
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pil_to_array(im: Image.Image, palette_indices: bool) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        if palette_indices:
            return np.asarray(im)
        return np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
    if mode == "PA":
        return np.asarray(im)[..., 0] if palette_indices else np.asarray(im.convert("RGBA"))
    if mode in ("1", "L", "LA", "RGB", "RGBA", "F"):
        return np.asarray(im)
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16)
    if mode == "I":
        arr = np.asarray(im)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)  # 16-bit PNGs decoded as 32-bit by some Pillow builds
        return arr
    if mode in ("La",):
        return np.asarray(im.convert("LA"))
    if mode in ("RGBa",):
        return np.asarray(im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))  # CMYK, YCbCr, LAB, HSV, RGBX, ...


def is_png16_colour_header(head: bytes) -> bool:
    """Pillow silently reduces 16-bit RGB(A) PNGs to 8 bits, so those go through OpenCV."""
    return len(head) >= 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6)


def decode_png16_colour(data: bytes | np.ndarray) -> np.ndarray | None:
    """16-bit RGB(A) PNG bytes → RGB(A) uint16 array; None if OpenCV cannot decode them."""
    from .._optional import require
    cv2 = require("cv2", feature="reading 16-bit colour PNGs")

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is not None and arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA if arr.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return arr


def _png_is_16bit_colour(path: Path) -> bool:
    with open(path, "rb") as fh:
        return is_png16_colour_header(fh.read(26))


def _read_png16_colour(path: Path) -> np.ndarray:
    arr = decode_png16_colour(np.fromfile(str(path), dtype=np.uint8))
    if arr is None:
        raise ImageReadError(path, "corrupt or truncated 16-bit PNG")
    return arr


def _read_pillow(path: Path, palette_indices: bool) -> np.ndarray:
    if path.suffix.lower() == ".png" and _png_is_16bit_colour(path):
        return _read_png16_colour(path)
    with _pillow_pixel_limit():
        try:
            with Image.open(path) as im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)  # GIF/APNG: first frame
                im.load()
                return _pil_to_array(im, palette_indices)
        except Image.DecompressionBombError as exc:
            raise ImageReadError(path, f"image exceeds {MAX_PIXELS} pixels ({_short(exc)})") from None
        except UnidentifiedImageError:
            raise ImageReadError(path, "not a readable image (unknown or corrupt format)") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure becomes one line
            raise ImageReadError(path, f"corrupt or truncated image ({_short(exc)})") from None


def _tiff_first_plane(page) -> tuple[np.ndarray, np.ndarray | None]:  # noqa: ANN001 - TiffPage
    """First 2-D plane as (Y, X[, S]) plus the colormap of palette TIFFs (None otherwise)."""
    arr = page.asarray()
    axes = page.axes
    if len(axes) != arr.ndim:  # defensive: unknown axes layout, trust the shape
        axes = "YX" if arr.ndim == 2 else ("YXS" if arr.shape[-1] <= 4 else "SYX")[-arr.ndim:]
    index = tuple(slice(None) if a in "YXS" else 0 for a in axes)
    arr = arr[index]
    kept = [a for a in axes if a in "YXS"]
    order = [kept.index(a) for a in "YXS" if a in kept]
    arr = np.transpose(arr, order)
    photometric = int(getattr(page, "photometric", 1))
    colormap = getattr(page, "colormap", None)
    if photometric == 3 and colormap is not None:  # palette TIFF: keep indices, expanded later
        return arr, colormap
    # Values are returned as stored, as tifffile does: MINISWHITE is not inverted (tifffile itself
    # writes bool arrays as MINISWHITE bilevel pages, so inverting would break round trips).
    return arr, None


def _read_tiff(path: Path, palette_indices: bool) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) == 0:
                raise ImageReadError(path, "TIFF has no pages")
            arr, colormap = _tiff_first_plane(tif.pages[0])
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        if "imagecodecs" in str(exc):
            # Compressions tifffile decodes only through the optional imagecodecs package
            # (LZW in the DRIVE download, say): Pillow decodes the common ones itself.
            return _read_tiff_pillow(path, palette_indices, exc)
        raise ImageReadError(path, f"corrupt or unreadable TIFF ({_short(exc)})") from None
    if colormap is not None and not palette_indices:
        cmap = np.asarray(colormap)
        if cmap.max() > 255:
            cmap = (cmap // 257).astype(np.uint8)
        arr = np.moveaxis(cmap.astype(np.uint8)[:, arr], 0, -1)
    return arr


def _read_tiff_pillow(path: Path, palette_indices: bool, cause: Exception) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:
            if im.mode == "P" and not palette_indices:
                im = im.convert("RGB")
            return np.asarray(im).copy()
    except Exception:  # noqa: BLE001
        raise ImageReadError(path, f"TIFF compression needs the imagecodecs package "
                                   f"(pip install imagecodecs): {_short(cause)}") from None


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            ds = pydicom.dcmread(path)
        except InvalidDicomError:
            ds = pydicom.dcmread(path, force=True)  # files written without the 128-byte preamble
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise ImageReadError(path, "DICOM file has no pixel data")
        arr = ds.pixel_array
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"unreadable DICOM ({_short(exc)})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        # Inverted grey scale (low = bright) is flipped on the stored values so that, as for every
        # other format, higher means brighter; this happens before the modality rescale.
        bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8))
        if np.issubdtype(arr.dtype, np.unsignedinteger):
            arr = (np.asarray((1 << bits) - 1, dtype=np.int64) - arr).astype(arr.dtype)
        elif np.issubdtype(arr.dtype, np.signedinteger):
            arr = (-1 - arr.astype(np.int64)).astype(arr.dtype)
        else:
            arr = arr.max() + arr.min() - arr
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    if slope != 1.0 or intercept != 0.0:
        arr = arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return arr


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        arr = np.asanyarray(img.dataobj)  # stored dtype, header scaling applied when present
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"unreadable NIfTI ({_short(exc)})") from None
    if arr.dtype.names:  # RGB24/RGBA32 structured voxels
        arr = np.stack([arr[n] for n in arr.dtype.names], axis=-1)
        spatial = arr.shape[:-1]
        if sum(s > 1 for s in spatial) > 2:
            raise ImageReadError(path, f"NIfTI is a volume of shape {spatial}; extract 2-D slices first")
        arr = arr.reshape(*[s for s in spatial if s > 1][:2], arr.shape[-1])
        return np.swapaxes(arr, 0, 1)
    if sum(s > 1 for s in arr.shape) > 2:
        raise ImageReadError(
            path, f"NIfTI is a {arr.ndim}-D volume of shape {tuple(arr.shape)}; only 2-D images or "
            "single-slice volumes are supported, extract 2-D slices first")
    if arr.ndim < 2:
        raise ImageReadError(path, f"NIfTI has shape {tuple(arr.shape)}, not an image")
    keep = [i for i, s in enumerate(arr.shape) if s > 1]
    while len(keep) < 2:  # 1xN or 1x1 slices: keep the leading axes
        keep = sorted(set(keep) | {len(keep)})
    arr = arr.reshape([arr.shape[i] for i in keep])
    # NIfTI indexes (x, y); images are (row = y, column = x), as nnU-Net and SimpleITK read them.
    arr = arr.T
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return arr


def _format_of(path: Path) -> str:
    ext = split_ext(path)[1]
    if ext in _PILLOW_EXTS:
        return "pillow"
    if ext in _TIFF_EXTS:
        return "tiff"
    if ext in _DICOM_EXTS:
        return "dicom"
    if ext in _NIFTI_EXTS:
        return "nifti"
    with open(path, "rb") as fh:  # extension-less DICOM exports are common
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    shown = ext or "(none)"
    raise ImageReadError(
        path, f"unsupported file extension '{shown}' (supported: {', '.join(sorted(IMAGE_EXTENSIONS))})")


def _decode(path: PathLike, palette_indices: bool) -> np.ndarray:
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except OSError as exc:
        raise ImageReadError(p, f"cannot access file ({_short(exc)})") from None
    if p.is_dir():
        raise ImageReadError(p, "is a directory, not an image file")
    if st.st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    try:
        kind = _format_of(p)
        if kind == "pillow":
            arr = _read_pillow(p, palette_indices)
        elif kind == "tiff":
            arr = _read_tiff(p, palette_indices)
        elif kind == "dicom":
            arr = _read_dicom(p)
        else:
            arr = _read_nifti(p)
    except ImageReadError:
        raise
    except OSError as exc:
        raise ImageReadError(p, f"cannot read file ({_short(exc)})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise ImageReadError(p, f"too many dimensions: shape {tuple(arr.shape)}, expected (H, W) or (H, W, C)")
    if arr.size == 0:
        raise ImageReadError(p, f"image has no pixels (shape {tuple(arr.shape)})")
    return _native(arr)


# --------------------------------------------------------------------------- public readers
def read_image(path: PathLike) -> np.ndarray:
    """Read any supported image as ``(H, W)`` or ``(H, W, C)``, keeping its stored dtype.

    Why: one reader means one convention. Notes on the conventions chosen:
    first frame/page/plane of multi-frame GIF, TIFF and DICOM; palette images expanded to RGB(A);
    TIFF values as stored (no MINISWHITE inversion, like tifffile);
    1-bit images become uint8 0/255; DICOM applies RescaleSlope/Intercept (result float32 when a
    rescale is present) and un-inverts MONOCHROME1; NIfTI must be 2-D or a single-slice volume and
    is returned as (rows=y, cols=x). EXIF orientation is deliberately *not* applied, so image and
    mask pixels stay aligned. Raises :class:`ImageReadError`.
    """
    arr = _decode(path, palette_indices=False)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    return arr


def mask_to_labels(raw: np.ndarray, *, lossy: bool = False, threshold: float | None = None) -> np.ndarray:
    """Turn raw 2-D mask values into integer labels.

    Why: binary masks are stored as 0/255, 0/1, 0/65535 or lossy JPEG, yet training needs {0, 1}.
    Rules, in order: an explicit ``threshold`` gives ``raw >= threshold`` as {0, 1}; lossy masks are
    binary by definition and use threshold 128; masks whose values are only 0 and 255 (or 0 and
    65535, or 0 and the dtype maximum) become {0, 1}; anything else is kept as index labels, in the
    smallest unsigned dtype that holds them. Raises ValueError for negative or fractional labels.
    """
    if threshold is None and lossy:
        threshold = 128
    if threshold is not None:
        return (raw >= threshold).astype(np.uint8)
    if raw.dtype == np.bool_:
        return raw.astype(np.uint8)
    if raw.dtype.kind == "f":
        rounded = np.rint(raw)
        if not np.array_equal(rounded, raw):
            raise ValueError("float mask holds fractional values; pass threshold= to binarise it")
        raw = rounded.astype(np.int64)
    if raw.dtype.kind == "i":
        if raw.size and raw.min() < 0:
            raise ValueError(f"mask holds negative labels (min {int(raw.min())})")
    hi = int(raw.max()) if raw.size else 0
    if hi in (255, 65535) or (hi > 1 and hi == np.iinfo(raw.dtype).max):
        if raw.dtype == np.uint8:
            is_binary = not (np.bincount(raw.ravel(), minlength=256)[1:255] > 0).any()
        else:
            is_binary = bool(np.all((raw == 0) | (raw == hi)))
        if is_binary:
            return (raw == hi).astype(np.uint8)
    out_dtype = np.uint8 if hi < 256 else (np.uint16 if hi < 65536 else np.int32)
    return raw.astype(out_dtype, copy=False)


def read_mask(
    path: PathLike,
    *,
    threshold: float | None = None,
    color_map: dict[tuple[int, int, int], int] | None = None,
    raw: bool = False,
) -> np.ndarray:
    """Read a segmentation mask as ``(H, W)`` unsigned integer labels (binary masks as {0, 1}).

    Why a separate reader: masks must never be colour-converted or interpolated. Palette images give
    their palette *indices*; RGB masks with equal channels use one channel; JPEG masks are lossy and
    thresholded (default 128, or ``threshold``); 0/255 and 0/1 masks give {0, 1}; index masks are
    kept. RGB masks with different channels need ``color_map`` ({(r, g, b): label}).
    ``raw=True`` returns the 2-D stored values before labelling (used by dataset checks).
    """
    p = Path(path)
    arr = _decode(p, palette_indices=True)
    lossy = is_lossy(p)
    if arr.ndim == 3:
        c = arr.shape[2]
        if c == 2:
            arr = arr[:, :, 0]  # grey + alpha: alpha is not a label
        elif c in (3, 4):
            rgb = arr[:, :, :3]
            if np.array_equal(rgb[:, :, 0], rgb[:, :, 1]) and np.array_equal(rgb[:, :, 0], rgb[:, :, 2]):
                arr = np.ascontiguousarray(rgb[:, :, 0])
            elif color_map is not None:
                arr = _apply_color_map(p, rgb, color_map)
            elif lossy:
                arr = np.rint(rgb.mean(axis=2)).astype(rgb.dtype)  # JPEG chroma noise
            else:
                raise ImageReadError(
                    p, "RGB mask whose channels differ; pass color_map={(r, g, b): label} or convert "
                    "it to a single-channel index mask")
        else:
            raise ImageReadError(p, f"mask has {c} channels; expected a single-channel label image")
    if raw:
        return arr.astype(np.uint8) if arr.dtype == np.bool_ else arr
    try:
        return mask_to_labels(arr, lossy=lossy, threshold=threshold)
    except ValueError as exc:
        raise ImageReadError(p, str(exc)) from None


def _apply_color_map(path: Path, rgb: np.ndarray, color_map: dict[tuple[int, int, int], int]) -> np.ndarray:
    codes = (rgb[..., 0].astype(np.int64) << 32) | (rgb[..., 1].astype(np.int64) << 16) | rgb[..., 2]
    out = np.zeros(rgb.shape[:2], dtype=np.int64)
    known = np.zeros(rgb.shape[:2], dtype=bool)
    for (r, g, b), label in color_map.items():
        hit = codes == ((int(r) << 32) | (int(g) << 16) | int(b))
        out[hit] = label
        known |= hit
    if not known.all():
        bad = rgb[~known][0]
        raise ImageReadError(path, f"{int((~known).sum())} pixels have colours not in color_map, e.g. {tuple(int(v) for v in bad)}")
    hi = int(out.max()) if out.size else 0
    return out.astype(np.uint8 if hi < 256 else np.uint16)


# --------------------------------------------------------------------------- model input
def _scale_to_unit(img: np.ndarray, scaling: str, percentiles: tuple[float, float]) -> np.ndarray:
    if scaling == "percentile":
        lo, hi = np.percentile(img, percentiles)
        out = (img.astype(np.float32) - np.float32(lo)) / np.float32(max(hi - lo, 1e-12))
        return np.clip(out, 0.0, 1.0, out=out)
    if scaling != "dtype":
        raise ValueError(f"scaling must be 'dtype' or 'percentile', got {scaling!r}")
    if img.dtype == np.bool_:
        return img.astype(np.float32)
    if img.dtype == np.uint8:
        return img.astype(np.float32) * np.float32(1.0 / 255.0)
    if img.dtype == np.uint16:
        return img.astype(np.float32) * np.float32(1.0 / 65535.0)
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        return ((img.astype(np.float64) - info.min) / (float(info.max) - info.min)).astype(np.float32)
    if img.dtype.kind == "f":
        return img.astype(np.float32, copy=False)
    raise ValueError(f"unsupported image dtype {img.dtype}")


def to_model_channels(
    img: np.ndarray,
    in_chans: int,
    *,
    scaling: Literal["dtype", "percentile"] = "dtype",
    percentiles: tuple[float, float] = (0.5, 99.5),
) -> np.ndarray:
    """Map an image from :func:`read_image` to float32 ``(H, W, in_chans)`` model input in [0, 1].

    Why deliberate rules: silent channel/dtype guesses are a classic source of wrong results.
    Intensity: uint8 / 255, uint16 / 65535 (the dtype range, not the image max, so images stay
    comparable), other integers by their dtype range, floats kept as they are; ``scaling="percentile"``
    instead maps the given percentiles to [0, 1] and clips (useful for 12-bit data in uint16, CT, MRI).
    Channels: if the image already has ``in_chans`` channels it is kept; otherwise the alpha channel of
    RGBA / grey+alpha images is DROPPED (no compositing), grey is repeated to 3 channels, and RGB is
    reduced to 1 channel with ITU-R 601 luma weights (0.299, 0.587, 0.114).
    """
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected (H, W) or (H, W, C), got shape {tuple(img.shape)}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    c = img.shape[2]
    if c != in_chans and c in (2, 4):
        img = img[:, :, : c - 1]  # drop alpha
        c -= 1
    out = _scale_to_unit(img, scaling, percentiles)
    if c == in_chans:
        pass
    elif c == 1:
        out = np.repeat(out, in_chans, axis=2)
    elif c == 3 and in_chans == 1:
        w = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
        out = (out @ w)[:, :, None]
    else:
        raise ValueError(f"cannot map a {c}-channel image to {in_chans} model channels")
    return np.ascontiguousarray(out, dtype=np.float32)


def imagenet_stats(c: int, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The float32 mean and std ``"imagenet"`` normalisation uses for ``c`` channels: ``mean``/``std``
    if given, else ImageNet's for 3 channels and their averages repeated for other channel counts."""
    def pick(given: Sequence[float] | None, default: Sequence[float]) -> np.ndarray:
        return np.asarray(given if given is not None else (default if c == 3 else [np.mean(default)] * c),
                          np.float32)
    return pick(mean, IMAGENET_MEAN), pick(std, IMAGENET_STD)


def normalize(
    img: np.ndarray,
    mode: NormMode = "imagenet",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Normalise a float HWC image for the network.

    Why several modes: pretrained encoders expect ``"imagenet"`` statistics ((x - mean) / std; 1-channel
    and non-3-channel inputs use the averaged ImageNet mean/std), QTSeg uses ``"minmax"`` (per image,
    all channels together, to [0, 1]; a constant image becomes 0), and ``"none"`` passes values through.
    """
    x = np.asarray(img, dtype=np.float32)
    if mode == "none":
        return x
    if mode == "minmax":
        lo, hi = float(x.min()), float(x.max())
        if hi - lo <= 1e-12:
            return np.zeros_like(x)
        return (x - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if mode == "imagenet":
        c = x.shape[2] if x.ndim == 3 else 1
        m, s = imagenet_stats(c, mean, std)
        if x.ndim == 2:
            m, s = m.reshape(()), s.reshape(())
        return (x - m) / s
    raise ValueError(f"unknown normalisation mode {mode!r}; use 'imagenet', 'minmax' or 'none'")


# --------------------------------------------------------------------------- writers
def _png_bytes(im: Image.Image) -> bytes:
    buf = _io.BytesIO()
    im.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def write_mask_png(path: PathLike, mask: np.ndarray, *, palette: bool | np.ndarray = False) -> Path:
    """Atomically write integer labels as a lossless PNG (8-bit, or 16-bit for labels > 255).

    Pixel values are the labels themselves (binary masks stay {0, 1}, as :func:`read_mask` returns).
    ``palette=True`` (or an (N, 3) colour array) writes a palette PNG whose indices are the labels but
    which shows class colours in viewers.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(m.shape)}")
    if m.dtype == np.bool_:
        m = m.astype(np.uint8)
    if m.dtype.kind not in "ui":
        raise ValueError(f"mask must hold integer labels, got dtype {m.dtype}")
    lo, hi = (int(m.min()), int(m.max())) if m.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise ValueError(f"mask labels must be in [0, 65535], got [{lo}, {hi}]")
    if hi > 255:
        if palette is not False:
            raise ValueError("palette PNGs hold at most 256 labels")
        im = Image.fromarray(m.astype(np.uint16))
    else:
        im = Image.fromarray(m.astype(np.uint8))
        if palette is not False:
            colors = class_palette(256) if palette is True else np.asarray(palette, dtype=np.uint8)
            full = np.zeros((256, 3), np.uint8)
            full[: min(256, len(colors))] = colors[:256]
            im.putpalette(full.ravel().tolist())
    return atomic_write_bytes(path, _png_bytes(im))


def write_image_png(path: PathLike, img: np.ndarray) -> Path:
    """Atomically write an image as PNG, keeping 8 or 16 bits.

    Accepts uint8/uint16 grey, grey+alpha, RGB or RGBA; bool as 0/255; float images must lie in
    [0, 1] and are stored as uint8 (rounded).
    """
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, 2|3|4), got shape {tuple(a.shape)}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * np.uint8(255)
    elif a.dtype.kind == "f":
        if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1):
            raise ValueError("float images must be in [0, 1] to be written as PNG")
        a = np.rint(np.nan_to_num(a) * 255).astype(np.uint8)
    elif a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported dtype {a.dtype}; use uint8, uint16, bool or float in [0, 1]")
    if a.dtype == np.uint16 and a.ndim == 3:
        from .._optional import require
        cv2 = require("cv2", feature="writing 16-bit colour PNGs")

        code = {2: None, 3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}[a.shape[2]]
        if code is None:
            raise ValueError("16-bit grey+alpha PNG is not supported; drop the alpha channel")
        ok, enc = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(a), code))
        if not ok:
            raise ValueError("PNG encoding failed")
        return atomic_write_bytes(path, enc.tobytes())
    return atomic_write_bytes(path, _png_bytes(Image.fromarray(np.ascontiguousarray(a))))


# --------------------------------------------------------------------------- visualisation
_BASE_COLOURS = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (70, 240, 240), (245, 130, 48), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
], dtype=np.uint8)


def class_palette(n: int) -> np.ndarray:
    """Return ``(n, 3)`` uint8 colours, index 0 black (background), then well separated hues."""
    if n <= len(_BASE_COLOURS):
        return _BASE_COLOURS[:n].copy()
    import colorsys

    extra = []
    for i in range(n - len(_BASE_COLOURS)):
        h = (0.13 + i * 0.618033988749895) % 1.0  # golden-ratio hue steps stay distinct
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.3 * ((i // 3) % 2)
        extra.append([round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
    return np.concatenate([_BASE_COLOURS, np.asarray(extra, dtype=np.uint8)])


def _boundaries(mask: np.ndarray) -> np.ndarray:
    """Foreground pixels whose label differs from a 4-neighbour (or that touch the image edge)."""
    pad = np.pad(mask, 1, mode="constant", constant_values=0)
    centre = pad[1:-1, 1:-1]
    edge = (
        (centre != pad[:-2, 1:-1]) | (centre != pad[2:, 1:-1])
        | (centre != pad[1:-1, :-2]) | (centre != pad[1:-1, 2:])
    )
    return edge & (mask > 0)


def overlay(
    image_rgb_uint8: np.ndarray,
    mask: np.ndarray,
    alpha: float = 0.5,
    colors: np.ndarray | Sequence[Sequence[int]] | None = None,
    *,
    contours: bool = True,
    thickness: int = 1,
) -> np.ndarray:
    """Blend class colours over an image and draw class contours, for prediction overlays.

    Label 0 is background and left untouched; label k uses ``colors[k]`` (default
    :func:`class_palette`) blended with ``alpha``; contours are drawn opaque, ``thickness`` pixels wide.
    Grey images are expanded to RGB and RGBA alpha is ignored. Returns a new uint8 RGB array.
    """
    img = np.asarray(image_rgb_uint8)
    if img.dtype != np.uint8:
        raise ValueError(f"overlay expects a uint8 image, got {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        img = img[:, :, :3]
    else:
        raise ValueError(f"overlay expects (H, W) or (H, W, 3|4), got {tuple(img.shape)}")
    m = np.asarray(mask)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask shape {tuple(m.shape)} does not match image {tuple(img.shape[:2])}")
    m = m.astype(np.int64)
    n = int(m.max()) + 1 if m.size else 1
    pal = class_palette(max(n, 2)) if colors is None else np.asarray(colors, dtype=np.uint8)
    if len(pal) < n:
        raise ValueError(f"{len(pal)} colours given for labels up to {n - 1}")
    out = img.astype(np.float32)
    fg = m > 0
    a = float(np.clip(alpha, 0.0, 1.0))
    out[fg] = (1.0 - a) * out[fg] + a * pal[m[fg]].astype(np.float32)
    out = np.rint(out).astype(np.uint8)
    if contours:
        edge = _boundaries(m)
        lab = np.where(edge, m, 0)
        if thickness > 1:
            from scipy import ndimage

            lab = ndimage.grey_dilation(lab, size=(2 * thickness - 1, 2 * thickness - 1))
            edge = lab > 0
        out[edge] = pal[lab[edge]]
    return out
