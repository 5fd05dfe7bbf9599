import glob
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx")

SAMPLES = Path(__file__).resolve().parents[2] / "src" / "hrmedseg" / "samples" / "dsb2018" / "images"


@pytest.fixture(scope="session")
def sample_paths():
    return sorted(Path(p) for p in glob.glob(str(SAMPLES / "*.png")))


@pytest.fixture(scope="session")
def segmenter():
    """The shipped DSB-2018 weights at 256² on CPU (what `hrmedseg predict --size 256` runs)."""
    from hrmedseg.inference.segmenter import Segmenter
    return Segmenter("hrmedseg", device="cpu", size=256)


@pytest.fixture(scope="session")
def tiny_sam():
    """A tiny randomly initialised box-promptable SamModel (no checkpoint needed)."""
    import torch
    import hrmedseg
    torch.manual_seed(0)
    return hrmedseg.create_model(
        "mobile_sam", img_size=256, decoder_depth=1, decoder_mlp_dim=64, iou_head_hidden_dim=32,
        encoder_args=dict(embed_dims=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4)))
