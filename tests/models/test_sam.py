"""SAM family: parity with segment-anything, TinyViT vs MobileSAM's checkpoint, box prompts
(SamPredictor), official checkpoints fetched through the Hugging Face Hub (offline cache) and
loaded by key."""
import copy
import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hrmedseg
from hrmedseg.inference.predictor import SamPredictor
from hrmedseg.inference.prompts import boxes_from_mask
from hrmedseg.layers import PromptEncoder
from hrmedseg.models._hub import CheckpointError
from hrmedseg.models._pretrained import PretrainedWeightError
from hrmedseg.models.mask_decoder import MaskDecoder
from hrmedseg.models.sam import (EMPTY_LOGIT, HRMedSegImageEncoder, SamModel,
                                 load_hrmedseg_encoder)
from hrmedseg.models.sam_checkpoints import (ChecksumError, download_checkpoint, find_checkpoint,
                                             load_sam_checkpoint, sam_checkpoints,
                                             to_sam_state_dict)
from hrmedseg.models.tinyvit import TinyViT

SHARED = Path(__file__).resolve().parents[3] / "shared"
if not SHARED.is_dir():
    SHARED = Path("/work/shared")
MOBILE_SAM = SHARED / "weights" / "mobile_sam.pt"
MOBILE_SAM_SHA = "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"
KVASIR = SHARED / "data" / "kvasir-seg"

TINY_VIT = dict(embed_dims=(16, 32, 40, 80), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                window_sizes=(7, 7, 14, 7), head_classes=0)


# A small SAM for the fast tests: 128² input, 8×8 embedding of width 64.
TINY_SAM = dict(img_size=128, prompt_embed_dim=64, decoder_heads=4, decoder_mlp_dim=128,
                iou_head_hidden_dim=64)


def tiny_mobile_sam(**kw):
    kw.setdefault("encoder_args", TINY_VIT)
    return hrmedseg.create_model("mobile_sam", **{**TINY_SAM, **kw}).eval()


# ---------------------------------------------------------------------------------------------
# segment-anything reference (its package __init__ imports torchvision, which does not import
# with this torch; the modeling/ files need only torch, so they are loaded on their own)
# ---------------------------------------------------------------------------------------------

def _load_reference():
    name = "_segment_anything_modeling_ref"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("segment_anything")
    if spec is None or spec.origin is None:
        pytest.skip("segment-anything is not installed (pip install segment-anything)")
    folder = Path(spec.origin).parent / "modeling"
    mspec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                   submodule_search_locations=[str(folder)])
    mod = importlib.util.module_from_spec(mspec)
    sys.modules[name] = mod
    try:
        mspec.loader.exec_module(mod)
    except Exception as exc:  # pragma: no cover - depends on the installed version
        del sys.modules[name]
        pytest.skip(f"segment_anything.modeling does not import: {exc}")
    return mod


@pytest.fixture(scope="module")
def sa():
    return _load_reference()


