"""Fixtures of the benchmark-script tests."""
import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def toy_dataset():
    """Writes ``n`` image/mask pairs (noise with a bright square to find) into a folder."""
    def make(root, n=12, side=40):
        rng = np.random.default_rng(0)
        for d in ("images", "masks"):
            (root / d).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            mask = np.zeros((side, side), np.uint8)
            mask[8:24, 10:30] = 255
            img[mask > 0] = 230
            Image.fromarray(img).save(root / "images" / f"c{i:02d}.png")
            Image.fromarray(mask).save(root / "masks" / f"c{i:02d}.png")
        return root
    return make
