"""benchmarks/loader_throughput.py on a tiny synthetic dataset: one timed item path per policy."""
import json

import numpy as np
from PIL import Image


def test_loader_throughput_times_each_policy(tmp_path, load_benchmark):
    rng = np.random.default_rng(0)
    for d in ("images", "masks"):
        (tmp_path / "ds" / d).mkdir(parents=True)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "ds" / "images" / f"c{i}.png")
        Image.fromarray((rng.random((40, 40)) > 0.5).astype(np.uint8) * 255).save(
            tmp_path / "ds" / "masks" / f"c{i}.png")
    out = tmp_path / "r.json"
    mod = load_benchmark("loader_throughput")
    assert mod.main(["--config", "paper", f"data.root={tmp_path / 'ds'}", "data.size=[32,32]",
                     f"data.cache_dir={tmp_path / 'cache'}", "--policies", "paper,strong",
                     "--seconds", "0.2", "-o", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res["items_per_s"]) == {"paper", "strong"}
    assert all(v > 0 for v in res["items_per_s"].values())
    assert all(n >= 1 for n in res["items_timed"].values()) and res["size"] == [32, 32]
