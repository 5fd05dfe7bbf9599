import pytest
import torch
import torch.nn.functional as F

from hrmedseg.layers import MultiscalePooling


def test_identity_without_kernels():
    x = torch.randn(2, 3, 9, 7)
    assert torch.equal(MultiscalePooling(())(x), x)


def test_formula_and_border_counts():
    x = torch.randn(1, 2, 11, 13, dtype=torch.float64)
    out = MultiscalePooling((5, 9))(x)
    # Independent: average over the in-image part of each k×k window.
    def avg(k):
        ones = torch.ones(1, 1, 11, 13, dtype=torch.float64)
        s = F.conv2d(F.pad(x, (k // 2,) * 4), torch.ones(2, 1, k, k, dtype=torch.float64), groups=2)
        c = F.conv2d(F.pad(ones, (k // 2,) * 4), torch.ones(1, 1, k, k, dtype=torch.float64))
        return s / c
    ref = x + (avg(5) - x) + (avg(9) - x)
    assert torch.allclose(out, ref, atol=1e-12)
    assert sum(p.numel() for p in MultiscalePooling().parameters()) == 0


@pytest.mark.parametrize("shape", [(2, 3, 17, 23), (1, 4, 6, 5), (1, 2, 40, 40)])
def test_separable_pooling_equals_direct_values_and_gradients(shape):
    import torch
    from hrmedseg.layers.pooling import MultiscalePooling
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    outs, grads = [], []
    for impl in ("direct", "separable"):
        x.grad = None
        y = MultiscalePooling((5, 9, 13), impl=impl)(x)
        (y * g).sum().backward()
        outs.append(y.detach())
        grads.append(x.grad.clone())
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_pooling_impl_is_checked():
    from hrmedseg.layers.pooling import MultiscalePooling
    with pytest.raises(ValueError, match="impl"):
        MultiscalePooling(impl="fft")


def test_separable_backward_gradcheck_and_saves_nothing():
    """The hand-written adjoint passes gradcheck and keeps no tensor alive for the backward
    (the direct k×k pooling's autograd saves its input)."""
    x = torch.randn(1, 2, 9, 14, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: MultiscalePooling((3, 5, 9), impl="separable")(t), (x,))

    def saved_count(impl: str) -> int:
        n = [0]

        def pack(t):
            n[0] += 1
            return t
        y = torch.randn(2, 4, 16, 16, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            MultiscalePooling((5, 9, 13), impl=impl)(y).sum()
        return n[0]
    assert saved_count("separable") == 0 and saved_count("direct") > 0


def test_separable_channels_last_gradients_match_direct():
    x = torch.randn(2, 8, 20, 24).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    g = torch.randn(2, 8, 20, 24)
    grads = []
    for impl in ("direct", "separable"):
        x.grad = None
        (MultiscalePooling((5, 9, 13), impl=impl)(x) * g).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["direct", "separable"])
def test_cuda_channels_last_gradients_match_cpu(impl: str) -> None:
    """PyTorch's CUDA avg_pool2d backward is wrong for channels-last inputs (torch 2.11+cu130,
    benchmarks/results/avgpool_nhwc_backward_h200/); both of δ's paths must still give the CPU's
    input gradient on the GPU, in the layout the decoder hands them."""
    x = torch.randn(2, 16, 32, 37)
    g = torch.randn(2, 16, 32, 37)
    grads = []
    for dev in ("cpu", "cuda"):
        xx = x.to(dev).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        (MultiscalePooling((5, 9, 13), impl=impl)(xx) * g.to(dev)).sum().backward()
        grads.append(xx.grad.cpu())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["direct", "separable"])
def test_channels_first_copy_same_values_and_gradients(impl):
    torch.manual_seed(5)
    x = torch.randn(2, 6, 11, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    plain = MultiscalePooling((3, 5), impl=impl)
    cf = MultiscalePooling((3, 5), impl=impl, channels_first=True)
    assert "channels_first=True" in repr(cf)
    w = torch.randn(2, 6, 11, 9)
    a = plain(x)
    (ga,) = torch.autograd.grad((a * w).sum(), x)
    b = cf(x)
    (gb,) = torch.autograd.grad((b * w).sum(), x)
    assert b.is_contiguous()  # NCHW out
    torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gb, ga, rtol=1e-6, atol=1e-6)
