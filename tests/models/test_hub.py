"""Model folders as the Hugging Face Hub expects them: from_pretrained("org/name") through
huggingface_hub (offline cache), a model card and the preprocessing written by every
save_pretrained, speed switches kept out of config.json."""
import json

import pytest
import torch

import hrmedseg
from hrmedseg.models._hub import CheckpointError
from hrmedseg.models.hrmedseg import FAST_PATH_DEFAULTS, HRMedSeg

TINY = dict(img_size=64, embed_dim=24, depth=2, num_heads=(6, 6, 6), neck_dim=32,
            decoder_heads=4, decoder_mlp_dim=32)


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_from_pretrained_org_name_reads_the_hub_cache_offline(tmp_path, hf_cache):
    m = hrmedseg.create_model("hrmedseg", num_classes=2, **TINY).eval()
    m.save_pretrained(tmp_path / "saved")
    hf_cache("someone/tiny-hrmedseg", _files(tmp_path / "saved"))
    again = hrmedseg.from_pretrained("someone/tiny-hrmedseg").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), again(x))
    # the class method goes the same way, and checks the class
    assert isinstance(HRMedSeg.from_pretrained("someone/tiny-hrmedseg"), HRMedSeg)
    from hrmedseg.models.sam import SamModel
    with pytest.raises(TypeError, match="holds a HRMedSeg, not a SamModel"):
        SamModel.from_pretrained("someone/tiny-hrmedseg")


def test_from_pretrained_unknown_repo_offline_is_one_clear_error():
    with pytest.raises(CheckpointError, match="someone/absent: not a local folder, and the "
                                              "Hugging Face Hub repository could not be fetched"):
        hrmedseg.from_pretrained("someone/absent")


def test_from_pretrained_missing_local_folder_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        hrmedseg.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("name,kwargs,normalize", [
    ("hrmedseg", TINY, "imagenet"),
    ("unet_small", dict(img_size=32), "imagenet"),
])
def test_save_pretrained_writes_model_card_and_preprocessing(tmp_path, name, kwargs, normalize):
    m = hrmedseg.create_model(name, num_classes=3, **kwargs)
    m.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    size = kwargs["img_size"]
    assert cfg["preprocess"] == {"size": [size, size], "channels": 3, "normalize": normalize,
                                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    card = (tmp_path / "m" / "README.md").read_text()
    n = sum(p.numel() for p in m.parameters())
    assert f"# {name}" in card and f"Parameters: {n:,}" in card
    assert "3-class semantic segmentation" in card
    assert "logits (B, 3, H, W)" in card and "softmax" in card
    assert f"size = [{size}, {size}]" in card


def test_save_pretrained_keeps_the_trainers_preprocessing(tmp_path):
    m = hrmedseg.create_model("hrmedseg", **TINY)
    pre = {"size": [64, 64], "normalize": "minmax"}
    m.save_pretrained(tmp_path / "m", metadata={"preprocess": pre, "epoch": 3})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["preprocess"] == pre and cfg["metadata"]["epoch"] == 3
    assert "sigmoid" in (tmp_path / "m" / "README.md").read_text()


def test_sam_preprocessing_is_sams_own():
    m = hrmedseg.create_model("mobile_sam", img_size=128, prompt_embed_dim=64,
                              decoder_heads=4, decoder_mlp_dim=128,
                              encoder_args=dict(embed_dims=(16, 32, 40, 80), depths=(1, 1, 2, 1),
                                                num_heads=(1, 2, 2, 4)))
    pre = m.preprocessing()
    assert pre["normalize"] == "sam" and pre["size"] == [128, 128]
    assert pre["mean"] == [123.675, 116.28, 103.53]


# ---------------------------------------------------------------------------------------------
# Speed switches: runtime options
# ---------------------------------------------------------------------------------------------

def test_speed_switches_are_not_saved_and_are_set_at_runtime(tmp_path):
    m = hrmedseg.create_model("hrmedseg", **TINY, fast_norm=False, pool_impl="direct")
    assert m.fast_paths == {**FAST_PATH_DEFAULTS, "fast_norm": False, "pool_impl": "direct"}
    m.save_pretrained(tmp_path / "m")
    args = json.loads((tmp_path / "m" / "config.json").read_text())["model_args"]
    assert not set(FAST_PATH_DEFAULTS) & set(args)
    assert not any(hasattr(m.config, k) for k in FAST_PATH_DEFAULTS)
    assert hrmedseg.from_pretrained(tmp_path / "m").fast_paths == FAST_PATH_DEFAULTS
    again = hrmedseg.from_pretrained(tmp_path / "m", fast_attention=False)
    assert again.fast_paths["fast_attention"] is False
    with pytest.raises(ValueError, match="pool_impl must be 'direct' or 'separable'"):
        m.set_fast_paths(pool_impl="fft")


def test_old_config_with_speed_switches_still_loads(tmp_path):
    m = hrmedseg.create_model("hrmedseg", **TINY).eval()
    m.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    # as config.json files were written when the switches were config fields
    cfg["model_args"].update(pool_impl="direct", pool_channels_first=False, fast_norm=True,
                             fast_attention=False)
    path.write_text(json.dumps(cfg))
    old = hrmedseg.from_pretrained(tmp_path / "m").eval()
    assert old.fast_paths == {"pool_impl": "direct", "pool_channels_first": False,
                              "fast_norm": True, "fast_attention": False}
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(old(x), m(x), rtol=1e-5, atol=1e-5)
    # and an HRMedSegSAM whose encoder_args hold them
    sam = hrmedseg.create_model("hrmedseg_sam", img_size=64, prompt_embed_dim=32,
                                decoder_heads=4, decoder_mlp_dim=32,
                                encoder_args=dict(embed_dim=24, depth=2, num_heads=(6, 6, 6),
                                                  fast_norm=False))
    assert sam.image_encoder.fast_paths["fast_norm"] is False


# ---------------------------------------------------------------------------------------------
# FLOP counting the common way
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hrmedseg", "hrmedseg_lean", "herseg"])
def test_flop_counter_under_no_grad(name):
    """torch.utils.flop_counter.FlopCounterMode under no_grad: no module may hand out a
    parameter itself (a tensor that requires grad without a grad_fn)."""
    from torch.utils.flop_counter import FlopCounterMode
    m = hrmedseg.create_model(name, **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    # the counted FLOPs include the patch embedding's convolution at least
    conv = 2 * 3 * 24 * 16 * 16 * (64 // 16) ** 2
    assert counter.get_total_flops() > conv
