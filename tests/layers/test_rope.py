import math

import pytest
import torch

from hrmedseg.layers import RotaryEmbedding2d


def complex_rope(x, h, w, base=10000.0):
    """Independent complex-number formulation of the same 2-D RoPE."""
    c = x.shape[-1]
    k = c // 4
    theta = base ** (-torch.arange(k, dtype=torch.float64) / k)
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                                torch.arange(w, dtype=torch.float64), indexing="ij")
    ang = torch.cat([rows[..., None] * theta, cols[..., None] * theta], -1).reshape(h * w, 2 * k)
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(z * torch.polar(torch.ones_like(ang), ang)).flatten(-2)


@pytest.mark.parametrize("h,w", [(4, 4), (3, 5), (8, 2)])
def test_matches_complex_formulation(h, w):
    x = torch.randn(2, h * w, 16, dtype=torch.float64)
    out = RotaryEmbedding2d(16)(x, h, w)
    assert torch.allclose(out, complex_rope(x, h, w), atol=1e-12)


def test_relative_position_property():
    """<R(p)q, R(p')k> depends only on p - p' (per axis)."""
    rope = RotaryEmbedding2d(8)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    grid = 6
    xq = q.expand(grid * grid, 8).clone()
    xk = k.expand(grid * grid, 8).clone()
    rq, rk = rope(xq, grid, grid), rope(xk, grid, grid)
    idx = lambda r, c: r * grid + c
    a = rq[idx(1, 2)] @ rk[idx(3, 1)]
    b = rq[idx(2, 4)] @ rk[idx(4, 3)]
    assert math.isclose(a.item(), b.item(), rel_tol=1e-9)


def test_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 4"):
        RotaryEmbedding2d(6)
    with pytest.raises(ValueError, match="grid"):
        RotaryEmbedding2d(8)(torch.randn(1, 10, 8), 3, 3)


def test_tables_built_under_inference_mode_still_train():
    """The cos/sin cache is shared by inference and training: a table first built under
    inference_mode (Segmenter) must not break a later backward at the same size."""
    import torch
    from hrmedseg.layers.rope import RotaryEmbedding2d
    rope = RotaryEmbedding2d(8)
    with torch.inference_mode():
        rope(torch.randn(1, 2, 12, 8), 3, 4)
    x = torch.randn(1, 2, 12, 8, requires_grad=True)
    rope(x, 3, 4).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
