"""The official DRIVE download layout: discovery, stems, the official split, errors, training data."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from hrmedseg.data.datasets import check_dataset, discover_pairs
from hrmedseg.training.config import ConfigError, load_config
from hrmedseg.training.data_setup import build_datasets, split_stems

REAL_DRIVE = Path("/work/shared/data/drive")
H, W = 20, 24


def _gif(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8)).save(path)


def make_drive(root: Path, train=(21, 22, 23), test=(1, 2), second_manual=True) -> Path:
    """A tiny DRIVE tree: RGB .tif images, 0/255 .gif vessel masks, .gif field-of-view masks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:H, :W]
    fov = (((yy - H / 2) / (H / 2)) ** 2 + ((xx - W / 2) / (W / 2)) ** 2 <= 1).astype(np.uint8) * 255
    for folder, kind, nums in (("training", "training", train), ("test", "test", test)):
        d = root / folder
        (d / "images").mkdir(parents=True)
        for n in nums:
            img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
            tifffile.imwrite(d / "images" / f"{n:02d}_{kind}.tif", img)
            vessels = np.zeros((H, W), np.uint8)
            vessels[:, n % W] = 255
            _gif(d / "1st_manual" / f"{n:02d}_manual1.gif", vessels)
            _gif(d / "mask" / f"{n:02d}_{kind}_mask.gif", fov)
            if folder == "test" and second_manual:
                _gif(d / "2nd_manual" / f"{n:02d}_manual2.gif", vessels)
    return root


@pytest.fixture
def drive(tmp_path):
    return make_drive(tmp_path / "DRIVE")


def test_discovers_pairs_stems_and_official_split(drive):
    idx = discover_pairs(drive)
    assert idx.layout == "drive"
    assert idx.stems == ["01_test", "02_test", "21_training", "22_training", "23_training"]
    assert idx.official_splits == {"train": ["21_training", "22_training", "23_training"], "val": [],
                                   "test": ["01_test", "02_test"]}
    assert not idx.unpaired_images and not idx.unpaired_masks and not idx.duplicates
    s = idx.subset(["21_training"])[0]
    assert s.image_path == drive / "training" / "images" / "21_training.tif"
    assert s.mask_path == drive / "training" / "1st_manual" / "21_manual1.gif"  # not mask/ (field of view)
    assert s.fov_mask_path == drive / "training" / "mask" / "21_training_mask.gif"
    t = idx.subset(["02_test"])[0]
    assert t.mask_path == drive / "test" / "1st_manual" / "02_manual1.gif"  # 1st observer, not 2nd_manual
    assert t.fov_mask_path == drive / "test" / "mask" / "02_test_mask.gif"
    assert check_dataset(drive, num_classes=1) == []


def test_other_layouts_have_no_official_split(tmp_path):
    for d in ("images", "masks"):
        (tmp_path / d).mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "masks" / "a.png")
    idx = discover_pairs(tmp_path)
    assert idx.layout == "folder" and idx.official_splits is None
    assert idx[0].fov_mask_path is None


def test_one_split_folder_alone(drive):
    idx = discover_pairs(drive / "training")
    assert idx.layout == "drive" and idx.official_splits is None
    assert idx.stems == ["21_training", "22_training", "23_training"]


def test_image_without_manual_mask_names_the_file(drive):
    (drive / "training" / "1st_manual" / "22_manual1.gif").unlink()
    with pytest.raises(ValueError, match=r"training/images/22_training\.tif.*22_manual1\.gif") as exc:
        discover_pairs(drive)
    assert "1 image(s)" in str(exc.value)
    problems = check_dataset(drive)
    assert len(problems) == 1 and problems[0].severity == "error"
    assert "22_training.tif" in problems[0].message


def test_stray_manual_mask_is_reported(drive):
    _gif(drive / "training" / "1st_manual" / "39_manual1.gif", np.zeros((H, W)))
    idx = discover_pairs(drive)
    assert len(idx) == 5
    assert idx.unpaired_masks == [drive / "training" / "1st_manual" / "39_manual1.gif"]


def test_unlabelled_test_folder_is_left_out(drive):
    for p in (drive / "test" / "1st_manual").iterdir():
        p.unlink()
    (drive / "test" / "1st_manual").rmdir()
    idx = discover_pairs(drive)
    assert idx.stems == ["21_training", "22_training", "23_training"]
    assert idx.official_splits["test"] == [] and len(idx.official_splits["train"]) == 3


def test_drive_like_folder_without_any_manual_masks(tmp_path):
    (tmp_path / "training" / "images").mkdir(parents=True)
    (tmp_path / "training" / "mask").mkdir()
    with pytest.raises(ValueError, match="DRIVE layout.*1st_manual"):
        discover_pairs(tmp_path)


def _cfg(root: Path, tmp_path: Path, *extra: str):
    return load_config("paper", [f"data.root={root}", "data.size=16", "data.workers=0",
                                 f"train.out_dir={tmp_path / 'run'}", *extra])


def test_build_datasets_uses_the_official_split(drive, tmp_path):
    data = build_datasets(_cfg(drive, tmp_path), num_classes=1, in_chans=3)
    assert len(data.train) == 3 and data.val is None and len(data.test) == 2
    assert [s.stem for s in data.test.samples] == ["01_test", "02_test"]
    item = data.train[0]
    assert item["stem"] == "21_training" and tuple(item["image"].shape) == (3, 16, 16)
    assert set(np.unique(item["mask"].numpy()).tolist()) <= {0, 1} and int(item["mask"].max()) == 1


def test_splits_file_and_kfold_take_precedence(drive, tmp_path):
    cfg = _cfg(drive, tmp_path, "data.kfold=5", "data.fold=0")
    assert split_stems(cfg, discover_pairs(drive).stems, discover_pairs(drive).official_splits) == \
        (["02_test", "21_training", "22_training", "23_training"], [], ["01_test"])
    sp = tmp_path / "splits.json"
    sp.write_text(json.dumps({"train": ["01_test", "21_training"], "val": ["22_training"],
                              "test": ["23_training"]}))
    data = build_datasets(_cfg(drive, tmp_path, f"data.splits={sp}"), num_classes=1, in_chans=3)
    assert len(data.train) == 2 and len(data.val) == 1 and len(data.test) == 1


def test_official_split_without_train_pairs_is_an_error(drive, tmp_path):
    with pytest.raises(ConfigError, match="official split has no 'train' pairs"):
        split_stems(_cfg(drive, tmp_path), ["01_test"], {"train": [], "val": [], "test": ["01_test"]})


@pytest.mark.slow
def test_real_drive_download():
    if not (REAL_DRIVE / "training").is_dir():
        pytest.skip(f"{REAL_DRIVE} not present")
    idx = discover_pairs(REAL_DRIVE)
    assert idx.layout == "drive" and len(idx) == 40
    assert len(idx.official_splits["train"]) == 20 and len(idx.official_splits["test"]) == 20
    assert idx.official_splits["val"] == []
    assert idx.official_splits["train"][0] == "21_training" and idx.official_splits["test"][0] == "01_test"
    assert all(s.fov_mask_path is not None and s.mask_path.parent.name == "1st_manual" for s in idx)
    assert not idx.unpaired_images and not idx.unpaired_masks and not idx.duplicates
