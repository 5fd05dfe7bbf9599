import pytest
import torch

import hrmedseg
from hrmedseg.models.hrmedseg import default_stage_depths, spread_evenly

# Exact parameter counts (3 input channels). hrmedseg = the authors' released layout, which the
# paper's totals describe (3,526,364); hrmedseg_lean = the paper's equations alone.
PARAMS = {
    ("hrmedseg", 1): 3_526_364,
    ("hrmedseg_lean", 1): 3_239_760,
    ("herseg", 2): 3_666_428,
    ("herseg_convt4x4", 2): 3_723_644,
    ("hrmedseg_l4_c96", 1): 3_043_532,
    ("hrmedseg_l10_c384", 1): 16_758_092,
}

# Paper Table 6 / Table 1 figures (M params), checked within 2 %.
PAPER_M = {"hrmedseg": 3.53, "hrmedseg_l4_c96": 3.04, "hrmedseg_l8_c96": 3.37,
           "hrmedseg_l12_c96": 3.69, "hrmedseg_l16_c96": 4.01, "hrmedseg_l10_c24": 2.63,
           "hrmedseg_l10_c48": 2.82, "hrmedseg_l10_c192": 6.22, "hrmedseg_l10_c384": 16.75}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,classes", list(PARAMS))
def test_exact_parameter_counts(name, classes):
    assert n_params(hrmedseg.create_model(name, num_classes=classes)) == PARAMS[(name, classes)]


@pytest.mark.parametrize("name", list(PAPER_M))
def test_parameter_counts_match_paper(name):
    n = n_params(hrmedseg.create_model(name))
    assert abs(n / 1e6 - PAPER_M[name]) / PAPER_M[name] < 0.02


def test_herseg_matches_paper_count():
    assert abs(n_params(hrmedseg.create_model("herseg")) / 1e6 - 3.67) / 3.67 < 0.02


TINY = dict(embed_dim=24, depth=2, num_heads=(6, 6, 6), neck_dim=32, decoder_heads=4,
            decoder_mlp_dim=32)


@pytest.mark.parametrize("kwargs,shape,out", [
    (dict(num_classes=1), (2, 3, 64, 64), (2, 1, 64, 64)),
    (dict(num_classes=4), (1, 3, 48, 80), (1, 4, 48, 80)),
    (dict(num_classes=2, in_chans=1), (1, 1, 96, 32), (1, 2, 96, 32)),
    (dict(num_classes=3, released_layout=False), (2, 3, 32, 48), (2, 3, 32, 48)),
    (dict(num_classes=1, upscaler="convt4x4"), (1, 3, 64, 48), (1, 1, 64, 48)),
    (dict(num_classes=1, pool_sizes=()), (1, 3, 16, 16), (1, 1, 16, 16)),
])
def test_output_shapes(kwargs, shape, out):
    m = hrmedseg.create_model("hrmedseg", **{**TINY, **kwargs}).eval()
    with torch.no_grad():
        assert m(torch.randn(shape)).shape == out


