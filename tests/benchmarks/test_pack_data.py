"""benchmarks/pack_data.py: the packed copy reads back as the original through the package."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import pack_data  # noqa: E402

from hrmedseg.data.datasets import discover_pairs  # noqa: E402
from hrmedseg.data.io import read_image, read_mask  # noqa: E402


def _jpeg_decoded(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _folder_dataset(root: Path, n: int = 4, hw: tuple[int, int] = (48, 64)) -> Path:
    """images/ RGBA PNG (opaque alpha), masks/ lossy JPEG, instances/ uint16 PNG, splits.json."""
    rng = np.random.default_rng(0)
    for d in ("images", "masks", "instances"):
        (root / d).mkdir(parents=True)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    for i in range(n):
        img = np.zeros((*hw, 4), np.uint8)
        img[..., :3] = (40 + 3 * xx[..., None] + 2 * yy[..., None] + 10 * i) % 256
        img[..., 3] = 255
        Image.fromarray(img, "RGBA").save(root / "images" / f"s{i}.png")
        mask = np.zeros(hw, np.uint8)
        mask[10 + i: 30, 5: 40 + i] = 255
        mask = np.clip(mask.astype(int) + rng.integers(-20, 20, hw), 0, 255).astype(np.uint8)
        Image.fromarray(mask).save(root / "masks" / f"s{i}.jpg", quality=70)
        inst = np.zeros(hw, np.uint16)
        inst[2:10, 2:10], inst[20:30, 30:50] = 300 + i, 7
        Image.fromarray(inst).save(root / "instances" / f"s{i}.png")
    (root / "splits.json").write_text(json.dumps({"train": ["s0", "s1"], "val": ["s2"], "test": ["s3"]}))
    return root


def _pack(src: Path, dst: Path, names: list[str], **kw) -> dict:
    return pack_data.pack(src, dst, names, log=lambda *_: None, **kw)


def test_packed_folder_reads_back_as_the_original(tmp_path):
    src = tmp_path / "src"
    _folder_dataset(src / "toy")
    manifest = _pack(src, tmp_path / "out", ["toy"])
    a, b = discover_pairs(src / "toy"), discover_pairs(tmp_path / "out" / "toy")
    assert a.stems == b.stems == ["s0", "s1", "s2", "s3"]
    assert (tmp_path / "out/toy/splits.json").read_bytes() == (src / "toy/splits.json").read_bytes()
    for s in b.samples:
        assert s.image_path.suffix == ".webp" and s.mask_path.suffix == ".png"
        # JPEG mask thresholded at 128, computed here from the decoded JPEG itself
        want = (_jpeg_decoded(src / "toy/masks" / f"{s.stem}.jpg") >= 128).astype(np.uint8)
        np.testing.assert_array_equal(read_mask(s.mask_path), want)
        orig = np.asarray(Image.open(src / "toy/images" / f"{s.stem}.png"))[..., :3].astype(float)
        got = read_image(s.image_path)
        assert got.shape == orig.shape       # opaque alpha dropped, size kept
        assert 10 * np.log10(255 ** 2 / np.mean((got - orig) ** 2)) > 35
        # instance ids are lossless: the very same bytes
        assert (tmp_path / "out/toy/instances" / f"{s.stem}.png").read_bytes() == \
            (src / "toy/instances" / f"{s.stem}.png").read_bytes()
    check = manifest["datasets"]["toy"]["check"]
    assert check["samples"] == 4 and check["labels_checked"] == 8
    assert json.loads((tmp_path / "out" / pack_data.MANIFEST).read_text())["datasets"]["toy"]["quality"] == 92


def test_max_side_downscales_images_and_labels_by_nearest(tmp_path):
    src = tmp_path / "src"
    _folder_dataset(src / "toy", n=2)
    _pack(src, tmp_path / "out", ["toy"], max_side={"toy": 32}, lossless=True)
    for stem in ("s0", "s1"):
        img = read_image(tmp_path / "out/toy/images" / f"{stem}.webp")
        assert img.shape == (24, 32, 3)
        thresholded = (_jpeg_decoded(src / "toy/masks" / f"{stem}.jpg") >= 128).astype(np.uint8)
        want = np.asarray(Image.fromarray(thresholded).resize((32, 24), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(read_mask(tmp_path / "out/toy/masks" / f"{stem}.png"), want)
        inst = np.asarray(Image.open(src / "toy/instances" / f"{stem}.png")).astype(np.uint16)
        want_inst = np.asarray(Image.fromarray(inst).resize((32, 24), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(read_mask(tmp_path / "out/toy/instances" / f"{stem}.png"), want_inst)


def _drive_dataset(root: Path) -> Path:
    """DRIVE's layout with one training and one test image (official split, no splits.json)."""
    for split, num in (("training", "21"), ("test", "01")):
        for d in ("images", "1st_manual", "mask"):
            (root / split / d).mkdir(parents=True)
        Image.fromarray(np.full((20, 24, 3), 90, np.uint8)).save(root / split / "images" / f"{num}_{split}.tif")
        vessels = np.zeros((20, 24), np.uint8)
        vessels[5:8, :] = 255
        Image.fromarray(vessels).save(root / split / "1st_manual" / f"{num}_manual1.gif")
        fov = np.zeros((20, 24), np.uint8)
        fov[2:18, 2:22] = 255
        Image.fromarray(fov).save(root / split / "mask" / f"{num}_{split}_mask.gif")
    return root


