"""data.augment_device: the training augmentation batched on the training device (forced here on
the CPU) gives the model the batch the per-item worker path gives it (same seeds, within
interpolation), trains, and resumes exactly."""
import csv

import pytest
import torch
from safetensors.torch import load_file

from hrmedseg.data.gpu_normalize import normalize_batch
from hrmedseg.training.config import ConfigError, load_config
from hrmedseg.training.run import train
from hrmedseg.training.tasks import SegmentTask

from _trainutils import TINY_OVERRIDES, make_dataset


def _cfg(data, out, *extra, size=64):
    return load_config("paper", [f"data.root={data}", f"train.out_dir={out}", f"data.size={size}",
                                 "data.workers=0", "data.augment=strong", "train.batch_size=4",
                                 "train.precision=fp32", "train.deterministic=true",
                                 "train.eval_test=false", "train.device=cpu", TINY_OVERRIDES, *extra])


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("d") / "ds", n=12, size=64)


def _first_inputs(cfg, monkeypatch):
    """(images, masks, the raw uint8 batch) the model receives in the first training step."""
    got = []
    inputs = SegmentTask._inputs

    def spy(self, batch):
        x, y = inputs(self, batch)
        if not got:
            got.append((x.clone(), y.clone(), batch["image"].clone()))
        return x, y
    monkeypatch.setattr(SegmentTask, "_inputs", spy)
    train(cfg, task=SegmentTask(cfg), progress=False)
    monkeypatch.undo()
    return got[0]


def test_device_batch_equals_the_per_item_batch(data64, tmp_path, monkeypatch):
    cpu_x, cpu_y, cpu_raw = _first_inputs(_cfg(data64, tmp_path / "cpu", "data.augment_device=cpu",
                                               "train.max_steps=1"), monkeypatch)
    dev_x, dev_y, dev_raw = _first_inputs(_cfg(data64, tmp_path / "dev", "data.augment_device=device",
                                               "train.max_steps=1"), monkeypatch)
    # The device path received the images unaugmented (resize only) ...
    assert not torch.equal(cpu_raw, dev_raw)
    unaugmented = normalize_batch(dev_raw, "imagenet")
    assert (unaugmented - cpu_x).abs().mean() > 0.2        # the per-item path did augment
    # ... and augmented them into the per-item path's batch (one normalised level is ~0.017).
    assert dev_y.shape == cpu_y.shape and dev_y.dtype == cpu_y.dtype == torch.long
    assert (dev_y == cpu_y).float().mean() >= 0.99
    assert (dev_x - cpu_x).abs().mean() < 0.02
    assert torch.quantile((dev_x - cpu_x).abs().flatten(), 0.99) < 0.08


def _rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_device_augmentation_trains_and_resumes_exactly(data64, tmp_path):
    """Stopped after epoch 1 and one step and resumed mid-epoch: the metrics.csv and weights of an
    uninterrupted run."""
    args = ("data.augment_device=device", "train.epochs=2", "optim.lr=2e-3")
    full = train(_cfg(data64, tmp_path / "full", *args, size=32), progress=False)
    rows = _rows(tmp_path / "full")
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    per_epoch = full["global_step"] // 2
    cut = train(_cfg(data64, tmp_path / "cut", *args, f"train.max_steps={per_epoch + 1}", size=32), progress=False)
    assert cut["stop_reason"] == "max_steps"
    rest = train(_cfg(data64, tmp_path / "cut", *args, size=32), progress=False)
    assert rest["resumed"] and rest["global_step"] == full["global_step"]
    keys = [k for k in rows[0] if "loss" in k or k.startswith("val_") or k in ("step", "lr")]
    assert [[r[k] for k in keys] for r in _rows(tmp_path / "cut")] == [[r[k] for k in keys] for r in rows]
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("value", ["gpu", "", "true"])
def test_bad_augment_device_is_a_config_error(value):
    with pytest.raises(ConfigError, match="data.augment_device"):
        load_config(None, [f"data.augment_device={value}"])


def test_auto_augments_on_the_device_only_on_cuda():
    from hrmedseg.training.data_setup import augment_on_device
    auto, cpu, dev = (load_config(None, [f"data.augment_device={v}"]) for v in ("auto", "cpu", "device"))
    assert [augment_on_device(c, "cuda") for c in (auto, cpu, dev)] == [True, False, True]
    assert [augment_on_device(c, "cpu") for c in (auto, cpu, dev)] == [False, False, True]


def test_mixed_batch_items_are_augmented_in_collate():
    """A batch of uint8 items left for the device and a float item (a float source, augmented per
    item and normalised in the worker) is normalised in collate: its uint8 items are augmented there
    with their seeds, as the per-item OpenCV path augments them; a uint8 batch keeps the seeds."""
    import numpy as np

    from hrmedseg.data.datasets import collate_segmentation
    from hrmedseg.data.transforms import train_transform

    rng = np.random.default_rng(3)
    tf = train_transform(48, "strong")
    imgs = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(3)]
    masks = [(rng.random((48, 48)) > 0.7).astype(np.uint8) for _ in range(3)]
    seeds = [11, 12]
    raw = [{"image": torch.from_numpy(imgs[k].transpose(2, 0, 1).copy()), "mask": torch.from_numpy(masks[k]),
            "normalized": False, "normalization": "imagenet", "aug_seed": seeds[k]} for k in range(2)]
    flt = {"image": torch.zeros(3, 48, 48), "mask": torch.from_numpy(masks[2]).long(), "normalized": True,
           "normalization": "imagenet"}
    u8 = collate_segmentation(raw)
    assert u8["aug_seed"].tolist() == seeds and not u8["normalized"]
    with pytest.raises(ValueError, match="augment"):
        collate_segmentation([*raw, flt])
    mixed = collate_segmentation([*raw, flt], augment=tf.augment)
    assert mixed["normalized"] and "aug_seed" not in mixed
    for k, s in enumerate(seeds):
        tf.set_random_seed(s)
        ref = tf(image=imgs[k], mask=masks[k], keep_uint8=True)
        want = normalize_batch(torch.from_numpy(ref["image"].transpose(2, 0, 1).copy())[None], "imagenet")[0]
        assert (mixed["mask"][k] == torch.from_numpy(ref["mask"]).long()).float().mean() >= 0.99
        assert (mixed["image"][k] - want).abs().mean() < 0.02
        assert (mixed["image"][k] - normalize_batch(raw[k]["image"][None], "imagenet")[0]).abs().mean() > 0.2
