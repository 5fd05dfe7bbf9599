"""3-D volumes: NIfTI, DICOM series, MHA/NRRD; intensity windows; slicing; label-volume writing.

Conventions (one for every format, as nibabel's):

* ``Volume.data`` is indexed ``(i, j, k)`` in NIfTI voxel order; for DICOM ``i`` runs along a row
  (the column index), ``j`` down the columns (the row index) and ``k`` along the slice normal.
* ``Volume.affine`` maps voxel indices to world millimetres in **RAS+** (NIfTI). DICOM / ITK
  geometry (LPS) is converted by negating the first two world axes.
* ``Volume.spacing`` is the voxel size in mm along ``i, j, k``.
* A 2-D slice along ``axis`` is returned as an image the way :func:`hrmedseg.data.io.read_image`
  returns 2-D NIfTI files: rows are the later remaining voxel axis, columns the earlier one
  (for ``axis=2``: rows = ``j``, columns = ``i``).

Every bad input raises :class:`hrmedseg.data.io.ImageReadError` whose message is one line
``<path>: <problem>``.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .io import ImageReadError, split_ext

PathLike = str | os.PathLike

__all__ = [
    "Volume", "WINDOWS", "read_volume", "read_nifti_volume", "read_dicom_series", "read_itk_volume",
    "is_volume_path", "is_dicom_series_dir", "window_range", "apply_window", "num_slices",
    "get_slice", "set_slice", "iter_slices", "write_label_volume", "check_label_matches",
    "volume_stem", "VOLUME_EXTENSIONS",
]

#: CT windows as (low, high) Hounsfield units (level ± width / 2).
WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (-125.0, 275.0),        # W400 L75 (TransUNet / HER-Seg Synapse preprocessing)
    "lung": (-1350.0, 150.0),          # W1500 L-600
    "bone": (-500.0, 1300.0),          # W1800 L400
    "brain": (0.0, 80.0),              # W80 L40
    "soft_tissue": (-125.0, 225.0),    # W350 L50
}
#: Non-CT presets: ``percentile`` maps the 0.5/99.5 percentiles of the whole volume to [0, 1]
#: (MR, ultrasound), ``minmax`` the volume's range.
DATA_PRESETS = ("percentile", "minmax")

_NIFTI = (".nii", ".nii.gz")
_ITK = (".mha", ".mhd", ".nrrd", ".nhdr")
VOLUME_EXTENSIONS = frozenset(_NIFTI + _ITK)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    data: np.ndarray                     # (I, J, K) voxels, NIfTI index order
    affine: np.ndarray                   # 4x4 voxel -> RAS+ mm
    spacing: tuple[float, float, float]  # mm along i, j, k
    source: str = ""
    kind: str = "nifti"                  # nifti | dicom | itk | array
    header: Any = None                   # nibabel header (NIfTI sources), kept for writing
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def orientation(self) -> tuple[str, str, str]:
        import nibabel as nib
        return tuple(nib.aff2axcodes(self.affine))  # type: ignore[return-value]

    @classmethod
    def from_array(cls, data: np.ndarray, affine: np.ndarray | None = None, source: str = "") -> "Volume":
        aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        sp = tuple(float(v) for v in np.linalg.norm(aff[:3, :3], axis=0))
        return cls(np.asarray(data), aff, sp, source, "array")  # type: ignore[arg-type]


def volume_stem(path: PathLike) -> str:
    p = Path(path)
    return p.name if p.is_dir() else split_ext(p)[0]


# --------------------------------------------------------------------------- NIfTI
def read_nifti_volume(path: PathLike) -> Volume:
    """A 3-D NIfTI (2-D files become one slice; 4-D with one volume is squeezed; other 4-D is refused)."""
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise ImageReadError(p, "file not found")
    try:
        img = nib.load(str(p))
        shape = tuple(int(s) for s in img.shape)
        if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
            raise ImageReadError(p, f"4-D NIfTI of shape {shape}: one 3-D volume expected "
                                    "(split the time/channel axis into separate files first)")
        data = np.asanyarray(img.dataobj)
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(p, f"unreadable NIfTI ({' '.join(str(exc).split())[:200]})") from None
    if data.dtype.names:
        raise ImageReadError(p, "RGB NIfTI volumes are not supported")
    data = data.reshape(data.shape[:3]) if data.ndim > 3 else data
    while data.ndim < 3:
        data = data[..., None]
    if data.dtype == np.float64:
        data = data.astype(np.float32)
    zooms = img.header.get_zooms()[:3]
    spacing = tuple(float(z) for z in (list(zooms) + [1.0] * 3)[:3])
    return Volume(data, np.asarray(img.affine, dtype=np.float64), spacing, str(p), "nifti",  # type: ignore[arg-type]
                  img.header.copy())


def is_3d_nifti(path: PathLike) -> bool:
    """True for a NIfTI file with more than one slice (from its header; no voxels are read)."""
    if split_ext(path)[1] not in (".nii", ".nii.gz"):
        return False
    from .._optional import require
    nib = require("nibabel", feature="reading NIfTI volumes")
    try:
        shape = nib.load(str(path)).shape
    except Exception:  # noqa: BLE001 - unreadable files are reported by the checks that read them
        return False
    return sum(int(s) > 1 for s in shape[:3]) > 2


# --------------------------------------------------------------------------- DICOM
def _dicom_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")
                  and f.name.upper() != "DICOMDIR")


def _looks_dicom(f: Path) -> bool:
    if f.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(f, "rb") as fh:
            return fh.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def is_dicom_series_dir(path: PathLike) -> bool:
    """A folder whose files are all DICOM (>= 2) carrying slice geometry (ImagePositionPatient)."""
    import pydicom

    p = Path(path)
    if not p.is_dir():
        return False
    files = _dicom_files(p)
    if len(files) < 2 or not all(_looks_dicom(f) for f in files):
        return False
    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001
        return False
    return "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


def read_dicom_series(folder: PathLike) -> Volume:
    """One DICOM series from a folder, slices ordered by position along the slice normal."""
    import pydicom

    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(root, "not a folder (a DICOM series is read from a folder of slices)")
    files = [f for f in _dicom_files(root) if _looks_dicom(f)]
    if not files:
        raise ImageReadError(root, "no DICOM files in folder")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, force=True)
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(f, f"unreadable DICOM ({' '.join(str(exc).split())[:150]})") from None
        if "PixelData" not in ds:
            continue  # e.g. presentation states, structured reports
        slices.append((f, ds))
    if not slices:
        raise ImageReadError(root, "no DICOM file with pixel data in folder")
    series = Counter(str(ds.get("SeriesInstanceUID", "?")) for _, ds in slices)
    if len(series) > 1:
        found = ", ".join(f"{uid} ({n} files)" for uid, n in series.most_common())
        raise ImageReadError(root, f"mixed DICOM series: {len(series)} series found ({found}); "
                                   "put one series per folder")
    ds0 = slices[0][1]
    for f, ds in slices:
        if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
            raise ImageReadError(f, "DICOM slice has no ImageOrientationPatient/ImagePositionPatient; "
                                    "cannot build a volume")
    iop = np.asarray([float(v) for v in ds0.ImageOrientationPatient], dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    for f, ds in slices:
        o = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(o, iop, atol=1e-4):
            raise ImageReadError(f, "slices of the series have different ImageOrientationPatient")
    pos = [np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64) for _, ds in slices]
    dist = np.asarray([float(p @ normal) for p in pos])
    order = np.argsort(dist, kind="stable")
    d_sorted = dist[order]
    if len(d_sorted) > 1:
        gaps = np.diff(d_sorted)
        if np.any(gaps < 1e-4):
            i = int(np.argmin(gaps))
            raise ImageReadError(root, f"two slices at the same position ({slices[order[i]][0].name}, "
                                       f"{slices[order[i + 1]][0].name})")
        if gaps.max() - gaps.min() > 0.05 * max(float(np.median(gaps)), 1e-6) + 1e-3:
            raise ImageReadError(root, f"irregular slice spacing ({gaps.min():.3g}..{gaps.max():.3g} mm): "
                                       "missing slices?")
    ps = [float(v) for v in ds0.get("PixelSpacing", [1.0, 1.0])]
    row_sp, col_sp = ps[0], ps[1]  # PixelSpacing = (between rows, between columns)
    first = pos[order[0]]
    if len(order) > 1:
        step = (pos[order[-1]] - first) / (len(order) - 1)
    else:
        step = normal * float(ds0.get("SliceThickness", 1.0) or 1.0)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_sp   # i: along a row (column index)
    lps[:3, 1] = col_dir * row_sp   # j: down a column (row index)
    lps[:3, 2] = step
    lps[:3, 3] = first
    planes = []
    shape0 = (int(ds0.Rows), int(ds0.Columns))
    for idx in order:
        f, ds = slices[idx]
        if (int(ds.Rows), int(ds.Columns)) != shape0:
            raise ImageReadError(f, f"slice is {ds.Rows}x{ds.Columns}, the series {shape0[0]}x{shape0[1]}")
        try:
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001
            raise ImageReadError(f, f"unreadable DICOM pixel data ({' '.join(str(exc).split())[:150]})") from None
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1.0 or inter != 0.0:
            arr = arr.astype(np.float32) * np.float32(slope) + np.float32(inter)
        planes.append(np.asarray(arr).T)  # (rows, cols) -> (i=col, j=row)
    dt = np.result_type(*[p.dtype for p in planes])
    data = np.stack([p.astype(dt, copy=False) for p in planes], axis=-1)
    spacing = (col_sp, row_sp, float(np.linalg.norm(step)))
    meta = {"series_uid": next(iter(series)), "files": [slices[i][0].name for i in order]}
    return Volume(data, _LPS_TO_RAS @ lps, spacing, str(root), "dicom", None, meta)


# --------------------------------------------------------------------------- MHA / NRRD
def _sitk(path: Path):  # noqa: ANN202
    from .._optional import MissingExtraError, require
    try:
        return require("SimpleITK", feature="reading MHA/MHD/NRRD")
    except MissingExtraError as exc:
        raise ImageReadError(path, str(exc)) from None


def read_itk_volume(path: PathLike) -> Volume:
    p = Path(path)
    sitk = _sitk(p)
    try:
        img = sitk.ReadImage(str(p))
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(p, f"unreadable image ({' '.join(str(exc).split())[:200]})") from None
    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise ImageReadError(p, f"expected a 3-D scalar image, got {img.GetDimension()}-D with "
                                f"{img.GetNumberOfComponentsPerPixel()} components")
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    sp = np.asarray(img.GetSpacing(), dtype=np.float64)
    d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = d * sp[None, :]
    lps[:3, 3] = img.GetOrigin()
    return Volume(data, _LPS_TO_RAS @ lps, tuple(float(v) for v in sp), str(p), "itk")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- dispatch
def is_volume_path(path: PathLike) -> bool:
    """True for a DICOM series folder, an MHA/NRRD file, or a NIfTI with more than 2 non-trivial axes."""
    p = Path(path)
    if p.is_dir():
        return is_dicom_series_dir(p)
    ext = split_ext(p)[1]
    if ext in _ITK:
        return True
    if ext in _NIFTI:
        try:
            import nibabel as nib
            shape = nib.load(str(p)).shape
        except Exception:  # noqa: BLE001
            return False  # leave the error to the reader that is chosen
        return sum(int(s) > 1 for s in shape) > 2
    return False


def read_volume(path: PathLike) -> Volume:
    """NIfTI file, DICOM series folder, or (with SimpleITK) MHA/MHD/NRRD file."""
    p = Path(path)
    if p.is_dir():
        return read_dicom_series(p)
    if not p.exists():
        raise ImageReadError(p, "file not found")
    ext = split_ext(p)[1]
    if ext in _NIFTI:
        return read_nifti_volume(p)
    if ext in _ITK:
        return read_itk_volume(p)
    raise ImageReadError(p, f"not a volume (expected {', '.join(sorted(VOLUME_EXTENSIONS))} or a DICOM folder)")


# --------------------------------------------------------------------------- intensity
def window_range(data: np.ndarray, window: str | tuple[float, float]) -> tuple[float, float]:
    """(low, high) of a CT preset, ``percentile`` (0.5/99.5 of the volume), ``minmax``, or explicit."""
    if isinstance(window, (tuple, list)):
        lo, hi = (float(v) for v in window)
    elif window in WINDOWS:
        lo, hi = WINDOWS[window]
    elif window == "percentile":
        lo, hi = (float(v) for v in np.percentile(data, (0.5, 99.5)))
    elif window == "minmax":
        lo, hi = float(np.min(data)), float(np.max(data))
    elif isinstance(window, str) and ":" in window:
        a, b = window.split(":", 1)
        lo, hi = float(a), float(b)
    else:
        raise ValueError(f"unknown window {window!r}; use one of {', '.join([*WINDOWS, *DATA_PRESETS])} "
                         "or LOW:HIGH")
    if not hi > lo:
        hi = lo + 1e-6
    return lo, hi


def apply_window(data: np.ndarray, window: str | tuple[float, float] = "percentile") -> np.ndarray:
    """Clip to the window and scale to float32 [0, 1]."""
    lo, hi = window_range(data, window)
    out = (np.asarray(data, dtype=np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out)


# --------------------------------------------------------------------------- slicing
def _axis(axis: int) -> int:
    if axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    return axis % 3


def num_slices(data: np.ndarray, axis: int = 2) -> int:
    return int(data.shape[_axis(axis)])


def get_slice(data: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
    """Slice ``index`` along ``axis`` as an image (rows = later remaining axis, cols = earlier)."""
    return np.take(data, index, axis=_axis(axis)).T


def set_slice(data: np.ndarray, index: int, image: np.ndarray, axis: int = 2) -> None:
    """Inverse of :func:`get_slice`."""
    a = _axis(axis)
    sl: list[Any] = [slice(None)] * 3
    sl[a] = index
    data[tuple(sl)] = np.asarray(image).T


def iter_slices(data: np.ndarray, axis: int = 2) -> Iterator[np.ndarray]:
    for k in range(num_slices(data, axis)):
        yield get_slice(data, k, axis)


# --------------------------------------------------------------------------- writing
_QFIELDS = ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z",
            "qform_code", "sform_code", "srow_x", "srow_y", "srow_z", "pixdim", "xyzt_units")


def _label_dtype(labels: np.ndarray) -> np.dtype:
    hi = int(labels.max()) if labels.size else 0
    lo = int(labels.min()) if labels.size else 0
    if lo < 0:
        raise ValueError(f"labels must be >= 0, got min {lo}")
    return np.dtype(np.uint8 if hi < 256 else np.uint16 if hi < 65536 else np.int32)


def write_label_volume(path: PathLike, labels: np.ndarray, like: Volume) -> Path:
    """Write integer labels (``like.shape``) as NIfTI with ``like``'s geometry preserved exactly.

    NIfTI sources: the header is copied (qform/sform matrices and codes, pixdim incl. qfac, units),
    only the data type and scaling change. Other sources: the affine goes to both qform and sform
    (code 1, scanner) and units are mm. ``.mha``/``.nrrd`` paths are written with SimpleITK.
    """
    import nibabel as nib

    out = Path(path)
    lab = np.asarray(labels)
    if lab.ndim == 2 and like.data.ndim == 3 and like.shape[2] == 1:
        lab = lab[..., None]
    if tuple(lab.shape) != like.shape:
        raise ValueError(f"{out}: labels of shape {tuple(lab.shape)} do not match the volume {like.shape}")
    if lab.dtype.kind == "f":
        raise ValueError(f"{out}: labels must be integers, got {lab.dtype}")
    dt = _label_dtype(lab)
    lab = lab.astype(dt, copy=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    ext = split_ext(out)[1]
    if ext in _ITK:
        sitk = _sitk(out)
        img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(lab, (2, 1, 0))))
        lps = np.linalg.inv(_LPS_TO_RAS) @ like.affine
        sp = np.linalg.norm(lps[:3, :3], axis=0)
        img.SetSpacing([float(v) for v in sp])
        img.SetDirection([float(v) for v in (lps[:3, :3] / sp[None, :]).ravel()])
        img.SetOrigin([float(v) for v in lps[:3, 3]])
        sitk.WriteImage(img, str(out), True)
        return out
    if ext not in _NIFTI:
        raise ValueError(f"{out}: label volumes are written as .nii/.nii.gz (or .mha/.nrrd with SimpleITK)")
    if like.header is not None and isinstance(like.header, nib.Nifti1Header):
        hdr = like.header.copy()
        hdr.set_data_dtype(dt)
        hdr.set_slope_inter(1.0, 0.0)
        cls = nib.Nifti2Image if isinstance(like.header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(lab, like.affine, hdr)
        for k in _QFIELDS:  # exact copy: nibabel would otherwise recompute from the affine
            img.header[k] = like.header[k]
        img.header.set_data_shape(lab.shape)
        img.header.set_slope_inter(1.0, 0.0)
    else:
        img = nib.Nifti1Image(lab, like.affine)
        img.set_qform(like.affine, code=1)
        img.set_sform(like.affine, code=1)
        img.header.set_xyzt_units("mm")
        img.header.set_slope_inter(1.0, 0.0)
    tmp = out.with_name(out.name + ".tmp" + (".nii.gz" if ext == ".nii.gz" else ".nii"))
    nib.save(img, str(tmp))
    os.replace(tmp, out)
    return out


def check_label_matches(image: Volume, label: Volume, atol: float = 1e-3) -> None:
    """Raise a one-line :class:`ImageReadError` naming the label file if its grid differs from the image's."""
    if image.shape != label.shape:
        raise ImageReadError(label.source, f"label volume has shape {label.shape} but its image "
                                           f"{Path(image.source).name} has {image.shape}")
    if not np.allclose(image.affine, label.affine, atol=atol, rtol=0):
        diff = float(np.abs(image.affine - label.affine).max())
        raise ImageReadError(label.source, f"label affine differs from its image {Path(image.source).name} "
                                           f"(max difference {diff:.4g} mm)")


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the volume diagonal in mm (the empty-mask distance for 3-D metrics)."""
    return math.sqrt(sum((float(n) * float(s)) ** 2 for n, s in zip(shape, spacing)))
