"""`hrmedseg predict --mode tile` on a TIFF larger than the model size."""
import numpy as np
import tifffile

from hrmedseg.cli.main import main


def test_predict_tile_mode_on_tiff(tmp_path, capsys):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (700, 900, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", img, tile=(256, 256))
    out = tmp_path / "out"
    assert main(["predict", "hrmedseg", str(tmp_path / "big.tif"), "-o", str(out), "--device", "cpu",
                 "--size", "256", "--mode", "tile", "--overlap", "0.25"]) == 0
    from PIL import Image
    mask = np.asarray(Image.open(out / "big_mask.png"))
    assert mask.shape == (700, 900)
    assert (out / "big_overlay.png").is_file()