def test_size_rule_error_names_size_and_rule():
    m = hrmedseg.create_model("hrmedseg", **TINY)
    with pytest.raises(hrmedseg.InputSizeError, match=r"100x64.*multiples of 16"):
        m(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match="input channels"):
        m(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize("released", [True, False])
def test_gradients_reach_every_used_parameter(released):
    m = hrmedseg.create_model("hrmedseg", num_classes=2, released_layout=released, **TINY)
    m.train()
    # MBConv projections start with BN weight 0 (identity blocks); make them non-zero so that
    # the check sees real connectivity, not the zero-init.
    for blk in m.encoder.conv_layers:
        torch.nn.init.constant_(blk.conv3.bn.weight, 0.5)
    m(torch.randn(2, 3, 64, 48)).square().mean().backward()
    unused = set(m.unused_parameter_names())
    assert bool(unused) == released
    for name, p in m.named_parameters():
        if name in unused:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_box_prompts_change_the_output():
    m = hrmedseg.create_model("hrmedseg", **TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = m(x)
        b = m(x, boxes=torch.tensor([[4.0, 4.0, 30.0, 40.0]]))
    assert a.shape == b.shape and not torch.allclose(a, b)


def test_save_load_round_trip(tmp_path):
    m = hrmedseg.create_model("hrmedseg", num_classes=3, **TINY).eval()
    m.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file()
    m2 = hrmedseg.from_pretrained(tmp_path / "m").eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert m2.model_name == "hrmedseg" and m2.num_classes == 3


def test_checkpointing_gives_same_gradients():
    m = hrmedseg.create_model("hrmedseg", drop_path_rate=0.0, **TINY)
    m.train()
    x = torch.randn(2, 3, 64, 64)

    def grads(ckpt):
        m.zero_grad()
        m.set_grad_checkpointing(ckpt)
        m(x).sum().backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    g0, g1 = grads(False), grads(True)
    assert g0.keys() == g1.keys()
    for k in g0:
        assert torch.allclose(g0[k], g1[k], atol=1e-6, rtol=1e-5), k


@pytest.mark.parametrize("n,k,marked", [
    (12, 6, (1, 3, 5, 7, 9, 11)),
    (12, 12, tuple(range(12))),
    (12, 0, ()),
    (12, 3, (3, 7, 11)),
    (10, 1, (9,)),
    (4, 3, (1, 2, 3)),
])
def test_spread_evenly(n, k, marked):
    flags = spread_evenly(n, k)
    assert len(flags) == n and tuple(i for i, f in enumerate(flags) if f) == marked


def test_spread_evenly_refuses_more_than_there_is():
    with pytest.raises(ValueError, match="5 of 4"):
        spread_evenly(4, 5)


def _saved_bytes_and_grads(m, x, **ckpt):
    """Bytes autograd keeps for backward outside checkpointed regions (checkpointing's own
    hooks take those inside), and the gradients."""
    m.zero_grad(set_to_none=True)
    m.set_grad_checkpointing(**ckpt)
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = m(x).sum()
    loss.backward()
    return total, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_partial_checkpointing_same_gradients_memory_in_between():
    m = hrmedseg.create_model("hrmedseg", drop_path_rate=0.0, **{**TINY, "depth": 4}).train()
    x = torch.randn(2, 3, 64, 64)
    none, g0 = _saved_bytes_and_grads(m, x, enable=False)
    half, g1 = _saved_bytes_and_grads(m, x, enable=True, fraction=0.5)
    assert m.encoder.checkpointed == (False, True, False, True, False, True)  # 2 MBConv + 4 DGLA
    assert m.grad_checkpointing_fraction == 0.5
    full, g2 = _saved_bytes_and_grads(m, x, enable=True)
    assert all(m.encoder.checkpointed)
    assert full < half < none
    for g in (g1, g2):
        assert g.keys() == g0.keys()
        for k in g0:
            assert torch.allclose(g0[k], g[k], atol=1e-6, rtol=1e-5), k
    m.set_grad_checkpointing(False)
    assert not m.encoder.grad_checkpointing and m.grad_checkpointing_fraction == 0.0


@pytest.mark.parametrize("fraction,match", [(0.0, r"in \(0, 1\], got 0"),
                                            (1.5, r"in \(0, 1\], got 1.5"),
                                            ("half", "must be a number")])
def test_checkpointing_fraction_out_of_range_is_clear(fraction, match):
    m = hrmedseg.create_model("hrmedseg", **TINY)
    with pytest.raises(ValueError, match=match):
        m.set_grad_checkpointing(True, fraction=fraction)


def test_partial_checkpointing_only_where_supported():
    q = hrmedseg.create_model("qtseg", img_size=64)
    with pytest.raises(ValueError, match="qtseg recomputes all of its blocks or none"):
        q.set_grad_checkpointing(True, fraction=0.5)
    assert q.set_grad_checkpointing(True, fraction=1.0) is q


def test_stage_depth_split():
    assert default_stage_depths(10) == (2, 6, 2)
    assert sum(default_stage_depths(4)) == 4 and sum(default_stage_depths(16)) == 16


def test_registry():
    names = hrmedseg.list_models("hrmedseg*")
    for needed in ["hrmedseg", "hrmedseg_lean", "hrmedseg_l4_c96", "hrmedseg_l16_c96",
                   "hrmedseg_l10_c24", "hrmedseg_l10_c384"]:
        assert needed in names
    assert "herseg" in hrmedseg.list_models("herseg*")
    with pytest.raises(KeyError, match="Did you mean"):
        hrmedseg.create_model("hrmedsg")


def test_pretrained_without_weight_is_a_clear_error():
    from hrmedseg.models._pretrained import PretrainedWeightError
    with pytest.raises(PretrainedWeightError, match="no pretrained weight tagged"):
        hrmedseg.create_model("hrmedseg_lean", pretrained="nonexistent-tag", **TINY)


def test_bf16_autocast_forward_backward():
    m = hrmedseg.create_model("hrmedseg", **TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(torch.randn(1, 3, 32, 32))
    y.float().mean().backward()
    assert torch.isfinite(y.float()).all()


SPEED_SWITCHES = dict(fast_norm=True, fast_attention=True, pool_channels_first=True)


def test_speed_switches_default_on_reach_their_layers_and_keep_fp32_values():
    from hrmedseg.layers import DualGatedLinearAttention, LayerNorm, MultiscalePooling
    torch.manual_seed(0)
    plain = hrmedseg.create_model("hrmedseg", img_size=64, **TINY,
                                  **{k: False for k in SPEED_SWITCHES}).train()
    fast = hrmedseg.create_model("hrmedseg", img_size=64, **TINY).train()  # the defaults
    fast.load_state_dict(plain.state_dict())  # the switches add no parameter
    assert all(not m.upcast for m in fast.modules() if isinstance(m, DualGatedLinearAttention))
    assert all(m.fast for m in fast.modules() if isinstance(m, LayerNorm))
    assert all(m.channels_first for m in fast.modules() if isinstance(m, MultiscalePooling))
    for m in (plain, fast):  # stochastic depth off: both see the same network
        for mod in m.modules():
            if hasattr(mod, "p") and type(mod).__name__ == "DropPath":
                mod.p = 0.0
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for m in (plain, fast):
        out = m(x)
        (out * torch.linspace(-1, 1, 64)).sum().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.reshape(-1) for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
    assert (grads[1] - grads[0]).norm() / grads[0].norm() < 1e-4
    # and in bf16 they run (CPU autocast) with bf16 logits close to fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = fast.eval()(x)
    ref = plain.eval()(x).detach()
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).norm() / ref.norm() < 5e-2
    # switched back on the built model: the reference path again (runtime options)
    fast.set_fast_paths(fast_norm=False, fast_attention=False, pool_channels_first=False,
                        pool_impl="direct")
    assert fast.fast_paths == {"fast_norm": False, "fast_attention": False,
                               "pool_channels_first": False, "pool_impl": "direct"}
    assert all(m.impl == "direct" for m in fast.modules() if isinstance(m, MultiscalePooling))
    assert all(m.upcast for m in fast.modules() if isinstance(m, DualGatedLinearAttention))
    assert not any(m.channels_first for m in fast.modules() if isinstance(m, MultiscalePooling))
