"""Every softmax attention of QTSeg, ESP-MedSAM (TinyViT windows with the controller's extra
token, the two-way decoder) and the SAM decoder runs through F.scaled_dot_product_attention;
each equals softmax(QKᵀ/√d + bias)·V written out here from the module's own weights (fp32)."""
import math

import pytest
import torch

from hrmedseg.layers import Attention, ChannelAttentionBlock
from hrmedseg.models.esp_medsam import ControlledWindowAttention
from hrmedseg.models.tinyvit import WindowAttention, _window_offsets

ATOL = 1e-5


def _softmax_attention(q, k, v, bias=None):
    logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return torch.softmax(logits, dim=-1) @ v


def _perturbed(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def _heads(x, heads):
    b, n, c = x.shape
    return x.reshape(b, n, heads, c // heads).transpose(1, 2)


@pytest.mark.parametrize("downsample,kv_in", [(1, None), (2, None), (2, 12)])
def test_attention_equals_explicit_formula(downsample, kv_in):
    m = _perturbed(Attention(16, 4, downsample, kv_in_dim=kv_in))
    q_in = torch.randn(2, 3, 16)
    kv = torch.randn(2, 50, kv_in or 16)
    q, k, v = (_heads(m.q_proj(q_in), 4), _heads(m.k_proj(kv), 4), _heads(m.v_proj(kv), 4))
    ref = m.out_proj(_softmax_attention(q, k, v).transpose(1, 2).flatten(2))
    assert torch.allclose(m(q_in, kv, kv), ref, atol=ATOL)


def _window_qkv(m, x):
    b, n, _ = x.shape
    qkv = m.qkv(m.norm(x)).view(b, n, m.num_heads, 3 * m.head_dim).permute(0, 2, 1, 3)
    return qkv[..., :m.head_dim], qkv[..., m.head_dim:2 * m.head_dim], qkv[..., 2 * m.head_dim:]


def _relative_bias(m):
    """Per head, the learned bias of each (query, key) pair from its |Δrow|, |Δcol|."""
    ws = m.window_size
    rows, cols = torch.arange(ws * ws) // ws, torch.arange(ws * ws) % ws
    bias = torch.empty(m.num_heads, ws * ws, ws * ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            off = abs(int(rows[i] - rows[j])) * ws + abs(int(cols[i] - cols[j]))
            bias[:, i, j] = m.attention_biases[:, off]
    return bias


def test_window_offsets_hand_checked():
    idx = _window_offsets(2)   # positions (0,0) (0,1) (1,0) (1,1)
    assert idx.tolist() == [[0, 1, 2, 3], [1, 0, 3, 2], [2, 3, 0, 1], [3, 2, 1, 0]]


def test_tinyvit_window_attention_with_relative_bias_equals_explicit_formula():
    m = _perturbed(WindowAttention(24, 3, 4))
    x = torch.randn(5, 16, 24)
    q, k, v = _window_qkv(m, x)
    out = _softmax_attention(q, k, v, _relative_bias(m))
    ref = m.proj(out.transpose(1, 2).reshape(5, 16, 24))
    with torch.no_grad():
        assert torch.allclose(m(x), ref, atol=ATOL)


@pytest.mark.parametrize("per_window", [False, True])
def test_controlled_window_attention_extra_token_equals_explicit_formula(per_window):
    """ESP-MedSAM eq. 2: the modality's key/value token joins every window's keys and values,
    with its own per-head logit bias next to the windows' relative-position bias."""
    base = _perturbed(WindowAttention(24, 3, 4))
    m = ControlledWindowAttention.__new__(ControlledWindowAttention)
    m.__dict__.update(base.__dict__)
    bw, heads, hd = 4, 3, 8
    nb = bw if per_window else 1
    k_tok, v_tok = torch.randn(nb, heads, 1, hd), torch.randn(nb, heads, 1, hd)
    tok_bias = torch.randn(nb, heads, 1, 1)
    x = torch.randn(bw, 16, 24)
    q, k, v = _window_qkv(m, x)
    k = torch.cat([k, k_tok.expand(bw, -1, -1, -1)], dim=2)
    v = torch.cat([v, v_tok.expand(bw, -1, -1, -1)], dim=2)
    bias = torch.cat([_relative_bias(m).expand(bw, -1, -1, -1),
                      tok_bias.expand(bw, -1, 16, 1)], dim=-1)
    ref = m.proj(_softmax_attention(q, k, v, bias).transpose(1, 2).reshape(bw, 16, 24))
    with torch.no_grad():
        assert torch.allclose(m(x, k_tok, v_tok, tok_bias), ref, atol=ATOL)
        # without the controller's tokens it is the plain TinyViT attention
        assert torch.allclose(m(x), base(x), atol=0)


def test_channel_attention_block_keeps_its_explicit_cxc_form():
    """QTSeg's CAB (eq. 1) is unscaled and its tokens are the C channels of dimension H·W
    (thousands): no fused kernel serves that shape, so it stays two bmm's around a C×C softmax
    in float32. Checked against the formula with float64 arithmetic."""
    m = ChannelAttentionBlock(0.7)
    x = torch.randn(2, 6, 16, 16)
    flat = x.double().flatten(2)
    ref = 0.7 * (torch.softmax(flat @ flat.transpose(1, 2), -1) @ flat).view(x.shape) + x.double()
    with torch.no_grad():
        assert torch.allclose(m(x).double(), ref, atol=1e-4)
