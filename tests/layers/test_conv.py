"""YOLOv8 conv blocks (hrmedseg.layers.conv) and the CNN attention modules of QTSeg."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from hrmedseg.layers import (C2f, SPPF, Bottleneck, ChannelAttentionBlock, Conv, ConvTranspose,
                             SpatialAttention)


def nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Per-layer parameter counts of YOLOv8n's backbone and PAN neck (its published model summary).
YOLOV8N_LAYERS = [
    (lambda: Conv(3, 16, 3, 2), 464),
    (lambda: Conv(16, 32, 3, 2), 4672),
    (lambda: C2f(32, 32, 1, shortcut=True), 7360),
    (lambda: Conv(32, 64, 3, 2), 18560),
    (lambda: C2f(64, 64, 2, shortcut=True), 49664),
    (lambda: Conv(64, 128, 3, 2), 73984),
    (lambda: C2f(128, 128, 2, shortcut=True), 197632),
    (lambda: Conv(128, 256, 3, 2), 295424),
    (lambda: C2f(256, 256, 1, shortcut=True), 460288),
    (lambda: SPPF(256, 256, 5), 164608),
    (lambda: C2f(384, 128, 1), 148224),
    (lambda: C2f(192, 64, 1), 37248),
    (lambda: Conv(64, 64, 3, 2), 36992),
    (lambda: C2f(192, 128, 1), 123648),
    (lambda: Conv(128, 128, 3, 2), 147712),
    (lambda: C2f(384, 256, 1), 493056),
]


@pytest.mark.parametrize("i", range(len(YOLOV8N_LAYERS)))
def test_yolov8n_layer_parameter_counts(i):
    build, expected = YOLOV8N_LAYERS[i]
    assert nparams(build()) == expected


def test_yolov8n_without_head_total():
    assert sum(n for _, n in YOLOV8N_LAYERS) == 2_259_536  # 3,157,200 less the Detect head


def test_conv_is_conv_bn_silu_same_padding():
    m = Conv(4, 8, 3, 2)
    assert m.conv.bias is None and isinstance(m.bn, nn.BatchNorm2d) and isinstance(m.act, nn.SiLU)
    assert m.bn.eps == 1e-3 and m.bn.momentum == 0.03
    assert m(torch.randn(2, 4, 16, 12)).shape == (2, 8, 8, 6)
    assert Conv(4, 8, 5)(torch.randn(1, 4, 7, 9)).shape == (1, 8, 7, 9)
    m = Conv(4, 4, 1, act=False).eval()
    x = torch.randn(1, 4, 3, 3)
    assert torch.allclose(m(x), m.bn(m.conv(x)))


def test_conv_transpose_upsamples_without_bias():
    m = ConvTranspose(8, 4, 4, 4)
    assert m.conv_transpose.bias is None
    assert m(torch.randn(1, 8, 3, 5)).shape == (1, 4, 12, 20)


def test_bottleneck_residual_only_when_widths_match():
    assert Bottleneck(8, 8, shortcut=True).add
    assert not Bottleneck(8, 8, shortcut=False).add
    assert not Bottleneck(8, 16, shortcut=True).add
    m = Bottleneck(8, 8, shortcut=True).eval()
    x = torch.randn(1, 8, 5, 5)
    assert torch.allclose(m(x), x + m.cv2(m.cv1(x)))


def test_c2f_keeps_every_bottleneck_output():
    m = C2f(16, 24, n=3).eval()
    assert m.cv2.conv.in_channels == (2 + 3) * 12
    x = torch.randn(2, 16, 8, 6)
    assert m(x).shape == (2, 24, 8, 6)
    a, b = m.cv1(x).chunk(2, 1)
    ys = [a, b]
    for blk in m.m:
        ys.append(blk(ys[-1]))
    assert torch.allclose(m(x), m.cv2(torch.cat(ys, 1)))


def test_sppf_chained_pools_equal_spp_windows():
    x = torch.randn(1, 3, 17, 13)
    m = SPPF(8, 8, 5).m
    pool = lambda k: nn.MaxPool2d(k, 1, k // 2)  # noqa: E731
    assert torch.equal(m(m(x)), pool(9)(x))
    assert torch.equal(m(m(m(x))), pool(13)(x))
    assert SPPF(8, 16, 5)(torch.randn(1, 8, 6, 4)).shape == (1, 16, 6, 4)


def test_spatial_attention_cbam_gate():
    m = SpatialAttention(7)
    assert nparams(m) == 2 * 49  # one 7×7 conv on [mean, max], no bias
    x = torch.randn(2, 6, 9, 7)
    a = m.attention_map(x)
    assert a.shape == (2, 1, 9, 7) and bool(((a > 0) & (a < 1)).all())
    pooled = torch.cat([x.mean(1, keepdim=True), x.max(1, keepdim=True).values], 1)
    assert torch.allclose(a, torch.sigmoid(m.conv(pooled)))
    assert torch.allclose(m(x), x * a)
    r = SpatialAttention(7, residual=True)
    r.load_state_dict(m.state_dict())
    assert torch.allclose(r(x), x * a + x)
    with pytest.raises(ValueError):
        SpatialAttention(4)


def test_channel_attention_block_eq1():
    m = ChannelAttentionBlock()
    assert nparams(m) == 1 and m.gamma.item() == 0.0
    x = torch.randn(2, 5, 4, 3)
    assert torch.equal(m(x), x)  # γ = 0: identity at start
    with torch.no_grad():
        m.gamma.fill_(0.7)
    flat = x.flatten(2)
    ref = torch.softmax(flat @ flat.transpose(1, 2), -1) @ flat
    assert torch.allclose(m(x), 0.7 * ref.view_as(x) + x, atol=1e-6)


def test_channel_attention_block_under_autocast_stays_finite():
    m = ChannelAttentionBlock(1.0)
    x = 50 * torch.randn(1, 4, 32, 32)  # X Xᵀ ~ 2.5e6·1024: far past fp16's range
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x.bfloat16())
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
