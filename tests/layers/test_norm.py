"""LayerNorm / LayerNorm2d and their ``fast`` (autocast-dtype) switch."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hrmedseg.layers import LayerNorm, LayerNorm2d, set_fast_norm
from hrmedseg.layers.norm import layer_norm_in_amp_dtype
from hrmedseg.models import create_model


def _randomise(m: nn.Module) -> None:
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)


def test_layernorm_is_nn_layernorm_state_dict_compatible():
    ref = nn.LayerNorm(16)
    _randomise(ref)
    ln = LayerNorm(16, fast=True)
    ln.load_state_dict(ref.state_dict())
    x = torch.randn(2, 5, 16)
    # outside autocast the fast switch changes nothing
    torch.testing.assert_close(ln(x), ref(x), rtol=0, atol=0)
    assert isinstance(ln, nn.LayerNorm) and "fast=True" in repr(ln)


@pytest.mark.parametrize("fast", [False, True])
def test_layernorm2d_matches_channel_layer_norm(fast):
    m = LayerNorm2d(6, fast=fast)
    _randomise(m)
    x = torch.randn(2, 6, 5, 7)
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    ref = (x - mean) / torch.sqrt(var + m.eps) * m.weight.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)


def test_fast_norm_runs_in_autocast_dtype_and_stays_close():
    torch.manual_seed(0)
    x = torch.randn(4, 64, 32, requires_grad=True)
    w = torch.empty(32).uniform_(0.5, 1.5).requires_grad_()
    b = (torch.randn(32) * 0.1).requires_grad_()
    cot = torch.randn(4, 64, 32)
    ref = F.layer_norm(x, (32,), w, b, 1e-5)
    (ref * cot).sum().backward()
    grads_ref = [t.grad.clone() for t in (x, w, b)]
    for t in (x, w, b):
        t.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer_norm_in_amp_dtype(x, (32,), w, b, 1e-5)
    assert y.dtype == torch.bfloat16
    (y.float() * cot).sum().backward()
    # bf16 has an 8-bit mantissa: rounding error ~ 2^-9 relative per value; the weight/bias
    # gradients sum 256 rounded products (measured ~1.3e-2 on the CPU)
    assert (y.float() - ref).norm() / ref.norm() < 1e-2
    for g, g_ref in zip((x.grad, w.grad, b.grad), grads_ref):
        assert g.dtype == torch.float32  # parameters and input keep float32 gradients
        assert (g - g_ref).norm() / g_ref.norm() < 3e-2


def test_fast_norm_outside_autocast_is_exact():
    x = torch.randn(3, 10)
    w, b = torch.rand(10) + 0.5, torch.randn(10)
    torch.testing.assert_close(layer_norm_in_amp_dtype(x, (10,), w, b, 1e-6),
                               F.layer_norm(x, (10,), w, b, 1e-6), rtol=0, atol=0)


def test_hrmedseg_config_switches_every_norm():
    tiny = dict(img_size=64, depth=4, embed_dim=24, num_heads=(2, 2, 2))
    plain = create_model("hrmedseg", fast_norm=False, **tiny)
    fast = create_model("hrmedseg", fast_norm=True, **tiny)
    norms = [m for m in fast.modules() if isinstance(m, (LayerNorm, LayerNorm2d))]
    # 2 per DGLA block, neck 2, upscaler 1, two-way transformer 4 per layer + final, and the
    # 2 of the (unused) mask downscaling in the released layout's prompt encoder
    assert len(norms) == 2 * 4 + 2 + 1 + 4 * 2 + 1 + 2
    assert all(m.fast for m in norms)
    assert not any(getattr(m, "fast", False) for m in plain.modules())
    # the switch adds no parameter: weights load both ways
    fast.load_state_dict(plain.state_dict())
    assert set_fast_norm(fast, False) == len(norms)
    x = torch.randn(1, 3, 64, 64)
    plain.eval(), fast.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), rtol=0, atol=0)
