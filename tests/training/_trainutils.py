from pathlib import Path

import numpy as np
from PIL import Image

# MobileSAM's checkpoint beside the repository (shared/), else at the shared folder's usual place;
# the tests that need it are skipped where neither exists.
MOBILE_SAM = Path(__file__).resolve().parents[3] / "shared" / "weights" / "mobile_sam.pt"
if not MOBILE_SAM.is_file():
    MOBILE_SAM = Path("/work/shared/weights/mobile_sam.pt")
TINY_OVERRIDES = "model.overrides={embed_dim: 24, depth: 2, num_heads: [6, 6, 6], neck_dim: 32, decoder_heads: 4, decoder_mlp_dim: 32, drop_path_rate: 0.1}"


def make_dataset(root, n=12, size=40, seed=0):
    """Synthetic images with bright discs; masks are the discs (0/255 PNG)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx, r = rng.integers(10, size - 10, 2).tolist() + [int(rng.integers(4, 9))]
        m = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r
        img = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        img[m] = np.clip(img[m].astype(int) + 150, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i:03d}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"case{i:03d}.png")
    return root


def tiny_args(data, out, epochs=2, extra=()):
    return ["train", "--config", "paper", f"data.root={data}", f"train.out_dir={out}",
            "data.size=32", "data.workers=0", f"train.epochs={epochs}", "train.batch_size=4",
            "train.precision=fp32", "train.deterministic=true", TINY_OVERRIDES, *extra]
