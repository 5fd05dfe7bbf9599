"""Baselines from MONAI and smp behind the package's model contract (hrmedseg.models.baselines)."""
from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import torch

import hrmedseg
from hrmedseg.models import baselines
from hrmedseg.models._base import InputSizeError

MONAI_NAMES = ["attention_unet", "swin_unetr", "unet", "unet_small", "unetplusplus", "unetr"]
SMP_NAMES = ["segformer_b0", "segformer_b2", "unet_resnet34", "unetplusplus_resnet34"]

HAS_EINOPS = baselines._module_available("einops")


def _smp_available() -> bool:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception:  # missing, or installed with a torchvision that does not import
        return False
    return True


HAS_SMP = _smp_available()
needs_einops = pytest.mark.skipif(not HAS_EINOPS, reason="einops (MONAI optional) not installed")
needs_smp = pytest.mark.skipif(not HAS_SMP, reason="segmentation-models-pytorch not installed/importable")


def _einops(name: str) -> list:
    return [needs_einops] if name in ("swin_unetr", "unetr") else []


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

def test_registered_names_family_and_tags():
    assert hrmedseg.list_models(family="baselines") == sorted(MONAI_NAMES + SMP_NAMES)
    assert hrmedseg.list_models(tag="smp") == sorted(SMP_NAMES)
    for name in MONAI_NAMES + SMP_NAMES:
        info = hrmedseg.model_info(name)
        assert "baseline" in info.tags and info.summary and info.paper
    # not provided: in neither library
    assert not hrmedseg.is_model("unext") and not hrmedseg.is_model("transunet")


