"""The preprocessing a Segmenter takes from a model folder, for every layout the package writes
(``save_pretrained`` alone, the trainer's checkpoints, folders with ``metadata.preprocess`` only),
and a one-line error for anything else."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hrmedseg
from hrmedseg.inference import Segmenter
from hrmedseg.inference.segmenter import folder_preprocess
from hrmedseg.models._hub import CheckpointError, read_config
from hrmedseg.training.checkpoint import save_checkpoint

TRAINED = {"size": [64, 96], "normalize": "minmax"}   # unlike the model's own defaults


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return hrmedseg.create_model("hrmedseg", embed_dim=24, depth=2, num_heads=(6, 6, 6), neck_dim=32,
                                 decoder_heads=4, decoder_mlp_dim=32, img_size=64).eval()


def _minmax_resized(img: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - x.min()) / (x.max() - x.min())
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def test_save_pretrained_folder_gives_the_models_preprocessing(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m")
    cfg = read_config(folder)
    assert "metadata" not in cfg
    assert folder_preprocess(folder / "config.json", cfg) == model.preprocessing()
    seg = Segmenter(folder, device="cpu")
    assert seg.size == (64, 64) and seg.normalize == "imagenet"


def test_trainer_checkpoint_gives_the_trained_preprocessing(model, tmp_path):
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints", "best", model, {"step": 1},
                    metadata={"preprocess": TRAINED, "epoch": 1})
    seg = Segmenter(run, device="cpu")                 # the run folder: checkpoints/best
    assert seg.size == (64, 96) and seg.normalize == "minmax"
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    torch.testing.assert_close(seg.preprocess(img), _minmax_resized(img, (64, 96)))


def test_metadata_only_layout_is_read(model, tmp_path):
    folder = model.save_pretrained(tmp_path / "m", metadata={"preprocess": TRAINED})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["preprocess"] == cfg["metadata"]["preprocess"] == TRAINED   # the writer's both places
    del cfg["preprocess"]                              # folders saved before the top-level key
    (folder / "config.json").write_text(json.dumps(cfg))
    seg = Segmenter(folder, device="cpu")
    assert seg.size == (64, 96) and seg.normalize == "minmax"


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(preprocess=[64, 64]), "'preprocess' is a list"),
    (lambda c: c.update(metadata="trained"), "'metadata' is a str"),
    (lambda c: c.update(preprocess={"size": [0, 64]}), "'preprocess.size' is [0, 64]"),
    (lambda c: c.update(preprocess={"size": "64x64"}), "'preprocess.size' is '64x64'"),
    (lambda c: (c.pop("preprocess"), c.update(metadata={"preprocess": {"normalize": 1}})),
     "'metadata.preprocess.normalize' is 1"),
])
def test_unknown_layout_is_one_line_error(model, tmp_path, edit, words):
    folder = model.save_pretrained(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").write_bytes(b"")   # refused before any weights are read
    with pytest.raises(CheckpointError) as ei:
        Segmenter(folder, device="cpu")
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(str(folder / "config.json")) and words in msg
