"""Decode an uploaded image from memory, with the same array conventions as ``read_image``.

Safety rules (the server never trusts the client):
* the format is sniffed from the magic bytes, never from a client-supplied name or path;
* the pixel count is read from the header (Pillow ``Image.open`` without ``load``, tifffile page
  shape, DICOM Rows/Columns, NIfTI dims) and refused BEFORE any pixel is decoded;
* Pillow and TIFF uploads are decoded from memory; DICOM and NIfTI go through ``read_image`` on
  a private temporary file (so their conventions are exactly those of ``hrmedseg predict``),
  deleted in ``finally``.
"""
from __future__ import annotations

import gzip
import io
import os
import tempfile
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data import io as hio
from ..errors import HrmedsegError


class UploadError(HrmedsegError, ValueError):
    """A client error: ``status`` is the HTTP status, ``str()`` one line."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(" ".join(str(message).split()))


def sniff_format(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:2] == b"BM":
        return "bmp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data[128:132] == b"DICM":
        return "dicom"
    if len(data) >= 348 and data[344:348] in (b"n+1\x00", b"n+2\x00"):
        return "nifti"
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    raise UploadError(415, "not a supported image (PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI)")


def _check_pixels(h: int, w: int, max_pixels: int) -> None:
    if h <= 0 or w <= 0:
        raise UploadError(400, f"image header gives an empty size {w}x{h}")
    if h * w > max_pixels:
        raise UploadError(413, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")


def _pillow_header(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the size; pixels are not decoded yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UploadError(413, f"image exceeds the pixel limit ({hio._short(exc)})") from None
    except UnidentifiedImageError:
        raise UploadError(400, "not a readable image (unknown or corrupt format)") from None
    except Exception as exc:  # noqa: BLE001
        raise UploadError(400, f"corrupt image header ({hio._short(exc)})") from None
    w, h = im.size
    _check_pixels(h, w, max_pixels)
    return im


def _decode_pillow(data: bytes, max_pixels: int) -> np.ndarray:
    im = _pillow_header(data, max_pixels)
    # Pillow reduces 16-bit RGB(A) PNGs to 8 bits; read_image uses OpenCV for those, so do we.
    if hio.is_png16_colour_header(data[:26]):
        im.close()
        arr = hio.decode_png16_colour(data)
        if arr is None:
            raise UploadError(400, "corrupt or truncated 16-bit PNG")
        return arr
    with hio._pillow_pixel_limit(max(max_pixels, 1)):
        try:
            with im:
                if getattr(im, "n_frames", 1) > 1:
                    im.seek(0)
                im.load()
                return hio._pil_to_array(im, False)
        except Image.DecompressionBombError as exc:
            raise UploadError(413, f"image exceeds the pixel limit ({hio._short(exc)})") from None
        except MemoryError:
            raise UploadError(413, "image too large to decode") from None
        except Exception as exc:  # noqa: BLE001
            raise UploadError(400, f"corrupt or truncated image ({hio._short(exc)})") from None


def _decode_tiff(data: bytes, max_pixels: int) -> np.ndarray:
    import tifffile
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            if len(tif.pages) == 0:
                raise UploadError(400, "TIFF has no pages")
            page = tif.pages[0]
            shape = dict(zip(page.axes, page.shape))
            _check_pixels(int(shape.get("Y", 0)), int(shape.get("X", 0)), max_pixels)
            arr, colormap = hio._tiff_first_plane(page)
    except UploadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise UploadError(400, f"corrupt or unreadable TIFF ({hio._short(exc)})") from None
    if colormap is not None:
        cmap = np.asarray(colormap)
        if cmap.max() > 255:
            cmap = (cmap // 257).astype(np.uint8)
        arr = np.moveaxis(cmap.astype(np.uint8)[:, arr], 0, -1)
    return arr


def _header_dims_dicom(data: bytes) -> tuple[int, int]:
    import pydicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
        return int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    except Exception as exc:  # noqa: BLE001
        raise UploadError(400, f"unreadable DICOM header ({hio._short(exc)})") from None


def _header_dims_nifti(data: bytes) -> tuple[int, int]:
    import nibabel as nib
    try:
        cls = nib.Nifti2Header if data[344:348] == b"n+2\x00" else nib.Nifti1Header
        hdr = cls.from_fileobj(io.BytesIO(data))
        dims = [int(d) for d in hdr.get_data_shape()]
    except Exception as exc:  # noqa: BLE001
        raise UploadError(400, f"unreadable NIfTI header ({hio._short(exc)})") from None
    n = 1
    for d in dims:
        n *= max(d, 1)
    big = sorted(dims, reverse=True) + [1, 1]
    return (big[0], n // max(big[0], 1)) if n else (0, 0)


def _via_tempfile(data: bytes, suffix: str) -> np.ndarray:
    fd, tmp = tempfile.mkstemp(prefix="hrmedseg-serve-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            return hio.read_image(tmp)
        except hio.ImageReadError as exc:
            raise UploadError(400, exc.problem) from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def decode_upload(data: bytes, max_pixels: int, max_bytes: int | None = None) -> np.ndarray:
    """Bytes of an uploaded file -> image array as ``read_image`` gives it. Raises UploadError."""
    if not data:
        raise UploadError(400, "empty upload (0 bytes)")
    kind = sniff_format(data)
    if kind == "gzip":  # only .nii.gz is accepted compressed; bounded decompression
        limit = max_bytes or (64 << 20)
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                raw = gz.read(4 * limit + 1)
        except Exception as exc:  # noqa: BLE001
            raise UploadError(400, f"corrupt gzip data ({hio._short(exc)})") from None
        if len(raw) > 4 * limit:
            raise UploadError(413, "gzip upload decompresses to more than the size limit")
        if not (len(raw) >= 348 and raw[344:348] in (b"n+1\x00", b"n+2\x00")):
            raise UploadError(415, "gzip upload is not a NIfTI image")
        data, kind = raw, "nifti"
    if kind in ("png", "jpeg", "bmp", "gif"):
        arr = _decode_pillow(data, max_pixels)
    elif kind == "tiff":
        arr = _decode_tiff(data, max_pixels)
    elif kind == "dicom":
        _check_pixels(*_header_dims_dicom(data), max_pixels)
        arr = _via_tempfile(data, ".dcm")
    else:
        _check_pixels(*_header_dims_nifti(data), max_pixels)
        arr = _via_tempfile(data, ".nii")
    # the same post-processing as read_image
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3):
        raise UploadError(400, f"too many dimensions: shape {tuple(arr.shape)}, expected (H, W) or (H, W, C)")
    if arr.size == 0:
        raise UploadError(400, f"image has no pixels (shape {tuple(arr.shape)})")
    _check_pixels(arr.shape[0], arr.shape[1], max_pixels)
    arr = hio._native(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * np.uint8(255)
    return arr
