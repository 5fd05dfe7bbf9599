"""A chest-X-ray-sized 16-bit image (4020×4892) goes through `hrmedseg predict` on the CPU and
comes back as a mask of its own size."""
import numpy as np
from PIL import Image

from hrmedseg.cli.main import main


def test_predict_4020x4892_16bit(tmp_path, capsys):
    h, w = 4892, 4020
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    img = (20000 + 15000 * np.sin(yy / 300) * np.cos(xx / 250)).astype(np.uint16)
    Image.fromarray(img).save(tmp_path / "xray.png")
    out = tmp_path / "out"
    assert main(["predict", "hrmedseg", str(tmp_path / "xray.png"), "-o", str(out),
                 "--device", "cpu", "--size", "256", "--no-overlay"]) == 0
    mask = np.asarray(Image.open(out / "xray_mask.png"))
    assert mask.shape == (h, w)
    # the library's prediction of the same 16-bit array (foreground written as 255)
    from hrmedseg.inference import Segmenter
    ref = Segmenter("hrmedseg", device="cpu", size=256).predict(img)
    assert 0.001 < ref.labels.mean() < 0.999
    np.testing.assert_array_equal(mask, ref.labels * np.uint8(255))
    assert "4020x4892" in capsys.readouterr().out
