"""benchmarks/split_images.py: exactly the images of one split, for distillation."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import split_images  # noqa: E402
from test_pack_data import _drive_dataset, _folder_dataset  # noqa: E402


def test_train_images_of_a_splits_file_and_of_drives_official_split(tmp_path):
    _folder_dataset(tmp_path / "data" / "toy")                 # train: s0, s1 of s0..s3
    _drive_dataset(tmp_path / "data" / "drive")                # training/21, test/01
    out = tmp_path / "out"
    counts = split_images.link_split(tmp_path / "data", ["toy", "drive"], "train", out)
    assert counts == {"toy": 2, "drive": 1}
    assert sorted(p.name for p in (out / "toy").iterdir()) == ["s0.png", "s1.png"]
    assert [p.name for p in (out / "drive").iterdir()] == ["21_training.tif"]
    linked = out / "toy" / "s0.png"
    assert linked.read_bytes() == (tmp_path / "data" / "toy" / "images" / "s0.png").read_bytes()
    # rebuilt from scratch: another split replaces the folder's contents
    split_images.link_split(tmp_path / "data", ["toy"], "test", out)
    assert sorted(p.name for p in out.rglob("*.png")) == ["s3.png"]


def test_a_missing_dataset_or_empty_split_is_one_line(tmp_path, capsys):
    _folder_dataset(tmp_path / "data" / "toy")
    code = split_images.main(["--data", str(tmp_path / "data"), "--datasets", "nope",
                              "--out", str(tmp_path / "out")])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    code = split_images.main(["--data", str(tmp_path / "data"), "--datasets", "toy", "--split",
                              "unlabelled", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unlabelled" in err
