"""One contract for every registered model (in the spirit of smp's single model tester).

For each name of ``list_models()``: the exact parameter count of its default build (pinned
below), logits (B, num_classes, H, W) at a small allowed size, a backward pass that reaches
every trained parameter and none of the ones the model lists as unused, the size rule's
one-line message for a refused size, and a save_pretrained/from_pretrained round trip that
gives the same outputs. Families whose optional library is missing are skipped.
"""
import importlib.util

import pytest
import torch

import hrmedseg
from hrmedseg.models._base import InputSizeError
from hrmedseg.models.baselines import MissingDependencyError

# Default build (num_classes=1, in_chans=3), exact. Sources: README / models/baselines.py
# docstring (unet … segformer), tests/models/test_{hrmedseg,qtseg,esp_medsam,sam,baselines}.py,
# and the code for the Table 6 variants and HRMedSegSAM.
PARAMS = {
    "attention_unet": 31_740_337,
    "esp_medsam": 28_892_945,
    "esp_medsam_single": 12_462_095,
    "herseg": 3_666_428,
    "herseg_convt4x4": 3_723_644,
    "hrmedseg": 3_526_364,
    "hrmedseg_l10_c192": 6_222_764,
    "hrmedseg_l10_c24": 2_628_992,
    "hrmedseg_l10_c384": 16_758_092,
    "hrmedseg_l10_c48": 2_820_980,
    "hrmedseg_l10_c96": 3_526_364,
    "hrmedseg_l12_c96": 3_687_308,
    "hrmedseg_l16_c96": 4_009_196,
    "hrmedseg_l4_c96": 3_043_532,
    "hrmedseg_l8_c96": 3_365_420,
    "hrmedseg_lean": 3_239_760,
    "hrmedseg_nopool": 3_526_364,
    "hrmedseg_sam": 5_637_632,
    "mobile_sam": 10_130_092,
    "qtseg": 9_214_850,
    "qtseg_1024": 9_214_850,
    "segformer_b0": 3_714_401,
    "segformer_b2": 27_347_393,
    "swin_unetr": 25_139_275,
    "unet": 31_113_217,
    "unet_resnet34": 24_436_369,
    "unet_small": 7_783_425,
    "unetplusplus": 9_119_332,
    "unetplusplus_resnet34": 26_078_609,
    "unetr": 90_676_465,
}

# Build arguments for the functional checks where the default build is not the cheapest
# valid one: SAM models resize every input to img_size; UNETR takes exactly its img_size.
SMALL_BUILD = {
    "mobile_sam": dict(img_size=64),
    "hrmedseg_sam": dict(img_size=64),
    "unetr": dict(img_size=32),
}
# SAM-family models are prompted with one box per image (how the package uses them); the
# point/mask prompt embeddings and the IoU head (trained by SAM's IoU loss) then take no part.
SAM_BOX_ONLY_UNUSED = ("prompt_encoder.point_embeddings.0.", "prompt_encoder.point_embeddings.1.",
                       "prompt_encoder.not_a_point_embed.", "prompt_encoder.mask_downscaling.",
                       "mask_decoder.iou_prediction_head.")
SLOW = {"unetr", "esp_medsam"}   # > 10 s each on 2 loaded cores (a ViT-B; six modality bags)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small inputs: one thread is faster than two contending ones on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _param(name):
    marks = [pytest.mark.slow] if name in SLOW else []
    return pytest.param(name, marks=marks, id=name)


