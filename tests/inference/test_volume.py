"""Slice-wise volume prediction: geometry kept exactly, slices put back where they came from."""
from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from torch import nn

from hrmedseg.cli.main import main
from hrmedseg.data.volumes import Volume, apply_window, read_volume, write_label_volume
from hrmedseg.inference.segmenter import Segmenter
from hrmedseg.inference.volume import predict_volume, volume_overlay


class Threshold(nn.Module):
    """Logit = mean of the normalised channels: foreground where the windowed intensity > 0.449."""

    def __init__(self, size):
        super().__init__()
        self.config = SimpleNamespace(img_size=tuple(size), in_chans=3, num_classes=1)

    def forward(self, x):
        return x.mean(1, keepdim=True)


def _oblique_affine():
    th = np.deg2rad(25.0)
    rot = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]])
    rot = rot @ np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.7, 0.9, 3.0])       # anisotropic spacing
    aff[:3, 3] = [-120.5, 33.25, 71.0]
    return aff


def _ct(shape=(40, 32, 6), seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(-1000, 1000, size=shape).astype(np.int16)
    data[10:30, 8:24, 1:5] = 400
    return data


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_predict_volume_puts_slices_back(axis):
    data = _ct().astype(np.float32)
    shape = [s for i, s in enumerate(data.shape) if i != axis]
    seg = Segmenter(Threshold((shape[1], shape[0])), device="cpu", normalize="imagenet")
    labels = predict_volume(seg, Volume.from_array(data), axis=axis, window="abdomen", batch_size=4)
    assert labels.shape == data.shape and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, (apply_window(data, "abdomen") > 0.449).astype(np.uint8))


def test_nifti_volume_through_predict_keeps_geometry(tmp_path, capsys):
    aff = _oblique_affine()
    img = nib.Nifti1Image(_ct(), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=4)
    img.header.set_xyzt_units("mm", "sec")
    src = tmp_path / "ct.nii.gz"
    nib.save(img, src)
    out = tmp_path / "out"
    assert main(["predict", "hrmedseg", str(src), "-o", str(out), "--device", "cpu", "--size", "64",
                 "--window", "abdomen", "--batch-size", "3"]) == 0
    assert "volume 40x32x6" in capsys.readouterr().out
    a, b = nib.load(src), nib.load(out / "ct_labels.nii.gz")
    assert b.shape == a.shape
    # the labels are the library's slice-wise prediction of the volume, in the input's voxel order
    ref = predict_volume(Segmenter("hrmedseg", device="cpu", size=64), read_volume(src),
                         axis=2, window="abdomen")
    assert 0.001 < ref.mean() < 0.999
    np.testing.assert_array_equal(np.asarray(b.dataobj), ref)
    np.testing.assert_array_equal(b.affine, a.affine)
    np.testing.assert_array_equal(b.get_qform(), a.get_qform())
    np.testing.assert_array_equal(b.get_sform(), a.get_sform())
    assert (int(b.header["qform_code"]), int(b.header["sform_code"])) == (1, 4)
    assert b.header.get_zooms() == a.header.get_zooms()
    assert nib.aff2axcodes(b.affine) == nib.aff2axcodes(a.affine)
    assert b.header.get_xyzt_units() == a.header.get_xyzt_units()
    assert b.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(b.dataobj))) <= {0, 1}
    assert (out / "ct_overlay.png").is_file()


def test_write_label_volume_from_scaled_int16(tmp_path):
    aff = _oblique_affine()
    img = nib.Nifti1Image(_ct(), aff)
    img.header.set_slope_inter(2.0, -1024.0)   # CT stored with a rescale: labels must not be scaled
    nib.save(img, tmp_path / "s.nii")
    vol = read_volume(tmp_path / "s.nii")
    lab = (vol.data > 0).astype(np.uint8) * 3
    write_label_volume(tmp_path / "l.nii.gz", lab, like=vol)
    back = nib.load(tmp_path / "l.nii.gz")
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), lab)
    np.testing.assert_array_equal(back.affine, vol.affine)
    with pytest.raises(ValueError, match="do not match"):
        write_label_volume(tmp_path / "x.nii.gz", lab[:-1], like=vol)


def test_4d_nifti_is_one_line_error(tmp_path, capsys):
    f = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.int16), np.eye(4)), f)
    assert main(["predict", "hrmedseg", str(f), "-o", str(tmp_path / "o"), "--device", "cpu", "--size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "fmri.nii.gz" in err and "4-D NIfTI" in err


def test_volume_overlay_picture(tmp_path):
    data = _ct().astype(np.float32)
    gt = np.zeros(data.shape, np.uint8)
    gt[10:30, 8:24, 1:5] = 2
    ov = volume_overlay(Volume.from_array(data), gt, window="abdomen", gt=gt)
    assert ov.dtype == np.uint8 and ov.ndim == 3 and ov.shape[0] == data.shape[1]


def test_predict_shards_under_torchrun(tmp_path, monkeypatch, capsys):
    from hrmedseg.cli.predict import shard
    items = list(range(7))
    got = [shard(items, {"WORLD_SIZE": "3", "RANK": str(r)}) for r in range(3)]
    assert sorted(sum(got, [])) == items and got[1] == [1, 4]
    assert shard(items, {}) == items
    # two "ranks" of the CLI write disjoint halves of the volumes
    for i in range(3):
        nib.save(nib.Nifti1Image(_ct(seed=i)[:, :, :3], np.eye(4)), tmp_path / f"v{i}.nii.gz")
    outs = []
    for r in range(2):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(r))
        o = tmp_path / f"o{r}"
        assert main(["predict", "hrmedseg", *[str(tmp_path / f"v{i}.nii.gz") for i in range(3)],
                     "-o", str(o), "--device", "cpu", "--size", "32", "--no-overlay"]) == 0
        outs.append(sorted(p.name for p in o.iterdir()))
    assert outs == [["v0_labels.nii.gz", "v2_labels.nii.gz"], ["v1_labels.nii.gz"]]
