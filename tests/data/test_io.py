"""Tests for hrmedseg.data.io: every format, the mask rules, channel mapping, errors, writers."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hrmedseg.data.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    class_palette,
    is_image_file,
    normalize,
    overlay,
    read_image,
    read_mask,
    split_ext,
    to_model_channels,
    write_image_png,
    write_mask_png,
)


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _make_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2",
                slope: float | None = None, intercept: float | None = None, preamble: bool = True) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = arr.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _assert_one_line_error(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(exc.value)
    assert isinstance(exc.value, ImageReadError) and isinstance(exc.value, ValueError)
    assert "\n" not in msg and path.name in msg, msg
    for w in words:
        assert w in msg.lower(), msg
    assert exc.value.__cause__ is None and (exc.value.__context__ is None or exc.value.__suppress_context__)


# ----------------------------------------------------------------------------- reading images
def test_png_jpeg_bmp_gif_8bit(tmp_path: Path) -> None:
    rgb = _rng().integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for ext in (".png", ".bmp"):
        Image.fromarray(rgb).save(tmp_path / f"a{ext}")
        out = read_image(tmp_path / f"a{ext}")
        assert out.dtype == np.uint8 and np.array_equal(out, rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    gray = rgb[..., 0]
    Image.fromarray(gray).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").shape == (20, 30)
    # animated GIF: first frame only
    frames = [Image.fromarray(np.full((8, 9), v, np.uint8)) for v in (10, 200)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    gif = read_image(tmp_path / "anim.gif")
    assert gif.shape[:2] == (8, 9) and int(np.asarray(gif).max()) <= 20


def test_16bit_png_and_tiff_keep_dtype(tmp_path: Path) -> None:
    import tifffile

    a16 = _rng().integers(0, 65536, (16, 12), dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "a16.png")
    out = read_image(tmp_path / "a16.png")
    assert out.dtype == np.uint16 and np.array_equal(out, a16)
    rgb16 = _rng().integers(0, 65536, (10, 11, 3), dtype=np.uint16)
    write_image_png(tmp_path / "rgb16.png", rgb16)
    out = read_image(tmp_path / "rgb16.png")
    assert out.dtype == np.uint16 and np.array_equal(out, rgb16)
    tifffile.imwrite(tmp_path / "a16.tif", a16)
    out = read_image(tmp_path / "a16.tif")
    assert out.dtype == np.uint16 and np.array_equal(out, a16)
    f32 = _rng().random((5, 6), dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tiff", f32)
    assert read_image(tmp_path / "f.tiff").dtype == np.float32


def test_multipage_and_planar_tiff(tmp_path: Path) -> None:
    import tifffile

    stack = np.stack([np.full((6, 7), i, np.uint8) for i in (3, 4, 5)])
    tifffile.imwrite(tmp_path / "multi.tif", stack, photometric="minisblack")  # 3 pages
    out = read_image(tmp_path / "multi.tif")
    assert out.shape == (6, 7) and np.all(out == 3)
    rgb = _rng().integers(0, 256, (3, 6, 7), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", rgb, photometric="rgb", planarconfig="separate")
    out = read_image(tmp_path / "planar.tif")
    assert out.shape == (6, 7, 3) and np.array_equal(out, np.moveaxis(rgb, 0, -1))


def test_huge_tiff_read_without_bomb_error(tmp_path: Path) -> None:
    import tifffile

    big = np.zeros((12000, 12000), bool)
    big[100:200, 300:400] = True
    tifffile.imwrite(tmp_path / "big.tif", big)  # 1-bit, 18 MB
    m = read_mask(tmp_path / "big.tif")
    assert m.shape == (12000, 12000) and m.dtype == np.uint8 and int(m.sum()) == 10000


def test_pillow_bomb_limit_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Same mechanism as a >179 Mpx PNG under Pillow's default limit, at a fraction of the cost.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    Image.fromarray(np.zeros((100, 150), np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img = read_image(tmp_path / "big.png")
        mask = read_mask(tmp_path / "big.png")
    assert img.shape == (100, 150) and mask.shape == (100, 150)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored: never disabled globally


def test_dicom_rescale_and_monochrome1(tmp_path: Path) -> None:
    stored = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000)
    plain = read_image(_make_dicom(tmp_path / "plain.dcm", stored))
    assert plain.dtype == np.uint16 and np.array_equal(plain, stored)
    out = read_image(_make_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", 2.0, -100.0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (65535 - stored.astype(np.float64)) * 2.0 - 100.0)
    # extension-less DICOM is recognised by its DICM magic
    p = _make_dicom(tmp_path / "IM0001", stored)
    assert np.array_equal(read_image(p), stored)


def test_nifti_2d_and_single_slice_and_volume_error(tmp_path: Path) -> None:
    import nibabel as nib

    a = np.arange(12, dtype=np.int16).reshape(3, 4)  # (x, y)
    nib.save(nib.Nifti1Image(a, np.eye(4)), tmp_path / "a.nii")
    out = read_image(tmp_path / "a.nii")
    assert out.shape == (4, 3) and out.dtype == np.int16 and np.array_equal(out, a.T)
    nib.save(nib.Nifti1Image(a[:, :, None].astype(np.float64), np.eye(4)), tmp_path / "s.nii.gz")
    out = read_image(tmp_path / "s.nii.gz")
    assert out.shape == (4, 3) and out.dtype == np.float32
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    with pytest.raises(ImageReadError) as exc:
        read_image(tmp_path / "vol.nii.gz")
    _assert_one_line_error(exc, tmp_path / "vol.nii.gz", "slices")


# ----------------------------------------------------------------------------- errors
def test_errors_are_one_line_image_read_errors(tmp_path: Path) -> None:
    rgb = _rng().integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"this is not a jpeg" * 20)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.xyz").write_bytes(b"hello")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 40)
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 10)
    cases = {
        "trunc.png": "truncated", "garbage.jpg": "not a readable image", "empty.png": "empty file",
        "notes.xyz": "unsupported file extension", "missing.png": "not found", "bad.tif": "tiff",
        "bad.dcm": "dicom",
    }
    for name, words in cases.items():
        with pytest.raises(ImageReadError) as exc:
            read_image(tmp_path / name)
        _assert_one_line_error(exc, tmp_path / name, words)
    with pytest.raises(ImageReadError) as exc:
        read_mask(tmp_path / "trunc.png")
    _assert_one_line_error(exc, tmp_path / "trunc.png", "truncated")


def test_extensions() -> None:
    assert {".png", ".jpg", ".tif", ".dcm", ".nii.gz", ".gif", ".bmp"} <= IMAGE_EXTENSIONS
    assert is_image_file("a/b/c.PNG") and is_image_file("x.nii.gz") and not is_image_file("x.txt")
    assert not is_image_file(".hidden.png")
    assert split_ext("case_0000.nii.gz") == ("case_0000", ".nii.gz")
    assert split_ext("slide.ome.tiff") == ("slide", ".tif")


# ----------------------------------------------------------------------------- masks
def test_mask_binary_conventions(tmp_path: Path) -> None:
    m = np.zeros((10, 12), np.uint8)
    m[2:6, 3:9] = 1
    Image.fromarray(m * 255).save(tmp_path / "m255.png")
    Image.fromarray(m).save(tmp_path / "m01.png")
    Image.fromarray(m.astype(bool)).save(tmp_path / "m1bit.png")
    Image.fromarray(m.astype(np.uint16) * 65535).save(tmp_path / "m16.png")
    for name in ("m255.png", "m01.png", "m1bit.png", "m16.png"):
        out = read_mask(tmp_path / name)
        assert out.dtype == np.uint8 and np.array_equal(out, m), name
    Image.fromarray(np.dstack([m * 255] * 3)).save(tmp_path / "rgb.png")
    assert np.array_equal(read_mask(tmp_path / "rgb.png"), m)
    assert np.array_equal(read_mask(tmp_path / "m255.png", raw=True), m * 255)


def test_mask_index_and_palette(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [3, 2, 1]], np.uint8)
    Image.fromarray(idx).save(tmp_path / "idx.png")
    assert np.array_equal(read_mask(tmp_path / "idx.png"), idx)
    pal = Image.fromarray(idx)
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12))
    pal.save(tmp_path / "pal.png")
    assert Image.open(tmp_path / "pal.png").mode == "P"
    assert np.array_equal(read_mask(tmp_path / "pal.png"), idx)  # indices, not colours
    assert read_image(tmp_path / "pal.png").shape == (2, 3, 3)  # as an image: RGB
    big = np.array([[0, 300], [7, 1000]], np.uint16)
    Image.fromarray(big).save(tmp_path / "big.png")
    out = read_mask(tmp_path / "big.png")
    assert out.dtype == np.uint16 and np.array_equal(out, big)


def test_mask_rgb_different_channels(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2, :, 0] = 255
    rgb[2:, :, 1] = 255
    Image.fromarray(rgb).save(tmp_path / "col.png")
    with pytest.raises(ImageReadError) as exc:
        read_mask(tmp_path / "col.png")
    _assert_one_line_error(exc, tmp_path / "col.png", "color_map")
    out = read_mask(tmp_path / "col.png", color_map={(255, 0, 0): 1, (0, 255, 0): 2})
    assert out[:2].tolist() == [[1] * 4] * 2 and out[2:].tolist() == [[2] * 4] * 2


def test_jpeg_mask_with_noise_is_thresholded(tmp_path: Path) -> None:
    m = np.zeros((64, 64), np.uint8)
    m[16:48, 20:40] = 1
    noisy = (m * 255).astype(np.int16) + _rng().integers(-30, 31, m.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).convert("RGB").save(tmp_path / "m.jpg", quality=75)
    raw = read_mask(tmp_path / "m.jpg", raw=True)
    assert len(np.unique(raw)) > 2  # really noisy
    out = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(out)) <= {0, 1}
    assert (out != m).mean() < 0.01
    assert read_mask(tmp_path / "m.jpg", threshold=250).sum() < out.sum()


# ----------------------------------------------------------------------------- model input
def test_to_model_channels_rules() -> None:
    g8 = np.array([[0, 255]], np.uint8)
    out = to_model_channels(g8, 3)
    assert out.shape == (1, 2, 3) and out.dtype == np.float32 and np.allclose(out[0, 1], 1.0)
    g16 = np.array([[0, 65535, 4095]], np.uint16)
    out = to_model_channels(g16, 1)
    assert np.allclose(out[..., 0], [[0, 1, 4095 / 65535]])
    pct = to_model_channels(np.array([[0, 100, 4095, 4095]], np.uint16), 1, scaling="percentile",
                            percentiles=(0, 100))
    assert np.isclose(pct.max(), 1.0) and np.isclose(pct.min(), 0.0)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 7
    out = to_model_channels(rgba, 3)
    assert out.shape == (2, 2, 3) and np.allclose(out[..., 0], 1) and np.allclose(out[..., 1:], 0)
    assert to_model_channels(rgba, 4).shape == (2, 2, 4)  # all channels kept when asked for
    luma = to_model_channels(np.full((1, 1, 3), 255, np.uint8), 1)
    assert luma.shape == (1, 1, 1) and np.isclose(luma.item(), 1.0, atol=1e-6)
    f = np.full((2, 2), 7.5, np.float32)
    assert np.allclose(to_model_channels(f, 1), 7.5)  # floats kept
    with pytest.raises(ValueError):
        to_model_channels(np.zeros((2, 2, 5), np.uint8), 3)


def test_normalize_modes() -> None:
    x = np.full((2, 2, 3), 0.5, np.float32)
    out = normalize(x, "imagenet")
    assert np.allclose(out[0, 0], (0.5 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]))
    y = np.array([[[0.2], [0.6]]], np.float32)
    assert np.allclose(normalize(y, "minmax").ravel(), [0, 1])
    assert np.allclose(normalize(np.full((2, 2, 1), 3.0, np.float32), "minmax"), 0)
    assert normalize(y, "none") is not None and np.allclose(normalize(y, "none"), y)
    with pytest.raises(ValueError):
        normalize(y, "zscore")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- writers / overlay
def test_writers_roundtrip_and_atomic(tmp_path: Path) -> None:
    m = _rng().integers(0, 4, (9, 7)).astype(np.uint8)
    p = write_mask_png(tmp_path / "sub" / "m.png", m)
    assert np.array_equal(read_mask(p), m)
    write_mask_png(tmp_path / "pal.png", m, palette=True)
    assert Image.open(tmp_path / "pal.png").mode == "P" and np.array_equal(read_mask(tmp_path / "pal.png"), m)
    write_mask_png(tmp_path / "m16.png", (m.astype(np.uint16) * 300))
    assert np.array_equal(read_mask(tmp_path / "m16.png"), m.astype(np.uint16) * 300)
    img = _rng().integers(0, 256, (9, 7, 3), dtype=np.uint8)
    write_image_png(tmp_path / "i.png", img)
    assert np.array_equal(read_image(tmp_path / "i.png"), img)
    write_image_png(tmp_path / "f.png", np.full((3, 3), 1.0, np.float32))
    assert np.all(read_image(tmp_path / "f.png") == 255)
    assert sorted(f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")) == []
    with pytest.raises(ValueError):
        write_mask_png(tmp_path / "neg.png", np.array([[-1, 0]]))


def test_overlay_and_palette() -> None:
    pal = class_palette(40)
    assert pal.shape == (40, 3) and pal.dtype == np.uint8 and tuple(pal[0]) == (0, 0, 0)
    assert len({tuple(c) for c in pal}) == 40
    img = np.full((20, 20, 3), 100, np.uint8)
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 1
    out = overlay(img, mask, alpha=0.5)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.array_equal(out[0, 0], img[0, 0])  # background untouched
    assert tuple(out[5, 5]) == tuple(pal[1])  # contour drawn opaque
    inner = np.rint(0.5 * 100 + 0.5 * pal[1].astype(float))
    assert np.array_equal(out[10, 10], inner.astype(np.uint8))  # interior blended
    thick = overlay(img[..., 0], mask, contours=True, thickness=2)
    assert tuple(thick[6, 6]) == tuple(pal[1])
    with pytest.raises(ValueError):
        overlay(img, mask[:10])
