"""token_masks: the per-token dot product with a feature map, in either memory layout, equals
the einsum; its gradient for the features comes back in the features' layout."""
import pytest
import torch

from hrmedseg.layers import is_channels_last, token_masks


@pytest.mark.parametrize("channels_last", [False, True])
def test_equals_einsum_and_keeps_the_layout_of_the_gradient(channels_last):
    torch.manual_seed(0)
    w = torch.randn(2, 3, 8, requires_grad=True)
    f = torch.randn(2, 8, 5, 6)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    f.requires_grad_(True)
    out = token_masks(w, f)
    ref = torch.einsum("bkc,bchw->bkhw", w.detach().double(), f.detach().double())
    assert out.shape == (2, 3, 5, 6) and out.is_contiguous()
    assert torch.allclose(out.double(), ref, atol=1e-5)
    g = torch.randn_like(out)
    out.backward(g)
    ref_gf = torch.einsum("bkc,bkhw->bchw", w.detach().double(), g.double())
    ref_gw = torch.einsum("bkhw,bchw->bkc", g.double(), f.detach().double())
    assert torch.allclose(f.grad.double(), ref_gf, atol=1e-5)
    assert torch.allclose(w.grad.double(), ref_gw, atol=1e-5)
    assert is_channels_last(f.grad) == channels_last


def test_is_channels_last():
    x = torch.randn(2, 3, 4, 5)
    assert not is_channels_last(x)
    assert is_channels_last(x.contiguous(memory_format=torch.channels_last))
    assert not is_channels_last(torch.randn(2, 3, 1, 1).contiguous(memory_format=torch.channels_last))
    assert not is_channels_last(torch.randn(3, 4, 5))
