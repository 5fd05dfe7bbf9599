"""Videos: frame-wise prediction keeps frame count, size and rate; bad files; sequence splits."""
from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
from torch import nn

pytest.importorskip("av")

from hrmedseg.cli.main import main  # noqa: E402
from hrmedseg.data.io import ImageReadError, read_mask, write_image_png  # noqa: E402
from hrmedseg.data.video import VideoWriter, iter_frames, open_video, sequence_of  # noqa: E402
from hrmedseg.inference.video import predict_video  # noqa: E402
from hrmedseg.inference.segmenter import Segmenter  # noqa: E402


class Bright(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(img_size=(32, 32), in_chans=3, num_classes=1)

    def forward(self, x):
        return x.mean(1, keepdim=True)


def _video(path, n=9, w=64, h=48, rate=Fraction(15)):
    with VideoWriter(path, w, h, rate) as vw:
        for i in range(n):
            f = np.full((h, w, 3), 20, np.uint8)
            f[10:30, 5 + 4 * i: 25 + 4 * i] = 235        # a bright square moving right
            vw.write(f)
    return vw.path


def test_predict_video_keeps_count_size_rate(tmp_path):
    src = _video(tmp_path / "clip.mp4")
    seg = Segmenter(Bright(), device="cpu")
    r = predict_video(seg, src, tmp_path / "o", batch_size=4, frames_png=True)
    assert r["frames"] == 9
    for out in (r["mask"], r["overlay"]):
        info = open_video(out)
        assert (info.frames, info.width, info.height, info.rate) == (9, 64, 48, Fraction(15))
    pngs = sorted((tmp_path / "o" / "clip_frames").glob("*.png"))
    assert len(pngs) == 9
    m = read_mask(pngs[2])
    assert m.shape == (48, 64) and m[20, 20] == 1 and m[40, 60] == 0


def test_cli_video_and_ntsc_rate(tmp_path, capsys):
    src = _video(tmp_path / "us.mp4", n=5, rate=Fraction(30000, 1001))
    assert main(["predict", "hrmedseg", str(src), "-o", str(tmp_path / "o"), "--device", "cpu",
                 "--size", "32", "--frames-png"]) == 0
    assert "5 frames 64x48" in capsys.readouterr().out
    info = open_video(tmp_path / "o" / "us_mask.mp4")
    assert (info.frames, info.rate) == (5, Fraction(30000, 1001))
    assert len(list((tmp_path / "o" / "us_frames").glob("*.png"))) == 5


def test_odd_size_and_frame_folder(tmp_path):
    src = _video(tmp_path / "odd.mp4", n=4, w=63, h=47)
    assert src.suffix == ".mkv"                          # lossless FFV1 for odd sizes
    frames = list(iter_frames(src))
    assert len(frames) == 4 and frames[0].shape == (47, 63, 3)
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames * 3):
        write_image_png(d / f"frame{i}.png", f)        # frame2 before frame10: natural order
    r = predict_video(Segmenter(Bright(), device="cpu"), d, tmp_path / "o", fps=10, batch_size=5)
    info = open_video(r["mask"])
    assert (info.frames, info.width, info.height, info.rate) == (12, 63, 47, Fraction(10))


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage" * 200, b"ftypisom" + bytes(range(256)) * 20])
def test_corrupt_video_is_one_line_error(tmp_path, capsys, content):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(content)
    with pytest.raises(ImageReadError) as ei:
        open_video(bad)
    assert "\n" not in str(ei.value) and str(ei.value).startswith(str(bad))
    assert main(["predict", "hrmedseg", str(bad), "-o", str(tmp_path / "o"), "--device", "cpu", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.mp4" in err


def test_truncated_video_is_one_line_error(tmp_path):
    src = _video(tmp_path / "t.mp4", n=30)
    data = src.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError) as ei:
        predict_video(Segmenter(Bright(), device="cpu"), cut, tmp_path / "o")
    assert "\n" not in str(ei.value) and "cut.mp4" in str(ei.value)


def test_sequence_split_never_leaks():
    from hrmedseg.data.splits import kfold_splits, random_split

    assert sequence_of("seq01_0005") == "seq01"
    assert sequence_of("patient_3-frame0012") == "patient_3"
    assert sequence_of("clipA/000017") == "clipA"
    assert sequence_of("case_12_f7") == "case_12"
    assert sequence_of("single") == "single"
    rng = np.random.default_rng(0)
    stems = [f"vid{s:02d}_{f:04d}" for s in range(17) for f in range(int(rng.integers(3, 40)))]
    for seed in range(5):
        parts = random_split(stems, (0.7, 0.15, 0.15), seed=seed, group_of=sequence_of)
        seqs = {k: {sequence_of(s) for s in v} for k, v in parts.items()}
        assert not (seqs["train"] & seqs["val"]) and not (seqs["train"] & seqs["test"]) \
            and not (seqs["val"] & seqs["test"])
        assert sorted(sum(parts.values(), [])) == sorted(stems)
    tr, te = kfold_splits(stems, 5, 2, group_of=sequence_of)
    assert not ({sequence_of(s) for s in tr} & {sequence_of(s) for s in te})
