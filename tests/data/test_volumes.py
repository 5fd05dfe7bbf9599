"""Volume readers: DICOM series stacking and geometry, windows, bad inputs, slice datasets."""
from __future__ import annotations

import json
import random

import nibabel as nib
import numpy as np
import pytest

from hrmedseg.cli.main import main
from hrmedseg.data.io import ImageReadError
from hrmedseg.data.volumes import (WINDOWS, apply_window, get_slice, read_dicom_series, read_volume,
                                   set_slice, window_range, write_label_volume)


def _write_dicom_series(folder, n=5, rows=6, cols=7, series_uid=None, shuffle_seed=0, start=0):
    """A tiny oblique CT series; slice k holds value 100*k + pixel pattern. File names are shuffled."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    th = np.deg2rad(20)
    row_dir = np.array([np.cos(th), np.sin(th), 0.0])
    col_dir = np.array([0.0, 0.0, -1.0])                  # coronal-ish, tilted
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-30.0, 12.5, 80.0])
    names = [f"IM{i:04d}.dcm" for i in range(n)]
    random.Random(shuffle_seed).shuffle(names)            # file order unrelated to position
    pattern = (np.arange(rows)[:, None] * 10 + np.arange(cols)[None, :]).astype(np.int16)
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.Modality = "CT"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [0.8, 0.6]                      # between rows, between columns
        ds.ImageOrientationPatient = [float(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [float(v) for v in origin + (start + k) * 2.5 * normal]
        ds.InstanceNumber = n - k                         # misleading on purpose
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = (pattern + 100 * (start + k)).tobytes()
        ds.save_as(str(folder / names[k]), enforce_file_format=True)
    return row_dir, col_dir, normal, origin, pattern


def test_dicom_series_stacked_by_position_not_file_name(tmp_path):
    row_dir, col_dir, normal, origin, pattern = _write_dicom_series(tmp_path / "s", n=5)
    vol = read_volume(tmp_path / "s")
    assert vol.kind == "dicom" and vol.shape == (7, 6, 5)
    for k in range(5):
        np.testing.assert_array_equal(get_slice(vol.data, k), pattern + 100 * k - 1024)
    np.testing.assert_allclose(vol.spacing, (0.6, 0.8, 2.5), atol=1e-6)
    lps = np.diag([-1, -1, 1, 1]) @ vol.affine
    for (i, j, k) in [(0, 0, 0), (6, 0, 0), (0, 5, 0), (3, 2, 4)]:
        want = origin + i * 0.6 * row_dir + j * 0.8 * col_dir + k * 2.5 * normal
        np.testing.assert_allclose((lps @ [i, j, k, 1])[:3], want, atol=1e-6)
    # written as NIfTI, the geometry is the series'
    write_label_volume(tmp_path / "l.nii.gz", (vol.data > 0).astype(np.uint8), like=vol)
    back = nib.load(tmp_path / "l.nii.gz")
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(back.header.get_zooms(), vol.spacing, atol=1e-5)


def test_dicom_folder_through_predict(tmp_path, capsys):
    _write_dicom_series(tmp_path / "series", n=4, rows=16, cols=16)
    assert main(["predict", "hrmedseg", str(tmp_path / "series"), "-o", str(tmp_path / "o"),
                 "--device", "cpu", "--size", "32", "--window", "abdomen"]) == 0
    back = nib.load(tmp_path / "o" / "series_labels.nii.gz")
    assert back.shape == (16, 16, 4)
    np.testing.assert_allclose(back.affine, read_dicom_series(tmp_path / "series").affine, atol=1e-5)


def test_mixed_series_is_one_line_error(tmp_path, capsys):
    _write_dicom_series(tmp_path / "mix", n=3, series_uid="1.2.3.4", shuffle_seed=1)
    _write_dicom_series(tmp_path / "other", n=2, series_uid="1.2.3.5", start=5)
    for f in (tmp_path / "other").iterdir():
        f.rename(tmp_path / "mix" / ("B" + f.name))
    with pytest.raises(ImageReadError, match="mixed DICOM series: 2 series found") as ei:
        read_dicom_series(tmp_path / "mix")
    msg = str(ei.value)
    assert "\n" not in msg and str(tmp_path / "mix") in msg and "1.2.3.4 (3 files)" in msg
    assert main(["predict", "hrmedseg", str(tmp_path / "mix"), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mixed DICOM series" in err


def test_windows_and_slices():
    hu = np.array([-2000, -125, 75, 275, 3000], np.float32).reshape(5, 1, 1)
    np.testing.assert_allclose(apply_window(hu, "abdomen").ravel(), [0, 0, 0.5, 1, 1])
    assert WINDOWS["abdomen"] == (-125.0, 275.0) and set(WINDOWS) >= {"lung", "bone", "brain", "soft_tissue"}
    assert window_range(hu, "-10:10") == (-10.0, 10.0)
    mr = np.random.default_rng(0).gamma(2.0, 100.0, size=(20, 20, 20)).astype(np.float32)
    p = apply_window(mr, "percentile")
    assert p.min() == 0 and p.max() == 1 and 0.004 < (p == 1).mean() < 0.007
    with pytest.raises(ValueError, match="unknown window"):
        apply_window(mr, "liver")
    v = np.arange(24).reshape(2, 3, 4)
    for ax in range(3):
        w = np.zeros_like(v)
        for k in range(v.shape[ax]):
            set_slice(w, k, get_slice(v, k, ax), ax)
        np.testing.assert_array_equal(w, v)
    assert get_slice(v, 0, 2).shape == (3, 2)      # rows = j, cols = i, as read_image reads NIfTI


def _nnunet_3d(root, n_cases=3, shape=(24, 20, 8), bad=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "liver": 1, "spleen": 2}, "channel_names": {"0": "CT"},
        "file_ending": ".nii.gz", "numTraining": n_cases}))
    rng = np.random.default_rng(0)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    for c in range(n_cases):
        img = rng.integers(-200, 300, size=shape).astype(np.int16)
        lab = np.zeros(shape, np.uint8)
        lab[4:12, 4:10, 2:4] = 1
        lab[14:20, 10:16, 3:6] = 2
        nib.save(nib.Nifti1Image(img, aff), root / "imagesTr" / f"case{c:02d}_0000.nii.gz")
        laff = aff
        if bad == "affine" and c == 1:
            laff = aff.copy()
            laff[0, 3] = 5.0
        if bad == "shape" and c == 1:
            lab = lab[:, :, :-1]
        nib.save(nib.Nifti1Image(lab, laff), root / "labelsTr" / f"case{c:02d}.nii.gz")


def test_volume_slice_dataset(tmp_path):
    from hrmedseg.data.datasets import collate_segmentation
    from hrmedseg.data.splits import random_split
    from hrmedseg.data.volume_slices import VolumeSliceDataset, case_of

    _nnunet_3d(tmp_path / "d")
    ds = VolumeSliceDataset(tmp_path / "d", size=32, window="abdomen")
    assert ds.num_classes == 3 and ds.class_names == ["background", "liver", "spleen"]
    assert len(ds) == 3 * 8
    it = ds[3]
    assert it["image"].shape == (3, 32, 32) and str(it["image"].dtype) == "torch.float32"
    assert it["mask"].shape == (32, 32) and str(it["mask"].dtype) == "torch.int64"
    assert it["normalized"] is True and it["stem"] == "case00_z0003" and it["orig_size"] == (20, 24)
    assert set(it["mask"].unique().tolist()) == {0, 1, 2}
    batch = collate_segmentation([ds[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, 32, 32)
    # empty slices: 4 with foreground per case (2..5); ratio 0.5 keeps 2 of the 4 empty ones
    ds2 = VolumeSliceDataset(tmp_path / "d", size=32, empty_ratio=0.5)
    assert len(ds2) == 3 * (4 + 2)
    assert len(VolumeSliceDataset(tmp_path / "d", size=32, empty_ratio=0.0)) == 12
    parts = random_split(ds.stems, (0.34, 0.33, 0.33), seed=0, group_of=case_of)
    cases = [{case_of(s) for s in parts[k]} for k in ("train", "val", "test")]
    assert not (cases[0] & cases[1]) and not (cases[0] & cases[2]) and not (cases[1] & cases[2])
    assert len(ds.subset(parts["train"])) == len(parts["train"])


@pytest.mark.parametrize("bad", ["shape", "affine"])
def test_label_grid_mismatch_is_one_line_error(tmp_path, bad):
    from hrmedseg.data.volume_slices import VolumeSliceDataset
    _nnunet_3d(tmp_path / "d", bad=bad)
    with pytest.raises(ImageReadError) as ei:
        VolumeSliceDataset(tmp_path / "d", size=32)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(tmp_path / "d" / "labelsTr" / "case01.nii.gz"))
    assert bad in msg


@pytest.mark.parametrize("empty", ["label", "image", "both"])
def test_empty_volume_is_one_line_error(tmp_path, empty):
    from hrmedseg.data.volume_slices import VolumeSliceDataset
    _nnunet_3d(tmp_path / "d", n_cases=2)
    aff = np.diag([0.8, 0.8, 2.5, 1.0])
    files = {"image": tmp_path / "d" / "imagesTr" / "case01_0000.nii.gz",
             "label": tmp_path / "d" / "labelsTr" / "case01.nii.gz"}
    for what in (["label", "image"] if empty == "both" else [empty]):
        nib.save(nib.Nifti1Image(np.zeros((24, 20, 0), np.uint8), aff), files[what])
    with pytest.raises(ImageReadError) as ei:
        VolumeSliceDataset(tmp_path / "d", size=32)
    msg = str(ei.value)
    named = files["label" if empty == "both" else empty]
    assert "\n" not in msg and msg.startswith(str(named)) and "empty" in msg and "(24, 20, 0)" in msg


def test_volume_without_foreground_is_kept(tmp_path):
    from hrmedseg.data.volume_slices import VolumeSliceDataset
    _nnunet_3d(tmp_path / "d", n_cases=1)
    lab_file = tmp_path / "d" / "labelsTr" / "case00.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 8), np.uint8), nib.load(lab_file).affine), lab_file)
    ds = VolumeSliceDataset(tmp_path / "d", size=32)
    assert len(ds) == 8 and int(ds[0]["mask"].abs().sum()) == 0


def test_mha_without_simpleitk_is_clear(tmp_path):
    try:
        import SimpleITK  # noqa: F401
        pytest.skip("SimpleITK is installed")
    except ImportError:
        pass
    f = tmp_path / "x.mha"
    f.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(ImageReadError, match=r'needs the .SimpleITK. package: pip install "hrmedseg\[medical\]"'):
        read_volume(f)


def test_check_dataset_accepts_a_3d_nnunet_dataset(tmp_path, capsys):
    from hrmedseg.data.volume_slices import VolumeSliceDataset
    _nnunet_3d(tmp_path / "v")
    assert len(VolumeSliceDataset(tmp_path / "v", num_classes=3, size=32)) > 0   # what training reads
    assert main(["check-dataset", str(tmp_path / "v")]) == 0
    assert "3 pairs checked: 0 errors" in capsys.readouterr().out


def test_check_dataset_names_3d_problems(tmp_path, capsys):
    root = tmp_path / "v"
    _nnunet_3d(root, bad="affine")
    lab_file = root / "labelsTr" / "case02.nii.gz"
    lab = nib.load(lab_file)
    data = np.asarray(lab.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, lab.affine), lab_file)
    assert main(["check-dataset", str(root)]) == 1
    out = capsys.readouterr().out
    assert "case01.nii.gz: label affine differs" in out
    assert "case02.nii.gz: label values outside 0..2: 7 (1 px)" in out
