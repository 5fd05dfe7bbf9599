"""Dual-gated linear attention (DGLA; HRMedSeg eq. 3-5, HER-Seg's DLA).

Kernelised attention with φ(x) = ELU(x) + 1 (Katharopoulos et al.), so that

    out_i = φ(Q_i)ᴿ · ((1/N) Σ_j φ(K_j)ᴿᵀ V_j) · z_i,    z_i = 1 / (φ(Q_i) · mean_j φ(K_j) + ε)

where ·ᴿ is 2-D RoPE and V is the *pre-filtered* (inter-gated) value
V = SiLU(x W_V) W_gate (eq. 4). The sum over j is a (d×d) matrix per head, so cost and memory
grow linearly with the number of tokens N; no N×N tensor is ever formed. A depthwise 3×3
convolution of V on the token grid (LePE) is added to the output. The exter-gate / post-filter
SiLU(x W_x) (eq. 5) multiplies the output in :class:`DGLABlock`.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .drop_path import DropPath
from .mlp import Mlp
from .norm import LayerNorm
from .rope import RotaryEmbedding2d


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """φ(x) = ELU(x) + 1: positive features, so the normaliser never changes sign."""
    return F.elu(x) + 1.0


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     q_rot: torch.Tensor, k_rot: torch.Tensor, eps: float = 1e-6,
                     upcast: bool = True) -> torch.Tensor:
    """Core of DGLA for tensors shaped (B, heads, N, d).

    ``q``, ``k`` are the (positive) features φ(Q), φ(K) used by the normaliser; ``q_rot``,
    ``k_rot`` the same features after RoPE, used by the numerator. With ``upcast`` (the
    reference) computed in float32 at least. ``upcast=False`` keeps the inputs' dtype (bf16
    under autocast): the matmuls and the mean still accumulate in float32 inside their kernels,
    only their results are rounded to bf16, and five float32 copies of (B, heads, N, d) are
    saved. K is scaled by 1/N before the sum over tokens so that fp16 cannot overflow.
    """
    if not upcast:
        n = k.shape[-2]
        k_mean = k.mean(dim=-2, keepdim=True)
        z = 1.0 / ((q * k_mean).sum(dim=-1, keepdim=True) + eps)
        kv = torch.matmul((k_rot * (1.0 / n)).transpose(-2, -1), v)
        return torch.matmul(q_rot, kv) * z
    out_dtype = v.dtype
    work = torch.promote_types(out_dtype, torch.float32)
    # Autocast would cast the matmuls' inputs back to bf16/fp16: keep it off in here.
    with torch.autocast(device_type=v.device.type, enabled=False):
        q, k, v, q_rot, k_rot = (t.to(work) for t in (q, k, v, q_rot, k_rot))
        n = k.shape[-2]
        k_mean = k.mean(dim=-2, keepdim=True)                      # (B, h, 1, d)
        z = 1.0 / ((q * k_mean).sum(dim=-1, keepdim=True) + eps)    # (B, h, N, 1)
        kv = torch.matmul(k_rot.transpose(-2, -1), v) / n           # (B, h, d, d)
        return (torch.matmul(q_rot, kv) * z).to(out_dtype)


def quadratic_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                  q_rot: torch.Tensor, k_rot: torch.Tensor,
                                  eps: float = 1e-6) -> torch.Tensor:
    """The same formula computed the O(N²) way, with an explicit N×N score matrix.

    Only for tests: it checks that :func:`linear_attention` re-associates the products and
    nothing else.
    """
    n = k.shape[-2]
    scores = torch.matmul(q_rot, k_rot.transpose(-2, -1)) / n       # (B, h, N, N)
    norm = torch.matmul(q, k.transpose(-2, -1)).mean(dim=-1, keepdim=True)
    return torch.matmul(scores, v) / (norm + eps)


class DualGatedLinearAttention(nn.Module):
    """Token mixer of one LGViT block: Q/K projection, inter-gated V, RoPE, LePE.

    Args:
        dim: token width C.
        num_heads: heads; C must be divisible by it.
        value_reduction: the inter-gate bottleneck is ``dim // value_reduction`` wide
            (96 → 24 → 96 in HRMedSeg).
        rope_base: RoPE frequency base.
        upcast: run the attention core in float32 under autocast (the reference); False keeps
            the autocast dtype (see :func:`linear_attention`).
    """

    def __init__(self, dim: int, num_heads: int, value_reduction: int = 4,
                 rope_base: float = 10000.0, use_rope: bool = True, upcast: bool = True) -> None:
        super().__init__()
        self.upcast = upcast
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, 2 * dim)
        hidden = max(1, dim // value_reduction)
        # Inter-gate / pre-filter (eq. 4): V = SiLU(x W_V) W_gate.
        self.v_proj = nn.Linear(dim, hidden)
        self.v_gate = nn.Linear(hidden, dim)
        self.rope = RotaryEmbedding2d(dim, rope_base) if use_rope else None
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.dim // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        q, k = self.qk(x).chunk(2, dim=-1)
        v = self.v_gate(F.silu(self.v_proj(x)))
        q, k = elu_feature_map(q), elu_feature_map(k)
        if self.rope is not None:
            q_rot, k_rot = self.rope(q, height, width), self.rope(k, height, width)
        else:
            q_rot, k_rot = q, k
        out = linear_attention(self._heads(q), self._heads(k), self._heads(v),
                               self._heads(q_rot), self._heads(k_rot), upcast=self.upcast)
        out = out.transpose(1, 2).reshape(b, n, c)
        v_grid = v.transpose(1, 2).reshape(b, c, height, width)
        lepe = self.lepe(v_grid).flatten(2).transpose(1, 2)
        return out + lepe


class DGLABlock(nn.Module):
    """One token-interactive layer of LGViT (pre-norm, eq. 5):

    ``g = SiLU(W_x LN(x))``;  ``x = x + W_o(DGLA(LN(x)) ⊙ g)``;  ``x = x + MLP(LN(x))``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0,
                 value_reduction: int = 4, drop_path: float = 0.0,
                 use_exter_gate: bool = True, rope_base: float = 10000.0,
                 attn_upcast: bool = True) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.gate = nn.Linear(dim, dim) if use_exter_gate else None
        self.attn = DualGatedLinearAttention(dim, num_heads, value_reduction, rope_base,
                                             upcast=attn_upcast)
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        y = self.norm1(x)
        a = self.attn(y, height, width)
        if self.gate is not None:
            a = a * F.silu(self.gate(y))
        x = x + self.drop_path(self.proj(a))
        return x + self.drop_path(self.mlp(self.norm2(x)))
