"""`hrmedseg predict --mode tile` on a TIFF larger than the model size."""
from types import SimpleNamespace

import numpy as np
import tifffile
import torch

from hrmedseg.cli.main import main


class _RedAboveHalf(torch.nn.Module):
    """Logits = red channel - 0.5 (inputs not normalised): the tiled mask is computable
    without the model, whatever the tiling, overlap and blending."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(img_size=(256, 256), in_chans=3, num_classes=1)

    def forward(self, x):
        return x[:, :1] - 0.5


def test_predict_tile_mode_on_tiff(tmp_path, capsys, monkeypatch):
    import hrmedseg.inference.segmenter as segmod
    real = segmod._resolve_model
    monkeypatch.setattr(segmod, "_resolve_model", lambda src, dev: (
        (_RedAboveHalf(), {"normalize": "none"}) if src == "red" else real(src, dev)))
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img, tile=(256, 256))
    out = tmp_path / "out"
    assert main(["predict", "red", str(tmp_path / "big.tif"), "-o", str(out), "--device", "cpu",
                 "--size", "256", "--mode", "tile", "--overlap", "0.25"]) == 0
    from PIL import Image
    mask = np.asarray(Image.open(out / "big_mask.png"))
    assert mask.shape == (700, 900)
    np.testing.assert_array_equal(mask, np.where(img[..., 0] > 127, 255, 0).astype(np.uint8))
    assert (out / "big_overlay.png").is_file()
