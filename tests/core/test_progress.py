"""Progress: a bar on a terminal, plain periodic lines elsewhere."""
from __future__ import annotations

import io

import numpy as np

from hrmedseg.progress import PlainProgress, progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_not_a_tty_gives_plain_lines_without_carriage_returns():
    buf = io.StringIO()
    out = list(progress(range(100), desc="predict", unit="img", file=buf))
    assert out == list(range(100))
    text = buf.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # every 10 % (10, 20, ..., 90) plus the final line
    assert len(lines) == 10 and lines[-1].startswith("predict: 100/100 img (100%)")
    assert "done in" in lines[-1] and lines[0].startswith("predict: 10/100 img (10%)")


def test_plain_lines_every_interval_when_slow():
    buf, clock = io.StringIO(), _Clock()
    bar = PlainProgress(total=1000, desc="tiles", unit="tile", file=buf, interval_s=10.0,
                        step_pct=100.0, clock=clock)
    for _ in range(30):
        clock.t += 1.0         # one tile per second: a line every 10 s
        bar.update(1)
    bar.close()
    lines = buf.getvalue().splitlines()
    assert [ln.split()[1] for ln in lines] == ["10/1000", "20/1000", "30/1000", "30/1000"]
    assert "about 970 s left" in lines[2]


def test_tty_gives_tqdm():
    class Tty(io.StringIO):
        def isatty(self):
            return True
    from tqdm import tqdm
    bar = progress(total=3, file=Tty())
    assert isinstance(bar, tqdm)
    bar.close()


def test_tiled_prediction_of_a_big_image_reports_tiles(capsys):
    import torch

    from hrmedseg.inference.tiling import predict_tiled

    img = np.zeros((160, 160, 3), np.uint8)
    res = predict_tiled(lambda x: torch.zeros(x.shape[0], 1, *x.shape[2:]), img, 32,
                        overlap=0.25, tile_batch=8, desc="big.tif")
    err = capsys.readouterr().err
    assert res.num_tiles >= 32
    assert f"big.tif: {res.num_tiles}/{res.num_tiles} tile (100%)" in err
    predict_tiled(lambda x: torch.zeros(x.shape[0], 1, *x.shape[2:]), img[:40, :40], 32)
    assert capsys.readouterr().err == ""     # small images stay quiet