def test_drive_layout_keeps_the_official_split_and_field_of_view(tmp_path):
    root = _drive_dataset(tmp_path / "src" / "drive")
    _pack(tmp_path / "src", tmp_path / "out", ["drive"])
    a, b = discover_pairs(root), discover_pairs(tmp_path / "out" / "drive")
    assert b.official_splits == a.official_splits == {"train": ["21_training"], "val": [], "test": ["01_test"]}
    for s in b.samples:
        assert s.fov_mask_path is not None and s.fov_mask_path.suffix == ".png"
        assert read_mask(s.mask_path)[5:8].all() and read_mask(s.mask_path).sum() == 3 * 24


def test_over_budget_is_refused_in_one_line_and_nothing_is_left(tmp_path, capsys):
    src = tmp_path / "src"
    _folder_dataset(src / "toy", n=2)
    code = pack_data.main(["--src", str(src), "--dst", str(tmp_path / "out"), "--datasets", "toy",
                           "--budget-mib", "0.001", "--jobs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "exceeds --budget-mib" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_weights_are_copied_beside_the_data(tmp_path):
    src = tmp_path / "src"
    _folder_dataset(src / "toy", n=2)
    w = tmp_path / "mobile_sam.pt"
    w.write_bytes(b"x" * 1000)
    manifest = _pack(src, tmp_path / "g" / "data", ["toy"], weights=[w])
    assert (tmp_path / "g" / "weights" / "mobile_sam.pt").read_bytes() == w.read_bytes()
    assert "mobile_sam.pt" in manifest["weights"]


def test_half_weights_store_float16_and_reproduce_notices(tmp_path):
    import torch

    from hrmedseg.experiments.reproduce import _holds_half_weights
    src = tmp_path / "src"
    _folder_dataset(src / "toy", n=2)
    state = {"a.weight": torch.randn(8, 4), "a.steps": torch.arange(3)}
    w = tmp_path / "mobile_sam.pt"
    torch.save(state, w)
    _pack(src, tmp_path / "g" / "data", ["toy"], weights=[w], half_weights=True)
    packed = torch.load(tmp_path / "g" / "weights" / "mobile_sam.pt", weights_only=True)
    assert packed["a.weight"].dtype == torch.float16
    torch.testing.assert_close(packed["a.weight"].float(), state["a.weight"], rtol=1e-3, atol=1e-4)
    assert torch.equal(packed["a.steps"], state["a.steps"])     # integers untouched
    assert _holds_half_weights(tmp_path / "g" / "weights" / "mobile_sam.pt")
    assert not _holds_half_weights(w)


def test_half_weights_of_a_file_that_is_no_state_dict_stop_before_packing(tmp_path):
    import torch
    src = tmp_path / "src"
    _folder_dataset(src / "toy", n=2)
    w = tmp_path / "mobile_sam.pt"
    torch.save([torch.zeros(2)], w)
    with pytest.raises(pack_data.PackError, match="not a state dict"):
        _pack(src, tmp_path / "g" / "data", ["toy"], weights=[w], half_weights=True)
    assert not (tmp_path / "g").exists()


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert pack_data.main(["--src", str(tmp_path), "--dst", str(tmp_path / "o"), "--datasets", "nope"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    with pytest.raises(pack_data.PackError, match="expected N or NAME=N"):
        pack_data.parse_per_dataset(["a=b"], ["a"], "--max-side", 16, 99, None)
    with pytest.raises(pack_data.PackError, match="must be in 1..100"):
        pack_data.parse_per_dataset(["0"], ["a"], "--quality", 1, 100, 92)
    assert pack_data.parse_per_dataset(["80", "b=70"], ["a", "b"], "--quality", 1, 100, 92) == {"a": 80, "b": 70}


def test_scaled_hw_caps_the_longer_side():
    assert pack_data.scaled_hw(1040, 1388, 1024) == (round(1040 * 1024 / 1388), 1024)
    assert pack_data.scaled_hw(100, 50, None) == (100, 50)
    assert pack_data.scaled_hw(100, 50, 200) == (100, 50)