def test_listing_imports_neither_monai_nor_smp():
    code = ("import sys, hrmedseg; hrmedseg.list_models(); "
            "print(sorted(m for m in ('monai', 'segmentation_models_pytorch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# Forward: (name, overrides, input shape, output shape)
# ---------------------------------------------------------------------------------------------

SMALL_UNET = {"features": (8, 16, 32, 64, 128, 8)}
SMALL_SWIN = {"feature_size": 12, "num_heads": (1, 2, 3, 4), "window_size": 4}
SMALL_UNETR = {"feature_size": 8, "hidden_size": 48, "mlp_dim": 96, "num_heads": 3}

FORWARD_TABLE = [
    ("unet", {}, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("unet", SMALL_UNET, (2, 3, 48, 80), (2, 1, 48, 80)),
    ("unet", {**SMALL_UNET, "num_classes": 3, "in_chans": 1}, (1, 1, 32, 32), (1, 3, 32, 32)),
    ("unet_small", {}, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("unetplusplus", {}, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("unetplusplus", {**SMALL_UNET, "deep_supervision": True, "num_classes": 2}, (1, 3, 32, 48),
     (1, 2, 32, 48)),
    ("attention_unet", {}, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("attention_unet", {"channels": (8, 16, 32), "strides": (2, 2), "num_classes": 4},
     (2, 3, 36, 20), (2, 4, 36, 20)),
    ("swin_unetr", SMALL_SWIN, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("swin_unetr", {**SMALL_SWIN, "num_classes": 2, "in_chans": 1}, (1, 1, 32, 96), (1, 2, 32, 96)),
    ("unetr", {**SMALL_UNETR, "img_size": 64}, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("unetr", {**SMALL_UNETR, "img_size": (32, 64), "num_classes": 3}, (2, 3, 32, 64), (2, 3, 32, 64)),
]


@pytest.mark.parametrize("name,overrides,shape,out_shape", [
    pytest.param(*row, marks=_einops(row[0]), id=f"{row[0]}-{i}") for i, row in enumerate(FORWARD_TABLE)])
def test_forward_shapes(name, overrides, shape, out_shape):
    model = hrmedseg.create_model(name, **overrides).eval()
    with torch.no_grad():
        y = model(torch.randn(shape))
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == out_shape
    assert torch.isfinite(y).all()
    assert model.activation == ("sigmoid" if out_shape[1] == 1 else "softmax")


# ---------------------------------------------------------------------------------------------
# Default configs: exact parameter counts (1 class, 3 channels, img_size 1024) and size rules
# ---------------------------------------------------------------------------------------------

PARAMS = {
    "unet": (31_113_217, 16),
    "unet_small": (7_783_425, 16),
    "unetplusplus": (9_119_332, 16),
    "attention_unet": (31_740_337, 16),
    "swin_unetr": (25_139_275, 32),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=_einops(n)) for n in PARAMS])
def test_default_param_counts_and_size_rule(name):
    model = hrmedseg.create_model(name)  # build only: no forward at 1024
    assert (n_params(model), model.size_multiple) == PARAMS[name]
    groups = model.parameter_groups()
    assert sum(n_params(g) for g in groups.values()) == n_params(model)


@needs_einops
@pytest.mark.parametrize("img_size,count", [(224, 87_681_265), (1024, 90_676_465)])
def test_unetr_param_count_follows_img_size(img_size, count):
    model = hrmedseg.create_model("unetr", img_size=img_size)
    assert n_params(model) == count and model.size_multiple == 16


@pytest.mark.parametrize("name,overrides,bad,rule", [
    ("unet", SMALL_UNET, (64, 72), "multiples of 16"),
    ("unetplusplus", SMALL_UNET, (50, 64), "multiples of 16"),
    ("attention_unet", {"channels": (8, 16, 32), "strides": (2, 2)}, (30, 32), "multiples of 4"),
    pytest.param("swin_unetr", SMALL_SWIN, (48, 64), "multiples of 32", marks=needs_einops),
    pytest.param("unetr", {**SMALL_UNETR, "img_size": 64}, (32, 32), "built for 64x64", marks=needs_einops),
])
def test_size_rule_errors(name, overrides, bad, rule):
    model = hrmedseg.create_model(name, **overrides)
    with pytest.raises(InputSizeError, match=rule):
        model(torch.randn(1, 3, *bad))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 2, 64, 64))


@needs_einops
def test_unetr_img_size_must_fit_patches():
    with pytest.raises(ValueError, match="multiples of 16"):
        hrmedseg.create_model("unetr", img_size=72, **SMALL_UNETR)


# ---------------------------------------------------------------------------------------------
# Config, overrides, save/load
# ---------------------------------------------------------------------------------------------

def test_overrides_go_to_config_or_library():
    model = hrmedseg.create_model("unet", num_classes=2, img_size=256,
                                  library_kwargs={"features": (8, 8, 16, 16, 32, 8)}, dropout=0.1)
    cfg = model.config
    assert (cfg.library, cfg.arch, cfg.num_classes, cfg.img_size) == ("monai", "BasicUNet", 2, (256, 256))
    assert cfg.library_kwargs["features"] == (8, 8, 16, 16, 32, 8)
    assert cfg.library_kwargs["dropout"] == 0.1
    assert cfg.library_kwargs["act"] == ("relu", {"inplace": True})  # registry default kept
    with pytest.raises(TypeError, match="monai.networks.nets.BasicUNet rejected its arguments"):
        hrmedseg.create_model("unet", no_such_argument=1)
    with pytest.raises(ValueError, match="JSON"):
        hrmedseg.create_model("unet", norm=torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="no adapter for monai.DynUNet"):
        baselines.BaselineConfig(arch="DynUNet")


@pytest.mark.parametrize("name,overrides,shape", [
    ("unet", {**SMALL_UNET, "num_classes": 2}, (1, 3, 32, 32)),
    ("unetplusplus", {**SMALL_UNET, "in_chans": 1}, (1, 1, 32, 32)),
    pytest.param("unetr", {**SMALL_UNETR, "img_size": (32, 48)}, (1, 3, 32, 48), marks=needs_einops),
])
def test_save_load_round_trip(tmp_path, name, overrides, shape):
    model = hrmedseg.create_model(name, **overrides).eval()
    model.save_pretrained(tmp_path / name)
    saved = json.loads((tmp_path / name / "config.json").read_text())
    assert saved["architecture"] == name
    assert saved["model_args"]["library_kwargs"]  # the library arguments are on file
    loaded = hrmedseg.from_pretrained(tmp_path / name).eval()
    assert type(loaded) is baselines.LibraryModel and loaded.model_name == name
    assert loaded.config == model.config
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# ---------------------------------------------------------------------------------------------
# Gradient checkpointing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,overrides,shape", [
    ("unet", SMALL_UNET, (2, 3, 32, 32)),
    ("unetplusplus", SMALL_UNET, (2, 3, 32, 32)),
    ("attention_unet", {"channels": (8, 16, 32), "strides": (2, 2)}, (2, 3, 32, 32)),
    pytest.param("swin_unetr", SMALL_SWIN, (1, 3, 32, 64), marks=needs_einops),
    pytest.param("unetr", {**SMALL_UNETR, "img_size": 32}, (1, 3, 32, 32), marks=needs_einops),
])
def test_grad_checkpointing_same_gradients(name, overrides, shape):
    model = hrmedseg.create_model(name, **overrides).eval()  # eval: no BN statistics drift
    x = torch.randn(shape)

    def grads():
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    keys = set(model.state_dict())
    assert model.set_grad_checkpointing(True) is model and model.grad_checkpointing
    assert set(model.state_dict()) == keys  # names unchanged
    ckpt = grads()
    assert plain.keys() == ckpt.keys()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        model(x)  # no grad: runs without recomputation machinery
    model.set_grad_checkpointing(False)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_grad_checkpointing_survives_deepcopy():
    import copy
    model = hrmedseg.create_model("unet", **SMALL_UNET).set_grad_checkpointing(True)
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        clone.net.final_conv.weight.zero_()
        clone.net.final_conv.bias.fill_(3.0)
    y = clone(torch.randn(1, 3, 32, 32))  # the copy runs its own blocks, not the original's
    assert torch.allclose(y, torch.full_like(y, 3.0))


def test_grad_checkpointing_unavailable_is_clear(monkeypatch):
    model = hrmedseg.create_model("unet", **SMALL_UNET)
    monkeypatch.setattr(model, "_spec", baselines._ArchSpec(baselines._fixed(16), ()))
    with pytest.raises(NotImplementedError, match="not available for monai.BasicUNet"):
        model.set_grad_checkpointing(True)


# ---------------------------------------------------------------------------------------------
# Missing libraries
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", SMP_NAMES)
def test_missing_smp_message(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # import fails
    with pytest.raises(ImportError) as info:
        hrmedseg.create_model(name)
    assert isinstance(info.value, baselines.MissingDependencyError)
    assert str(info.value) == f"{name} needs segmentation-models-pytorch: pip install 'hrmedseg[baselines]'"


def test_broken_smp_import_message(monkeypatch):
    def broken(mod):
        raise RuntimeError("operator torchvision::nms does not exist\nmore lines")
    monkeypatch.setattr(baselines, "_import", broken)
    with pytest.raises(ImportError, match=r"installed but does not import \(RuntimeError: operator "
                                          r"torchvision::nms does not exist\); it needs a torchvision"):
        hrmedseg.create_model("unet_resnet34")


def test_old_smp_without_segformer(monkeypatch):
    old = types.ModuleType("segmentation_models_pytorch")
    old.__version__ = "0.3.3"
    monkeypatch.setattr(baselines, "_import", lambda mod: old)
    with pytest.raises(ImportError, match=r"segformer_b0 needs a segmentation-models-pytorch with "
                                          r"Segformer \(the installed 0.3.3 has none\)"):
        hrmedseg.create_model("segformer_b0")


@pytest.mark.parametrize("name,arch", [("swin_unetr", "SwinUNETR"), ("unetr", "UNETR")])
def test_missing_einops_message(monkeypatch, name, arch):
    monkeypatch.setattr(baselines, "_module_available", lambda mod: mod != "einops")
    with pytest.raises(ImportError, match=f"{name} needs einops .*{arch}.*: pip install einops"):
        hrmedseg.create_model(name)


# ---------------------------------------------------------------------------------------------
# smp (only where it is installed and importable)
# ---------------------------------------------------------------------------------------------

SMP_PARAMS = {
    "unet_resnet34": 24_436_369,
    "unetplusplus_resnet34": 26_078_609,
    "segformer_b0": 3_714_401,
    "segformer_b2": 27_347_393,
}


@needs_smp
@pytest.mark.parametrize("name", SMP_NAMES)
def test_smp_param_counts_and_size_rule(name):
    model = hrmedseg.create_model(name)
    assert (n_params(model), model.size_multiple) == (SMP_PARAMS[name], 32)
    assert set(model.parameter_groups()) == {"encoder", "decoder", "head"}


@needs_smp
@pytest.mark.parametrize("name,overrides,shape,out_shape", [
    ("unet_resnet34", {"encoder_name": "resnet18"}, (1, 3, 64, 96), (1, 1, 64, 96)),
    ("unet_resnet34", {"encoder_name": "resnet18", "num_classes": 3, "in_chans": 1}, (1, 1, 64, 64),
     (1, 3, 64, 64)),
    ("unetplusplus_resnet34", {"encoder_name": "resnet18"}, (1, 3, 64, 64), (1, 1, 64, 64)),
    ("segformer_b0", {"in_chans": 1, "num_classes": 2}, (1, 1, 64, 64), (1, 2, 64, 64)),
])
def test_smp_forward(name, overrides, shape, out_shape):
    model = hrmedseg.create_model(name, **overrides).eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(shape)).shape) == out_shape
    with pytest.raises(InputSizeError, match="multiples of 32"):
        model(torch.randn(shape[0], shape[1], 48, 64))


@needs_smp
@pytest.mark.parametrize("name", ["unet_resnet34", "segformer_b0"])
def test_smp_grad_checkpointing_and_round_trip(tmp_path, name):
    overrides = {"encoder_name": "resnet18"} if name == "unet_resnet34" else {}
    model = hrmedseg.create_model(name, **overrides).eval()
    x = torch.randn(1, 3, 64, 64)
    model(x).mean().backward()
    plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(True)
    model(x).mean().backward()
    for k, p in model.named_parameters():
        if k in plain:
            torch.testing.assert_close(p.grad, plain[k], rtol=1e-4, atol=1e-6)
    model.save_pretrained(tmp_path / name)
    loaded = hrmedseg.from_pretrained(tmp_path / name).eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
