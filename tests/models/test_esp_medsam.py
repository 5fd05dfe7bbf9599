"""ESP-MedSAM: parameter counts, modality routing, SPPG targets/loss, shapes, gradients,
save/load, MobileSAM weight loading."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import hrmedseg
from hrmedseg.models.esp_medsam import (ControlledTinyViTBlock, ESPMedSAM, ESPMedSAMConfig,
                                        load_mobile_sam_weights, sppg_targets)
from hrmedseg.models.tinyvit import TinyViT
from hrmedseg.training.losses import esp_medsam_loss

SHARED = Path(__file__).resolve().parents[3] / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
MOBILE_SAM = SHARED / "weights" / "mobile_sam.pt"

# Small config for the fast tests: 64² input → 4×4 embedding of width 32, 2×2 SPPG patches.
TINY = dict(img_size=64, embed_dim=32, sppg_hidden=8, decoder_heads=2, decoder_mlp_dim=32,
            encoder_args=dict(embed_dims=(16, 32, 40, 80), depths=(1, 1, 2, 1),
                              num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 14, 7)))


def tiny(num_modalities=3, **kw):
    torch.manual_seed(0)
    return ESPMedSAM(ESPMedSAMConfig(num_modalities=num_modalities, **{**TINY, **kw}))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


# -- parameter counts ---------------------------------------------------------------------------

def test_param_counts_pinned_and_close_to_paper():
    single = hrmedseg.create_model("esp_medsam_single")
    six = hrmedseg.create_model("esp_medsam")
    assert n_params(single) == 12_462_095
    assert n_params(six) == 28_892_945
    # one encoder bag (adapters + k/v tokens + logit biases) and one decoder query + hypernet
    bag = sum(p.numel() for p in six.controller.bags[0].parameters())
    assert bag == 3_146_106
    assert sum(p.numel() for p in six.modality_parameters(3).values()) == 3_286_170
    assert n_params(six) - n_params(single) == 5 * 3_286_170
    # paper: 28.46 M with six controllers (+1.5 %)
    assert abs(n_params(six) / 28.46e6 - 1) < 0.02
    # authors' released single-controller model 12.79 M: matched when TinyViT's (unused)
    # ImageNet head is counted, as MobileSAM's code builds it
    with_head = hrmedseg.create_model("esp_medsam_single", include_imagenet_head=True)
    assert n_params(with_head) == 12_783_735
    assert abs(n_params(with_head) / 12.79e6 - 1) < 0.02
    # the paper's per-controller increment (28.46 − 12.79) / 5 = 3.134 M is the encoder bag
    assert abs(bag / ((28.46e6 - 12.79e6) / 5) - 1) < 0.01
    assert single.size_multiple == 32


def test_registry_and_structure():
    assert {"esp_medsam", "esp_medsam_single"} <= set(hrmedseg.list_models("esp_medsam*"))
    m = tiny()
    assert isinstance(m.image_encoder, TinyViT)
    blocks = [b for layer in m.image_encoder.layers[1:] for b in layer.blocks]
    assert all(isinstance(b, ControlledTinyViTBlock) for b in blocks)
    assert len(m.controller.bags[0].adapters) == len(blocks) == 4
    # key names stay TinyViT's (MobileSAM weights load by key)
    keys = set(m.state_dict())
    assert "image_encoder.layers.1.blocks.0.attn.qkv.weight" in keys
    assert "image_encoder.layers.1.blocks.0.mlp.fc1.weight" in keys


# -- shapes, routing, gradients -----------------------------------------------------------------

def test_forward_shapes_and_aux():
    m = tiny()
    x = torch.randn(2, 3, 64, 64)
    logits, patches = m.forward_with_aux(x, 1)
    assert logits.shape == (2, 1, 64, 64)
    assert patches.shape == (2, 1, 2, 2)
    assert torch.isfinite(logits).all()
    assert torch.equal(m(x, 1), logits)
    # non-square, multiple of 32
    assert m(torch.randn(1, 3, 64, 96), 0).shape == (1, 1, 64, 96)
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 48, 64), 0)


def test_modality_is_needed_unless_the_model_has_one():
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(TypeError, match="3 modalities: pass modality"):
        tiny()(x)
    single = tiny(num_modalities=1).eval()
    with torch.no_grad():
        assert torch.equal(single(x), single(x, 0))
        three = tiny().eval()
        assert torch.equal(three.for_modality(2)(x), three(x, 2))


def test_forward_img256_default_widths():
    """Default widths (TinyViT-5M, 256-d decoder) at 256²: 16×16 embedding, 8×8 patches."""
    torch.manual_seed(0)
    m = hrmedseg.create_model("esp_medsam", img_size=256).eval()
    with torch.no_grad():
        logits, patches = m.forward_with_aux(torch.randn(1, 3, 256, 256), 5)
    assert logits.shape == (1, 1, 256, 256) and patches.shape == (1, 1, 8, 8)


def test_modality_must_be_explicit_and_valid():
    m = tiny()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(TypeError):
        m(x)  # no modality → error, never guessed
    with pytest.raises(ValueError):
        m(x, 3)
    with pytest.raises(ValueError):
        m(x, -1)
    with pytest.raises(TypeError):
        m(x, 1.0)
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 64, 64), torch.tensor([0, 1, 2]))


def test_different_modalities_give_different_outputs():
    m = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs = [m(x, n) for n in range(3)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(outs[i], outs[j], atol=1e-4)


def test_controller_changes_encoder_features():
    m = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for p in m.controller.parameters():
            p.normal_(0, 0.05)
        bare = m.image_embeddings(x, None)
        e0, e1 = m.image_embeddings(x, 0), m.image_embeddings(x, 1)
    assert not torch.allclose(bare, e0, atol=1e-5)
    assert not torch.allclose(e0, e1, atol=1e-5)


def test_per_sample_routing_matches_uniform():
    m = tiny().eval()
    with torch.no_grad():
        for p in m.controller.parameters():
            p.normal_(0, 0.05)
    x = torch.randn(3, 3, 64, 64)
    ids = torch.tensor([2, 0, 2])
    with torch.no_grad():
        mixed = m(x, ids)
        for i in range(3):
            alone = m(x[i:i + 1], int(ids[i]))
            assert torch.allclose(mixed[i:i + 1], alone, atol=1e-4, rtol=1e-4)
        # a one-element / all-equal tensor is the uniform case
        assert torch.allclose(m(x, torch.tensor(1)), m(x, 1))


def _grad_is_zero(p):
    return p.grad is None or not p.grad.abs().any()


@pytest.mark.parametrize("mixed", [False, True])
def test_gradient_reaches_only_the_chosen_modality(mixed):
    m = tiny(num_modalities=4)
    x = torch.randn(2, 3, 64, 64)
    mask = (torch.rand(2, 1, 64, 64) > 0.7).float()
    modality = torch.tensor([2, 2]) if mixed else 2
    logits, patches = m.forward_with_aux(x, modality)
    esp_medsam_loss(logits, patches, mask).backward()
    own = m.modality_parameters(2)
    assert any(p.grad is not None and p.grad.abs().any() for p in own.values())
    # the k/v tokens, the query and the hypernetwork of modality 2 all learn
    for name, p in own.items():
        if "k_tokens" in name or "v_tokens" in name or "modality_queries" in name \
                or "hypernetworks" in name or "adapters.0.up" in name:
            assert p.grad is not None and p.grad.abs().any(), name
    for n in (0, 1, 3):
        for name, p in m.modality_parameters(n).items():
            assert _grad_is_zero(p), name
    # shared parts learn too
    assert m.image_encoder.patch_embed.seq[0].conv.weight.grad.abs().any()
    assert m.sppg.patch_generator[0].weight.grad.abs().any()
    assert m.sppg.dense_encoder[0].weight.grad.abs().any()


def test_mixed_batch_gradients_go_to_each_samples_bag():
    m = tiny(num_modalities=3)
    logits, patches = m.forward_with_aux(torch.randn(2, 3, 64, 64), torch.tensor([0, 2]))
    logits.sum().backward()
    for n in (0, 2):
        assert m.controller.bags[n].k_tokens[0].grad.abs().any()
        assert m.decoder.modality_queries[n].grad.abs().any()
    assert all(_grad_is_zero(p) for p in m.modality_parameters(1).values())


def test_grad_checkpointing_same_gradients():
    m = tiny()
    x = torch.randn(1, 3, 64, 64)
    m(x, 1).sum().backward()
    g = m.controller.bags[1].k_tokens[1].grad.clone()
    m.zero_grad(set_to_none=True)
    m.set_grad_checkpointing(True)
    m(x, 1).sum().backward()
    assert torch.allclose(m.controller.bags[1].k_tokens[1].grad, g, atol=1e-6)


# -- SPPG ---------------------------------------------------------------------------------------

def test_sppg_targets_hand_checked():
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 0, 1] = 1          # top-left patch
    mask[0, 0, 3, 3] = 1          # bottom-right patch
    t = sppg_targets(mask, grid=2)
    assert t.shape == (1, 1, 2, 2)
    assert t[0, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    # (B, H, W), a 4×4 grid of 2×2 patches, values > 0 count as foreground
    m2 = torch.zeros(2, 8, 8)
    m2[1, 5, 2] = 255
    t2 = sppg_targets(m2, grid=4)
    assert t2.shape == (2, 1, 4, 4)
    assert t2[0].sum() == 0 and t2[1, 0, 2, 1] == 1 and t2[1].sum() == 1
    # 1024² mask → 32×32 patches of 32 px (the paper's setting)
    big = torch.zeros(1, 1, 1024, 1024)
    big[0, 0, 40, 100] = 1
    tb = sppg_targets(big)
    assert tb.shape == (1, 1, 32, 32) and tb[0, 0, 1, 3] == 1 and tb.sum() == 1
    with pytest.raises(ValueError):
        sppg_targets(torch.zeros(1, 1, 10, 10), grid=4)


def test_sppg_dense_prompt_is_binarised_and_detached():
    m = tiny()
    emb = torch.randn(1, 32, 4, 4, requires_grad=True)
    logits, dense = m.sppg(emb)
    assert logits.shape == (1, 1, 2, 2) and dense.shape == (1, 32, 4, 4)
    dense.sum().backward()
    assert emb.grad is None or not emb.grad.abs().any()  # only through the detached mask
    # the dense prompt depends only on the binarised patches
    m2 = m.sppg.dense_encoder(F.interpolate((logits.detach() >= 0).float(), scale_factor=2))
    assert torch.allclose(dense, m2)


def test_loss_terms():
    logits = torch.randn(2, 1, 64, 64)
    patches = torch.randn(2, 1, 2, 2)
    mask = (torch.rand(2, 1, 64, 64) > 0.5).float()
    total, parts = esp_medsam_loss(logits, patches, mask, lam=20.0, return_parts=True)
    bce = F.binary_cross_entropy_with_logits(patches, sppg_targets(mask, 2))
    assert torch.allclose(parts["sppg_bce"], bce)
    assert torch.allclose(total, 20 * parts["focal"] + parts["dice"] + parts["sppg_bce"])
    t1 = esp_medsam_loss(logits, patches, mask, lam=1.0)
    assert torch.allclose(t1, parts["focal"] + parts["dice"] + parts["sppg_bce"])
    # perfect predictions → small loss
    good = esp_medsam_loss((mask * 2 - 1) * 20, (sppg_targets(mask, 2) * 2 - 1) * 20, mask)
    assert good < 1e-3


# -- persistence, weights -----------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    m = hrmedseg.create_model("esp_medsam", num_modalities=2, **TINY).eval()
    with torch.no_grad():
        for p in m.controller.parameters():
            p.normal_(0, 0.05)
    m.save_pretrained(tmp_path)
    back = hrmedseg.from_pretrained(tmp_path).eval()
    assert isinstance(back, ESPMedSAM) and back.num_modalities == 2
    assert back.model_name == "esp_medsam"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x, 1), back(x, 1))


@pytest.mark.skipif(not MOBILE_SAM.is_file(), reason="mobile_sam.pt not available")
def test_mobile_sam_weights_load_where_shapes_match():
    m = hrmedseg.create_model("esp_medsam_single", img_size=256)
    report = load_mobile_sam_weights(m, MOBILE_SAM)
    state = torch.load(MOBILE_SAM, map_location="cpu", weights_only=True)
    own = m.state_dict()
    assert torch.equal(own["image_encoder.layers.2.blocks.3.attn.qkv.weight"],
                       state["image_encoder.layers.2.blocks.3.attn.qkv.weight"])
    assert torch.equal(own["image_encoder.patch_embed.seq.0.conv.weight"],
                       state["image_encoder.patch_embed.seq.0.c.weight"])
    assert torch.equal(own["decoder.transformer.layers.0.self_attn.q_proj.weight"],
                       state["mask_decoder.transformer.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(own["decoder.output_hypernetworks_mlps.0.layers.2.weight"],
                       state["mask_decoder.output_hypernetworks_mlps.0.layers.2.weight"])
    assert torch.equal(own["decoder.modality_queries.0"], state["mask_decoder.mask_tokens.weight"][:1])
    # every encoder / decoder-trunk tensor came from the file; only new parts stayed at init
    left = [k for k in report.not_loaded
            if not k.startswith(("controller.", "sppg."))]
    assert left == []
    assert any(k.startswith("mask_decoder.iou_prediction_head") for k in report.unused)
    # ESP-MedSAM-specific parts start neutral in the MLP path (adapters' last layer = 0)
    assert not m.controller.bags[0].adapters[0].up.weight.any()
    # pretrained= path through the registry
    m2 = hrmedseg.create_model("esp_medsam", img_size=256, pretrained=str(MOBILE_SAM))
    assert len(m2.pretrained_report.loaded) > 400


@pytest.mark.slow
def test_macs_at_1024():
    """Paper: 55.86 G MACs (authors' released model: 55.88 G). Ours: 56.65 G counted by ops,
    55.55 G by modules (thop-style), independent of the number of modalities."""
    from hrmedseg.profiling.macs import count_macs

    class One(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x, 0)

    m = hrmedseg.create_model("esp_medsam")
    macs = count_macs(One(m), torch.randn(1, 3, 1024, 1024))
    assert macs.ops_macs == 56_651_338_240
    assert macs.module_macs == 55_546_814_976
    assert abs(macs.module_macs / 55.86e9 - 1) < 0.02
    assert abs(macs.ops_macs / 55.86e9 - 1) < 0.02


def test_grad_checkpointing_recomputes_every_encoder_block_with_the_same_gradients(monkeypatch):
    """Same signature and fraction rule as QTSeg/HRMedSeg; every controlled TinyViT block runs
    under checkpoint, and all parameter gradients equal the stored-activation run."""
    import hrmedseg.models.esp_medsam as esp_mod
    from hrmedseg.models._base import CheckpointingError

    m = tiny(num_modalities=2)
    x, y = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 64, 64)
    (m(x, 1) * y).mean().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    calls = []
    real = esp_mod.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(type(fn).__name__)
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(esp_mod, "checkpoint", counting)
    m.zero_grad(set_to_none=True)
    assert m.set_grad_checkpointing(True) is m and m.grad_checkpointing
    (m(x, 1) * y).mean().backward()
    assert calls.count("ControlledTinyViTBlock") == sum(TINY["encoder_args"]["depths"][1:])
    got = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    assert got.keys() == ref.keys()
    for n, g in ref.items():
        assert torch.allclose(got[n], g, atol=1e-6, rtol=1e-5), n
    with pytest.raises(CheckpointingError, match="fraction"):
        m.set_grad_checkpointing(True, fraction=0.5)
    m.set_grad_checkpointing(False)
    calls.clear()
    m(x, 1).sum().backward()
    assert calls == []
