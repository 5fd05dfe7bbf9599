"""benchmarks/trainer_throughput.py: one tiny CPU training run against the bare step."""
import json

import pytest


@pytest.mark.slow  # a real `hrmedseg train` subprocess: 15-40 s on two shared cores
@pytest.mark.timeout(300)
def test_trainer_and_bare_step_rates(tmp_path, load_benchmark, monkeypatch, toy_dataset):
    monkeypatch.setenv("HRMEDSEG_COMMIT", "7e7e7e7")
    toy_dataset(tmp_path / "toy")
    out = tmp_path / "t.json"
    assert load_benchmark("trainer_throughput").main([
        "--data", str(tmp_path / "toy"), "-o", str(out), "--run-dir", str(tmp_path / "run"),
        "--device", "cpu", "--warmup", "1", "--reps", "1", "--",
        "data.size=[32,32]", "train.epochs=2", "train.batch_size=2", "train.precision=fp32",
        "data.workers=0", "model.pretrained=none", "data.augment=none"]) == 0
    r = json.loads(out.read_text())
    assert r["commit"] == "7e7e7e7" and r["device"]["type"] == "cpu" and r["date_utc"]
    tr, bare = r["trainer"], r["bare_step"]
    assert tr["epochs"] == 2 and len(tr["train_images_per_s_by_epoch"]) == 2
    assert tr["train_images_per_s_median_after_first"] == tr["train_images_per_s_by_epoch"][1]
    assert bare["batch"] == 2 and bare["size"] == [32, 32] and bare["precision"] == "fp32"
    assert r["trainer_over_bare_step"] == pytest.approx(
        tr["train_images_per_s_median_after_first"] / bare["images_per_s"])
    assert r["trainer_images_per_s"] == tr["train_images_per_s_median_after_first"]
    assert r["bare_step_images_per_s"] == bare["images_per_s"] and bare["compile"] is None
    assert r["peak_gb_per_image"] is None        # CPU: no allocator peak to report