def _build(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    try:
        return hrmedseg.create_model(name, **kwargs)
    except MissingDependencyError as exc:
        pytest.skip(str(exc))


def _is_sam(name: str) -> bool:
    return name in ("mobile_sam", "hrmedseg_sam")


def _images(name, model, side, batch=2):
    torch.manual_seed(1)
    x = torch.rand(batch, model.in_chans, side, side)
    return x * 255 if _is_sam(name) else x      # SAM takes 0-255 RGB


def _outputs(name, model, x):
    """Everything the model's training objective sees: logits (+ auxiliary outputs)."""
    if hasattr(model, "forward_with_aux"):      # ESP-MedSAM: modality 0, SPPG patch logits
        logits, patch_logits = model.forward_with_aux(x, 0)
        return logits, [patch_logits]
    if _is_sam(name):
        s = x.shape[-1]
        box = torch.tensor([[s * 0.1, s * 0.2, s * 0.7, s * 0.9]]).expand(x.shape[0], 4)
        return model(x, box), []
    return model(x), []


def _unused(name, model) -> set[str]:
    names = set(getattr(model, "unused_parameter_names", lambda: [])())
    if hasattr(model, "modality_parameters"):   # modalities other than 0 are not routed to
        for n in range(1, model.num_modalities):
            names |= set(model.modality_parameters(n))
    if _is_sam(name):
        names |= {n for n, _ in model.named_parameters() if n.startswith(SAM_BOX_ONLY_UNUSED)}
    return names


def test_table_names_only_registered_models():
    assert set(PARAMS) == set(hrmedseg.list_models())


@pytest.mark.parametrize("name", [_param(n) for n in hrmedseg.list_models()])
def test_model_contract(name, tmp_path):
    assert name in PARAMS, f"{name}: registered but has no pinned parameter count"
    model = _build(name)
    # 1. pinned exact parameter count of the default build
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]
    if name in SMALL_BUILD:
        model = _build(name, **SMALL_BUILD[name])
    mult = model.size_multiple
    side = 64 if mult == 1 else 2 * mult        # smallest size with every level at least 2×2

    # 2. logits (B, num_classes, H, W), and a backward that reaches every trained parameter
    model.train()
    x = _images(name, model, side)
    out, aux = _outputs(name, model, x)
    assert out.shape == (2, model.num_classes, side, side)
    weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    loss = (out.float() * weights).sum() + sum(a.float().sum() for a in aux)
    model.zero_grad(set_to_none=True)
    loss.backward()
    named = dict(model.named_parameters())
    unused = _unused(name, model)
    assert unused <= set(named), sorted(unused - set(named))[:3]
    no_grad = [n for n, p in named.items() if n not in unused and p.grad is None]
    assert not no_grad, f"{len(no_grad)} trained parameters got no gradient, e.g. {no_grad[:3]}"
    got = [n for n in unused if named[n].grad is not None]
    assert not got, f"parameters listed as unused got a gradient: {got[:3]}"
    assert sum(float(p.grad.abs().sum()) for p in named.values() if p.grad is not None) > 0

    # 3. the size rule: one line naming the model, the size and the rule
    model.eval()
    if mult == 1:                               # SAM: any size (resized and padded)
        with torch.no_grad():
            assert _outputs(name, model, _images(name, model, 37, 1))[0].shape[-2:] == (37, 37)
    else:
        bad = 2 * mult + 1
        with pytest.raises(InputSizeError) as info, torch.no_grad():
            _outputs(name, model, _images(name, model, bad, 1))
        msg = str(info.value)
        assert msg == (f"{name} cannot take a {bad}x{bad} input: height and width must be "
                       f"multiples of {mult}; resize or pad to e.g. {3 * mult}x{3 * mult}")
    if name == "unetr":                         # learned position embeddings: one size only
        with pytest.raises(InputSizeError) as info, torch.no_grad():
            _outputs(name, model, _images(name, model, 3 * mult, 1))
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"unetr was built for {side}x{side} inputs")

    # 4. save_pretrained / from_pretrained: same state, same outputs (weights perturbed so a
    #    default-initialised rebuild cannot pass)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    model.save_pretrained(tmp_path / "m")
    again = hrmedseg.from_pretrained(tmp_path / "m").eval()
    assert type(again) is type(model) and again.model_name == name
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x1 = _images(name, model, side, 1)
    with torch.no_grad():
        assert torch.equal(_outputs(name, model, x1)[0], _outputs(name, again, x1)[0])