def _perturb(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module


def _reference_pair(sa, emb=64, img=1024, perturb=False, dtype=torch.float32):
    """segment-anything's prompt encoder and mask decoder (the real 256 / 2048 / 8-head
    config) with random weights, and ours with their state dicts copied in by key."""
    ref_pe = sa.PromptEncoder(embed_dim=256, image_embedding_size=(emb, emb),
                              input_image_size=(img, img), mask_in_chans=16)
    ref_md = sa.MaskDecoder(num_multimask_outputs=3,
                            transformer=sa.TwoWayTransformer(depth=2, embedding_dim=256,
                                                             mlp_dim=2048, num_heads=8),
                            transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    if perturb:  # move every parameter (LayerNorm 1/0, biases 0 included) off its init
        _perturb(ref_pe, 1), _perturb(ref_md, 2)
    pe = PromptEncoder(256, (emb, emb), (img, img), 16)
    md = MaskDecoder(256)
    pe.load_state_dict(ref_pe.state_dict(), strict=True)
    md.load_state_dict(ref_md.state_dict(), strict=True)
    return (ref_pe.to(dtype).eval(), ref_md.to(dtype).eval(), pe.to(dtype).eval(),
            md.to(dtype).eval())


def _prompts(kind, p=3, img=1024, emb=64, dtype=torch.float32):
    g = torch.Generator().manual_seed(7)
    xy0 = torch.rand(p, 2, generator=g) * img * 0.5
    boxes = torch.cat([xy0, xy0 + torch.rand(p, 2, generator=g) * img * 0.5], dim=1)
    coords = torch.rand(p, 4, 2, generator=g) * img
    labels = torch.tensor([[1, 0, -1, 1], [0, 0, 1, -1], [1, 1, 1, 1]])[:p]
    masks = torch.randn(p, 1, 4 * emb, 4 * emb, generator=g)
    boxes, coords, masks = boxes.to(dtype), coords.to(dtype), masks.to(dtype)
    return {
        "boxes": dict(points=None, boxes=boxes, masks=None),
        "points": dict(points=(coords, labels), boxes=None, masks=None),
        "masks": dict(points=None, boxes=None, masks=masks),
        "points+boxes+masks": dict(points=(coords, labels), boxes=boxes, masks=masks),
    }[kind]


KINDS = ["boxes", "points", "masks", "points+boxes+masks"]


# Built once per module: initialising ~8 M parameters dominates these tests otherwise.
@pytest.fixture(scope="module")
def pair64(sa):
    return _reference_pair(sa)


@pytest.fixture(scope="module")
def pair32(sa):
    return _reference_pair(sa, emb=32, img=512)


@pytest.fixture(scope="module")
def pair32_perturbed_f64(sa):
    return _reference_pair(sa, emb=32, img=512, perturb=True, dtype=torch.float64)


@pytest.mark.parametrize("perturb", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_prompt_encoder_matches_segment_anything(sa, pair64, kind, perturb):
    ref_pe, _, pe, _ = pair64
    if perturb:  # fresh copies with every parameter off its init
        ref_pe = _perturb(copy.deepcopy(ref_pe), 1)
        pe = copy.deepcopy(pe)
        pe.load_state_dict(ref_pe.state_dict(), strict=True)
    prompts = _prompts(kind)
    with torch.no_grad():
        rs, rd = ref_pe(**prompts)
        s, d = pe(**prompts)
        assert torch.allclose(pe.get_dense_pe(), ref_pe.get_dense_pe(), atol=1e-5)
    assert s.shape == rs.shape and d.shape == rd.shape
    assert torch.allclose(s, rs, atol=1e-5)
    assert torch.allclose(d, rd, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_mask_decoder_matches_segment_anything(pair32, kind):
    """Prompt encoder + mask decoder end to end (all 4 mask tokens and IoU predictions),
    float32, segment-anything's own random init; a 32×32 embedding keeps it fast."""
    ref_pe, ref_md, pe, md = pair32
    prompts = _prompts(kind, img=512, emb=32)
    image = torch.randn(1, 256, 32, 32)
    with torch.no_grad():
        rs, rd = ref_pe(**prompts)
        ref_masks, ref_iou = ref_md.predict_masks(image, ref_pe.get_dense_pe(), rs, rd)
        s, d = pe(**prompts)
        masks, iou = md.predict_masks(image, pe.get_dense_pe(), s, d)
    assert masks.shape == ref_masks.shape == (3, 4, 128, 128)
    assert iou.shape == ref_iou.shape == (3, 4)
    assert torch.allclose(masks, ref_masks, atol=1e-5), (masks - ref_masks).abs().max()
    assert torch.allclose(iou, ref_iou, atol=1e-5)


def test_mask_decoder_forward_matches_segment_anything_at_64x64(pair64):
    """SAM's real sizes (1024² input, 64×64 embedding) and its multimask slicing."""
    ref_pe, ref_md, pe, md = pair64
    prompts = _prompts("boxes", p=2)
    image = torch.randn(1, 256, 64, 64)
    for multimask in (False, True):
        with torch.no_grad():
            rs, rd = ref_pe(**prompts)
            ref_masks, ref_iou = ref_md(image, ref_pe.get_dense_pe(), rs, rd, multimask)
            masks, iou = md(image, pe.get_dense_pe(), *pe(**prompts), multimask)
        k = 3 if multimask else 1
        assert masks.shape == ref_masks.shape == (2, k, 256, 256)
        assert torch.allclose(masks, ref_masks, atol=1e-5), (masks - ref_masks).abs().max()
        assert torch.allclose(iou, ref_iou, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_mask_decoder_matches_segment_anything_float64_all_weights_perturbed(pair32_perturbed_f64,
                                                                             kind):
    """Every parameter moved off its init: logits reach ~±20, where float32 rounding alone
    makes any two kernels differ by ~5e-5; in float64 the two must agree to 1e-9.
    (segment-anything's prompt encoder casts coordinates to float32, so our float64 prompt
    embeddings feed both decoders; the prompt encoders are compared above.)"""
    _, ref_md, pe, md = pair32_perturbed_f64
    image = torch.randn(1, 256, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        s, d = pe(**_prompts(kind, img=512, emb=32, dtype=torch.float64))
        ref_masks, ref_iou = ref_md.predict_masks(image, pe.get_dense_pe(), s, d)
        masks, iou = md.predict_masks(image, pe.get_dense_pe(), s, d)
    assert masks.dtype == torch.float64 and masks.abs().max() > 5
    assert torch.allclose(masks, ref_masks, atol=1e-9), (masks - ref_masks).abs().max()
    assert torch.allclose(iou, ref_iou, atol=1e-9)


def test_mask_decoder_batched_embeddings_equal_per_image_calls(pair32):
    *_, pe, md = pair32
    emb = torch.randn(2, 256, 32, 32)
    boxes = torch.tensor([[10.0, 20, 100, 120], [50, 60, 200, 250]])
    with torch.no_grad():
        s, d = pe(boxes=boxes)
        both, _ = md(emb, pe.get_dense_pe(), s, d, False)
        one = torch.cat([md(emb[i:i + 1], pe.get_dense_pe(), s[i:i + 1], d[i:i + 1], False)[0]
                         for i in range(2)])
    assert torch.allclose(both, one, atol=1e-5)
    with pytest.raises(ValueError, match="image embeddings"):
        md(torch.randn(2, 256, 32, 32), pe.get_dense_pe(), *pe(boxes=boxes.repeat(2, 1)), False)


@pytest.mark.parametrize("original", [(96, 128), (150, 200)])
def test_box_pipeline_matches_segment_anything_sam(sa, original):
    """Our preprocessing, batching and postprocessing = segment-anything's ``Sam.forward``."""
    model = tiny_mobile_sam()
    _perturb(model.prompt_encoder, 3), _perturb(model.mask_decoder, 4)
    ref = sa.Sam(image_encoder=model.image_encoder,
                 prompt_encoder=sa.PromptEncoder(embed_dim=64, image_embedding_size=(8, 8),
                                                 input_image_size=(128, 128), mask_in_chans=16),
                 mask_decoder=sa.MaskDecoder(
                     num_multimask_outputs=3, transformer_dim=64, iou_head_hidden_dim=64,
                     transformer=sa.TwoWayTransformer(depth=2, embedding_dim=64, mlp_dim=128,
                                                      num_heads=4))).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    image = torch.rand(1, 3, *original) * 255
    boxes = torch.tensor([[10.0, 12, 90, 80], [40, 30, 120, 90]])
    with torch.no_grad():
        predictor = SamPredictor(model)
        ours = predictor.predict_boxes(image, [boxes], combine=False)[0]
        size = model.preprocess_shape(*original)
        resized = F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)
        out = ref([{"image": resized[0], "original_size": original,
                    "boxes": predictor.transform_boxes(boxes, original)}],
                  multimask_output=False)[0]
        theirs = ref.postprocess_masks(out["low_res_logits"], size, original)
    assert ours.shape == theirs.shape == (2, 1, *original)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    assert torch.equal(ours > 0, out["masks"])


# ---------------------------------------------------------------------------------------------
# TinyViT
# ---------------------------------------------------------------------------------------------

def test_tinyvit_tiny_shapes_any_size():
    enc = TinyViT(img_size=256, **TINY_VIT).eval()
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 256, 256)).shape == (2, 256, 16, 16)
        assert enc(torch.randn(1, 3, 256, 192)).shape == (1, 256, 16, 12)


def test_tinyvit_vit_t_config_and_size():
    enc = TinyViT(img_size=256).eval()    # MobileSAM's vit_t, run at 256² instead of 1024²
    assert sum(p.numel() for p in enc.parameters()) == 6_065_532
    assert sum(p.numel() for n, p in enc.named_parameters()
               if n not in enc.unused_parameter_names()) == 6_065_532 - 320 * 1000 - 1000 - 640
    assert [len(layer.blocks) for layer in enc.layers] == [2, 2, 6, 2]
    assert [layer.blocks[0].attn.num_heads for layer in enc.layers[1:]] == [4, 5, 10]
    assert [layer.blocks[0].window_size for layer in enc.layers[1:]] == [7, 14, 7]
    assert enc.layers[2].downsample.conv2.conv.stride == (1, 1)
    with torch.no_grad():
        assert enc(torch.randn(1, 3, 256, 256)).shape == (1, 256, 16, 16)


def test_mobile_sam_registry_size_and_rules():
    m = hrmedseg.create_model("mobile_sam")
    assert sum(p.numel() for p in m.parameters()) == 10_130_092   # weights/README: 10.13 M
    assert {"mobile_sam", "hrmedseg_sam"} <= set(hrmedseg.list_models("*sam*"))
    with pytest.raises(ValueError, match="num_classes must be 1"):
        hrmedseg.create_model("mobile_sam", num_classes=2)
    with pytest.raises(ValueError, match="square"):
        hrmedseg.create_model("mobile_sam", img_size=(1024, 512))


def test_mobile_sam_key_names_round_trip(tmp_path):
    """Export under MobileSAM's names (Conv2d_BN ``c``), load strictly, same outputs."""
    m = tiny_mobile_sam(encoder_args={**TINY_VIT, "head_classes": 1000})
    _perturb(m, 5)
    state = to_sam_state_dict(m)
    assert "image_encoder.patch_embed.seq.0.c.weight" in state
    assert not any(k.endswith(".conv.weight") for k in state if k.startswith("image_encoder."))
    assert {k.split(".")[0] for k in state} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    torch.save(state, tmp_path / "ckpt.pt")
    fresh = tiny_mobile_sam(encoder_args={**TINY_VIT, "head_classes": 1000})
    assert load_sam_checkpoint(fresh, tmp_path / "ckpt.pt") == [
        "image_encoder", "prompt_encoder", "mask_decoder"]
    fresh.image_encoder.load_state_dict(          # the raw MobileSAM names load strictly too
        {k[len("image_encoder."):]: v for k, v in state.items() if k.startswith("image_encoder.")},
        strict=True)
    x = torch.rand(1, 3, 200, 256) * 255
    boxes = torch.tensor([[20.0, 30, 120, 150]])
    with torch.no_grad():
        assert torch.allclose(m(x, boxes), fresh(x, boxes), atol=1e-5)
    # ... and a model without the ImageNet head skips those keys
    headless = tiny_mobile_sam()
    load_sam_checkpoint(headless, state)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_sam_checkpoint(fresh, {k: v for k, v in state.items() if "neck" not in k})
    with pytest.raises(CheckpointError, match="ViT image encoder"):
        load_sam_checkpoint(fresh, {**state, "image_encoder.pos_embed": torch.zeros(1)})


# ---------------------------------------------------------------------------------------------
# Box-prompted prediction, HRMedSegSAM
# ---------------------------------------------------------------------------------------------

def test_predict_boxes_batched_lists_and_combination():
    m = tiny_mobile_sam()
    images = torch.randint(0, 256, (3, 3, 120, 160), dtype=torch.uint8)
    boxes = [torch.tensor([[10.0, 10, 60, 50], [80, 40, 150, 110]]), torch.zeros(0, 4),
             torch.tensor([[5.0, 5, 100, 100]])]
    p = SamPredictor(m)
    with torch.no_grad():
        combined = p.predict_boxes(images, boxes)
        per_box, iou = p.predict_boxes(images, boxes, combine=False, return_iou=True)
        multi = p.predict_boxes(images, boxes, combine=False, multimask_output=True)
        alone = p.predict_boxes(images[2:], boxes[2][None])           # (B, N, 4) form
        single = m(images[:1], torch.tensor([[10.0, 10, 60, 50]]))    # (B, 4) form
        forward = m(images, boxes)                                    # the module alone
    assert combined.shape == (3, 1, 120, 160)
    assert [t.shape for t in per_box] == [(2, 1, 120, 160), (0, 1, 120, 160), (1, 1, 120, 160)]
    assert [t.shape for t in iou] == [(2, 1), (0, 1), (1, 1)]
    assert [t.shape[1] for t in multi] == [3, 3, 3]
    assert torch.allclose(combined[0], per_box[0].amax(0))
    assert torch.all(combined[1] == EMPTY_LOGIT)
    assert torch.allclose(alone[0], combined[2], atol=1e-4)
    assert torch.allclose(single[0, 0], per_box[0][0, 0], atol=1e-4)
    assert torch.allclose(forward, combined, atol=1e-5)


def test_predictor_refuses_models_without_box_prompts():
    with pytest.raises(TypeError, match="SAM-family"):
        SamPredictor(hrmedseg.create_model("hrmedseg", img_size=64, embed_dim=24, depth=2,
                                           num_heads=(6, 6, 6)))


def test_predict_from_masks_uses_one_box_per_component():
    m = tiny_mobile_sam()
    images = torch.rand(2, 3, 64, 96) * 255
    masks = torch.zeros(2, 1, 64, 96)
    masks[0, 0, 5:20, 10:30] = 1
    masks[0, 0, 40:60, 50:90] = 1
    with torch.no_grad():
        out = SamPredictor(m).predict_from_masks(images, masks, combine=False)
    assert [t.shape[0] for t in out] == [2, 0]


def test_hrmedseg_sam_swaps_in_hrmedseg_encoder():
    enc_args = dict(embed_dim=24, depth=2, num_heads=(6, 6, 6))
    m = hrmedseg.create_model("hrmedseg_sam", encoder_args=enc_args, **TINY_SAM).eval()
    assert isinstance(m.image_encoder, HRMedSegImageEncoder)
    hr = hrmedseg.create_model("hrmedseg", img_size=128, neck_dim=64, **enc_args)
    load_hrmedseg_encoder(m, hr)
    assert torch.equal(m.image_encoder.encoder.patch_embed.proj.weight,
                       hr.encoder.patch_embed.proj.weight)
    # SAM's prompt encoder + mask decoder from a MobileSAM-format checkpoint
    donor = tiny_mobile_sam()
    _perturb(donor, 6)
    assert load_sam_checkpoint(m, to_sam_state_dict(donor)) == ["prompt_encoder", "mask_decoder"]
    assert torch.equal(m.mask_decoder.iou_token.weight, donor.mask_decoder.iou_token.weight)
    x = torch.rand(2, 3, 128, 128) * 255
    with torch.no_grad():
        out = m(x, torch.tensor([[10.0, 10, 100, 120], [0, 0, 127, 127]]))
        hr.eval()
        emb = hr.forward_embedding(m.preprocess(x)[0])
        assert torch.allclose(m.image_embeddings(m.preprocess(x)[0]), emb, atol=1e-5)
    assert out.shape == (2, 1, 128, 128)
    # any module giving 256 × S/16 × S/16 can be the image encoder ...
    shared = SamModel(m.config).replace_image_encoder(HRMedSegImageEncoder.from_model(hr))
    assert shared.image_encoder.encoder is hr.encoder and shared.config.encoder == "hrmedseg"
    # ... and one that does not is refused with the shapes in the message
    bad = SamModel(m.config).replace_image_encoder(torch.nn.Conv2d(3, 32, 16, 16))
    with pytest.raises(ValueError, match=r"\(32, 8, 8\).*\(64, 8, 8\)"):
        bad(x[:1], torch.tensor([[1.0, 1, 50, 50]]))


def test_save_pretrained_round_trip(tmp_path):
    m = tiny_mobile_sam()
    _perturb(m, 8)
    m.save_pretrained(tmp_path / "m")
    again = hrmedseg.from_pretrained(tmp_path / "m").eval()
    x = torch.rand(1, 3, 100, 120) * 255
    b = torch.tensor([[10.0, 10, 80, 90]])
    with torch.no_grad():
        assert torch.allclose(m(x, b), again(x, b), atol=1e-6)


def test_pretrained_true_without_local_checkpoint_explains(tmp_path, monkeypatch):
    monkeypatch.setenv("HRMEDSEG_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightError,
                       match=r"'mobile_sam' \(mobile_sam.pt of the Hugging Face space "
                             r"dhkim2810/MobileSAM\) could not be fetched.*HRMEDSEG_CHECKPOINT_DIR"):
        tiny_mobile_sam(pretrained=True)


# ---------------------------------------------------------------------------------------------
# Prompts from masks
# ---------------------------------------------------------------------------------------------

def test_boxes_from_mask_components():
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:5, 3:8] = 255           # component 1
    mask[10:18, 20:29] = 1         # component 2
    mask[5, 8] = 1                 # touches component 1 diagonally
    mask[0, 29] = 1                # a single pixel
    boxes = boxes_from_mask(mask)
    assert boxes.dtype == np.float32
    # scan order of each component's first pixel
    np.testing.assert_array_equal(boxes, [[29, 0, 29, 0], [3, 2, 8, 5], [20, 10, 28, 17]])
    four = boxes_from_mask(mask, connectivity=4)
    assert len(four) == 4
    assert len(boxes_from_mask(mask, min_area=2)) == 2
    t = boxes_from_mask(torch.from_numpy(mask)[None] > 0)
    assert isinstance(t, torch.Tensor) and t.shape == (3, 4)
    assert torch.equal(t, torch.from_numpy(boxes))


def test_boxes_from_empty_mask():
    assert boxes_from_mask(np.zeros((8, 8))).shape == (0, 4)
    assert boxes_from_mask(torch.zeros(8, 8)).shape == (0, 4)
    with pytest.raises(ValueError, match="2-D"):
        boxes_from_mask(np.zeros((2, 8, 8)))


# ---------------------------------------------------------------------------------------------
# Official checkpoints and download
# ---------------------------------------------------------------------------------------------

def test_official_checkpoints_described_as_data():
    """One weights catalogue: the official checkpoints are entries of weights.json."""
    raw = json.loads((Path(hrmedseg.__file__).parent / "weights" / "weights.json").read_text())
    official = sam_checkpoints()
    assert set(official) == {"sam_vit_b", "sam_vit_l", "sam_vit_h", "mobile_sam"}
    assert all(raw[tag]["format"] == "sam" for tag in official)
    for name, info in official.items():
        assert info.url.startswith("https://") and info.filename.endswith((".pth", ".pt"))
        assert re.fullmatch(r"[0-9a-f]{64}", info.sha256), name
        assert info.hf_repo.count("/") == 1 and info.hf_file.endswith(info.filename)
        assert not info.shipped
    assert official["mobile_sam"].sha256 == MOBILE_SAM_SHA
    assert official["sam_vit_h"].image_encoder == "vit_h"
    assert len({info.sha256 for info in official.values()}) == len(official)
    # the catalogue's checksum is the file's: every official checkpoint present here is hashed
    local = [(n, SHARED / "weights" / i.filename) for n, i in official.items()
             if (SHARED / "weights" / i.filename).is_file()]
    if not local:
        pytest.skip(f"no official SAM checkpoint in {SHARED / 'weights'}")
    for name, path in local:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == official[name].sha256, path


def _fake_checkpoint() -> tuple[bytes, dict]:
    """A MobileSAM-format state dict of the tiny model, as torch.save bytes."""
    import io
    m = tiny_mobile_sam(encoder_args={**TINY_VIT, "head_classes": 1000})
    _perturb(m, 11)
    buf = io.BytesIO()
    state = to_sam_state_dict(m)
    torch.save(state, buf)
    return buf.getvalue(), state


def test_download_checkpoint_through_the_hub_cache_checks_sha256(hf_cache, monkeypatch):
    payload, state = _fake_checkpoint()
    info = sam_checkpoints()["mobile_sam"]
    snap = hf_cache(info.hf_repo, {info.hf_file: payload}, repo_type=info.hf_repo_type)
    # The recorded sha256 is the real MobileSAM's: this file is refused and removed.
    with pytest.raises(ChecksumError, match="is not 6dbb9052.*removed"):
        download_checkpoint("mobile_sam")
    assert not (snap / info.hf_file).exists()
    assert find_checkpoint("mobile_sam") is None
    # With its own hash recorded it is found in the cache, read and loaded by key.
    import dataclasses
    from hrmedseg.models import _pretrained
    fake = dataclasses.replace(info, sha256=hashlib.sha256(payload).hexdigest())
    index = {**_pretrained.weight_index(), "mobile_sam": fake}
    monkeypatch.setattr(_pretrained, "weight_index", lambda: index)
    import hrmedseg.models.sam_checkpoints as sc
    monkeypatch.setattr(sc, "weight_index", lambda: index)
    hf_cache(info.hf_repo, {info.hf_file: payload}, repo_type=info.hf_repo_type)
    path = download_checkpoint("mobile_sam")
    assert path.read_bytes() == payload and find_checkpoint("mobile_sam") == path
    loaded = tiny_mobile_sam(encoder_args={**TINY_VIT, "head_classes": 1000},
                             pretrained=True)
    assert loaded.pretrained_weight == "mobile_sam"
    assert torch.equal(to_sam_state_dict(loaded)["mask_decoder.iou_token.weight"],
                       state["mask_decoder.iou_token.weight"])


def test_unknown_checkpoint_name():
    with pytest.raises(PretrainedWeightError, match="unknown SAM checkpoint 'sam_vit_x'"):
        download_checkpoint("sam_vit_x")


# ---------------------------------------------------------------------------------------------
# The real MobileSAM (39 MB) and Kvasir-SEG
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mobile_sam_state():
    if not MOBILE_SAM.is_file():
        pytest.skip(f"{MOBILE_SAM} not available")
    return torch.load(MOBILE_SAM, map_location="cpu", weights_only=True)


def test_mobile_sam_checkpoint_loads_strictly(mobile_sam_state, monkeypatch):
    assert hashlib.sha256(MOBILE_SAM.read_bytes()).hexdigest() == MOBILE_SAM_SHA
    m = hrmedseg.create_model("mobile_sam")
    m.load_state_dict(mobile_sam_state, strict=True)        # MobileSAM's own key names
    enc = TinyViT()
    enc.load_state_dict({k[len("image_encoder."):]: v for k, v in mobile_sam_state.items()
                         if k.startswith("image_encoder.")}, strict=True)
    assert load_sam_checkpoint(hrmedseg.create_model("mobile_sam"), MOBILE_SAM,
                               sha256=MOBILE_SAM_SHA) == ["image_encoder", "prompt_encoder",
                                                          "mask_decoder"]
    exported = to_sam_state_dict(m)
    assert exported.keys() == mobile_sam_state.keys()
    assert all(torch.equal(exported[k], v) for k, v in mobile_sam_state.items())
    assert sum(p.numel() for p in m.parameters()) == 10_130_092
    # pretrained=True finds the official file (verified by sha256) in $HRMEDSEG_CHECKPOINT_DIR
    monkeypatch.setenv("HRMEDSEG_CHECKPOINT_DIR", str(MOBILE_SAM.parent))
    found = hrmedseg.create_model("mobile_sam", pretrained=True)
    assert found.pretrained_weight == "mobile_sam"
    assert torch.equal(found.mask_decoder.iou_token.weight,
                       mobile_sam_state["mask_decoder.iou_token.weight"])


def test_mobile_sam_segments_kvasir_with_gt_box():
    if not MOBILE_SAM.is_file() or not (KVASIR / "splits.json").is_file():
        pytest.skip("MobileSAM weights or Kvasir-SEG not available")
    from PIL import Image
    m = hrmedseg.create_model("mobile_sam", pretrained=str(MOBILE_SAM)).eval()
    stems = json.loads((KVASIR / "splits.json").read_text())["test"][:2]
    dices = []
    for stem in stems:
        image = np.array(Image.open(KVASIR / "images" / f"{stem}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(KVASIR / "masks" / f"{stem}.jpg").convert("L")) >= 128
        boxes = torch.from_numpy(boxes_from_mask(gt, min_area=16))
        with torch.no_grad():
            logits = SamPredictor(m).predict_boxes(
                torch.from_numpy(image).permute(2, 0, 1)[None], [boxes])
        pred = (logits[0, 0] > 0).numpy()
        assert pred.shape == gt.shape
        dices.append(2 * (pred & gt).sum() / (pred.sum() + gt.sum()))
    print(f"MobileSAM Kvasir-SEG Dice with GT boxes: {dices}")
    assert min(dices) > 0.5


def test_partial_checkpointing_only_with_the_hrmedseg_encoder():
    """A fraction reaches the HRMedSeg encoder's layers; TinyViT recomputes all or none."""
    m = hrmedseg.create_model("hrmedseg_sam")
    assert m.supports_partial_checkpointing
    m.set_grad_checkpointing(True, fraction=0.5)
    assert m.image_encoder.encoder.checkpointed == (False, True) * 6  # 2 MBConv + 10 DGLA
    m.set_grad_checkpointing(False)
    assert not any(m.image_encoder.encoder.checkpointed)
    t = tiny_mobile_sam()
    assert not t.supports_partial_checkpointing
    with pytest.raises(ValueError, match="mobile_sam recomputes all of its blocks or none"):
        t.set_grad_checkpointing(True, fraction=0.5)
