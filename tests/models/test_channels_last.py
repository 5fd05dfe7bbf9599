"""QTSeg, ESP-MedSAM and HER-Seg train in channels-last: a model moved with
``memory_format=torch.channels_last`` and fed a channels-last batch gives the contiguous
model's output and parameter gradients (fp32, tiny configs)."""
import copy

import pytest
import torch

import hrmedseg

ESP_TINY = dict(img_size=64, embed_dim=32, sppg_hidden=8, decoder_heads=2, decoder_mlp_dim=32,
                encoder_args=dict(embed_dims=(16, 32, 40, 80), depths=(1, 1, 2, 1),
                                  num_heads=(1, 2, 2, 4), window_sizes=(7, 7, 14, 7)))
HER_TINY = dict(embed_dim=24, depth=2, num_heads=(6, 6, 6), neck_dim=32, decoder_heads=4,
                decoder_mlp_dim=32, img_size=64, drop_path_rate=0.0)  # no random drops


def _out_and_grads(model, x, modality):
    model.zero_grad(set_to_none=True)
    out = model(x) if modality is None else model(x, modality)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * w).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None}


@pytest.mark.parametrize("name,kwargs,modality", [
    ("qtseg", {"img_size": 64}, None),
    ("esp_medsam_single", ESP_TINY, 0),
    ("herseg", HER_TINY, None),
])
def test_channels_last_equals_contiguous(name, kwargs, modality):
    torch.manual_seed(0)
    model = hrmedseg.create_model(name, **kwargs).train()
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64)
    out, grads = _out_and_grads(model, x, modality)
    out_cl, grads_cl = _out_and_grads(cl, x.contiguous(memory_format=torch.channels_last),
                                      modality)
    # conv kernels sum in another order per layout: fp32 rounding, grown a little by the
    # train-mode BatchNorms, so the yardstick is the tensor's own scale
    assert _rel(out_cl, out) < 1e-4
    assert grads_cl.keys() == grads.keys()
    for n, g in grads.items():
        assert (grads_cl[n] - g).abs().max() <= 1e-3 * g.abs().max() + 1e-8, n


def _rel(a, b):
    return float((a - b).norm() / b.norm())
